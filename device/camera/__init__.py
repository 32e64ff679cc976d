"""Camera frame sources behind one contract (see device/camera/base.py and docs/camera.md).

    with open_source(cfg.camera) as src:       # started; raises CameraError('camera_unavailable')
        f = src.read(timeout=1.0)               # Frame | None; raises CameraError('camera_lost')
        src.health, src.status_text, src.progress, src.dropped
"""
from __future__ import annotations

import glob
import logging
import re

from device.errors import CameraError

log = logging.getLogger("kyc_edge.camera")

__all__ = ["Frame", "FrameSource", "HEALTH_STATES", "open_source", "make_source", "video_devices"]

#: where auto mode looks for V4L2 nodes (a module attribute so tests can point it elsewhere)
VIDEO_DEVICE_GLOB = "/dev/video*"


def __getattr__(name: str):
    # Frame / FrameSource / HEALTH_STATES load device.camera.base (numpy) only when asked for: the
    # backends' declarations (device/camera/backends/) are imported by device/config.py.
    if name in ("Frame", "FrameSource", "HEALTH_STATES"):
        from device.camera import base
        return getattr(base, name)
    raise AttributeError(name)


def video_devices() -> list[str]:
    """/dev/videoN nodes, numerically sorted."""
    def key(p: str):
        m = re.search(r"(\d+)$", p)
        return (int(m.group(1)) if m else 1 << 30, p)
    return sorted(glob.glob(VIDEO_DEVICE_GLOB), key=key)


def make_source(cfg, backend: str | None = None, **kw):
    """An unopened source for an explicit backend (a KEY of device/camera/backends/)."""
    from device.camera import backends
    backend = backend or cfg.backend
    mod = backends.backends().get(backend)
    if mod is None:
        raise CameraError("camera_unavailable", f"unknown camera backend {backend!r}")
    return mod.create(cfg, **kw)


def _auto_open(mod, cfg, tried: list[str]):
    if hasattr(mod, "auto_open"):
        return mod.auto_open(cfg, tried)
    why = mod.probe()
    if why is not None:
        tried.append(f"{mod.KEY} ({why})")
        return None
    try:
        return mod.create(cfg).open()
    except CameraError as e:
        tried.append(f"{mod.KEY} ({(e.detail or e.reason).split(': ', 1)[-1]})")
        return None


def open_source(cfg):
    """Open (and start) the configured source; ``cfg`` is the ``CameraConfig`` section.

    'auto': each backend that declares an AUTO priority, in that order (picamera2 if importable and
    a camera is present, then the first /dev/video* that opens and delivers a frame), else
    ``CameraError('camera_unavailable')`` naming everything tried.
    The returned source is already open; ``with open_source(cfg) as src:`` closes it at the end.
    """
    if cfg.backend != "auto":
        return make_source(cfg).open()
    from device.camera import backends
    tried: list[str] = []
    for mod in backends.auto_order():
        src = _auto_open(mod, cfg, tried)
        if src is not None:
            return src
    raise CameraError("camera_unavailable", "no camera found; tried: " + "; ".join(tried))
