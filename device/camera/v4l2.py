"""V4L2 (USB webcam, /dev/videoN) or GStreamer (Jetson CSI) source through OpenCV's VideoCapture.

USB cameras: ``cfg.v4l2.device`` (a /dev/videoN node or a stable /dev/v4l/by-id/... link, resolved
to the index N at every (re)open because OpenCV's V4L2 backend does not open by path), the
FOURCC (MJPG: most USB webcams only reach 720p30 in MJPG) is set before the size and rate, and the
driver queue is shrunk to one buffer so a slow consumer sees fresh frames.

Jetson CSI: ``cfg.v4l2.pipeline`` is a GStreamer pipeline ending in ``appsink`` (see
docs/camera.md). pip's opencv-python(-headless) is built WITHOUT GStreamer; on a Jetson use
JetPack's OpenCV (python3-opencv from apt in a --system-site-packages venv). This is checked at open.
"""
from __future__ import annotations

import logging
import os
import re
import time

import cv2

from device.camera.base import FrameSource, to_rgb
from device.errors import CameraError

log = logging.getLogger("kyc_edge.camera")

READ_TIMEOUT_MS = 1000  # CAP_PROP_READ_TIMEOUT_MSEC: honoured by the FFmpeg/GStreamer backends

# OpenCV's V4L2 backend ignores CAP_PROP_READ_TIMEOUT_MSEC and waits in select() for
# OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT seconds (default 10) per frame of a stalled camera; it reads
# the variable once, at the first V4L2 capture, so setting it at import is early enough. 1 s keeps
# the recovery loop (and the `progress` heartbeat) moving. An operator's own value wins.
os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", "1")


def cv_target(device: str):
    """What to hand cv2.VideoCapture with CAP_V4L2: the index N of /dev/videoN.

    OpenCV's V4L2 backend refuses device paths ("can't be used to capture by name"), so the path
    is resolved first: a stable /dev/v4l/by-id/... link is followed at every (re)open, and a
    camera that comes back on another /dev/videoN after a replug is found again.
    """
    real = os.path.realpath(device)
    m = re.fullmatch(r"video(\d+)", os.path.basename(real))
    return int(m.group(1)) if m else device


def gstreamer_available() -> bool:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.upper()
    return False


def _fourcc_str(v: float) -> str:
    i = int(v)
    return "".join(chr((i >> (8 * k)) & 0xFF) for k in range(4)) if i > 0 else ""


class V4L2Source(FrameSource):
    name = "v4l2"

    def __init__(self, cfg, *, device: str | None = None, **kw):
        super().__init__(cfg, **kw)
        self.vc = cfg.v4l2
        self.device = device or self.vc.device
        self.pipeline = "" if device else self.vc.pipeline
        self._cap = None
        self.actual: dict = {}

    def describe(self) -> str:
        return "v4l2 gstreamer pipeline" if self.pipeline else f"v4l2 {self.device}"

    def _open_device(self) -> None:
        if self.pipeline:
            if not gstreamer_available():
                raise CameraError("camera_unavailable",
                                  "this OpenCV has no GStreamer support (pip opencv never has); "
                                  "on a Jetson use JetPack's OpenCV (apt python3-opencv, venv with --system-site-packages)")
            cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(cv_target(self.device), cv2.CAP_V4L2)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise CameraError("camera_unavailable", "cannot open (no such device, busy, or no permission: video group?)")
        if not self.pipeline:
            fcc = (self.vc.fourcc or "").strip()
            if fcc:
                if len(fcc) != 4:
                    cap.release()
                    raise CameraError("camera_unavailable", f"v4l2.fourcc {fcc!r}: expected 4 characters")
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fcc))  # before size: it limits sizes
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
            cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        prop = getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None)
        if prop is not None:
            cap.set(prop, READ_TIMEOUT_MS)
        self.actual = {
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
            "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            "fourcc": _fourcc_str(cap.get(cv2.CAP_PROP_FOURCC) or 0),
        }
        if not self.pipeline and (self.actual["width"], self.actual["height"]) != (self.cfg.width, self.cfg.height):
            log.warning("camera %s: asked %dx%d, driver gives %dx%d", self.describe(), self.cfg.width,
                        self.cfg.height, self.actual["width"], self.actual["height"])
        self._cap = cap

    def _grab(self):
        ok, img = self._cap.read()
        t = self._clock()  # capture time, before the colour conversion
        if not ok or img is None:
            time.sleep(0.02)  # an unplugged camera fails at once: do not spin
            return None
        return to_rgb(img, "bgr"), t

    def _close_device(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def wait_first_frame(self, timeout: float) -> bool:
        """True once the capture thread delivered a frame (auto mode's 'working device' test)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.captured > 0:
                return True
            time.sleep(0.01)
        return self.captured > 0
