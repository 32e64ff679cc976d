"""Capture in one thread, the real models in another: the daemon's frame pipeline, timed (issue 17).

`kyc-edge bench` (kyc_tools/bench/frame.py) times the frame path single-threaded: it decodes a frame, then
runs the models on it, so its `sustained_fps` counts decode and inference one after the other.
`kyc-edge bench camera` (kyc_tools/bench/camera.py) runs the real capture thread but a simulated load.
This runs what the daemon runs: the replay camera (device.camera.replay.ReplaySource, opened as the
daemon opens its camera) decodes and converts frames on its own capture thread while this thread takes
each newest frame and runs `VisionSuite.observe` + `quality_crop` on it (the real models: detect or
track, FaceMesh, iris, pose, blink, PAD at 5 Hz, align + quality gate).

Three paces of the same clip:
- `fast`: lossless, the camera thread decodes frame i+1 while the models run on frame i (a one-slot
  queue); `processed_fps` is the pipeline's throughput, decode overlapped with inference when a second
  core is free;
- `realtime`: frames are released at the clip's own timestamps with the latest-frame policy (the blink
  video declares 30.3 fps but its timestamps average 17 fps: 190 frames over 11.2 s); `dropped` counts
  frames the camera overwrote because the models were still busy (0 = the camera never waited for
  inference and no frame was lost), `frame_age_ms` is release -> the models start on it;
- `fixed_30fps`: the same, with the frames released at a fixed 30 fps (media time i / 30), a 30 fps
  camera (`fixed_fps` to change it);
- `fixed_30fps+ahead`: the same with the daemon's default third thread, the ahead-embedding worker
  (match.embed_ahead, device/vision/ahead.py) embedding the top-k / first / last crops meanwhile; its
  calls and thread CPU are `ahead_calls` / `ahead_cpu_ms` (included in `cpu_share`).

Per pace: frames processed, wall s, processed_fps, captured, dropped, `cpu_share` (process CPU time, both
threads, / wall: up to the number of cores allowed), `models_thread_cpu_share` (this thread's CPU / wall),
`capture_thread_cpu_ms_per_frame` (process minus this thread, per captured frame: decode + BGR->RGB +
hand-over; on `+ahead` rows the worker's own thread CPU is taken out) and the models thread's CPU ms per
processed frame.
Except on `+ahead` rows the suite runs without the ahead-embedding worker (match.embed_ahead off, as the
frame pass), so the two threads are the camera's and the models'.
Timing figures only; the smoke test checks keys and consistency, never speed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def _pct(v: list[float], q: float) -> float | None:
    return round(float(np.percentile(v, q)), 2) if v else None


def _fixed_rate_source(camera_cfg, fps: float):
    """The replay camera (pace realtime) releasing the clip's frames at a fixed `fps` (media time i / fps)."""
    from device.camera.replay import ReplaySource

    class FixedRate(ReplaySource):
        def _next_media(self):
            got = super()._next_media()
            if got is None:
                return None
            self._i_fixed = getattr(self, "_i_fixed", -1) + 1
            return got[0], self._i_fixed / fps

    return FixedRate(camera_cfg).open()


def _run_pace(suite, cfg, pace: str, limit: int, fixed_fps: float) -> dict:
    from device import wiring
    from device.config import replace
    realtime = pace != "fast"
    cam_cfg = replace(cfg, **{"camera.replay.pace": "realtime" if realtime else "fast"})
    suite.reset()
    best = suite.best_frames()
    ah = suite.ahead
    a0 = (ah.calls, ah.cpu_ms) if ah is not None else None
    n = 0
    ages: list[float] = []
    opened = _fixed_rate_source(cam_cfg.camera, fixed_fps) if pace.startswith("fixed") else wiring.camera(cam_cfg)
    with opened as cam:
        first = cam.read(10.0)                  # warm-up: the first frame (and first invokes) not timed
        if first is None:
            return {"pace": pace, "frames_processed": 0, "why": "no frame from the replay camera"}
        obs = suite.observe(first.rgb, first.t)
        suite.quality_crop(first.rgb, obs, best)
        first.wipe()
        cap0, drop0 = cam.captured, cam.dropped
        w0, c0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
        while not (limit and n >= limit):
            f = cam.read(5.0)
            if f is None:
                if cam.eof:
                    break
                continue
            if realtime:
                ages.append((time.monotonic() - f.t) * 1000.0)
            obs = suite.observe(f.rgb, f.t)
            suite.quality_crop(f.rgb, obs, best)
            f.wipe()
            n += 1
        wall = time.perf_counter() - w0
        cpu = time.process_time() - c0
        main = time.thread_time() - t0
        captured, dropped = cam.captured - cap0, cam.dropped - drop0
        worker_s = (ah.cpu_ms - a0[1]) / 1000.0 if a0 is not None else 0.0   # the ahead worker's thread CPU
        declared = getattr(cam, "_fps", None)    # the frame rate the video declares
    best.wipe()
    suite.reset()                       # with the worker: waits for its call in flight, ends it, wipes
    out = {"pace": pace, "frames_processed": n, "wall_s": round(wall, 3),
           "processed_fps": round(n / wall, 2) if wall > 0 else None,
           "captured": captured, "dropped": dropped,
           "cpu_share": round(cpu / wall, 3) if wall > 0 else None,
           "models_thread_cpu_share": round(main / wall, 3) if wall > 0 else None,
           "models_thread_cpu_ms_per_frame": round(main * 1000.0 / n, 3) if n else None,
           "capture_thread_cpu_ms_per_frame": round(max(cpu - main - worker_s, 0.0) * 1000.0 / captured, 3)
           if captured else None}
    if declared:
        out["declared_fps"] = round(float(declared), 3)
    if pace.startswith("fixed"):
        out["release_fps"] = fixed_fps
    if a0 is not None:
        out["ahead_calls"] = ah.calls - a0[0]
        out["ahead_cpu_ms"] = round(ah.cpu_ms - a0[1], 1)
    if realtime:
        out["frame_age_ms_p50"] = _pct(ages, 50)
        out["frame_age_ms_p95"] = _pct(ages, 95)
    return out


PACES = ("fast", "realtime", "fixed_30fps", "fixed_30fps+ahead")


def two_thread(frames: Path, models_dir: Path, model_set: str, threads: int, limit: int = 0,
               paces=PACES, fixed_fps: float = 30.0) -> dict:
    """The capture thread + models thread figures for each pace (see the module doc). `frames`: a video
    or a folder the replay camera plays once (loop off); `limit`: at most this many frames per pace."""
    from device import wiring
    from device.config import from_dict, replace
    from kyc_tools.bench.frame import resolve_models
    load_dir, _, _ = resolve_models(models_dir, model_set)
    cfg = wiring.offline_replay(from_dict({}), frames, **{
        "models.dir": str(load_dir), "models.set": model_set, "models.threads": threads,
        "match.embed_ahead": False})
    cfg = replace(cfg, **{"camera.stall_s": 30.0, "camera.lost_s": 60.0})
    suites = {}

    def suite_for(ahead: bool):        # the `+ahead` rows: a suite with the worker (the daemon's default)
        if ahead not in suites:
            suites[ahead] = wiring.vision(replace(cfg, **{"match.embed_ahead": ahead}), load_dir)
        return suites[ahead]
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = None
    rows = []
    for p in paces:
        ahead = p.endswith("+ahead")
        rows.append(_run_pace(suite_for(ahead), cfg, p.removesuffix("+ahead"), limit, fixed_fps))
        rows[-1]["pace"], rows[-1]["embed_ahead"] = p, ahead
    for s in suites.values():
        s.reset()
    return {"rows": rows, "cpu_affinity": cpus, "model_set": model_set, "threads": threads,
            "what": "replay camera's capture thread decoding + the models thread running observe() + "
                    "quality_crop() on each newest frame (kyc_tools/bench/pipeline.py); pace fast: "
                    "lossless throughput, pace realtime: the clip's own frame rate, drops = frames the "
                    "camera overwrote while the models were busy"}
