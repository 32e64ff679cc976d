"""The challenge registry: one file per challenge in this folder registers one class here.

A challenge sees the observations of the frames after it was asked (only frames with landmarks) and
says when it is done. Adding one: write `<name>.py` here with a `@register` subclass of `Challenge`
whose `name` is the file name (device/challenge_names.py lists the files; tests check both agree).
"""
from __future__ import annotations

REGISTRY: dict[str, type["Challenge"]] = {}


class Challenge:
    name: str = ""
    kind: str = ""      # "blink" | "turn" | "nod" | ...: the draw pairs one blink with one turn

    def __init__(self, cfg, runner):
        """cfg: device.config.LivenessConfig; runner: the ChallengeRunner (its tuning: turn_hold_s,
        max_frame_gap_s, nod_pitch_deg)."""
        self.cfg, self.runner = cfg, runner
        self.t_start = 0.0

    def begin(self, t: float) -> None:
        """The challenge is asked now (state of an earlier attempt is dropped)."""
        self.t_start = t
        self.onset: float | None = None    # when the response that passed began (the timing rule)

    def in_progress(self, obs) -> bool:
        """A response may be under way on this frame (begun, not completed): the runner's response
        window does not end the challenge while it is."""
        return False

    def early(self, obs) -> bool:
        """On the prompt frame: is a response already under way (begun before the prompt)?"""
        return False

    def completes_early_response(self, obs) -> bool:
        """After early() said yes: does this frame complete that response without a fresh start?"""
        return False

    def check(self, obs) -> bool:
        """One frame with landmarks (device.vision.tracking.Observation) -> passed on this frame."""
        raise NotImplementedError


def register(cls: type[Challenge]) -> type[Challenge]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"challenge name {cls.name!r} empty or registered twice")
    REGISTRY[cls.name] = cls
    return cls
