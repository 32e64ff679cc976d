"""Replay backend and the shared FrameSource machinery: frame contract, pacing, bounded queue,
stall / loss / recovery. Real media from ../shared/data, or frames synthesized here (tmp_path)."""
from __future__ import annotations

import csv
import dataclasses
import functools
import threading
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from device.camera import Frame, make_source, open_source
from device.camera.replay import ReplaySource, parse_faults
from device.config import CameraConfig, ReplayCameraConfig
from device.errors import CameraError

FAST_RECOVERY = dict(stall_s=0.2, lost_s=0.6, reopen_backoff_min_s=0.05, reopen_backoff_max_s=0.2)


def cam_cfg(path, pace="realtime", loop=True, fps=0.0, faults="", start_s=0.0, **kw) -> CameraConfig:
    return CameraConfig(backend="replay", replay=ReplayCameraConfig(
        path=str(path), pace=pace, loop=loop, fps=fps, faults=faults, start_s=start_s), **kw)


def write_image(path, h=120, w=160, seed=0) -> np.ndarray:
    """Synthesize a picture (test-only, in tmp_path) and return its RGB pixels."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[:10, :10] = (200, 10, 50)  # a known colour: catches a BGR/RGB mix-up
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


@functools.lru_cache(maxsize=2)
def video_truth(path):
    """Per-frame timestamps and a pixel checksum, straight from OpenCV (the reference)."""
    cap = cv2.VideoCapture(str(path))
    ts, sums = [], []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        ts.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        sums.append(int(bgr[::8, ::8].sum(dtype=np.uint64)))
    cap.release()
    return ts, sums


def read_all(src, timeout=3.0):
    out = []
    while True:
        f = src.read(timeout)
        if f is None:
            return out
        out.append(f)


def wait_for(pred, timeout, step=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


# ---------------------------------------------------------------- contract and media
def test_fast_video_delivers_every_frame_in_order_with_media_timestamps(shared_data):
    path = shared_data / "blink" / "demo_old.mp4"
    ts, sums = video_truth(path)
    assert len(ts) > 100
    with make_source(cam_cfg(path, pace="fast", loop=False)) as src:
        frames = read_all(src)
        assert src.eof and src.read(0.5) is None
        assert src.dropped == 0 and src.health == "ok"
    assert [f.n for f in frames] == list(range(len(ts)))
    assert np.allclose([f.t for f in frames], ts, atol=1e-6)
    assert frames[0].t < 0.05
    gaps = np.diff(ts)
    assert gaps.max() > 1.5 * gaps.min()  # variable timing really kept (not n / fps)
    f = frames[len(frames) // 2]
    assert f.rgb.dtype == np.uint8 and f.rgb.ndim == 3 and f.rgb.shape[2] == 3 and f.rgb.flags.c_contiguous
    # RGB = the decoder's BGR reversed: channel sums swap, totals equal
    assert [int(fr.rgb[::8, ::8].sum(dtype=np.uint64)) for fr in frames] == sums


def test_decode_video_step_and_video_frame_pick_the_same_frames_as_a_full_decode(shared_data, tmp_path):
    """The one decoder's helpers for photos and sampled frames (demo card photo, chaos, mask eval)."""
    from device.camera.replay import decode_video, video_frame
    path = shared_data / "blink" / "demo_old.mp4"
    full = list(decode_video(path, limit=31))
    stepped = list(decode_video(path, limit=3, step=10))
    assert [t for _, t in stepped] == [full[i][1] for i in (0, 10, 20)]
    assert all(np.array_equal(a, full[i][0]) for (a, _), i in zip(stepped, (0, 10, 20)))
    assert np.array_equal(video_frame(path, 30), full[30][0])
    assert video_frame(path, 10 ** 6) is None                 # shorter than asked
    assert video_frame(tmp_path / "missing.mp4", 0) is None  # cannot open: no photo, no exception


def test_start_s_begins_the_first_pass_there_and_later_passes_at_zero(shared_data, tmp_path):
    """eval sessions --offsets starts a session mid-clip through this option."""
    path = shared_data / "blink" / "demo_old.mp4"
    ts, sums = video_truth(path)
    start = 4.0
    first = next(i for i, t in enumerate(ts) if t >= start)
    with make_source(cam_cfg(path, pace="fast", loop=False, start_s=start)) as src:
        frames = read_all(src)
    assert [f.n for f in frames] == list(range(len(ts) - first))      # n counts delivered frames
    assert np.allclose([f.t for f in frames], ts[first:], atol=1e-6)  # media time kept, not reset to 0
    assert [int(f.rgb[::8, ::8].sum(dtype=np.uint64)) for f in frames] == sums[first:]
    with make_source(cam_cfg(path, pace="fast", loop=True, start_s=start)) as src:
        looped = [src.read(2.0) for _ in range(len(ts) - first + 2)]
    assert int(looped[len(ts) - first].rgb[::8, ::8].sum(dtype=np.uint64)) == sums[0]   # pass 2 from frame 0
    # folders: by their frames.csv times
    clip = shared_data / "headpose" / "head-pose-face-detection-male"
    with make_source(cam_cfg(clip, pace="fast", loop=False)) as src:
        all_t = [f.t for f in read_all(src)]
    with make_source(cam_cfg(clip, pace="fast", loop=False, start_s=all_t[5])) as src:
        assert [f.t for f in read_all(src)] == all_t[5:]
    # past the end: a looping replay is a camera with no picture (the error says why); a single pass just ends
    with make_source(cam_cfg(path, pace="fast", loop=True, start_s=99.0)) as src:
        assert src.read(0.5) is None
        assert wait_for(lambda: "no frames at or after start_s 99 s" in src.last_error, 3.0)
    with make_source(cam_cfg(path, pace="fast", loop=False, start_s=99.0)) as src:
        assert read_all(src) == [] and src.eof


def test_fast_loop_keeps_n_and_t_increasing_across_passes(shared_data):
    clip = shared_data / "headpose" / "head-pose-face-detection-female"
    n_files = len(list(clip.glob("*.jpg")))
    with make_source(cam_cfg(clip, pace="fast", loop=True)) as src:
        frames = [src.read(2.0) for _ in range(n_files * 2 + 3)]
    assert [f.n for f in frames] == list(range(len(frames)))
    t = np.array([f.t for f in frames])
    assert np.all(np.diff(t) > 0)
    assert np.array_equal(frames[0].rgb, frames[n_files].rgb)


def test_folder_timestamps_from_parent_frames_csv_or_fps(shared_data):
    root = shared_data / "headpose"
    clip = "head-pose-face-detection-male"
    with open(root / "frames.csv", newline="") as fh:
        want = [float(r["t_seconds"]) for r in csv.DictReader(fh) if r["clip"] == clip]
    with make_source(cam_cfg(root / clip, pace="fast", loop=False)) as src:
        got = [f.t for f in read_all(src)]
    assert np.allclose(got, want)
    with make_source(cam_cfg(root / clip, pace="fast", loop=False, fps=10)) as src:
        got = [f.t for f in read_all(src)]
    assert np.allclose(got, np.arange(len(want)) / 10)


def test_folder_with_own_frames_csv_by_file_name(tmp_path):
    pics = [write_image(tmp_path / f"img_{i:02d}.png", seed=i) for i in range(4)]
    times = [0.0, 0.5, 0.55, 2.0]
    with open(tmp_path / "frames.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "t_seconds"])
        for i, t in enumerate(times):
            w.writerow([f"img_{i:02d}.png", t])
    with make_source(cam_cfg(tmp_path, pace="fast", loop=False)) as src:
        frames = read_all(src)
    assert [f.t for f in frames] == times
    assert all(np.array_equal(f.rgb, p) for f, p in zip(frames, pics))


def test_folder_with_frames_csv_plays_in_time_order_not_name_order(tmp_path):
    """NUAA-style names (_0, _5, _13) sort as text 0, 13, 5: the frames.csv's times set the order."""
    idx = [0, 5, 13, 130, 45]
    pics = {i: write_image(tmp_path / f"seq_{i}.png", seed=i) for i in idx}
    with open(tmp_path / "frames.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "t_seconds"])
        for i in idx:
            w.writerow([f"seq_{i}.png", i / 20])
    with make_source(cam_cfg(tmp_path, pace="fast", loop=False)) as src:
        frames = read_all(src)
    assert [f.t for f in frames] == [i / 20 for i in sorted(idx)]
    assert all(np.array_equal(f.rgb, pics[i]) for f, i in zip(frames, sorted(idx)))
    with make_source(cam_cfg(tmp_path, pace="fast", loop=False, start_s=13 / 20)) as src:
        assert [f.t for f in read_all(src)] == [i / 20 for i in (13, 45, 130)]


def test_single_image_repeats_at_fps_in_realtime(tmp_path):
    rgb = write_image(tmp_path / "face.png")
    with make_source(cam_cfg(tmp_path / "face.png", fps=20)) as src:
        frames = [src.read(1.0) for _ in range(12)]
    assert all(np.array_equal(f.rgb, rgb) for f in frames)
    assert tuple(frames[0].rgb[0, 0]) == (200, 10, 50)
    dt = np.diff([f.t for f in frames])
    assert 0.035 < np.median(dt) < 0.07
    assert [f.n for f in frames] == sorted({f.n for f in frames})
    frames[0].wipe()
    assert not frames[0].rgb.any() and frames[1].rgb.any()  # frames do not share pixels


def test_single_image_once_without_loop(tmp_path):
    write_image(tmp_path / "face.png")
    with make_source(cam_cfg(tmp_path / "face.png", pace="fast", loop=False)) as src:
        assert len(read_all(src, 1.0)) == 1 and src.eof


def test_realtime_video_is_paced_at_its_timestamps(shared_data):
    path = shared_data / "blink" / "demo_old.mp4"
    ts, _ = video_truth(path)
    with make_source(cam_cfg(path, loop=False)) as src:
        frames = []
        t_end = time.monotonic() + 1.2
        while time.monotonic() < t_end:
            f = src.read(1.0)
            assert f is not None
            frames.append(f)
    assert len(frames) > 10
    base = frames[0]
    errs = [abs((f.t - base.t) - (ts[f.n] - ts[base.n])) for f in frames[1:]]
    # released at the media timestamps (tolerances allow for a loaded 2-core CI box)
    assert np.median(errs) < 0.03 and max(errs) < 0.3, errs
    span = frames[-1].t - base.t
    assert abs(span - (ts[frames[-1].n] - ts[base.n])) < 0.1 and span > 0.8   # not "as fast as possible"


def test_repr_hides_pixels_and_frame_is_frozen(tmp_path):
    write_image(tmp_path / "a.png")
    with make_source(cam_cfg(tmp_path / "a.png")) as src:
        f = src.read(1.0)
    assert isinstance(f, Frame) and "array" not in repr(f) and "160x120" in repr(f)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.n = 5


def test_open_errors_and_closed_read(tmp_path):
    with pytest.raises(CameraError) as e:
        make_source(cam_cfg(tmp_path / "missing.mp4")).open()
    assert e.value.reason == "camera_unavailable" and "not found" in str(e.value)
    with pytest.raises(CameraError) as e:
        make_source(cam_cfg(tmp_path)).open()  # empty folder
    assert e.value.reason == "camera_unavailable"
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(CameraError):
        make_source(cam_cfg(tmp_path / "junk.mp4", loop=True)).open().read(2.0)
    write_image(tmp_path / "a.png")
    src = make_source(cam_cfg(tmp_path / "a.png"))
    with pytest.raises(CameraError) as e:
        src.read(0.1)
    assert e.value.reason == "camera_unavailable"
    with pytest.raises(CameraError):
        parse_faults("explode@1:2")
    assert parse_faults("drop@2:5, stall@1:3") == [(1.0, "stall", 3.0), (2.0, "drop", 5.0)]


def test_open_source_replay_and_close_stops_thread_and_reopens(tmp_path):
    write_image(tmp_path / "a.png")
    src = open_source(cam_cfg(tmp_path / "a.png"))
    assert isinstance(src, ReplaySource) and src.is_open
    assert src.read(1.0) is not None
    src.close()
    assert not any(t.name == "camera-replay" and t.is_alive() for t in threading.enumerate())
    with src:  # open again after close
        assert src.read(1.0) is not None


# ---------------------------------------------------------------- bounded latest-frame policy
def test_queue_stays_bounded_when_consumer_is_slower_than_capture(tmp_path):
    write_image(tmp_path / "big.png", h=480, w=640)
    frame_bytes = 480 * 640 * 3
    cfg = cam_cfg(tmp_path / "big.png", fps=200)
    with make_source(cfg) as src:
        src.read(1.0)
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen, pend, drops, ages = [], [], [], []
        for i in range(30):           # "inference" at ~20 fps, capture at ~200 fps
            f = src.read(1.0)
            assert f is not None
            seen.append(f.n)
            ages.append(time.monotonic() - f.t)
            time.sleep(0.05)
            pend.append(src.pending)
            drops.append(src.dropped)
            del f
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        captured = src.captured
    assert max(pend) <= 1
    assert drops[-1] > drops[len(drops) // 2] > drops[0]          # dropped count keeps growing
    assert captured > 3 * len(seen) and drops[-1] >= captured - len(seen) - 2
    assert np.median(np.diff(seen)) > 3                          # frames in between were dropped
    assert np.median(ages) < 0.03       # the newest frame (~5 ms old), not one queued 50 ms ago
    assert peak - base < 8 * frame_bytes, f"memory grew by {(peak - base) / frame_bytes:.1f} frames"


def test_fast_pace_never_drops_even_with_slow_consumer(tmp_path):
    for i in range(6):
        write_image(tmp_path / f"{i}.png", seed=i)
    with make_source(cam_cfg(tmp_path, pace="fast", loop=True)) as src:
        got = []
        for _ in range(15):
            got.append(src.read(1.0).n)
            time.sleep(0.02)
        assert src.dropped == 0 and src.pending <= 1
    assert got == list(range(15))


def test_injected_lost_frames_leave_gaps_in_n(tmp_path):
    for i in range(10):
        write_image(tmp_path / f"{i}.png", h=32, w=32, seed=i)
    src = make_source(cam_cfg(tmp_path, pace="fast", loop=False))
    with src:
        first = src.read(1.0)
        src.inject_lost_frames(3)
        rest = read_all(src, 1.0)
    ns = [first.n] + [f.n for f in rest]
    assert src.lost_frames == 3 and len(ns) == 7
    assert ns[-1] == 9 and sum(b - a - 1 for a, b in zip(ns, ns[1:])) == 3


# ---------------------------------------------------------------- stall, loss, recovery
def transitions(src):
    return [(a, b) for _, a, b in src.transitions]


def test_stall_shorter_than_lost_goes_ok_stalled_ok(tmp_path):
    write_image(tmp_path / "a.png")
    cfg = cam_cfg(tmp_path / "a.png", fps=30, **{**FAST_RECOVERY, "lost_s": 1.5})
    with make_source(cfg) as src:
        assert src.read(1.0) is not None
        src.inject_stall(0.6)
        t0 = time.monotonic()
        assert wait_for(lambda: src.health == "stalled", 1.0)
        assert 0.12 < time.monotonic() - t0 < 0.6
        assert "stalled" in src.status_text
        assert src.read(0.05) is None           # stalled: no frame, no exception
        assert wait_for(lambda: src.read(0.1) is not None, 2.0)
        assert src.health == "ok"
    assert transitions(src) == [("ok", "stalled"), ("stalled", "ok")]


def test_disconnect_goes_ok_stalled_lost_ok_and_next_session_works(tmp_path):
    write_image(tmp_path / "a.png")
    with make_source(cam_cfg(tmp_path / "a.png", fps=30, **FAST_RECOVERY)) as src:
        last = src.read(1.0)
        assert src.health == "ok" and "camera ok" in src.status_text
        src.inject_disconnect(1.2)
        t0 = time.monotonic()
        # a running session: read() raises camera_lost once the camera is lost
        with pytest.raises(CameraError) as e:
            while time.monotonic() - t0 < 3.0:
                f = src.read(0.2)
                if f is not None:
                    last = f
        lost_after = time.monotonic() - t0
        assert e.value.reason == "camera_lost"
        assert 0.4 < lost_after < 1.5
        assert src.health == "lost" and "lost" in src.status_text and "disconnected" in src.status_text
        assert src.reopen_attempts >= 3                     # kept trying while disconnected
        assert time.monotonic() - src.progress < 0.3        # recovery loop alive (watchdog)
        # the next session, same source object, no restart
        assert wait_for(lambda: src.health == "ok", 3.0)
        f = src.read(1.0)
        assert f is not None and f.n > last.n
        assert src.read(1.0).n > f.n
    assert transitions(src) == [("ok", "stalled"), ("stalled", "lost"), ("lost", "ok")]
    (t_st, _, _), (t_lo, _, _), (t_ok, _, _) = src.transitions
    assert 0.15 < t_lo - t_st < 0.6                         # lost_s - stall_s = 0.4
    assert t_ok - t0 >= 1.2                                 # not before the device came back


def test_reopen_backoff_doubles_up_to_the_ceiling(tmp_path):
    write_image(tmp_path / "a.png")
    cfg = cam_cfg(tmp_path / "a.png", fps=30, stall_s=0.2, lost_s=0.6,
                  reopen_backoff_min_s=0.05, reopen_backoff_max_s=0.4)
    with make_source(cfg) as src:
        src.read(1.0)
        src.inject_disconnect(2.0)
        assert wait_for(lambda: src.reopen_attempts >= 6, 4.0)
        times = list(src.reopen_times)
        gaps = np.diff(times)
        assert wait_for(lambda: src.health == "ok", 3.0)
    # attempt k waits min(0.05 * 2**k, 0.4): 0.1, 0.2, 0.4, 0.4 between attempts 1..5
    want = np.array([0.1, 0.2, 0.4, 0.4])
    assert np.all(gaps[:4] > want - 0.02) and np.all(gaps[:4] < want + 0.15), gaps
    assert gaps[0] < gaps[1] < gaps[2] and abs(gaps[3] - gaps[2]) < 0.15, gaps
    assert list(src.reopen_delays)[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]


def test_fault_script_in_config_drives_the_same_transitions(tmp_path):
    write_image(tmp_path / "a.png")
    cfg = cam_cfg(tmp_path / "a.png", fps=30, faults="disconnect@0.2:1.0", **FAST_RECOVERY)
    with make_source(cfg) as src:
        assert wait_for(lambda: src.health == "lost", 2.0)
        assert wait_for(lambda: src.health == "ok", 3.0)
        assert src.read(1.0) is not None
    assert transitions(src) == [("ok", "stalled"), ("stalled", "lost"), ("lost", "ok")]
