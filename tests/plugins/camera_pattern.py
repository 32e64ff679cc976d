"""A whole camera backend in one file: a flat grey test pattern at camera.fps.

Nothing else is edited to add it: device/config.py grows [camera.pattern] and the `pattern` choice
of camera.backend, and device.camera.open_source() opens it, once this module is discovered
(here through $KYC_EDGE_PLUGINS; in a package, through the entry point group kyc_edge.camera_backends
or as a module in device/camera/backends/).
"""
from __future__ import annotations

from dataclasses import dataclass

from device.options import opt

KEY = "pattern"
DOC = "Test pattern backend (tests/plugins/camera_pattern.py)."
ORDER = 90
AUTO = 90            # `auto` tries it after every real camera


@dataclass(frozen=True)
class Options:
    level: int = opt(128, "Grey level of every pixel.", lo=0, hi=255)


def probe() -> str | None:
    return None


def create(cfg, **kw):
    import numpy as np

    from device.camera.base import FrameSource

    class PatternSource(FrameSource):
        name = "pattern"

        def _open_device(self) -> None:
            self._img = np.full((cfg.height, cfg.width, 3), cfg.pattern.level, np.uint8)

        def _grab(self):
            self._stop.wait(1.0 / cfg.fps)
            return self._img.copy(), self._clock()

        def _close_device(self) -> None:
            pass

    return PatternSource(cfg, **kw)
