"""device.fleet.journal: the typed A/B journal's transitions (legal and illegal), its on-disk shape
(unchanged JSON, unknown keys kept) and the boot-guard step shared by bundle and software slots."""
from __future__ import annotations

import pytest

from device.fleet.journal import IllegalTransition, Journal, Staged


def switched(now=1000.0) -> Journal:
    j = Journal()
    j.stage(Staged("B", 2, nonce="n1"))
    j.begin_trial("B", 2, from_slot="A", from_version=1, now=now)
    return j


def test_stage_trial_commit_end_window():
    j = Journal()
    j.stage(Staged("B", 2, nonce="n1"))
    assert j.staged.slot == "B" and not j.on_probation
    t = j.begin_trial("B", 2, from_slot="A", from_version=1, now=1000.0)
    assert j.staged is None and j.on_probation and j.probation_in("B") and not j.probation_in("A")
    assert t.boots == [] and t.committed is False
    j.commit(1010.0)
    assert not j.on_probation and j.trial.committed_at == 1010.0
    j.end_window()
    assert j.trial is None


def test_illegal_transitions_raise():
    j = switched()
    with pytest.raises(IllegalTransition):
        j.stage(Staged("A", 3))                  # the rollback slot must stay intact
    with pytest.raises(IllegalTransition):
        j.unstage()
    with pytest.raises(IllegalTransition):
        j.begin_trial("A", 3, from_slot="B", from_version=2, now=1001.0)
    with pytest.raises(IllegalTransition):
        j.end_window()                           # still on probation
    j.commit(1002.0)
    with pytest.raises(IllegalTransition):
        j.commit(1003.0)                         # twice
    idle = Journal()
    for op in (lambda: idle.commit(1.0), idle.end_window, idle.roll_back, idle.abandon):
        with pytest.raises(IllegalTransition):
            op()
    with pytest.raises(IllegalTransition):
        idle.begin_trial("A", 1, from_slot="A", from_version=0, now=1.0)     # already current


def test_a_new_stage_ends_a_committed_switchs_window():
    j = switched()
    j.commit(1001.0)
    j.stage(Staged("A", 3))
    assert j.trial is None and j.staged.version == 3


def test_roll_back_keeps_a_report_for_the_next_start():
    j = switched()
    rep = {"state": "rolled_back", "reason": "crash_loop", "target_version": 2}
    t = j.roll_back(rep, drop_staged=True)
    assert t.slot == "B" and j.trial is None and j.last == rep
    assert j.take_report() == rep and j.report is None and j.take_report() is None
    Journal().roll_back({"state": "rolled_back", "reason": "slot_invalid"}, repair=True)   # no trial needed


def test_abandon_a_trial_that_was_never_switched_in_can_restage_it():
    j = switched()
    j.abandon(Staged("B", 2))
    assert j.trial is None and j.staged == Staged("B", 2)


def test_boot_step_counts_clears_and_detects_a_crash_loop():
    j = switched(now=1000.0)
    assert j.boot("A", 1001.0, 60, 3) == "not_switched" and j.trial is not None
    assert j.boot("B", 1001.0, 60, 3) == "counted" and j.trial.boots == [1001.0]
    assert j.boot("B", 1100.0, 60, 3) == "counted" and j.trial.boots == [1100.0]   # 1001 fell out
    assert j.boot("B", 1101.0, 60, 3) == "counted"
    assert j.boot("B", 1102.0, 60, 3) == "crash_loop" and j.trial.boots == [1100.0, 1101.0]
    j = switched(now=1000.0)
    j.commit(1003.0)
    assert j.boot("B", 1050.0, 60, 3) == "counted"            # committed, still inside the window
    assert j.boot("B", 1061.0, 60, 3) == "cleared" and j.trial is None
    assert j.boot("B", 1062.0, 60, 3) is None


def test_the_json_shape_is_unchanged_and_unknown_keys_survive():
    d = {"trial": {"slot": "b", "version": "0.2.0", "bundle_version": 2, "from_slot": "a", "from_version": "0.1.0",
                   "switched_at": 1000.0, "boots": [], "committed": False, "note": "x"},
         "staged": None, "last": {"state": "applied"}, "future_key": [1]}
    j = Journal.from_dict(d)
    assert j.trial.bundle_version == 2 and j.trial.extra == {"note": "x"}
    assert j.to_dict() == d
    j = Journal()
    j.stage(Staged("A", 4, nonce="n"))
    assert j.to_dict() == {"staged": {"slot": "A", "version": 4, "nonce": "n"}, "trial": None}
    assert Journal.from_dict("garbage").to_dict() == {"staged": None, "trial": None}


def test_a_hand_edited_or_old_journal_still_loads():
    j = Journal.from_dict({"staged": {"slot": "A"}, "trial": {"slot": "B", "version": 2}, "last": "x"})
    assert j.staged.version is None and j.trial.boots == [] and j.last is None
    assert j.boot("B", 1000.0, 60, 3) == "counted"        # no switched_at: counted from now
