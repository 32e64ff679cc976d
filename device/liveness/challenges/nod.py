"""nod: after a near-frontal pitch sample, the pitch must drop at least `nod_pitch_deg` (default
turn_yaw_deg * 0.8) below the frontal reference and come back within half of it."""
from __future__ import annotations

from device.liveness.challenges._base import Challenge, register


@register
class Nod(Challenge):
    name = "nod"
    kind = "nod"

    def begin(self, t: float) -> None:
        super().begin(t)
        self._pitch_ref = None
        self._down = False

    def check(self, obs) -> bool:
        if self._pitch_ref is None:
            if abs(obs.yaw) < self.cfg.turn_yaw_deg / 2:
                self._pitch_ref = obs.pitch
            return False
        d = self._pitch_ref - obs.pitch
        lim = self.runner.nod_pitch_deg
        if d >= lim:
            self._down = True
        return self._down and d <= lim / 2
