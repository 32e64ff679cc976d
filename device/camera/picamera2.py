"""Raspberry Pi CSI camera through picamera2/libcamera (imported lazily: only on a Pi, from apt).

Main stream ``RGB888`` or ``YUV420`` at cfg.width x cfg.height, frame rate fixed with
FrameDurationLimits. libcamera's ``RGB888`` is stored B,G,R per pixel (little-endian naming), so it
is swapped to RGB here; ``YUV420`` (I420, cheaper on the ISP/memory bus) is converted with OpenCV.
Continuous autofocus (``AfMode``) and a fixed exposure (``AeEnable``/``ExposureTime``) are set only
when the sensor lists those controls in ``camera_controls``.
"""
from __future__ import annotations

import logging

import numpy as np

from device.camera.base import FrameSource, to_rgb
from device.errors import CameraError

log = logging.getLogger("kyc_edge.camera")

AF_MODE_CONTINUOUS = 2   # libcamera controls.AfModeEnum.Continuous
CAPTURE_WAIT_S = 0.5     # bound on one capture wait (keeps the recovery loop and `progress` alive)


def _import():
    try:
        from picamera2 import Picamera2  # noqa: PLC0415
    except ImportError as e:
        raise CameraError("camera_unavailable",
                          f"picamera2 not importable ({e.__class__.__name__}); on a Pi: apt install python3-picamera2 "
                          "and create the venv with --system-site-packages") from None
    return Picamera2


def csi_cameras(infos) -> list[int]:
    """Indices of the CSI cameras in Picamera2.global_camera_info().

    libcamera also lists USB (UVC) webcams, e.g. on a Pi 5; those are left to the v4l2 backend
    (picamera2 gives them no RGB888/YUV420 stream). Their `Id` holds the USB path.
    """
    return [i for i, c in enumerate(infos or []) if "usb" not in str(c.get("Id", "")).lower()]


def probe() -> str | None:
    """None if picamera2 imports and lists at least one CSI camera, else why not (no PII)."""
    try:
        Picamera2 = _import()
    except CameraError:
        return "not importable"
    try:
        infos = Picamera2.global_camera_info()
    except Exception as e:  # noqa: BLE001
        return f"camera list failed: {type(e).__name__}"
    if not infos:
        return "no camera attached"
    if not csi_cameras(infos):
        return f"no CSI camera ({len(infos)} USB camera(s) left to v4l2)"
    return None


def _af_continuous():
    try:
        from libcamera import controls  # noqa: PLC0415
        return controls.AfModeEnum.Continuous
    except Exception:  # noqa: BLE001
        return AF_MODE_CONTINUOUS


def yuv420_to_rgb(buf: np.ndarray, width: int, height: int) -> np.ndarray:
    """I420 buffer (height*3/2 rows x stride) -> height x width x 3 RGB."""
    import cv2
    rows = height * 3 // 2
    if buf.ndim != 2 or buf.shape[0] < rows:
        raise CameraError("camera_unavailable", f"unexpected YUV420 buffer shape {buf.shape}")
    stride = buf.shape[1]
    if stride != width:  # padded rows: repack Y, U, V without the padding
        half = stride // 2
        qsize = (height // 2) * half
        uv = buf[height:rows].reshape(-1)
        u = uv[:qsize].reshape(height // 2, half)[:, : width // 2]
        v = uv[qsize:2 * qsize].reshape(height // 2, half)[:, : width // 2]
        buf = np.concatenate([buf[:height, :width].reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(rows, width)
    return cv2.cvtColor(np.ascontiguousarray(buf[:rows]), cv2.COLOR_YUV2RGB_I420)


class Picamera2Source(FrameSource):
    name = "picamera2"

    def __init__(self, cfg, *, camera_num: int | None = None, **kw):
        super().__init__(cfg, **kw)
        self.pc = cfg.picamera2
        self.camera_num = camera_num
        self._cam = None
        self._wait_kw = True
        self._job = None
        self.applied_controls: dict = {}

    def describe(self) -> str:
        num = "" if self.camera_num is None else self.camera_num
        return f"picamera2 cam{num} {self.pc.format}"

    def _open_device(self) -> None:
        Picamera2 = _import()
        infos = Picamera2.global_camera_info()
        if self.camera_num is None:
            csi = csi_cameras(infos)
            if not csi:
                raise CameraError("camera_unavailable", "picamera2: no CSI camera attached")
            self.camera_num = csi[0]
        elif len(infos) <= self.camera_num:
            raise CameraError("camera_unavailable", f"picamera2: no camera {self.camera_num}")
        cam = Picamera2(self.camera_num)
        try:
            frame_us = int(round(1_000_000 / self.cfg.fps))
            kw = dict(main={"size": (self.cfg.width, self.cfg.height), "format": self.pc.format},
                      controls={"FrameDurationLimits": (frame_us, frame_us)}, buffer_count=4)
            try:  # queue=False: picamera2 holds no stale frame back for us
                config = cam.create_video_configuration(queue=False, **kw)
            except TypeError:  # older picamera2
                config = cam.create_video_configuration(**kw)
            cam.configure(config)
            supported = getattr(cam, "camera_controls", {}) or {}
            ctrls: dict = {}
            if self.pc.autofocus and "AfMode" in supported:
                ctrls["AfMode"] = _af_continuous()
            if self.pc.exposure_us > 0 and "ExposureTime" in supported:
                ctrls["AeEnable"] = False
                ctrls["ExposureTime"] = int(self.pc.exposure_us)
            elif "AeEnable" in supported:
                ctrls["AeEnable"] = True
            if ctrls:
                cam.set_controls(ctrls)
            self.applied_controls = ctrls
            cam.start()
        except Exception:
            try:
                cam.close()
            finally:
                raise
        self._cam = cam

    def _capture(self):
        """Next main-stream array, waiting at most CAPTURE_WAIT_S (None on timeout).

        picamera2 >= 0.3.13: capture_array(wait=False) gives a job, Picamera2.wait(job, timeout)
        raises TimeoutError; a timed-out job stays pending and is waited on again next time.
        Older picamera2 (no such keywords): a plain blocking capture_array().
        """
        if self._wait_kw:
            try:
                if self._job is None:
                    self._job = self._cam.capture_array("main", wait=False)
                arr = self._cam.wait(self._job, timeout=CAPTURE_WAIT_S)
            except TypeError:
                self._wait_kw = False
                self._job = None
            except TimeoutError:
                return None
            else:
                self._job = None
                return arr
        return self._cam.capture_array("main")

    def _grab(self):
        arr = self._capture()
        t = self._clock()
        if arr is None:
            return None
        if self.pc.format == "YUV420":
            rgb = yuv420_to_rgb(arr, self.cfg.width, self.cfg.height)
        else:
            rgb = to_rgb(arr[:, : self.cfg.width], "bgr")  # libcamera RGB888 = B,G,R in memory
        return rgb, t

    def _close_device(self) -> None:
        cam, self._cam = self._cam, None
        self._job = None
        if cam is None:
            return
        try:
            cam.stop()
        finally:
            cam.close()
