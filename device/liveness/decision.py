"""One liveness decision per session, from active (challenges) and passive (PAD) evidence.

    decide(runner, pad_scores, faces_seen_max, face_lost, identity_similarity, cfg) -> LivenessDecision

Rules (all must hold for ok=True; every failing rule adds its reason code, in this order):
- challenge_timeout: the runner did not pass every drawn challenge (also when it has not finished);
  response_too_early instead when the runner failed on the timing rule (a turn begun before its prompt);
- spoof_suspected:   PAD enabled and the fused passive score < cfg.pad_threshold, or no frame was
                     scored at all (no near-frontal frame: no passive evidence is not a pass);
- multiple_faces:    faces_seen_max > 1 (LivenessCheck passes 2 when a second face was in view at the
                     end, or no match frame followed it: device/liveness/rules.py OneFace);
- face_lost:         the face was out of view longer than cfg.face_lost_s (the caller decides; the
                     tracker's `max_gap_s` is what the session code compares);
- identity_changed:  start/end embedding similarity < cfg.identity_threshold (None = not checked).

Fusion of the passive scores: `fuse_pad` is the mean of the lower half of the per-frame real
probabilities (a robust "how real does the face look on its worst half of frames"): a print that
fools the model on some frames but not on others is caught, and one good frame cannot outvote many
bad ones. The active challenges are needed as well because open-source MiniFASNet passes some photos
(minivision issues #62, #119): a photo that fools PAD still has to blink on request and turn its head
the requested way, in the requested order, within the timeouts.

Scores: spoof_score = 1 - fused PAD score (0 when PAD is off); liveness_score = min(fraction of
challenges passed, fused PAD score). Numbers only, never frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REASONS = ("challenge_timeout", "spoof_suspected", "multiple_faces", "face_lost", "identity_changed")


@dataclass
class LivenessDecision:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    liveness_score: float = 0.0
    spoof_score: float = 1.0
    pad_fused: float | None = None
    challenges_passed: int = 0
    challenges_total: int = 0


def fuse_pad(scores) -> float | None:
    s = np.sort(np.asarray([v for v in scores if v is not None], float))
    if s.size == 0:
        return None
    k = max(1, int(np.ceil(s.size / 2)))
    return float(s[:k].mean())


def decide(runner, pad_scores, faces_seen_max: int, face_lost: bool,
           identity_similarity: float | None, cfg) -> LivenessDecision:
    reasons: list[str] = []
    total = len(runner.sequence)
    passed = runner.passed_count
    if not runner.passed:
        reasons.append(getattr(runner, "failed_reason", None) or "challenge_timeout")
    fused = fuse_pad(pad_scores)
    if cfg.pad_enabled and (fused is None or fused < cfg.pad_threshold):
        reasons.append("spoof_suspected")
    if faces_seen_max > 1:
        reasons.append("multiple_faces")
    if face_lost:
        reasons.append("face_lost")
    if identity_similarity is not None and identity_similarity < cfg.identity_threshold:
        reasons.append("identity_changed")
    active = passed / total if total else 1.0
    passive = fused if (cfg.pad_enabled and fused is not None) else (1.0 if not cfg.pad_enabled else 0.0)
    return LivenessDecision(
        ok=not reasons, reasons=reasons,
        liveness_score=round(float(min(active, passive)), 4),
        spoof_score=round(float(1.0 - fused), 4) if (cfg.pad_enabled and fused is not None) else (1.0 if cfg.pad_enabled else 0.0),
        pad_fused=None if fused is None else round(fused, 4),
        challenges_passed=passed, challenges_total=total)
