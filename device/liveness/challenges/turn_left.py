"""turn_left: the subject turns to their own left (yaw > 0); rules in _turn.py."""
from __future__ import annotations

from device.liveness.challenges._base import register
from device.liveness.challenges._turn import Turn


@register
class TurnLeft(Turn):
    name = "turn_left"
    sign = 1.0
