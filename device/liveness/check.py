"""The one liveness check: observations in, a liveness decision out.

    check = LivenessCheck(cfg.liveness, face_wait_s=cfg.session.face_wait_s,
                          hold_still_s=cfg.session.hold_still_s, rng=rng, sequence=None)
    for obs in observations:                    # device.vision.tracking.Observation, in frame order
        step = check.feed(obs, good_frame=...)  # good_frame: this frame passed the quality gate
        ...emit step.events (non-biometric)...
        if step.failed: end now with that reason code
        if step.done: break
    check.finish()                              # end of input: no face at all -> "no_face"
    decision = check.decide(identity_similarity)   # device.liveness.decision.LivenessDecision

Session (daemon, `kyc-edge verify`), `kyc-edge eval sessions` and `eval liveness` all drive this
object; none of them re-implements a rule. What it owns, frame by frame:
- continuity rules (device/liveness/rules.py): one face, face lost, no face within face_wait_s;
  a broken rule ends the capture at once with its reason (`step.failed`);
- a second face: a `hint` event (`one_face_only`) when it appears and one with state `cleared` when
  it is gone; while it is there nothing counts (the challenge pauses; its deadline does not), and
  it ends the capture only when it stays past liveness.multiple_faces_grace_s (rules.OneFace);
- start on the first face: the challenges start on the first frame with one tracked face, so the
  prompt is fair;
- the challenges (device/liveness/challenges/, one file each), in order, each with its timeout;
- PAD evidence: the per-frame pad_real of every frame with one tracked face;
- 3-D consistency (device/liveness/flatness.py FlatFaceRule, one of the default rules): landmarks
  of the turn moving like a plane add `flat_face` at the decision (when only weakly flat, only beside
  a fused PAD score that leans to spoof);
- hold still: when the challenges are done but no frame has passed the quality gate yet, the
  capture goes on for session.hold_still_s (event capturing/hold_still) so one can;
- the decision (device/liveness/decision.py decide()), plus each rule's `at_decision` reason.

It holds numbers only (scores, times, counts), never pixels. Matching (card vs live face) is a
separate stage: the caller's best frames go in, a similarity comes out (VisionSuite.match); only
its start/end identity similarity comes back here, to decide().
"""
from __future__ import annotations

from dataclasses import dataclass, field

from device.liveness.challenges import ChallengeRunner
from device.liveness.decision import LivenessDecision, decide, fuse_pad
from device.liveness.rules import ContinuityRule, default_rules


@dataclass
class Step:
    """What one fed frame did: events to show (non-biometric), and whether the capture is over."""
    events: list[dict] = field(default_factory=list)
    done: bool = False
    failed: str | None = None              # a continuity rule broke: end now with this reason
    challenges_completed: bool = False     # the last challenge passed on this frame


class LivenessCheck:
    def __init__(self, cfg, *, face_wait_s: float = 5.0, hold_still_s: float = 3.0, rng=None,
                 sequence: list[str] | None = None, rules: list[ContinuityRule] | None = None):
        """cfg: device.config.LivenessConfig; face_wait_s / hold_still_s: device.config.SessionConfig's;
        sequence forces the challenges (tests, evaluation); rules replaces default_rules()."""
        self.cfg = cfg
        self.face_wait_s, self.hold_still_s = face_wait_s, hold_still_s
        self.runner = ChallengeRunner(cfg, rng=rng, sequence=sequence)
        self.rules = list(default_rules() if rules is None else rules)
        for r in self.rules:
            r.reset()
        # evidence (numbers only)
        self.frames = 0
        self.t0: float | None = None
        self.faces_max = 0
        self.face_seen = False
        self.face_lost = False
        self.last_face_t: float | None = None
        self.pad_scores: list[float] = []
        self.good_frames = 0
        self.last_good_t: float | None = None
        self.crowded_since: float | None = None    # a second face has been in view since then
        self.crowd_end_t: float | None = None      # the last crowded spell ended then
        self.crowded_spells = 0
        self.hold_until: float | None = None
        self.done = False
        self.failed_reason: str | None = None

    @property
    def started(self) -> bool:
        return self.runner.started

    def _fail(self, step: Step, reason: str) -> Step:
        self.done, self.failed_reason = True, reason
        step.done, step.failed = True, reason
        return step

    def feed(self, obs, good_frame: bool = False) -> Step:
        """One frame's observation. `good_frame`: its crop passed the quality gate (matching can use it)."""
        step = Step()
        if self.done:
            step.done, step.failed = True, self.failed_reason
            return step
        t = obs.t
        self.frames += 1
        if self.t0 is None:
            self.t0 = t
        self.faces_max = max(self.faces_max, obs.faces)
        crowded = obs.faces > 1
        if crowded and self.crowded_since is None:
            self.crowded_since = t
            self.crowded_spells += 1
            step.events.append({"event": "hint", "prompt": "one_face_only"})
        elif obs.faces == 1 and self.crowded_since is not None:     # one face seen again (a lost frame, 0, is not)
            self.crowded_since, self.crowd_end_t = None, t
            step.events.append({"event": "hint", "prompt": "one_face_only", "state": "cleared"})
        in_view = obs.faces == 1 and obs.landmarks is not None
        if in_view:
            self.face_seen, self.last_face_t = True, t
            if obs.pad_real is not None:
                self.pad_scores.append(float(obs.pad_real))
            if good_frame:
                self.good_frames += 1
                self.last_good_t = t
        elif crowded and obs.landmarks is not None and self.face_seen:
            self.last_face_t = t        # the face is still there (with another): not `face_lost`
        for rule in self.rules:
            reason = rule.on_frame(self, obs, in_view)
            if reason:
                return self._fail(step, reason)
        if crowded:                     # nothing counts while another face is in view
            return step
        if in_view and not self.runner.started:     # challenges start once a face is in view
            step.events += self.runner.start(t)
        if not self.runner.started:
            return step
        for e in self.runner.update(obs):
            step.events.append(e)
            if e.get("event") == "challenge" and e.get("state") == "passed" and self.runner.done:
                step.challenges_completed = True
        if self.runner.failed_reason or (self.runner.done and self.has_match_frame):
            self.done = step.done = True
            return step
        if not self.runner.done:
            return step
        # challenges done but no frame passed the quality gate yet (a blur during a turn, a frame
        # dropped under load): ask the customer to hold still, briefly
        if self.hold_until is None:
            self.hold_until = t + self.hold_still_s
            step.events.append({"event": "capturing", "prompt": "hold_still"})
            return step
        if t > self.hold_until:
            self.done = step.done = True
        return step

    @property
    def has_match_frame(self) -> bool:
        """A frame passed the quality gate, after the last crowded spell if there was one."""
        return self.good_frames > 0 and (self.crowd_end_t is None or
                                         (self.last_good_t is not None and self.last_good_t >= self.crowd_end_t))

    @property
    def crowd_unresolved(self) -> bool:
        """Crowded at the end, or no match frame after the last crowded spell (identity unconfirmed)."""
        return self.crowded_since is not None or (self.crowd_end_t is not None and not self.has_match_frame)

    def finish(self) -> str | None:
        """No more frames (capture ended: replay at its end, or done). Returns a reason that ends
        the session now ("no_face" when no face was ever in view), else None."""
        self.done = True
        if self.failed_reason:
            return self.failed_reason
        if not self.face_seen:
            self.failed_reason = "no_face"
        return self.failed_reason

    def decide(self, identity_similarity: float | None = None) -> LivenessDecision:
        # a second face that left within the grace, followed by a match frame, is no failure (rules.OneFace)
        d = decide(self.runner, self.pad_scores, 2 if self.crowd_unresolved else 1, self.face_lost,
                   identity_similarity, self.cfg)
        for rule in self.rules:
            reason = rule.at_decision(self)
            if reason and reason not in d.reasons:
                d.reasons.append(reason)
                d.ok = False
        return d

    def result(self, identity_similarity: float | None = None) -> LivenessDecision:
        """decide(), or -- when a continuity rule ended the capture -- a failed decision carrying only
        that reason (as the session's verdict does). For evaluations; call after finish()."""
        if self.failed_reason:
            fused = fuse_pad(self.pad_scores)
            return LivenessDecision(ok=False, reasons=[self.failed_reason], liveness_score=0.0,
                                    spoof_score=1.0, pad_fused=None if fused is None else round(fused, 4),
                                    challenges_passed=self.runner.passed_count,
                                    challenges_total=len(self.runner.sequence))
        return self.decide(identity_similarity)

    def summary(self) -> dict:
        """Numbers for evaluation reports (no pixels)."""
        return {"frames": self.frames, "faces_max": self.faces_max, "face_seen": self.face_seen,
                "pad_frames": len(self.pad_scores), "good_frames": self.good_frames,
                "crowded_spells": self.crowded_spells,
                "failed": self.failed_reason, "challenges": list(self.runner.sequence),
                "challenges_passed": self.runner.passed_count,
                "flat_face": next(({"score": r.last.score, "flat": r.last.flat, "turned_frames": r.last.pairs,
                                    "decisive": r.decisive}
                                   for r in self.rules if getattr(r, "reason", "") == "flat_face" and r.last), None)}
