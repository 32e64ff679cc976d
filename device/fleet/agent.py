"""The device side of fleet updates: verify -> download -> verify hashes -> stage -> self-test ->
(wait for no session) -> switch -> apply -> health probe -> commit, or roll back.

Threads: `on_command` runs on the link's command thread and only does cheap work (signature,
window, nonce, version and size checks; writing inline chunks). A worker thread downloads,
hashes, stages and self-tests. `poll()` runs on the daemon's main loop and is the only place
that switches slots and hot-swaps the pipeline, never while a session runs.

Status on <prefix>/<site>/<device>/update/status (retained), AWS-IoT-Jobs-like states, lower
case on the wire (the link's closed schema takes tokens): queued, downloading, verifying, staged,
applied, failed (+reason), rolled_back (+reason). Every status carries `bundle_version` (the
running bundle, 0 = factory) and `target_version` (the update concerned).

Parts: fetch.py (inline spool, downloads, hash checks), admission.py (the pure `admit()`),
journal.py (the typed A/B journal), slots.py (the slot files and the boot guard).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from device import __version__ as DAEMON_VERSION
from device import config as config_mod
from device.fleet import fetch
from device.fleet import manifest as mf
from device.fleet import slots
from device.fleet.admission import Current, Policy, admit
from device.fleet.journal import Staged
from device.fleet.manifest import FleetError
from device.fleet.nonces import NonceStore

log = logging.getLogger("kyc_edge.fleet")

CHUNK_BYTES = mf.CHUNK_BYTES   # raw bytes per inline chunk: fits the link's 16 KiB command limit
# Failures of the transport, not of the signed content: the nonce is released so the operator (or
# the broker's redelivery) can re-send the same signed manifest. An attacker who can only inject
# or drop messages therefore cannot use up a genuine update.
RETRYABLE = frozenset({"truncated", "download_failed", "hash_mismatch", "disk_full"})


def is_update_topic(name: str) -> bool:
    n = name.strip("/")
    return n in ("update", "cmd/update") or n.endswith("/cmd/update")


_Stopping = fetch.Stopping     # the agent is closing (kept under the old names for callers)
_Spool = fetch.Spool


@dataclass
class _Job:
    m: dict
    envelope: dict
    dir: Path
    spool: _Spool
    t_queued: float = field(default_factory=time.monotonic)


class UpdateAgent:
    def __init__(self, cfg: config_mod.Config, state_dir: str | os.PathLike, *,
                 publish_status: Callable[[dict], Any],
                 self_test: Callable[[Path], Any] = lambda bundle_dir: None,
                 health_probe: Callable[[], Any] = lambda: None,
                 apply: Callable[[Path | None], Any] = lambda bundle_dir: None,
                 factory_models: str | os.PathLike | None = None,
                 daemon_version: str = DAEMON_VERSION,
                 clock: Callable[[], float] = time.time,
                 software: Any = None):
        self.cfg = cfg
        self.fcfg = cfg.fleet
        self.state_dir = Path(state_dir)
        self.bdir = slots.bundles_dir(state_dir)
        self.bdir.mkdir(parents=True, exist_ok=True)
        self.nonces = NonceStore(self.bdir / "nonces.json")
        self._release_interrupted()       # before cleanup() removes the evidence
        slots.cleanup(state_dir)
        self.factory_models = Path(factory_models) if factory_models else config_mod.models_dir(cfg)
        self.publish_status = publish_status
        self.self_test = self_test
        self.health_probe = health_probe
        self.apply = apply
        self.daemon_version = daemon_version
        self.clock = clock
        self.keys = mf.trusted_keys(cfg.fleet.public_keys)
        if not self.keys:
            log.warning("fleet: no usable fleet.public_keys; every update will be refused (no_trusted_keys)")
        self._lock = threading.RLock()
        self._jobs: "queue.Queue[_Job | None]" = queue.Queue()
        self._active: dict[str, _Job] = {}        # nonce -> job not yet finished (dedup, chunks)
        self._staged: Staged | None = None
        self._probe_pending = False
        self._reported_start = False
        self._stop = threading.Event()
        self.last_status: dict | None = None
        self.rejected = 0                # update messages refused before their signature verified
        self._rejected_reason = ""
        self._rejected_pub = 0.0
        self._rejected_dirty = False

        j = slots.load_journal(state_dir)
        cur = slots.current_slot(state_dir)
        if j.probation_in(cur):
            self._probe_pending = True      # restarted after a switch, before its health probe passed
        s = j.staged
        if s and s.slot in slots.SLOTS and s.slot != cur and slots.is_complete(self.bdir / s.slot) \
                and slots.slot_version(self.bdir / s.slot) == s.version \
                and (s.version or 0) > slots.current_version(state_dir):
            self._staged = s                # self-tested before a power cut; switch it in
        self._worker = threading.Thread(target=self._work, name="kyc-fleet", daemon=True)
        self._worker.start()
        self.software = software            # device.fleet.software.SoftwareUpdater (kind=software)
        if software is not None:
            software.attach(self)

    # ------------------------------------------------------------------ public
    @property
    def bundle_version(self) -> int:
        return slots.current_version(self.state_dir)

    def close(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        self._worker.join(2)
        if self.software is not None:
            self.software.close()

    def on_command(self, name: str, payload: Any, props: Any = None) -> bool:
        """Feed every command here; returns True if it was an update command (handled)."""
        if not is_update_topic(name):
            return False
        try:
            obj = mf.parse(payload)
            if len(obj) == 1 and ("chunk" in obj or "page" in obj):
                kind = next(iter(obj))
                self._on_inline(kind, obj[kind])
            else:
                self._on_manifest(obj)
        except FleetError as e:
            self._rejected(e.reason, e.detail)
        except Exception as e:  # noqa: BLE001 - a command must never take the daemon down
            log.exception("fleet: update command failed")
            self._rejected("internal_error", type(e).__name__)
        return True

    def poll(self, session_active: bool) -> None:
        """Main loop, each turn. Switches and probes only when no session runs."""
        if not self._reported_start:
            self._reported_start = True
            self._report_start()
        if self._rejected_dirty:
            self._publish_rejected()
        if self.software is not None:
            self.software.poll(session_active)
        if session_active:
            return
        with self._lock:
            try:
                if self._probe_pending:
                    self._probe_pending = False
                    self._probe_and_commit()
                staged = self._staged
                if staged is not None:
                    self._staged = None
                    self._switch(staged)
            except Exception as e:  # noqa: BLE001 - never into the daemon's main loop
                log.exception("fleet: switch failed")
                reason = "disk_full" if slots.disk_error(e) else "internal_error"
                try:
                    trial = slots.load_journal(self.state_dir).trial
                    if trial is not None and trial.slot == slots.current_slot(self.state_dir):
                        self._rollback(reason, type(e).__name__)
                        return
                except Exception:  # noqa: BLE001
                    log.exception("fleet: rollback after a failed switch failed; the boot guard decides")
                self._report("failed", None, reason=reason, detail=type(e).__name__)

    # ------------------------------------------------------------------ reporting
    def _report(self, state: str, target: int | None, *, reason: str | None = None, detail: str = "",
                persist: bool = False, **extra: Any) -> None:
        st: dict[str, Any] = {"state": state, "bundle_version": self.bundle_version}
        if target is not None:
            st["target_version"] = target
        if reason:
            st["reason"] = reason
        st.update(extra)
        if self.rejected:
            st["rejected"] = self.rejected
        lvl = logging.WARNING if state in ("failed", "rolled_back") else logging.INFO
        log.log(lvl, "fleet: %s%s target=%s running=%s%s", state, f"({reason})" if reason else "",
                target, st["bundle_version"], f": {detail}" if detail else "")
        self.last_status = st
        if persist:
            with self._lock:
                j = slots.load_journal(self.state_dir)
                j.last = st
                slots.save_journal(self.state_dir, j)
        try:
            self.publish_status(st)
        except Exception as e:  # noqa: BLE001
            log.warning("fleet: publishing update status failed: %s", e)

    def _rejected(self, reason: str, detail: str) -> None:
        """An update message refused before (or as) its signature was checked. Nothing of it is
        trusted, so nothing of it is published: the retained status keeps the last genuine update's
        state and target_version (a rollout is neither aborted nor stalled by forgeries) and gains
        `rejected` (count) and `rejected_reason` (our reason code), published at most once a second
        (a burst is summed up by poll())."""
        self.rejected += 1
        self._rejected_reason = reason
        log.warning("fleet: update message rejected (%s): %s", reason, detail[:200])
        self._publish_rejected()

    def _publish_rejected(self) -> None:
        now = time.monotonic()
        if now - self._rejected_pub < 1.0:
            self._rejected_dirty = True
            return
        self._rejected_pub, self._rejected_dirty = now, False
        last = {k: v for k, v in (self.last_status or {"state": "idle"}).items() if k != "at"}
        st = dict(last, bundle_version=self.bundle_version, rejected=self.rejected,
                  rejected_reason=self._rejected_reason)
        try:
            self.publish_status(st)
        except Exception as e:  # noqa: BLE001
            log.warning("fleet: publishing update status failed: %s", e)

    def _report_start(self) -> None:
        j = slots.load_journal(self.state_dir)
        rep = j.take_report()
        if rep:
            slots.save_journal(self.state_dir, j)
            self._report(rep["state"], rep.get("target_version"), reason=rep.get("reason"))
            return
        last = j.last or {"state": "idle"}
        if self._probe_pending:
            return          # reported after the probe
        self._report(last["state"], last.get("target_version"), reason=last.get("reason"))

    # ------------------------------------------------------------------ commands
    def _on_inline(self, kind: str, c: Any) -> None:
        """A page or chunk: only for an update we accepted (by nonce); a bad one is dropped."""
        job = self._active.get(str(c.get("nonce"))) if isinstance(c, dict) else None
        if job is None:
            return              # not for an update we accepted: ignore (no status spam)
        if kind == "page":
            job.spool.add_page(str(c.get("name")), c.get("index"), c.get("sha256"))
            return
        try:
            data = base64.b64decode(c["data"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            job.spool.drop("chunk: bad fields")
            return
        job.spool.add(str(c.get("name")), c.get("offset"), data)

    def _on_manifest(self, env: dict) -> None:
        m = mf.verify(env, self.keys)
        if not mf.targeted(m, self.cfg.device.id, self.cfg.device.groups):
            log.info("fleet: %s not targeted at this device; ignored", mf.short_id(m))
            return
        if m.get("kind") == "software":
            if self.software is None:     # signed, so its version may be reported (not a rejection)
                self._report("failed", m["bundle_version"], reason="software_unsupported",
                             detail="no fleet.software_root on this device", persist=True)
                return None
            return self.software.submit(m, env)
        tv = m["bundle_version"]
        with self._lock:
            dup = self._active.get(m["nonce"])
            if dup is not None and dup.envelope == env:
                return          # the same manifest via a second topic / QoS 1 redelivery
            staged_v = self._staged.version if self._staged else None
            if tv in (self.bundle_version, staged_v) and self.nonces.seen(m["nonce"]):
                log.info("fleet: %s is already staged/running; ignored", mf.short_id(m))
                return          # e.g. a canary device that is also in the widened group
            try:
                self.admit(m)
                d = self.bdir / ".incoming" / m["nonce"]
                try:
                    spool = _Spool(d, m["artifacts"], self._stop)
                except OSError as e:
                    raise FleetError("disk_full" if slots.disk_error(e) else "internal_error", str(e.strerror)) from None
            except FleetError as e:
                self._release_nonce(m, e.reason)
                self._report("failed", tv, reason=e.reason, detail=e.detail, persist=True)
                return
            job = _Job(m, env, d, spool)
            self._active[m["nonce"]] = job
        self._report("queued", tv)
        self._jobs.put(job)

    def admit(self, m: dict, *, free_paths: tuple = (), **current) -> None:
        """Gather what the box has now, ask the pure `admission.admit()`, record the nonce when
        it says so; raises FleetError with the refusal's reason."""
        now = self.clock()
        free = min(shutil.disk_usage(p).free for p in (self.bdir, *free_paths))
        cur = Current(now=now, nonce_seen=self.nonces.seen(m["nonce"]), free_bytes=free,
                      bundle_version=self.bundle_version,
                      staged_version=self._staged.version if self._staged else None, **current)
        adm = admit(m, Policy.of(self.fcfg, self.daemon_version), cur)
        if adm.consumes_nonce and not self.nonces.add(m["nonce"], m["expires"], now):
            raise FleetError("replayed_nonce", f"nonce {m['nonce'][:8]} seen before")
        adm.raise_if_refused()

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._jobs.get()
            if job is None:
                return
            tv = job.m["bundle_version"]
            try:
                self._process(job)
            except _Stopping:
                log.info("fleet: v%s abandoned: agent closing; a re-send of it may try again", tv)
                self._release_nonce(job.m, "truncated")
            except FleetError as e:
                self._release_nonce(job.m, e.reason)
                self._report("failed", tv, reason=e.reason, detail=e.detail, persist=True)
            except OSError as e:
                reason = "disk_full" if slots.disk_error(e) else "internal_error"
                self._release_nonce(job.m, reason)
                self._report("failed", tv, reason=reason, detail=f"{type(e).__name__}: {e.strerror}", persist=True)
            except Exception as e:  # noqa: BLE001
                log.exception("fleet: update failed")
                self._report("failed", tv, reason="internal_error", detail=type(e).__name__, persist=True)
            finally:
                shutil.rmtree(job.dir, ignore_errors=True)
                with self._lock:
                    self._active.pop(job.m["nonce"], None)

    def _release_nonce(self, m: dict, reason: str) -> None:
        if reason in RETRYABLE:
            try:
                self.nonces.release(m["nonce"])
            except OSError as e:
                log.warning("fleet: could not release nonce %s: %s", m["nonce"][:8], e.strerror)

    def _release_interrupted(self) -> None:
        """A download cut short by a restart or power cut (its .incoming/<nonce> is still there)
        is a transport failure too: release its nonce, unless that update got as far as a slot."""
        inc = self.bdir / ".incoming"
        if not inc.is_dir():
            return
        staged = slots.load_journal(self.state_dir).staged
        keep = {staged.nonce if staged else None}
        for slot in slots.SLOTS:
            try:
                keep.add(json.loads((self.bdir / slot / "manifest.json").read_text())["manifest"]["nonce"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        for d in inc.iterdir():
            if len(d.name) == 32 and all(c in "0123456789abcdef" for c in d.name) and d.name not in keep:
                log.info("fleet: update %s was interrupted; its nonce is released for a re-send", d.name[:8])
                self._release_nonce({"nonce": d.name}, "truncated")

    def _stacked_patch(self, m: dict) -> dict:
        """The config patch the new slot keeps: merged onto the running slot's (patches stack),
        unless the manifest says `config_complete` (its patch is then the whole fleet layer)."""
        patch = m.get("config_patch") or {}
        if m.get("config_complete"):
            return patch
        return slots.deep_merge(slots.config_patch(slots.active_bundle(self.state_dir)), patch)

    def _trial_open(self) -> bool:
        return slots.load_journal(self.state_dir).on_probation or self._probe_pending

    def _process(self, job: _Job) -> None:
        m, tv = job.m, job.m["bundle_version"]
        deadline = job.t_queued + self.fcfg.download_timeout_s
        while self._trial_open():                                # keep the rollback slot intact
            if self._stop.wait(0.1):
                raise _Stopping()
        if not self._jobs.empty():
            nxt = self._jobs.queue[0]
            if nxt is not None and nxt.m["bundle_version"] > tv:
                raise FleetError("superseded", f"v{nxt.m['bundle_version']} is queued")
        self._report("downloading", tv)
        files = fetch.fetch(m, job.spool, job.dir, deadline, self._stop)
        self._report("verifying", tv)
        fetch.verify(m, files)
        patch = self._stacked_patch(m)
        try:
            slots.merge_config(self.cfg, patch)
        except config_mod.ConfigError as e:
            raise FleetError("config_invalid", "; ".join(e.problems)[:300]) from None
        with self._lock:
            if self._staged is not None:
                log.info("fleet: staged v%s superseded by v%s", self._staged.version, tv)
                self._staged = None
            j = slots.load_journal(self.state_dir)
            j.unstage()                  # a committed switch's rollback window ends with a new stage
            slots.save_journal(self.state_dir, j)
            slot = slots.other_slot(self.state_dir)
            base = slots.model_dir(slots.active_bundle(self.state_dir), self.factory_models)
            slot_dir = slots.stage_slot(self.state_dir, slot, files, base, job.envelope, patch, tv)
        try:
            self.self_test(slot_dir)
        except config_mod.ConfigError as e:
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise FleetError("config_invalid", "; ".join(e.problems)[:300]) from None
        except FleetError:
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise
        except Exception as e:  # noqa: BLE001 - whatever the self-test raises is a failed self-test
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise FleetError("self_test_failed", f"{type(e).__name__}: {str(e)[:200]}") from None
        staged = Staged(slot, tv, m["nonce"])
        with self._lock:
            j = slots.load_journal(self.state_dir)
            j.stage(staged)
            slots.save_journal(self.state_dir, j)
            self._staged = staged
        self._report("staged", tv)

    # ------------------------------------------------------------------ switch / probe / rollback (main loop)
    def _switch(self, staged: Staged) -> None:
        slot, tv = staged.slot, staged.version
        sdir = self.bdir / slot
        cur = slots.current_slot(self.state_dir)
        if slot == cur or not slots.is_complete(sdir):
            return
        j = slots.load_journal(self.state_dir)
        j.begin_trial(slot, tv, from_slot=cur, from_version=self.bundle_version, now=time.time())
        slots.save_journal(self.state_dir, j)
        slots.killpoint("journaled")
        slots.switch(self.state_dir, slot)
        slots.killpoint("switched")
        try:
            self.apply(sdir)
        except Exception as e:  # noqa: BLE001
            self._rollback("apply_failed", f"{type(e).__name__}: {str(e)[:200]}")
            return
        slots.killpoint("applied")
        self._probe_and_commit()

    def _probe_and_commit(self) -> None:
        j = slots.load_journal(self.state_dir)
        tv = j.trial.version if j.trial else self.bundle_version
        try:
            self.health_probe()
        except Exception as e:  # noqa: BLE001
            self._rollback("health_probe_failed", f"{type(e).__name__}: {str(e)[:200]}")
            return
        if j.on_probation:
            j.commit(time.time())
        j.last = {"state": "applied", "target_version": tv}
        slots.save_journal(self.state_dir, j)     # one write: committed + what to report after a restart
        slots.killpoint("committed")
        self._report("applied", tv)

    def _rollback(self, reason: str, detail: str) -> None:
        j = slots.load_journal(self.state_dir)
        trial = j.trial
        to = trial.from_slot if trial else None
        if to is not None and not slots.is_complete(self.bdir / to):
            to = None
        slots.switch(self.state_dir, to)
        j.roll_back(repair=trial is None)
        slots.save_journal(self.state_dir, j)
        try:
            self.apply(self.bdir / to if to else None)
        except Exception as e:  # noqa: BLE001 - the boot guard catches a crash loop from here
            log.error("fleet: re-applying the previous bundle failed: %s", type(e).__name__)
        self._report("rolled_back", trial.version if trial else None, reason=reason, detail=detail, persist=True)
