"""The per-frame path outside the model invokes, and a dump of every per-frame output (issue 17).

    python -m kyc_tools.bench.glue overhead [--model-set int8] [--reps 3] [--frames VIDEO]
    python -m kyc_tools.bench.glue dump OUT.json [--model-set int8] CLIP [CLIP ...]

`overhead`: thread CPU time per frame of `observe()`, of the model invokes inside it (every
`ModelRuntime.invoke`, wrapped) and of `quality_crop()`, on the blink video, `reps` passes; `glue` is
observe minus its invokes (warps, pose, EAR, blink, numpy), also on tracked frames without PAD or
detection alone. Run it pinned (`taskset -c 1`) and interleave trees to compare them.

`dump`: every field of every Observation (landmarks, keypoints and crops as sha256 prefixes; never pixels),
the quality gates that failed, BestFrames at the end, per clip (a video or a folder of frames), as JSON.
Two trees that give byte-identical dumps give the session the same inputs: how docs/performance.md checks
that a speed change leaves every decision as it was (`cmp a.json b.json`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np


def _suite(models_dir: Path | None, model_set: str):
    from kyc_tools.bench.frame import build_suite, default_models_dir, resolve_models
    load_dir, _, _ = resolve_models(models_dir or default_models_dir(), model_set)
    return build_suite(load_dir, model_set, 1)[1]


def overhead(frames: Path, models_dir: Path | None, model_set: str, reps: int = 3) -> dict:
    from device.vision import runtime
    from kyc_tools.bench.frame import iter_frames
    suite = _suite(models_dir, model_set)
    acc = [0.0]
    orig = runtime.ModelRuntime.invoke

    def timed_invoke(self):
        c = time.thread_time()
        try:
            orig(self)
        finally:
            acc[0] += time.thread_time() - c
    res: dict[str, list[float]] = {k: [] for k in ("observe", "invokes", "glue", "quality_crop", "glue_tracked")}
    runtime.ModelRuntime.invoke = timed_invoke
    try:
        for _ in range(reps):
            suite.reset()
            best = suite.best_frames()
            for i, (rgb, t, _, _) in enumerate(iter_frames(frames, 0)):
                acc[0] = 0.0
                c0 = time.thread_time()
                obs = suite.observe(rgb, t)
                c1 = time.thread_time()
                suite.quality_crop(rgb, obs, best)
                c2 = time.thread_time()
                rgb.fill(0)
                if i == 0:            # first invokes: warm-up
                    continue
                o, v = (c1 - c0) * 1e3, acc[0] * 1e3
                res["observe"].append(o)
                res["invokes"].append(v)
                res["glue"].append(o - v)
                res["quality_crop"].append((c2 - c1) * 1e3)
                if obs.pad_real is None and not obs.detected and obs.has_face:
                    res["glue_tracked"].append(o - v)
            best.wipe()
    finally:
        runtime.ModelRuntime.invoke = orig
        suite.reset()
    return {k: {"median_ms": round(float(np.median(v)), 3), "mean_ms": round(float(np.mean(v)), 3), "n": len(v)}
            for k, v in res.items() if v}


def _h(a) -> str | None:
    return None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def dump(clips: list[Path], models_dir: Path | None, model_set: str) -> list:
    from kyc_tools.bench.frame import iter_frames
    suite = _suite(models_dir, model_set)
    tr = suite.tracker
    out = []
    for clip in clips:
        suite.reset()
        best = suite.best_frames()
        for rgb, t, _, _ in iter_frames(Path(clip), 0):
            o = suite.observe(rgb, t)
            crop = suite.quality_crop(rgb, o, best)
            out.append([Path(clip).name, t, o.faces, o.box, _h(o.keypoints), _h(o.landmarks), o.presence,
                        o.yaw, o.pitch, o.roll, o.raw_yaw, o.raw_pitch, o.raw_roll, o.ear, o.ear_mesh, o.eyes_closed,
                        None if o.blink is None else [o.blink.t_start, o.blink.t_end, o.blink.depth], o.pad_real,
                        o.frontal, o.detected, None if o.unmeshed is None else [o.unmeshed[0], _h(o.unmeshed[1])],
                        list(suite.last_failed), _h(crop), tr.blinker.ratio])
            rgb.fill(0)
        out.append([Path(clip).name, "end", tr.faces_seen_max, tr.max_gap_s, tr.pad_scores,
                    [(b.t_start, b.t_end, b.depth) for b in tr.blinks], tr.blinker.rejected,
                    tr.blinker.rejected_sparse, tr.blinker.relearned, [_h(c) for c in best.crops()]])
        best.wipe()
    suite.reset()
    return out


def main(argv=None) -> int:
    from kyc_tools.bench.frame import BLINK_VIDEO
    ap = argparse.ArgumentParser(prog="python -m kyc_tools.bench.glue", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("overhead")
    a.add_argument("--frames", default=str(BLINK_VIDEO))
    a.add_argument("--reps", type=int, default=3)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("clips", nargs="+")
    for p in (a, d):
        p.add_argument("--models-dir")
        p.add_argument("--model-set", default="int8")
    args = ap.parse_args(argv)
    md = Path(args.models_dir) if args.models_dir else None
    if args.cmd == "overhead":
        print(json.dumps(overhead(Path(args.frames), md, args.model_set, args.reps)))
    else:
        rows = dump([Path(c) for c in args.clips], md, args.model_set)
        Path(args.out).write_text(json.dumps(rows, default=float))
        print(f"{len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
