"""picamera2 and V4L2/GStreamer backends and auto mode, with fakes only at the hardware-library
boundary: a fake `picamera2` module in sys.modules and a fake `cv2.VideoCapture`. No camera here."""
from __future__ import annotations

import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

import device.camera as camera
from device.camera import open_source
from device.camera.picamera2 import Picamera2Source, probe
from device.camera.v4l2 import V4L2Source
from device.config import CameraConfig, Picamera2CameraConfig, V4L2CameraConfig
from device.errors import CameraError

FAST = dict(stall_s=0.2, lost_s=0.6, reopen_backoff_min_s=0.05, reopen_backoff_max_s=0.2)


def scene(h, w, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 2)
    rgb[:4, :4] = (250, 20, 0)  # red corner: a BGR/RGB swap shows
    return rgb


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# ---------------------------------------------------------------- fake picamera2
class PiWorld:
    def __init__(self, cameras=1, controls=("AfMode", "AeEnable", "ExposureTime"), old_api=False, usb=0):
        self.cameras = ([{"Model": "uvcvideo", "Id": f"/base/axi/pcie@120000/rp1/usb@200000-1:1.0-046d:0825-{i}"}
                         for i in range(usb)] +
                        [{"Model": "imx708", "Id": f"/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a-{i}"}
                         for i in range(cameras)])
        self.controls = {k: (0, 1, 0) for k in controls}
        self.old_api = old_api
        self.unplugged = False
        self.frozen = False
        self.instances: list = []


def install_picamera2(monkeypatch, world: PiWorld):
    class Picamera2:
        @staticmethod
        def global_camera_info():
            return [] if world.unplugged else list(world.cameras)

        def __init__(self, camera_num=0):
            if world.unplugged or camera_num >= len(world.cameras):
                raise IndexError("list index out of range")
            self.num, self.config, self.set, self.started, self.closed = camera_num, None, {}, False, False
            self.camera_controls = dict(world.controls)
            world.instances.append(self)

        def create_video_configuration(self, main=None, controls=None, buffer_count=6, **kw):
            if world.old_api and "queue" in kw:
                raise TypeError("unexpected keyword argument 'queue'")
            return {"main": dict(main), "controls": dict(controls or {}), "buffer_count": buffer_count, **kw}

        def configure(self, config):
            self.config = config

        def set_controls(self, ctrls):
            self.set.update(ctrls)

        def start(self):
            self.started = True

        def capture_array(self, name="main", **kw):
            if world.old_api and kw:
                raise TypeError("unexpected keyword argument 'wait'")
            assert self.started and name == "main"
            if kw.get("wait") is False:
                return ("job", name)
            return self._frame()

        def wait(self, job, timeout=None):  # picamera2 >= 0.3.13
            assert job == ("job", "main") and timeout is not None
            if world.frozen:               # frontend stopped delivering: the wait times out
                time.sleep(min(timeout, 0.02))
                raise TimeoutError()
            return self._frame()

        def _frame(self):
            time.sleep(0.01)
            if world.unplugged:
                raise RuntimeError("Camera frontend has timed out!")
            w, h = self.config["main"]["size"]
            rgb = scene(h, w)
            if self.config["main"]["format"] == "YUV420":
                return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
            return np.ascontiguousarray(rgb[:, :, ::-1])  # libcamera RGB888: B, G, R in memory

        def stop(self):
            self.started = False

        def close(self):
            self.closed = True

    mod = types.ModuleType("picamera2")
    mod.Picamera2 = Picamera2
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    return Picamera2


def pi_cfg(**pc) -> CameraConfig:
    return CameraConfig(backend="picamera2", width=320, height=240, fps=25,
                        picamera2=Picamera2CameraConfig(**pc), **FAST)


def test_picamera2_configures_stream_and_controls_and_swaps_rgb888(monkeypatch):
    world = PiWorld()
    install_picamera2(monkeypatch, world)
    with open_source(pi_cfg()) as src:
        assert isinstance(src, Picamera2Source)
        f = src.read(1.0)
        cam = world.instances[-1]
    assert cam.config["main"] == {"size": (320, 240), "format": "RGB888"}
    assert cam.config["controls"]["FrameDurationLimits"] == (40000, 40000)
    assert cam.config.get("queue") is False
    assert cam.set == {"AfMode": 2, "AeEnable": True}
    assert f.rgb.shape == (240, 320, 3) and np.array_equal(f.rgb, scene(240, 320))
    assert tuple(f.rgb[0, 0]) == (250, 20, 0)
    assert cam.closed and not cam.started


def test_picamera2_skips_usb_webcams_listed_by_libcamera(monkeypatch):
    world = PiWorld(cameras=1, usb=1)      # e.g. a Pi 5 with a CSI camera and a USB webcam
    install_picamera2(monkeypatch, world)
    with open_source(CameraConfig(width=320, height=240, **FAST)) as src:   # auto
        assert isinstance(src, Picamera2Source) and src.read(1.0) is not None
    assert world.instances[-1].num == 1    # the CSI camera, not the UVC one at index 0


def test_picamera2_fixed_focus_sensor_and_manual_exposure(monkeypatch):
    world = PiWorld(controls=("AeEnable", "ExposureTime"))   # e.g. a fixed-focus IMX219
    install_picamera2(monkeypatch, world)
    with open_source(pi_cfg(exposure_us=8000)) as src:
        assert src.read(1.0) is not None
    assert world.instances[-1].set == {"AeEnable": False, "ExposureTime": 8000}


def test_picamera2_yuv420_and_old_library_api(monkeypatch):
    world = PiWorld(old_api=True)  # no `queue=` / `wait=` keywords
    install_picamera2(monkeypatch, world)
    with open_source(pi_cfg(format="YUV420")) as src:
        f = src.read(1.0)
    assert world.instances[-1].config["main"]["format"] == "YUV420"
    assert f.rgb.shape == (240, 320, 3)
    assert np.abs(f.rgb.astype(int) - scene(240, 320)).mean() < 5


def test_picamera2_loss_and_recovery(monkeypatch):
    world = PiWorld()
    install_picamera2(monkeypatch, world)
    with open_source(pi_cfg()) as src:
        first = src.read(1.0)
        world.unplugged = True
        assert wait_for(lambda: src.health == "lost", 2.0)
        with pytest.raises(CameraError) as e:
            src.read(0.2)
        assert e.value.reason == "camera_lost"
        assert world.instances[0].closed                 # the failed camera was released
        world.unplugged = False
        assert wait_for(lambda: src.health == "ok", 2.0)
        assert src.read(1.0).n > first.n
        assert len(world.instances) >= 2                 # reopened with a fresh Picamera2
    assert [(a, b) for _, a, b in src.transitions] == [("ok", "stalled"), ("stalled", "lost"), ("lost", "ok")]


def test_picamera2_frozen_frontend_stalls_and_is_reopened(monkeypatch):
    world = PiWorld()
    install_picamera2(monkeypatch, world)
    with open_source(pi_cfg()) as src:
        first = src.read(1.0)
        world.frozen = True                # capture waits time out, no exception
        assert wait_for(lambda: src.health == "stalled", 1.0)
        assert wait_for(lambda: len(world.instances) >= 2, 1.0)   # closed and reopened
        assert world.instances[0].closed
        assert time.monotonic() - src.progress < 0.3
        world.frozen = False
        assert wait_for(lambda: src.health == "ok", 1.0)
        assert src.read(1.0).n > first.n
    assert [(a, b) for _, a, b in src.transitions] == [("ok", "stalled"), ("stalled", "ok")]


def test_picamera2_probe_and_open_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)   # not installed
    assert probe() == "not importable"
    with pytest.raises(CameraError) as e:
        open_source(pi_cfg())
    assert e.value.reason == "camera_unavailable" and "python3-picamera2" in str(e.value)
    install_picamera2(monkeypatch, PiWorld(cameras=0))
    assert probe() == "no camera attached"
    install_picamera2(monkeypatch, PiWorld(cameras=0, usb=1))   # libcamera lists a USB webcam only
    assert probe().startswith("no CSI camera")
    with pytest.raises(CameraError):
        open_source(pi_cfg())
    install_picamera2(monkeypatch, PiWorld())
    assert probe() is None


# ---------------------------------------------------------------- fake cv2.VideoCapture
class V4L2World:
    def __init__(self, devices):
        self.devices = dict(devices)   # what VideoCapture gets (index or pipeline) -> "ok" | "nodata"
        self.unplugged: set = set()
        self.hung = False              # read() blocks inside the "driver" while set
        self.opened: list = []         # (src, api)
        self.sets: list = []           # (src, prop, value) in call order
        self.live: list = []


def install_videocapture(monkeypatch, world: V4L2World, gstreamer="YES (1.20.3)"):
    class VideoCapture:
        def __init__(self, src, api=cv2.CAP_ANY):
            world.opened.append((src, api))
            self.src, self.api = src, api
            self.ok = world.devices.get(src) is not None and src not in world.unplugged
            self.props = {cv2.CAP_PROP_FRAME_WIDTH: 640, cv2.CAP_PROP_FRAME_HEIGHT: 480, cv2.CAP_PROP_FPS: 30}
            self.released = False
            world.live.append(self)

        def isOpened(self):
            return self.ok and not self.released

        def set(self, prop, value):
            world.sets.append((self.src, prop, value))
            self.props[prop] = value
            return True

        def get(self, prop):
            return self.props.get(prop, 0.0)

        def read(self):
            time.sleep(0.01)
            while world.hung:
                time.sleep(0.01)
            if self.released or self.src in world.unplugged or world.devices.get(self.src) != "ok":
                return False, None
            w, h = int(self.props[cv2.CAP_PROP_FRAME_WIDTH]), int(self.props[cv2.CAP_PROP_FRAME_HEIGHT])
            return True, cv2.cvtColor(scene(h, w), cv2.COLOR_RGB2BGR)

        def release(self):
            self.released = True

    monkeypatch.setattr(cv2, "VideoCapture", VideoCapture)
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: f"  Video I/O:\n    GStreamer:                   {gstreamer}\n")
    return VideoCapture


def v4l2_cfg(**vc) -> CameraConfig:
    return CameraConfig(backend="v4l2", width=320, height=240, fps=25, v4l2=V4L2CameraConfig(**vc), **FAST)


def test_v4l2_asks_fourcc_before_size_and_rate_and_converts_bgr(monkeypatch):
    world = V4L2World({0: "ok"})
    install_videocapture(monkeypatch, world)
    with open_source(v4l2_cfg()) as src:
        assert isinstance(src, V4L2Source)
        f = src.read(1.0)
        assert src.actual["width"] == 320 and src.actual["fourcc"] == "MJPG"
    assert world.opened[0] == (0, cv2.CAP_V4L2)   # by index: OpenCV's V4L2 backend refuses paths
    props = [p for _, p, _ in world.sets]
    assert props[:4] == [cv2.CAP_PROP_FOURCC, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS]
    assert world.sets[0][2] == cv2.VideoWriter_fourcc(*"MJPG")
    assert (cv2.CAP_PROP_BUFFERSIZE in props) and dict((p, v) for _, p, v in world.sets)[cv2.CAP_PROP_FPS] == 25
    assert np.array_equal(f.rgb, scene(240, 320)) and tuple(f.rgb[0, 0]) == (250, 20, 0)
    assert all(c.released for c in world.live)


def test_v4l2_usb_unplug_and_replug_recovers_without_restart(monkeypatch):
    world = V4L2World({0: "ok"})
    install_videocapture(monkeypatch, world)
    with open_source(v4l2_cfg()) as src:
        first = src.read(1.0)
        world.unplugged.add(0)       # read() -> False at once, reopen fails
        assert wait_for(lambda: src.health == "stalled", 1.0)
        assert wait_for(lambda: src.health == "lost", 2.0)
        n_open = len(world.opened)
        time.sleep(0.3)
        assert len(world.opened) > n_open        # still trying, with back-off
        assert time.monotonic() - src.progress < 0.3
        world.unplugged.clear()
        assert wait_for(lambda: src.health == "ok", 2.0)
        assert src.read(1.0).n > first.n
    assert [(a, b) for _, a, b in src.transitions] == [("ok", "stalled"), ("stalled", "lost"), ("lost", "ok")]


def test_hung_driver_read_shows_in_health_and_stops_the_progress_heartbeat(monkeypatch):
    """A read() that never returns: health still goes stalled -> lost (it is derived from the
    frame clock, not from the stuck thread) and `progress` stops, so the daemon's watchdog fires."""
    world = V4L2World({0: "ok"})
    install_videocapture(monkeypatch, world)
    with open_source(v4l2_cfg()) as src:
        src.read(1.0)
        world.hung = True
        time.sleep(0.1)
        p0 = src.progress
        assert wait_for(lambda: src.health == "lost", 2.0)
        with pytest.raises(CameraError):
            src.read(0.1)
        assert src.progress == p0 and time.monotonic() - src.progress > 0.5
        world.hung = False
        assert wait_for(lambda: src.health == "ok", 2.0)
        assert time.monotonic() - src.progress < 0.3
    assert [(a, b) for _, a, b in src.transitions] == [("ok", "stalled"), ("stalled", "lost"), ("lost", "ok")]


def test_v4l2_gstreamer_pipeline_for_jetson(monkeypatch):
    pipe = ("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
            "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")
    world = V4L2World({pipe: "ok"})
    install_videocapture(monkeypatch, world)
    with open_source(v4l2_cfg(pipeline=pipe)) as src:
        assert src.read(1.0) is not None
    assert world.opened[0] == (pipe, cv2.CAP_GSTREAMER)
    assert not [p for _, p, _ in world.sets if p in (cv2.CAP_PROP_FOURCC, cv2.CAP_PROP_FRAME_WIDTH)]
    install_videocapture(monkeypatch, V4L2World({pipe: "ok"}), gstreamer="NO")
    with pytest.raises(CameraError) as e:
        open_source(v4l2_cfg(pipeline=pipe))
    assert e.value.reason == "camera_unavailable" and "GStreamer" in str(e.value) and "JetPack" in str(e.value)


def test_v4l2_open_errors_name_the_device(monkeypatch):
    install_videocapture(monkeypatch, V4L2World({}))
    with pytest.raises(CameraError) as e:
        open_source(v4l2_cfg(device="/dev/video7"))
    assert e.value.reason == "camera_unavailable" and "/dev/video7" in str(e.value)
    install_videocapture(monkeypatch, V4L2World({0: "ok"}))
    with pytest.raises(CameraError) as e:
        open_source(v4l2_cfg(fourcc="MJPEG"))
    assert "fourcc" in str(e.value)


def test_v4l2_by_id_link_is_followed_to_a_new_node_after_replug(monkeypatch, tmp_path):
    (tmp_path / "video2").touch()
    (tmp_path / "video3").touch()
    link = tmp_path / "usb-Cam_123-video-index0"
    link.symlink_to(tmp_path / "video2")
    world = V4L2World({2: "ok"})
    install_videocapture(monkeypatch, world)
    with open_source(v4l2_cfg(device=str(link))) as src:
        first = src.read(1.0)
        world.unplugged.add(2)             # pulled ...
        assert wait_for(lambda: src.health == "stalled", 1.0)
        link.unlink()                      # ... and back as video3 (udev re-points the link)
        link.symlink_to(tmp_path / "video3")
        world.devices[3] = "ok"
        assert wait_for(lambda: src.health == "ok", 2.0)
        assert src.read(1.0).n > first.n
    assert world.opened[0][0] == 2 and world.opened[-1][0] == 3


# ---------------------------------------------------------------- auto
def fake_nodes(monkeypatch, tmp_path, names):
    for n in names:
        (tmp_path / n).touch()
    monkeypatch.setattr(camera, "VIDEO_DEVICE_GLOB", str(tmp_path / "video*"))
    return [str(tmp_path / n) for n in names]


def test_auto_prefers_picamera2_when_a_camera_is_present(monkeypatch, tmp_path):
    install_picamera2(monkeypatch, PiWorld())
    world = V4L2World({})
    install_videocapture(monkeypatch, world)
    fake_nodes(monkeypatch, tmp_path, ["video0"])
    with open_source(CameraConfig(width=320, height=240, **FAST)) as src:
        assert isinstance(src, Picamera2Source) and src.read(1.0) is not None
    assert world.opened == []


def test_auto_falls_back_to_the_first_video_node_that_delivers(monkeypatch, tmp_path):
    install_picamera2(monkeypatch, PiWorld(cameras=0))
    v0, v1, v2, v10 = fake_nodes(monkeypatch, tmp_path, ["video10", "video2", "video1", "video0"])[::-1]
    # video0: opens but never delivers (a USB camera's metadata node); video1 absent; video2 works
    install_videocapture(monkeypatch, V4L2World({0: "nodata", 2: "ok", 10: "ok"}))
    assert camera.video_devices() == [v0, v1, v2, v10]
    with open_source(CameraConfig(width=320, height=240, **FAST)) as src:
        assert isinstance(src, V4L2Source) and src.device == v2
        assert src.read(1.0) is not None


def test_auto_with_nothing_names_everything_it_tried(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    (v0,) = fake_nodes(monkeypatch, tmp_path, ["video0"])
    install_videocapture(monkeypatch, V4L2World({}))
    with pytest.raises(CameraError) as e:
        open_source(CameraConfig(**FAST))
    msg = str(e.value)
    assert e.value.reason == "camera_unavailable"
    assert "picamera2 (not importable)" in msg and v0 in msg and "cannot open" in msg
    monkeypatch.setattr(camera, "VIDEO_DEVICE_GLOB", str(tmp_path / "none*"))
    with pytest.raises(CameraError) as e:
        open_source(CameraConfig(**FAST))
    assert "no " + str(tmp_path / "none*") in str(e.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("camera-") and t.is_alive()]


# ---------------------------------------------------------------- YUV420 with padded strides
from hypothesis import given, settings, strategies as st  # noqa: E402

from device.camera.picamera2 import yuv420_to_rgb  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(w2=st.integers(8, 40), h4=st.integers(2, 12), pad2=st.integers(0, 16), seed=st.integers(0, 99))
def test_yuv420_with_row_padding_equals_unpadded(w2, h4, pad2, seed):
    """libcamera pads each row to its stride; the conversion must ignore the padding bytes."""
    w, h, stride = 2 * w2, 4 * h4, 2 * w2 + 2 * pad2
    rgb = scene(h, w, seed)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)              # (h*3/2, w), planes packed
    y, u, v = i420[:h], i420[h:h + h // 4].reshape(h // 2, w // 2), i420[h + h // 4:].reshape(h // 2, w // 2)
    rng = np.random.default_rng(seed)

    def pad(a, width):  # garbage in the padding, as real buffers have
        return np.concatenate([a, rng.integers(0, 256, (a.shape[0], width - a.shape[1]), dtype=np.uint8)], axis=1)
    buf = np.concatenate([pad(y, stride).ravel(), pad(u, stride // 2).ravel(),
                          pad(v, stride // 2).ravel()]).reshape(h * 3 // 2, stride)
    assert np.array_equal(yuv420_to_rgb(buf, w, h), cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420))
