"""Session with fake parts: scripted observations, no models, no camera, no card reader.

Every reason code the capture, liveness and decision stages can produce, plus hold-still (with and
without a frame arriving in time) and start-on-first-face. What decides is the shipped
device.liveness.check.LivenessCheck that Session drives; only the per-frame vision (tracker, quality
gate) and the matcher are scripted here. The real-model runs are in tests/test_session.py.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from device import config as C
from device.camera.base import Frame
from device.cardreader.reader import CardRead
from device.cardreader.records import parse_text
from device.cardreader.simulator import FakeCard
from device.errors import CameraError, CardError
from device.session import Session
from device.vision.blink import Blink
from device.vision.quality import BestFrames
from device.vision.suite import MatchResult
from device.vision.tracking import Observation

FPS = 10.0


def face(t, **kw):
    """One scripted frame: a tracked face (kw: pad, good, blink=(t_start, t_end), yaw, faces)."""
    return {"t": t, "face": True, **kw}


def empty(t, **kw):
    return {"t": t, "face": False, **kw}


class FakeCamera:
    def __init__(self, script, lose_at=None):
        self.script, self.i, self.eof, self.lose_at = script, 0, False, lose_at

    def read(self, timeout):
        if self.lose_at is not None and self.i >= self.lose_at:
            raise CameraError("camera_lost")
        if self.i >= len(self.script):
            self.eof = True
            return None
        f = Frame(np.full((8, 8, 3), 100, np.uint8), self.script[self.i]["t"], self.i)
        self.i += 1
        return f


class FakeVision:
    """Stands in for VisionSuite: observe() replays the script, quality_crop() passes `good` frames."""
    versions = {"detector": "fake@00000000"}

    def __init__(self, script, *, card_face=True, similarity=0.9, identity=0.9, crash_at=None):
        self.script, self.card_ok, self.sim, self.ident, self.crash_at = script, card_face, similarity, identity, crash_at
        self.resets = 0

    def card_face(self, photo):
        return np.full((112, 112, 3), 7, np.uint8) if self.card_ok else None

    def observe(self, rgb, t):
        i = next(k for k, s in enumerate(self.script) if s["t"] == t)
        if self.crash_at is not None and i >= self.crash_at:
            raise RuntimeError("scripted bug")
        s = self.script[i]
        self._cur = s
        if not s["face"]:
            return Observation(t=t, faces=s.get("faces", 0))
        b = s.get("blink")
        return Observation(t=t, faces=s.get("faces", 1), box=(0, 0, 8, 8), keypoints=np.zeros((6, 2), np.float32),
                           landmarks=np.zeros((468, 3), np.float32), presence=0.9, yaw=s.get("yaw", 0.0),
                           pad_real=s.get("pad", 0.95), blink=Blink(b[0], b[1], 0.5) if b else None)

    def best_frames(self):
        return BestFrames(3)

    def quality_crop(self, rgb, obs, best):
        if obs.faces != 1 or obs.keypoints is None or not self._cur.get("good", True):
            return None
        crop = np.full((112, 112, 3), 9, np.uint8)
        best.offer(1.0, crop)
        return crop

    def match(self, card_face, crops, first, last):
        return MatchResult(self.sim, self.ident if last is not None else None, np.ones((3, 4), np.float32))

    def reset(self):
        self.resets += 1


def frames(n, t0=0.0, **kw):
    return [face(round(t0 + i / FPS, 3), **kw) for i in range(n)]


def blink_at(script, i):
    t = script[i]["t"]
    script[i] = {**script[i], "blink": (round(t - 0.15, 3), t)}
    return script


def card(fake=None):
    return CardRead(record=parse_text((fake or FakeCard.resident()).text), photo=np.full((126, 102, 3), 50, np.uint8))


# the challenge timing rule (random pause before each prompt, response window; issue 12,
# tests/test_timing_rule.py) off unless a test asks for it: these scripts place actions at fixed times
NO_TIMING = {"liveness.prompt_pause_min_s": 0.0, "liveness.prompt_pause_max_s": 0.0, "liveness.response_window_s": 0.0}


def run(script, *, vision=None, camera=None, card_read=None, reader=None, changes=None, **kw):
    cfg = C.replace(C.from_dict({}), **{**NO_TIMING, **(changes or {})})
    vision = vision or FakeVision(script)
    out, events = [], []
    s = Session(cfg, reader=reader, camera=camera or FakeCamera(script), vision=vision, sink=out.append,
                events=events.append, challenges=["blink"], **kw)
    v = s.run(card=card_read if card_read is not None else (None if reader else card()))
    assert out == [v] and vision.resets == 1          # one verdict; the suite is always reset
    return v, events


def test_genuine_passes():
    v, events = run(blink_at(frames(20), 5))
    assert v["result"] == "pass" and v["reasons"] == [], v
    assert v["scores"]["similarity"] == pytest.approx(0.9) and v["scores"]["liveness"] > 0.9
    kinds = [e["event"] for e in events]
    assert "challenge" in kinds and "challenge_passed" in kinds and kinds[-2:] == ["verdict", "idle"]


def test_challenges_start_on_the_first_face():
    """Three seconds of empty counter, then the face: the blink prompt is given on the first face
    frame, and its timeout runs from there (a blink at 3 s + 7 s still counts with the 8 s timeout)."""
    script = [empty(round(i / FPS, 3)) for i in range(30)] + frames(75, t0=3.0)
    blink_at(script, 30 + 70)
    v, events = run(script)
    assert v["result"] == "pass", v
    ch = next(e for e in events if e["event"] == "challenge")
    assert ch["prompt"] == "blink"
    idx = [e["event"] for e in events]
    assert idx.index("challenge") > idx.index("capturing")


def test_hold_still_then_a_good_frame_passes():
    script = blink_at(frames(8, good=False), 3) + frames(5, t0=0.8, good=True)
    v, events = run(script)
    assert v["result"] == "pass", v
    assert {"event": "capturing", "prompt": "hold_still"}.items() <= next(
        e for e in events if e.get("prompt") == "hold_still").items()


def test_hold_still_runs_out_is_quality_too_low():
    script = blink_at(frames(60, good=False), 3)      # 6 s of frames, none passes the gate; hold is 3 s
    v, events = run(script)
    assert v["reasons"] == ["quality_too_low"], v
    assert any(e.get("prompt") == "hold_still" for e in events)


@pytest.mark.parametrize("name, script, reason", [
    ("no face within face_wait_s", [empty(round(i / FPS, 3)) for i in range(120)], "no_face"),
    ("no face before the replay ended", [empty(round(i / FPS, 3)) for i in range(5)], "no_face"),
    ("two faces past the grace", frames(3) + frames(20, t0=0.3, faces=2) + frames(5, t0=2.3), "multiple_faces"),
    ("face gone > face_lost_s", frames(5) + [empty(round(0.5 + i / FPS, 3)) for i in range(20)], "face_lost"),
    ("no blink within the timeout", frames(100), "challenge_timeout"),
    ("a print: PAD says spoof", blink_at(frames(20, pad=0.1), 5), "spoof_suspected"),
])
def test_capture_and_liveness_reasons(name, script, reason):
    v, _ = run(script)
    assert v["result"] == "fail" and v["reasons"] == [reason], (name, v)


def test_a_brief_second_face_gets_the_hint_and_the_session_goes_on():
    """A second face for 0.5 s (< liveness.multiple_faces_grace_s): `one_face_only` at once, `cleared` when
    it leaves, and the session passes; a blink while it is in view does not count."""
    script = frames(3) + frames(5, t0=0.3, faces=2) + frames(15, t0=0.8)
    blink_at(script, 5)                    # during the crowded spell: ignored
    blink_at(script, 15)                   # after it: counts
    v, events = run(script)
    assert v["result"] == "pass" and v["reasons"] == [], v
    hints = [(e["prompt"], e.get("state")) for e in events if e["event"] == "hint"]
    assert hints == [("one_face_only", None), ("one_face_only", "cleared")], hints
    passed_at = next(i for i, e in enumerate(events) if e["event"] == "challenge_passed")
    cleared_at = next(i for i, e in enumerate(events) if e.get("state") == "cleared")
    assert cleared_at < passed_at          # the blink in the crowded spell did not pass the challenge


def test_second_face_grace_is_configurable():
    script = frames(3) + frames(5, t0=0.3, faces=2) + blink_at(frames(15, t0=0.8), 7)
    v, _ = run(script, changes={"liveness.multiple_faces_grace_s": 0.0})      # 0: the old rule
    assert v["reasons"] == ["multiple_faces"], v
    v, _ = run(script, changes={"liveness.multiple_faces_grace_s": 0.3})      # 0.5 s spell > 0.3 s
    assert v["reasons"] == ["multiple_faces"], v
    with pytest.raises(C.ConfigError, match="liveness.multiple_faces_grace_s"):
        C.from_dict({"liveness": {"multiple_faces_grace_s": -1}})


def test_a_lost_frame_does_not_restart_the_grace():
    """Two faces, a frame where the tracker sees none, two faces again: one spell, its grace counted from
    the first crowded frame (hiding for a frame does not buy a new 1.5 s)."""
    script = frames(3) + frames(10, t0=0.3, faces=2) + [empty(1.3)] + frames(7, t0=1.4, faces=2) + \
        blink_at(frames(15, t0=2.1), 7)
    v, events = run(script)
    assert v["reasons"] == ["multiple_faces"], v
    assert [e.get("state") for e in events if e["event"] == "hint"] == [None]


def test_after_a_second_face_a_new_match_frame_must_confirm_the_identity():
    """Frames after the crowded spell never pass the quality gate: the match frames all predate it, so
    nobody confirmed who completed the challenge -> multiple_faces (not a pass)."""
    script = frames(3) + frames(5, t0=0.3, faces=2) + blink_at(frames(50, t0=0.8, good=False), 7)
    v, events = run(script)
    assert v["reasons"] == ["multiple_faces"], v
    assert any(e.get("prompt") == "hold_still" for e in events)      # it asked for a frame first
    # a face swap during the spell: the match frame after it is someone else -> identity_changed
    script = frames(3) + frames(5, t0=0.3, faces=2) + blink_at(frames(15, t0=0.8), 7)
    v, _ = run(script, vision=FakeVision(script, identity=0.1))
    assert "identity_changed" in v["reasons"], v


def test_identity_changed_and_face_mismatch():
    script = blink_at(frames(20), 5)
    v, _ = run(script, vision=FakeVision(script, identity=0.1))
    assert v["reasons"] == ["identity_changed"]
    v, _ = run(script, vision=FakeVision(script, similarity=0.1))
    assert v["reasons"] == ["face_mismatch"] and v["scores"]["similarity"] == pytest.approx(0.1)


@pytest.mark.parametrize("fake, reason", [
    (FakeCard.resident(valid_to="20200101"), "card_expired"),
    (FakeCard.resident(number="990101199001011234"), "card_invalid_number"),
])
def test_card_reasons(fake, reason):
    v, _ = run(blink_at(frames(20), 5), card_read=card(fake))
    assert v["reasons"] == [reason]


def test_card_photo_without_face_and_card_read_failed():
    script = blink_at(frames(20), 5)
    v, _ = run(script, vision=FakeVision(script, card_face=False))
    assert v["reasons"] == ["card_photo_no_face"]

    class Reader:
        def read_card(self):
            raise CardError("card_removed")
    v, _ = run(script, reader=Reader())
    assert v["reasons"] == ["card_removed"]


def test_aborted_timeout_camera_lost_internal_error():
    script = frames(100)
    v, _ = run(script, should_abort=lambda: True)
    assert v["reasons"] == ["aborted"]
    clock = itertools.count(0.0, 1.0)                  # one second per clock read: capture_timeout_s passes
    v, _ = run(script, clock=lambda: next(clock))
    assert v["reasons"] == ["session_timeout"]
    v, _ = run(script, camera=FakeCamera(script, lose_at=3))
    assert v["reasons"] == ["camera_lost"]
    v, _ = run(script, vision=FakeVision(script, crash_at=2))
    assert v["reasons"] == ["internal_error"]


def test_every_capture_reason_is_a_verdict_reason():
    from device.liveness.decision import REASONS as LIVENESS
    from device.liveness.rules import default_rules
    from device.verdict import REASONS
    assert {r.reason for r in default_rules()} | set(LIVENESS) | {"quality_too_low"} <= REASONS


# ---------------------------------------------------------------- LivenessCheck on its own
def _o(t, faces=1, **kw):
    has = faces == 1
    return Observation(t=t, faces=faces, landmarks=np.zeros((468, 3), np.float32) if has else None, **kw)


def test_a_new_continuity_rule_plugs_in():
    """How issue-12-style rules extend the check: a rule object, no change to Session or the check."""
    from device.liveness.check import LivenessCheck
    from device.liveness.rules import ContinuityRule, default_rules

    class TooFast(ContinuityRule):        # e.g. a timing rule: ends the capture on a frame
        reason = "spoof_suspected"

        def on_frame(self, check, obs, in_view):
            return self.reason if in_view and obs.yaw > 80 else None

    class Flat(ContinuityRule):           # e.g. a flat-face rule: adds a reason at the decision
        reason = "spoof_suspected"

        def at_decision(self, check):
            return self.reason if check.frames < 5 else None

    cfg = C.replace(C.from_dict({}), **NO_TIMING).liveness
    c = LivenessCheck(cfg, sequence=["blink"], rules=default_rules() + [TooFast()])
    assert c.feed(_o(0.0, pad_real=0.9)).events[0]["event"] == "challenge"
    step = c.feed(_o(0.1, yaw=90.0))
    assert step.done and step.failed == "spoof_suspected" and c.finish() == "spoof_suspected"

    c = LivenessCheck(cfg, sequence=["blink"], rules=default_rules() + [Flat()])
    c.feed(_o(0.0, pad_real=0.9), good_frame=True)
    assert c.feed(_o(0.2, pad_real=0.9, blink=Blink(0.05, 0.2, 0.5)), good_frame=True).done
    assert c.finish() is None
    d = c.decide(None)
    assert not d.ok and d.reasons == ["spoof_suspected"]
    c2 = LivenessCheck(cfg, sequence=["blink"])     # the same frames without the rule pass
    c2.feed(_o(0.0, pad_real=0.9), good_frame=True)
    c2.feed(_o(0.2, pad_real=0.9, blink=Blink(0.05, 0.2, 0.5)), good_frame=True)
    assert c2.decide(None).ok


def test_challenge_registry_is_one_file_per_challenge():
    from pathlib import Path

    import device.liveness.challenges as ch
    from device.challenge_names import CHALLENGES
    files = sorted(p.stem for p in Path(ch.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert list(CHALLENGES) == files == sorted(ch.REGISTRY)
    assert ch.TURNS == ("turn_left", "turn_right")
    from device.link.events import SESSION_EVENT_SCHEMA
    assert SESSION_EVENT_SCHEMA["properties"]["challenge"]["enum"] == list(CHALLENGES)
