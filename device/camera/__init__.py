"""Camera frame sources behind one contract (see device/camera/base.py and docs/camera.md).

    with open_source(cfg.camera) as src:       # started; raises CameraError('camera_unavailable')
        f = src.read(timeout=1.0)               # Frame | None; raises CameraError('camera_lost')
        src.health, src.status_text, src.progress, src.dropped
"""
from __future__ import annotations

import glob
import logging
import re

from device.camera.base import Frame, FrameSource, HEALTH_STATES
from device.errors import CameraError

log = logging.getLogger("kyc_edge.camera")

__all__ = ["Frame", "FrameSource", "HEALTH_STATES", "open_source", "make_source", "video_devices"]

#: where auto mode looks for V4L2 nodes (a module attribute so tests can point it elsewhere)
VIDEO_DEVICE_GLOB = "/dev/video*"


def video_devices() -> list[str]:
    """/dev/videoN nodes, numerically sorted."""
    def key(p: str):
        m = re.search(r"(\d+)$", p)
        return (int(m.group(1)) if m else 1 << 30, p)
    return sorted(glob.glob(VIDEO_DEVICE_GLOB), key=key)


def make_source(cfg, backend: str | None = None, **kw) -> FrameSource:
    """An unopened source for an explicit backend ('picamera2' | 'v4l2' | 'replay')."""
    backend = backend or cfg.backend
    if backend == "replay":
        from device.camera.replay import ReplaySource
        return ReplaySource(cfg, **kw)
    if backend == "v4l2":
        from device.camera.v4l2 import V4L2Source
        return V4L2Source(cfg, **kw)
    if backend == "picamera2":
        from device.camera.picamera2 import Picamera2Source
        return Picamera2Source(cfg, **kw)
    raise CameraError("camera_unavailable", f"unknown camera backend {backend!r}")


def open_source(cfg) -> FrameSource:
    """Open (and start) the configured source; ``cfg`` is the ``CameraConfig`` section.

    'auto': picamera2 if importable and a camera is present, else the first /dev/video* that opens
    and delivers a frame, else ``CameraError('camera_unavailable')`` naming everything tried.
    The returned source is already open; ``with open_source(cfg) as src:`` closes it at the end.
    """
    if cfg.backend != "auto":
        return make_source(cfg).open()
    tried: list[str] = []
    from device.camera import picamera2 as pc2
    why = pc2.probe()
    if why is None:
        src = make_source(cfg, "picamera2")
        try:
            return src.open()
        except CameraError as e:
            tried.append(f"picamera2 ({(e.detail or e.reason).split(': ', 1)[-1]})")
    else:
        tried.append(f"picamera2 ({why})")
    from device.camera.v4l2 import V4L2Source
    devs = video_devices()
    if not devs:
        tried.append(f"v4l2 (no {VIDEO_DEVICE_GLOB})")
    for dev in devs:
        src = V4L2Source(cfg, device=dev)
        try:
            src.open()
        except CameraError as e:
            tried.append(f"{dev} ({(e.detail or e.reason).split(': ', 1)[-1]})")
            continue
        if src.wait_first_frame(timeout=max(1.0, min(cfg.stall_s, 3.0))):
            log.info("camera auto: using %s", dev)
            return src
        src.close()
        tried.append(f"{dev} (opened, no frame)")
    raise CameraError("camera_unavailable", "no camera found; tried: " + "; ".join(tried))
