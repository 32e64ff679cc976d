"""Replay backend: a video file, a folder of images or one image, paced like a camera
(implementation: device/camera/replay.py)."""
from __future__ import annotations

from dataclasses import dataclass

from device.options import opt

KEY = "replay"
DOC = "Replay backend."
ORDER = 10
AUTO = None          # never picked by `auto`: it needs a path


@dataclass(frozen=True)
class Options:
    path: str = opt("", "Video file or folder of images to replay.")
    pace: str = opt("realtime", "`realtime` paces frames at their timestamps; `fast` as fast as consumed.",
                    choices=("realtime", "fast"))
    loop: bool = opt(True, "Start again at the end.")
    fps: float = opt(0.0, "Pace for image folders and single images (0 = a frames.csv beside the images, else 15 fps); videos keep their own timestamps.", lo=0, hi=240)
    start_s: float = opt(0.0, "Begin the first pass at this media time (videos and folders; the frames before it are decoded and dropped, later loop passes start at 0); `Frame.t` keeps the media time.", lo=0, hi=86400)
    faults: str = opt("", "Fault script for tests and demos: `kind@at_s[:arg]`, comma-separated, kind `stall` (arg seconds), `disconnect` (seconds) or `drop` (frames); at_s counts from open.")


def probe() -> str | None:
    return None


def create(cfg, **kw):
    from device.camera.replay import ReplaySource
    return ReplaySource(cfg, **kw)
