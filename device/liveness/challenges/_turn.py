"""Shared by turn_left and turn_right: after the challenge is asked, the smoothed yaw must first be
seen near frontal (|yaw| < turn_yaw_deg / 2, so an already-turned head does not pass at once) and
then reach +turn_yaw_deg (turn_left: subject's own left) or -turn_yaw_deg (turn_right) and hold it
for `turn_hold_s` on frames no more than `max_frame_gap_s` apart: a one-frame pose glitch (a bent
photo, a landmark jump at a low frame rate) is not a turn. Onset (the runner's timing rule): the
last near-frontal sample before the head left for the requested side."""
from __future__ import annotations

from device.liveness.challenges._base import Challenge


class Turn(Challenge):
    kind = "turn"
    sign = 1.0

    def begin(self, t: float) -> None:
        super().begin(t)
        self._neutral_seen = False
        self._last_neutral_t = None
        self._beyond_since = None
        self._t_last = None

    def in_progress(self, obs) -> bool:
        return self._neutral_seen and self.sign * obs.yaw >= self.cfg.turn_yaw_deg / 2

    def early(self, obs) -> bool:
        # the head is on its way out of frontal towards the requested side, not there yet
        thr = self.cfg.turn_yaw_deg
        return thr / 2 <= self.sign * obs.yaw < thr

    def completes_early_response(self, obs) -> bool:
        return self._last_neutral_t is None and self.sign * obs.yaw >= self.cfg.turn_yaw_deg

    def check(self, obs) -> bool:
        thr = self.cfg.turn_yaw_deg
        sign = self.sign
        gap_ok = self._t_last is None or obs.t - self._t_last <= self.runner.max_frame_gap_s
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
        ok = obs.t - self._beyond_since >= self.runner.turn_hold_s
        if ok:
            # onset: the last near-frontal sample before the head left for this side
            self.onset = self._last_neutral_t if self._last_neutral_t is not None else self.t_start
        return ok
