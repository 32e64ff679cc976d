"""picamera2 backend: a Raspberry Pi CSI camera through libcamera (implementation:
device/camera/picamera2.py; picamera2 comes from apt, python3-picamera2)."""
from __future__ import annotations

from dataclasses import dataclass

from device.options import opt

KEY = "picamera2"
DOC = "picamera2 backend."
ORDER = 30
AUTO = 10            # `auto` tries a CSI camera first


@dataclass(frozen=True)
class Options:
    format: str = opt("RGB888", "Main stream format.", choices=("RGB888", "YUV420"))
    autofocus: bool = opt(True, "Continuous autofocus where the sensor supports it.")
    exposure_us: int = opt(0, "Fixed exposure time in microseconds (0 = auto).", lo=0, hi=1_000_000)


def probe() -> str | None:
    from device.camera import picamera2 as impl
    return impl.probe()


def create(cfg, **kw):
    from device.camera.picamera2 import Picamera2Source
    return Picamera2Source(cfg, **kw)


def auto_open(cfg, tried: list[str]):
    from device.errors import CameraError
    why = probe()
    if why is not None:
        tried.append(f"picamera2 ({why})")
        return None
    src = create(cfg)
    try:
        return src.open()
    except CameraError as e:
        tried.append(f"picamera2 ({(e.detail or e.reason).split(': ', 1)[-1]})")
        return None
