"""blink: a blink (closing then reopening within blink_min_s..blink_max_s, see device.vision.blink)
whose closing started after the challenge was asked."""
from __future__ import annotations

from device.liveness.challenges._base import Challenge, register


@register
class Blink(Challenge):
    name = "blink"
    kind = "blink"

    def check(self, obs) -> bool:
        b = getattr(obs, "blink", None)
        return b is not None and b.t_start >= self.t_start
