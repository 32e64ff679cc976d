"""Randomised active-liveness challenges: a registry, one file per challenge in this folder
(blink.py, turn_left.py, turn_right.py, nod.py; device/challenge_names.py lists them).

    runner = ChallengeRunner(cfg.liveness, rng=random.SystemRandom())
    runner.start(t)                 # draws the sequence; the first challenge starts now
    runner.current -> str | None    # prompt name of the challenge being asked, None when done/failed
    events = runner.update(obs)     # obs: device.vision.tracking.Observation (t, has_face, yaw,
                                    # pitch, blink); list of non-biometric session events
    runner.done, runner.passed, runner.failed_reason ("challenge_timeout" or None), runner.results

Draw: `cfg.count` distinct challenges from `cfg.challenges`, in random order. When the pool holds
both `blink` and at least one turn and count >= 2, the draw always includes one blink and one turn
(the counter rule "turn your head and blink"; a flat photo can be tilted to fake a turn but cannot
blink, a closed-eye photo cannot turn and blink). Turn direction and order stay random.

Each challenge has its own timeout (cfg.challenge_timeout_s) from the moment it is asked; they run
in order; an action done before its challenge was asked does not count. What passes a challenge is
written in its own file (see `_base.Challenge`).

Timing rule (replay resistance; cfg.prompt_pause_min_s..max_s, response_window_s,
response_min_latency_s). Before each prompt the runner waits a random pause drawn uniformly from
[prompt_pause_min_s, prompt_pause_max_s] with its rng (SystemRandom on the device): no prompt is
shown (`current` is None) and nothing counts. Then the prompt is shown ("started") and:
- the response must BEGIN within `response_window_s` of the prompt (the challenge's `onset`: a
  blink's closing start, a turn's last near-frontal sample), else `challenge_timeout`; a response
  under way at the end of the window (`in_progress`) may still complete within challenge_timeout_s;
- not before: when on the first face frame of the prompt (within response_min_latency_s of it,
  faster than a person reacts) a response is already under way (`early`: a turn out of the frontal
  zone towards the requested side) and it then completes without a fresh start, the session fails
  with `response_too_early`. A blink begun before the prompt is ignored, not failed.
A recorded video plays its blinks and turns at the times it was recorded: with random prompt times it
must happen to begin the requested action inside a few-second window after each prompt, in order.

Events: {"event": "challenge", "challenge": name, "state": "started"|"passed"|"timeout"|"too_early",
"index": i, "of": n, "t": seconds since start}; and {"event": "liveness", "state": "passed"|"failed"}
once at the end.
"""
from __future__ import annotations

import importlib
import random
from dataclasses import dataclass

from device.challenge_names import CHALLENGES
from device.liveness.challenges._base import REGISTRY, Challenge, register

for _name in CHALLENGES:            # each file registers its class
    importlib.import_module(f"{__name__}.{_name}")
if set(REGISTRY) != set(CHALLENGES):
    raise RuntimeError(f"challenge files {CHALLENGES} and registered classes {sorted(REGISTRY)} differ")

ALL = CHALLENGES
TURNS = tuple(n for n in CHALLENGES if REGISTRY[n].kind == "turn")
__all__ = ["ALL", "TURNS", "REGISTRY", "Challenge", "ChallengeResult", "ChallengeRunner", "draw",
           "possible_sequences", "register"]


@dataclass
class ChallengeResult:
    name: str
    t_start: float
    t_end: float | None = None
    state: str = "pending"      # pending | waiting (pause before the prompt) | active | passed | timeout | too_early
    t_prompt: float | None = None   # when the prompt was shown (after the random pause)
    t_onset: float | None = None    # when the response that passed began


def _pairs_blink_and_turn(pool, count: int) -> bool:
    return count >= 2 and "blink" in pool and any(c in TURNS for c in pool)


def draw(pool, count: int, rng) -> list[str]:
    pool = list(dict.fromkeys(c for c in pool if c in REGISTRY))
    count = min(count, len(pool))
    if count <= 0:
        return []
    turns = [c for c in pool if c in TURNS]
    if _pairs_blink_and_turn(pool, count):
        seq = ["blink", rng.choice(turns)]
        rest = [c for c in pool if c not in seq]
        rng.shuffle(rest)
        seq += rest[: count - 2]
        rng.shuffle(seq)
        return seq
    seq = list(pool)
    rng.shuffle(seq)
    return seq[:count]


def possible_sequences(pool, count: int) -> list[list[str]]:
    """Every ordered sequence `draw(pool, count, rng)` can produce (evaluation replays all of them)."""
    import itertools
    pool = list(dict.fromkeys(c for c in pool if c in REGISTRY))
    n = min(count, len(pool))
    out = []
    for seq in itertools.permutations(pool, n):
        if _pairs_blink_and_turn(pool, n) and ("blink" not in seq or not any(c in TURNS for c in seq)):
            continue
        out.append(list(seq))
    return out


class ChallengeRunner:
    def __init__(self, cfg, rng=None, sequence: list[str] | None = None, nod_pitch_deg: float | None = None,
                 turn_hold_s: float = 0.2, max_frame_gap_s: float = 0.25):
        """cfg: device.config.LivenessConfig. `sequence` forces the challenges (tests, evaluation)."""
        self.cfg = cfg
        self.rng = rng or random.SystemRandom()
        self._forced = list(sequence) if sequence is not None else None
        self.nod_pitch_deg = nod_pitch_deg if nod_pitch_deg is not None else 0.8 * cfg.turn_yaw_deg
        self.turn_hold_s = turn_hold_s
        self.max_frame_gap_s = max_frame_gap_s
        self.sequence: list[str] = []
        self.results: list[ChallengeResult] = []
        self._i = 0
        self._t0 = None
        self._active: Challenge | None = None
        self.done = False
        self.failed_reason: str | None = None
        self._prompt_at: float | None = None
        self._early: bool | None = None

    # ------------------------------------------------------------------ state
    @property
    def current(self) -> str | None:
        """The challenge being asked (None while the pause before its prompt runs, and when done)."""
        if self.done or self._t0 is None or self._i >= len(self.sequence):
            return None
        if self.results[self._i].state == "waiting":
            return None
        return self.sequence[self._i]

    @property
    def started(self) -> bool:
        return self._t0 is not None

    @property
    def passed(self) -> bool:
        return self.done and self.failed_reason is None

    @property
    def passed_count(self) -> int:
        return sum(1 for r in self.results if r.state == "passed")

    def start(self, t: float) -> list[dict]:
        self.sequence = list(self._forced) if self._forced is not None else draw(self.cfg.challenges, self.cfg.count, self.rng)
        unknown = [c for c in self.sequence if c not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown challenge(s) {unknown}: expected names from {list(CHALLENGES)}")
        self.results = [ChallengeResult(n, t) for n in self.sequence]
        self._i = 0
        self._t0 = t
        self.done = False
        self.failed_reason = None
        if not self.sequence:
            self.done = True
            return [self._final(t)]
        return self._begin(t)

    def _pause(self) -> float:
        lo = float(getattr(self.cfg, "prompt_pause_min_s", 0.0))
        hi = float(getattr(self.cfg, "prompt_pause_max_s", 0.0))
        if hi <= 0:
            return 0.0
        return lo + (hi - lo) * self.rng.random()

    def _begin(self, t: float) -> list[dict]:
        """Start the random pause before challenge i; its prompt follows when the pause ends."""
        r = self.results[self._i]
        r.state = "waiting"
        self._prompt_at = t + self._pause()
        if self._prompt_at <= t:
            return [self._prompt(t)]
        return []

    def _prompt(self, t: float) -> dict:
        r = self.results[self._i]
        r.t_start, r.t_prompt, r.state = t, t, "active"
        self._active = REGISTRY[r.name](self.cfg, self)
        self._active.begin(t)
        self._early = None
        return self._event(r, t, "started")

    def _fail(self, r: ChallengeResult, t: float, state: str, reason: str, events: list) -> list[dict]:
        r.state, r.t_end = state, t
        events.append(self._event(r, t, state))
        self.done = True
        self.failed_reason = reason
        events.append(self._final(t))
        return events

    def _event(self, r: ChallengeResult, t: float, state: str) -> dict:
        return {"event": "challenge", "challenge": r.name, "state": state, "index": self._i,
                "of": len(self.sequence), "t": round(t - self._t0, 3)}

    def _final(self, t: float) -> dict:
        return {"event": "liveness", "state": "passed" if self.failed_reason is None else "failed",
                "t": round(t - self._t0, 3)}

    # ------------------------------------------------------------------ per frame
    def update(self, obs) -> list[dict]:
        if self._t0 is None or self.done:
            return []
        t = obs.t
        r = self.results[self._i]
        events: list[dict] = []
        if r.state == "waiting":
            if t < self._prompt_at:
                return events
            events.append(self._prompt(t))
        a = self._active
        face = getattr(obs, "landmarks", None) is not None
        if face:
            lat = float(getattr(self.cfg, "response_min_latency_s", 0.0))
            if self._early is None:
                self._early = (t - r.t_prompt <= lat + 1e-9) and a.early(obs)
            elif self._early and a.completes_early_response(obs):
                return self._fail(r, t, "too_early", "response_too_early", events)
        passed = face and a.check(obs)
        window = float(getattr(self.cfg, "response_window_s", 0.0))
        if passed and window > 0 and a.onset is not None and a.onset > r.t_prompt + window:
            passed = False              # began only after the window: does not count
        if passed:
            r.state, r.t_end, r.t_onset = "passed", t, a.onset
            events.append(self._event(r, t, "passed"))
            self._i += 1
            if self._i >= len(self.sequence):
                self.done = True
                events.append(self._final(t))
            else:
                events += self._begin(t)
        elif window > 0 and t - r.t_prompt > window and not (face and a.in_progress(obs)):
            return self._fail(r, t, "timeout", "challenge_timeout", events)
        elif t - r.t_start > self.cfg.challenge_timeout_s:
            return self._fail(r, t, "timeout", "challenge_timeout", events)
        return events
