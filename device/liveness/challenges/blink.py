"""blink: a blink (closing then reopening within blink_min_s..blink_max_s, see device.vision.blink)
whose closing started after the challenge was asked. Onset: the closing's start. A blink begun
before the prompt is ignored, never failed (people blink every few seconds)."""
from __future__ import annotations

from device.liveness.challenges._base import Challenge, register


@register
class Blink(Challenge):
    name = "blink"
    kind = "blink"

    def check(self, obs) -> bool:
        b = getattr(obs, "blink", None)
        ok = b is not None and b.t_start >= self.t_start
        if ok:
            self.onset = b.t_start        # the closing's start (the runner's timing rule)
        return ok

    def in_progress(self, obs) -> bool:
        return bool(getattr(obs, "eyes_closed", False))
