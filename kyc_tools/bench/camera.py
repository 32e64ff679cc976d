"""Capture + decode throughput, with and without a simulated inference load on the consumer.

``run_bench(cfg)`` opens the configured source (replay, or a real camera on the device) and pulls
frames for ``seconds`` per row, once with no consumer work and once per ``loads_ms`` entry with a
simulated inference of that many milliseconds per frame (OpenCV filtering, which like TFLite
releases the GIL, so the capture thread really competes for the cores). For replay it also runs the
no-overlap baseline (pace `fast` only): decode and "infer" in one thread. Nothing is written to disk.
"""
from __future__ import annotations

import os
import time

import cv2
import numpy as np

from device.camera import open_source
from device.config import replace


def simulated_inference(rgb: np.ndarray, ms: float) -> None:
    """Burn about `ms` of CPU the way a model does: resize to a model input, then filter it."""
    if ms <= 0:
        return
    end = time.perf_counter() + ms / 1000.0
    x = cv2.resize(rgb, (192, 192)).astype(np.float32)
    while time.perf_counter() < end:
        x = cv2.GaussianBlur(x, (9, 9), 2.0)


def _pct(v: list[float], q: float) -> float:
    return float(np.percentile(v, q)) if v else float("nan")


def _threaded(cfg, seconds: float, load_ms: float, max_frames: int) -> dict:
    fast = cfg.backend == "replay" and cfg.replay.pace == "fast"
    with open_source(cfg) as src:
        src.read(5.0)  # warm-up: first frame decoded, thread running
        cap0, drop0, cpu0 = src.captured, src.dropped, time.process_time()
        t0 = time.monotonic()
        n, ages = 0, []
        while time.monotonic() - t0 < seconds and (not max_frames or n < max_frames):
            f = src.read(2.0)
            if f is None:
                if src.eof:
                    break
                continue
            if not fast:
                ages.append((time.monotonic() - f.t) * 1000.0)
            simulated_inference(f.rgb, load_ms)
            n += 1
        el = time.monotonic() - t0
        row = {"mode": "threaded", "load_ms": load_ms, "frames": n, "seconds": round(el, 3),
               "delivered_fps": round(n / el, 1) if el > 0 else 0.0,
               "captured_fps": round((src.captured - cap0) / el, 1) if el > 0 else 0.0,
               "dropped": src.dropped - drop0,
               "cpu_pct": round(100 * (time.process_time() - cpu0) / el, 0) if el > 0 else 0.0,
               "health": src.health}
        if ages:
            row["frame_age_ms_p50"] = round(_pct(ages, 50), 1)
            row["frame_age_ms_p95"] = round(_pct(ages, 95), 1)
    return row


def _serial(cfg, seconds: float, load_ms: float, max_frames: int) -> dict:
    from device.camera.replay import ReplaySource
    src = ReplaySource(cfg)
    n, t0, cpu0 = 0, time.monotonic(), time.process_time()
    for rgb, _t in src.iter_decoded():
        simulated_inference(rgb, load_ms)
        n += 1
        if time.monotonic() - t0 >= seconds or (max_frames and n >= max_frames):
            break
    el = time.monotonic() - t0
    return {"mode": "serial (no overlap)", "load_ms": load_ms, "frames": n, "seconds": round(el, 3),
            "delivered_fps": round(n / el, 1) if el > 0 else 0.0,
            "cpu_pct": round(100 * (time.process_time() - cpu0) / el, 0) if el > 0 else 0.0}


def run_bench(cfg, *, seconds: float = 3.0, loads_ms=(0.0, 30.0), max_frames: int = 0,
              serial: bool = True) -> dict:
    """cfg: a CameraConfig. Returns a JSON-able dict; `rows` has one entry per mode and load."""
    rows = []
    for load in loads_ms:
        rows.append(_threaded(cfg, seconds, float(load), max_frames))
    if serial and cfg.backend == "replay" and cfg.replay.pace == "fast":
        for load in loads_ms:
            rows.append(_serial(cfg, seconds, float(load), max_frames))
    return {"backend": cfg.backend,
            "pace": cfg.replay.pace if cfg.backend == "replay" else "live",
            "media": os.path.basename(cfg.replay.path) if cfg.backend == "replay" else "",
            "cpus": os.cpu_count(), "opencv_threads": cv2.getNumThreads(), "rows": rows}


def replay_cfg(cfg, path: str, pace: str = "fast", loop: bool = True):
    """cfg (CameraConfig) switched to replaying `path`."""
    return replace(cfg, **{"backend": "replay", "replay.path": str(path), "replay.pace": pace, "replay.loop": loop})


def bench_camera(args) -> dict:
    """For `kyc-edge bench camera`: args.config, args.frames (replay this instead), args.limit."""
    from device.camera.commands import _config
    cfg = _config(getattr(args, "config", None))
    if cfg is None:
        raise SystemExit(2)
    cam = cfg.camera
    if getattr(args, "frames", None):
        cam = replay_cfg(cam, args.frames, pace=getattr(args, "pace", None) or "fast")
    loads = getattr(args, "load_ms", None) or (0.0, 30.0)
    return run_bench(cam, seconds=getattr(args, "seconds", None) or 3.0, loads_ms=loads,
                     max_frames=getattr(args, "limit", 0) or 0)



