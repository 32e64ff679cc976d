"""Replay-resistant challenge timing: random pause before each prompt, response window, too early.

Unit tests on the ChallengeRunner with hand-made observations, plus the cost on the real blink video.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from device import config as config_mod
from device.config import LivenessConfig
from device.vision.blink import Blink
from device.liveness.challenges import ChallengeRunner
from device.liveness.decision import decide
from device.vision.tracking import Observation


def _obs(t, yaw=0.0, blink=None, closed=False):
    return Observation(t=t, faces=1, landmarks=np.zeros((468, 3), np.float32), yaw=yaw, blink=blink,
                       eyes_closed=closed)


CFG = LivenessConfig(prompt_pause_min_s=1.0, prompt_pause_max_s=2.0, response_window_s=3.0,
                     response_min_latency_s=0.12, challenge_timeout_s=8.0)


def _prompt_time(seed, seq=("blink",)):
    r = ChallengeRunner(CFG, rng=random.Random(seed), sequence=list(seq))
    assert r.start(0.0) == []                      # no prompt during the pause
    assert r.current is None
    t = 0.0
    while True:
        t = round(t + 0.05, 3)
        ev = r.update(_obs(t))
        if ev:
            assert ev[0]["state"] == "started" and r.current == seq[0]
            return r, t


def test_pause_before_each_prompt_is_random_within_the_configured_range():
    times = [_prompt_time(s)[1] for s in range(30)]
    assert all(1.0 <= t <= 2.05 for t in times), times
    assert len(set(times)) > 10                     # not a fixed delay
    # the second prompt also waits a random pause after the first challenge passed
    r, t = _prompt_time(3, ("blink", "turn_left"))
    ev = r.update(_obs(t + 0.3, blink=Blink(t + 0.1, t + 0.3, 0.5)))
    assert [e["state"] for e in ev] == ["passed"]  # no immediate next prompt
    assert r.current is None
    t2 = t + 0.3
    while not (ev := r.update(_obs(round(t2 := t2 + 0.05, 3)))):
        pass
    assert ev[0]["state"] == "started" and ev[0]["challenge"] == "turn_left"
    assert 1.0 <= t2 - (t + 0.3) <= 2.05


def test_blink_during_the_pause_does_not_count_and_late_blink_fails():
    r = ChallengeRunner(CFG, rng=random.Random(0), sequence=["blink"])
    r.start(0.0)
    # a blink in the pause (before any prompt) is ignored
    assert r.update(_obs(0.5, blink=Blink(0.3, 0.5, 0.5))) == []
    r, tp = _prompt_time(0)
    # nothing for the whole window: fails at the window, long before challenge_timeout_s
    t = tp
    while not r.done:
        t = round(t + 0.1, 3)
        r.update(_obs(t))
    assert r.failed_reason == "challenge_timeout" and t - tp <= 3.2
    # a blink inside the window passes
    r, tp = _prompt_time(0)
    ev = r.update(_obs(tp + 1.2, blink=Blink(tp + 1.0, tp + 1.2, 0.5)))
    assert ev[0]["state"] == "passed" and r.passed and r.results[0].t_onset == pytest.approx(tp + 1.0)


def test_turn_under_way_at_the_prompt_is_response_too_early():
    r, tp = _prompt_time(1, ("turn_left",))
    # the prompt frame was at yaw 0 in _prompt_time; a fresh runner with the head already moving
    r = ChallengeRunner(CFG, rng=random.Random(1), sequence=["turn_left"])
    r.start(0.0)
    t, ev = 0.0, []
    while not ev:
        t = round(t + 0.05, 3)
        ev = r.update(_obs(t, yaw=11.0))            # head already leaving frontal to the left
    ev = r.update(_obs(t + 0.1, yaw=16.0)) + r.update(_obs(t + 0.2, yaw=22.0))
    assert r.failed_reason == "response_too_early"
    assert ev[0]["state"] == "too_early" and ev[-1] == {"event": "liveness", "state": "failed", "t": ev[-1]["t"]}
    d = decide(r, [0.9], 1, False, None, CFG)
    assert not d.ok and d.reasons == ["response_too_early"]


def test_turn_from_frontal_after_the_prompt_passes_and_a_late_one_fails():
    r, tp = _prompt_time(2, ("turn_right",))
    for dt, yaw in ((0.4, 0), (0.6, -8), (0.8, -19), (0.95, -22), (1.1, -24)):
        ev = r.update(_obs(tp + dt, yaw=yaw))
    assert r.passed and ev[0]["state"] == "passed"
    assert tp <= r.results[0].t_onset <= tp + 0.7
    # the head only starts turning 3.5 s after the prompt: outside the 3 s window
    r, tp = _prompt_time(2, ("turn_right",))
    for dt, yaw in ((1.0, 0), (2.0, 0), (3.1, 2), (3.5, 0), (3.7, -20), (3.9, -22), (4.2, -25)):
        r.update(_obs(tp + dt, yaw=yaw))
    assert not r.passed and r.failed_reason == "challenge_timeout"


def test_config_rejects_a_pause_range_upside_down():
    with pytest.raises(config_mod.ConfigError):
        config_mod.from_dict({"liveness": {"prompt_pause_min_s": 2.0, "prompt_pause_max_s": 1.0}})
    d = config_mod.Config().liveness
    assert 0 < d.prompt_pause_min_s <= d.prompt_pause_max_s and d.response_window_s > 0


def test_cost_on_the_genuine_blink_video(shared_data, model_dir):
    """The blink challenge on the real blink video, with 20 random pause draws: every draw passes
    (blinks come every ~1 s, always inside the window); with the window off it passes too."""
    from tests.conftest import need
    from kyc_tools.eval.commands_liveness import make_tracker
    from kyc_tools.eval.liveness import video_frames
    from kyc_tools.eval.sessions import observe_all, replay
    tr = make_tracker(model_dir, pad=False, iris=True)
    rec = observe_all(tr, video_frames(need(shared_data / "blink" / "demo_old.mp4")))
    cfg = LivenessConfig(challenges=("blink",), count=1, pad_enabled=False)
    ok = [replay(rec, ["blink"], cfg, rng=random.Random(s))[0].ok for s in range(20)]
    assert all(ok)
