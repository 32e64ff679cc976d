"""turn_right: the subject turns to their own right (yaw < 0); rules in _turn.py."""
from __future__ import annotations

from device.liveness.challenges._base import register
from device.liveness.challenges._turn import Turn


@register
class TurnRight(Turn):
    name = "turn_right"
    sign = -1.0
