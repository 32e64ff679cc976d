"""Continuity rules: what must hold on every frame of a capture, or the session ends at once.

A rule is a small object that LivenessCheck calls for every frame (`on_frame`) and once at the
decision (`at_decision`). Either returns a verdict reason code (device/verdict.py REASONS) or None.
`on_frame` runs after the check has booked the frame (check.t0, check.face_seen, check.last_face_t,
check.faces_max, check.pad_scores, check.good_frames are up to date; `in_view` says whether this
frame holds exactly one tracked face). A reason from `on_frame` ends the capture with that reason
only (as the counter does: "one face only", "face lost"); a reason from `at_decision` is added to
the liveness decision's reasons.

Adding a rule: subclass ContinuityRule in this file (or your own module), give it a `reason`, and
add an instance to `default_rules()` (or pass `rules=` to LivenessCheck). Rules run in list order;
the first reason wins. A new reason code also goes into device/verdict.py REASONS.
"""
from __future__ import annotations


class ContinuityRule:
    reason: str = ""

    def reset(self) -> None:
        """A new capture starts (rules are reused only through LivenessCheck, which resets them)."""

    def on_frame(self, check, obs, in_view: bool) -> str | None:
        return None

    def at_decision(self, check) -> str | None:
        return None


class OneFace(ContinuityRule):
    """More than one face in view (faces counted by the tracker). The check tells the customer at once
    (a `hint` event, prompt `one_face_only`) and pauses: no challenge progress, no PAD, no match frame
    while the extra face is there (LivenessCheck.feed). If it is still there after
    liveness.multiple_faces_grace_s, the session ends `multiple_faces` (grace 0: at the first such
    frame). After a crowded spell the capture needs a match frame taken after it (so the session's
    start/end identity check compares the person before with the person after); without one the
    decision fails `multiple_faces` (LivenessCheck.decide), as it does when the capture ends crowded."""
    reason = "multiple_faces"

    def on_frame(self, check, obs, in_view):
        since = check.crowded_since
        if since is not None and obs.t - since >= float(getattr(check.cfg, "multiple_faces_grace_s", 0.0)):
            return self.reason
        return None


class FaceLost(ContinuityRule):
    """Once a face was seen, no face for longer than liveness.face_lost_s ends the session."""
    reason = "face_lost"

    def on_frame(self, check, obs, in_view):
        if not in_view and check.face_seen and obs.t - check.last_face_t > check.cfg.face_lost_s:
            check.face_lost = True
            return self.reason
        return None


class FaceWait(ContinuityRule):
    """No face at all within session.face_wait_s of the first frame ends the session."""
    reason = "no_face"

    def on_frame(self, check, obs, in_view):
        if not in_view and not check.face_seen and obs.t - check.t0 > check.face_wait_s:
            return self.reason
        return None


def default_rules() -> list[ContinuityRule]:
    from device.liveness.flatness import FlatFaceRule   # 3-D consistency during the turn (issue 12)
    return [OneFace(), FaceLost(), FaceWait(), FlatFaceRule()]
