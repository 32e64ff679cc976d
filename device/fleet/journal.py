"""The A/B journal, typed, with explicit transitions. One class for both kinds of slots: the
bundle slots (`<state_dir>/bundles/state.json`, slots A/B, integer versions) and the software
slots (`<software_root>/slots/software.json`, slots a/b, dotted versions). Pure: loading and
saving go through the callers' read/write functions (dicts, the on-disk JSON shape unchanged).

    (idle) --stage--> staged --begin_trial--> trial (on probation)
    trial --commit--> trial (committed) --end_window / stage--> (idle)
    trial --roll_back--> (idle, a report for the next start)
    trial not switched in (power cut between journal and switch) --abandon--> (idle, or staged again)

A transition that is not allowed raises IllegalTransition: staging or switching while a switch is
on probation (the rollback slot must stay intact), committing twice or with nothing on trial,
ending the window of a switch still on probation, rolling back with nothing on trial.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


class IllegalTransition(ValueError):
    pass


def _from(cls, d: Any):
    if not isinstance(d, dict) or "slot" not in d:
        return None
    names = {f.name for f in fields(cls)}
    known = {k: v for k, v in d.items() if k in names}
    obj = cls(**known)
    obj.extra = {k: v for k, v in d.items() if k not in names}
    return obj


def _to(obj) -> dict:
    out = dict(obj.extra)
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.name == "extra" or (v is None and f.name in obj.OPTIONAL):
            continue
        out[f.name] = v
    return out


@dataclass
class Staged:
    """A slot that passed its self-test, waiting for a moment without a session."""
    slot: str
    version: Any = None
    nonce: str | None = None
    bundle_version: int | None = None
    extra: dict = field(default_factory=dict, repr=False)
    OPTIONAL = ("nonce", "bundle_version")

    def to_dict(self) -> dict:
        return _to(self)


@dataclass
class Trial:
    """A switch on probation: counted boots until committed, rolled back on a crash loop."""
    slot: str
    version: Any = None
    from_slot: str | None = None
    from_version: Any = None
    switched_at: float | None = None
    boots: list = field(default_factory=list)
    committed: bool = False
    committed_at: float | None = None
    bundle_version: int | None = None
    extra: dict = field(default_factory=dict, repr=False)
    OPTIONAL = ("switched_at", "committed_at", "bundle_version")

    def to_dict(self) -> dict:
        return _to(self)


@dataclass
class Journal:
    staged: Staged | None = None
    trial: Trial | None = None
    last: dict | None = None           # the last update status worth keeping over a restart
    report: dict | None = None         # a status to publish at the next start (the boot guard's)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "Journal":
        d = d if isinstance(d, dict) else {}
        j = cls(_from(Staged, d.get("staged")), _from(Trial, d.get("trial")),
                d.get("last") if isinstance(d.get("last"), dict) else None,
                d.get("report") if isinstance(d.get("report"), dict) else None)
        j.extra = {k: v for k, v in d.items() if k not in ("staged", "trial", "last", "report")}
        return j

    def to_dict(self) -> dict:
        out = dict(self.extra)
        out["staged"] = self.staged.to_dict() if self.staged else None
        out["trial"] = self.trial.to_dict() if self.trial else None
        if self.last is not None:
            out["last"] = self.last
        if self.report is not None:
            out["report"] = self.report
        return out

    # ------------------------------------------------------------ queries
    @property
    def on_probation(self) -> bool:
        return self.trial is not None and not self.trial.committed

    def probation_in(self, slot: str | None) -> bool:
        """A switch to `slot` (the current one) is on probation: its health probe is due."""
        return self.on_probation and self.trial.slot == slot

    # ------------------------------------------------------------ transitions
    def unstage(self) -> None:
        """A new update is about to be staged: the old stage goes, and a committed switch's
        rollback window ends (its slot is about to be overwritten)."""
        if self.on_probation:
            raise IllegalTransition("cannot stage while a switch is on probation")
        self.staged = None
        self.trial = None

    def stage(self, staged: Staged) -> None:
        if self.on_probation:
            raise IllegalTransition("cannot stage while a switch is on probation")
        self.trial = None
        self.staged = staged

    def begin_trial(self, slot: str, version: Any, *, from_slot: str | None, from_version: Any, now: float,
                    bundle_version: int | None = None) -> Trial:
        if self.on_probation:
            raise IllegalTransition(f"slot {self.trial.slot} is still on probation")
        if slot == from_slot:
            raise IllegalTransition(f"slot {slot} is already the current one")
        self.trial = Trial(slot, version, from_slot, from_version, now, [], False, None, bundle_version)
        self.staged = None
        return self.trial

    def commit(self, now: float) -> None:
        if self.trial is None:
            raise IllegalTransition("nothing on trial to commit")
        if self.trial.committed:
            raise IllegalTransition(f"slot {self.trial.slot} is already committed")
        self.trial.committed = True
        self.trial.committed_at = now

    def end_window(self) -> None:
        if self.trial is None or not self.trial.committed:
            raise IllegalTransition("only a committed switch's window can end")
        self.trial = None

    def roll_back(self, report: dict | None = None, *, drop_staged: bool = False, repair: bool = False) -> Trial | None:
        """The switch on trial is undone (the caller points `current` back). `repair`: `current`
        named an incomplete slot, with or without a trial."""
        if self.trial is None and not repair:
            raise IllegalTransition("nothing on trial to roll back")
        trial, self.trial = self.trial, None
        if drop_staged:
            self.staged = None
        if report is not None:
            self.report = report
            self.last = report
        return trial

    def abandon(self, restage: Staged | None = None) -> None:
        """The journal names a trial whose switch never happened (power cut in between)."""
        if self.trial is None:
            raise IllegalTransition("nothing on trial to abandon")
        self.trial = None
        if restage is not None:
            self.staged = restage

    def take_report(self) -> dict | None:
        rep, self.report = self.report, None
        return rep

    def boot(self, current: str | None, now: float, window_s: float, restarts: int) -> str | None:
        """The boot guard's step, shared by bundle and software slots. Returns
        None            nothing switched on trial;
        'not_switched'  a trial whose slot is not current (the caller abandons it, maybe restaging);
        'cleared'       a committed switch whose window is over (its trial is dropped);
        'crash_loop'    this start makes `restarts` within `window_s` of the switch (roll back);
        'counted'       this start is counted (trial.boots)."""
        t = self.trial
        if t is None:
            return None
        if t.slot != current:
            return "not_switched"
        switched = float(t.switched_at if t.switched_at is not None else now)
        if t.committed and now - switched > window_s:
            self.end_window()
            return "cleared"
        boots = [float(b) for b in t.boots if now - float(b) <= window_s] + [now]
        if len(boots) >= int(restarts):
            return "crash_loop"
        t.boots = boots
        return "counted"
