"""V4L2 / GStreamer backend through OpenCV: USB webcams, or a GStreamer pipeline (Jetson CSI)
(implementation: device/camera/v4l2.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from device.options import opt

KEY = "v4l2"
DOC = "V4L2 / GStreamer backend."
ORDER = 20
AUTO = 20            # after picamera2

log = logging.getLogger("kyc_edge.camera")


@dataclass(frozen=True)
class Options:
    device: str = opt("/dev/video0", "V4L2 device node.")
    fourcc: str = opt("MJPG", "Pixel format asked of the camera (MJPG suits USB webcams).")
    pipeline: str = opt("", "GStreamer pipeline instead of a device (Jetson CSI; needs an OpenCV built with GStreamer).")


def probe() -> str | None:
    from device import camera
    return None if camera.video_devices() else f"no {camera.VIDEO_DEVICE_GLOB}"


def create(cfg, **kw):
    from device.camera.v4l2 import V4L2Source
    return V4L2Source(cfg, **kw)


def auto_open(cfg, tried: list[str]):
    """The first /dev/video* that opens and delivers a frame."""
    from device import camera
    from device.errors import CameraError
    devs = camera.video_devices()
    if not devs:
        tried.append(f"v4l2 (no {camera.VIDEO_DEVICE_GLOB})")
    for dev in devs:
        src = create(cfg, device=dev)
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
    return None
