"""Randomised active-liveness challenges: blink, turn_left, turn_right, nod.

    runner = ChallengeRunner(cfg.liveness, rng=random.SystemRandom())
    runner.start(t)                 # draws the sequence; the first challenge starts now
    runner.current -> str | None    # prompt name of the challenge being asked, None when done/failed
    events = runner.update(obs)     # obs: device.liveness.tracking.Observation (t, has_face, yaw,
                                    # pitch, blink); list of non-biometric session events
    runner.done, runner.passed, runner.failed_reason ("challenge_timeout" or None), runner.results

Draw: `cfg.count` distinct challenges from `cfg.challenges`, in random order. When the pool holds
both `blink` and at least one turn and count >= 2, the draw always includes one blink and one turn
(the counter rule "turn your head and blink"; a flat photo can be tilted to fake a turn but cannot
blink, a closed-eye photo cannot turn and blink). Turn direction and order stay random.

Each challenge has its own timeout (cfg.challenge_timeout_s) from the moment it is asked; they run
in order; an action done before its challenge was asked does not count:
- blink: a blink (closing then reopening within blink_min_s..blink_max_s, see liveness.blink) whose
  closing started after the challenge was asked;
- turn_left / turn_right: after the challenge is asked, the smoothed yaw must first be seen near
  frontal (|yaw| < turn_yaw_deg / 2, so an already-turned head does not pass at once) and then reach
  +turn_yaw_deg (turn_left: subject's own left) or -turn_yaw_deg (turn_right) and hold it for
  `turn_hold_s` (0.2 s) on frames no more than `max_frame_gap_s` (0.25 s) apart: a one-frame pose
  glitch (a bent photo, a landmark jump at a low frame rate) is not a turn;
- nod: after a near-frontal pitch sample, the pitch must drop at least `nod_pitch_deg` (default
  turn_yaw_deg * 0.8) below the frontal reference and come back within half of it.

Timing rule (replay resistance; cfg.prompt_pause_min_s..max_s, response_window_s,
response_min_latency_s). Before each prompt the runner waits a random pause drawn uniformly from
[prompt_pause_min_s, prompt_pause_max_s] with its rng (SystemRandom on the device): no prompt is
shown and nothing counts. Then the prompt is shown ("started" event) and:
- the response must BEGIN within `response_window_s` of the prompt, else the challenge fails with
  `challenge_timeout` (it must still complete within challenge_timeout_s). Onset: a blink's closing
  start; a turn's last near-frontal sample before it reaches the threshold;
- a turn must not begin before the prompt: if at the prompt (or within response_min_latency_s of
  it, faster than a person reacts) the head is already moving out of the frontal zone towards the
  requested side and then reaches the threshold without first coming back to frontal, the session
  fails with `response_too_early`. A blink that began before the prompt is ignored (not failed):
  people blink every few seconds, so failing them would turn real customers away.
A recorded video plays its blinks and turns at the times it was recorded; with the prompt times
random, it must happen to start the requested action inside a few-second window after each
prompt, in the requested direction and order.

Events: {"event": "challenge", "challenge": name, "state": "started"|"passed"|"timeout",
"index": i, "of": n, "t": seconds since start}; and {"event": "liveness", "state": "passed"|"failed"}
once at the end.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

TURNS = ("turn_left", "turn_right")
ALL = ("blink", "turn_left", "turn_right", "nod")


@dataclass
class ChallengeResult:
    name: str
    t_start: float
    t_end: float | None = None
    state: str = "pending"      # pending | waiting (pause before the prompt) | active | passed | timeout | too_early
    t_prompt: float | None = None   # when the prompt was shown (after the random pause)
    t_onset: float | None = None    # when the response began


def draw(pool, count: int, rng) -> list[str]:
    pool = list(dict.fromkeys(c for c in pool if c in ALL))
    count = min(count, len(pool))
    if count <= 0:
        return []
    turns = [c for c in pool if c in TURNS]
    if count >= 2 and "blink" in pool and turns:
        seq = ["blink", rng.choice(turns)]
        rest = [c for c in pool if c not in seq]
        rng.shuffle(rest)
        seq += rest[: count - 2]
        rng.shuffle(seq)
        return seq
    seq = list(pool)
    rng.shuffle(seq)
    return seq[:count]


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
        self.done = False
        self.failed_reason: str | None = None
        self._prompt_at: float | None = None

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
    def passed(self) -> bool:
        return self.done and self.failed_reason is None

    @property
    def passed_count(self) -> int:
        return sum(1 for r in self.results if r.state == "passed")

    def start(self, t: float) -> list[dict]:
        self.sequence = list(self._forced) if self._forced is not None else draw(self.cfg.challenges, self.cfg.count, self.rng)
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
        """Start the pause before challenge i; the prompt follows when it ends (now if no pause)."""
        r = self.results[self._i]
        self._prompt_at = t + self._pause()
        r.state = "waiting"
        self._yaw_at_prompt = None
        if self._prompt_at <= t:
            return [self._prompt(t)]
        return []

    def _prompt(self, t: float) -> dict:
        r = self.results[self._i]
        r.t_start, r.state, r.t_prompt = t, "active", t
        self._neutral_seen = False
        self._beyond_since = None
        self._t_last = None
        self._pitch_ref = None
        self._nod_down = False
        self._early = None          # turn: head already leaving frontal towards the side at the prompt
        self._last_neutral_t = None
        return self._event(r, t, "started")

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
        if r.name in TURNS and getattr(obs, "landmarks", None) is not None:
            sign = 1.0 if r.name == "turn_left" else -1.0
            thr = self.cfg.turn_yaw_deg
            lat = float(getattr(self.cfg, "response_min_latency_s", 0.0))
            if self._early is None:
                # the first face frame of the prompt (a person cannot have reacted yet): is the head
                # already on its way out of frontal towards the requested side (not yet there)?
                self._early = (t - r.t_prompt <= lat + 1e-9) and thr / 2 <= sign * obs.yaw < thr
            elif self._early and self._last_neutral_t is None and sign * obs.yaw >= thr:
                r.state, r.t_end = "too_early", t
                events.append(self._event(r, t, "too_early"))
                self.done = True
                self.failed_reason = "response_too_early"
                events.append(self._final(t))
                return events
        passed = self._check(r, obs)
        window = float(getattr(self.cfg, "response_window_s", 0.0))
        if (not passed and window > 0 and r.t_onset is None and t - r.t_prompt > window
                and not self._onset_in_progress(r, obs)):
            r.state, r.t_end = "timeout", t
            events.append(self._event(r, t, "timeout"))
            self.done = True
            self.failed_reason = "challenge_timeout"
            events.append(self._final(t))
            return events
        if passed:
            r.state, r.t_end = "passed", t
            events.append(self._event(r, t, "passed"))
            self._i += 1
            if self._i >= len(self.sequence):
                self.done = True
                events.append(self._final(t))
            else:
                events += self._begin(t)
        elif t - r.t_start > self.cfg.challenge_timeout_s:
            r.state, r.t_end = "timeout", t
            events.append(self._event(r, t, "timeout"))
            self.done = True
            self.failed_reason = "challenge_timeout"
            events.append(self._final(t))
        return events

    @property
    def _neutral_seen_since_prompt(self) -> bool:
        return self._last_neutral_t is not None

    def _onset_in_progress(self, r: ChallengeResult, obs) -> bool:
        """The response may have begun inside the window and not completed yet (eyes closing now,
        head on its way out of frontal): do not fail it on the window."""
        if r.name == "blink":
            return bool(getattr(obs, "eyes_closed", False))
        if r.name in TURNS:
            sign = 1.0 if r.name == "turn_left" else -1.0
            return self._neutral_seen and sign * obs.yaw >= self.cfg.turn_yaw_deg / 2
        return False

    def _check(self, r: ChallengeResult, obs) -> bool:
        if getattr(obs, "landmarks", None) is None:
            return False
        name = r.name
        window = float(getattr(self.cfg, "response_window_s", 0.0))
        if name == "blink":
            b = getattr(obs, "blink", None)
            ok = b is not None and b.t_start >= r.t_start
            if ok and window > 0 and b.t_start > r.t_prompt + window:
                return False            # began after the window: does not count
            if ok:
                r.t_onset = b.t_start
            return ok
        thr = self.cfg.turn_yaw_deg
        if name in TURNS:
            sign = 1.0 if name == "turn_left" else -1.0
            gap_ok = self._t_last is None or obs.t - self._t_last <= self.max_frame_gap_s
            self._t_last = obs.t
            if abs(obs.yaw) < thr / 2:
                self._neutral_seen = True
                self._last_neutral_t = obs.t
                self._beyond_since = None
                return False
            if not (self._neutral_seen and sign * obs.yaw >= thr) or not gap_ok:
                self._beyond_since = None
                if self._neutral_seen and sign * obs.yaw >= thr:
                    self._beyond_since = obs.t      # restart the hold after a frame gap
                return False
            if self._beyond_since is None:
                self._beyond_since = obs.t
            ok = obs.t - self._beyond_since >= self.turn_hold_s
            if ok:
                onset = self._last_neutral_t if self._last_neutral_t is not None else r.t_prompt
                if window > 0 and onset > r.t_prompt + window:
                    return False        # left frontal only after the window
                r.t_onset = onset
            return ok
        if name == "nod":
            if self._pitch_ref is None:
                if abs(obs.yaw) < thr / 2:
                    self._pitch_ref = obs.pitch
                return False
            d = self._pitch_ref - obs.pitch
            if d >= self.nod_pitch_deg:
                self._nod_down = True
            return self._nod_down and d <= self.nod_pitch_deg / 2
        return False
