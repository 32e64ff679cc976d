"""MediaPipe's own FaceMesh graph on the bench's frames: the peer for `kyc-edge bench --vs-mediapipe`.

Runs inside .venv-mediapipe (scripts/bench-mediapipe-venv: mediapipe==0.10.14, numpy<2), never in the
project's venv, and imports nothing from `device`. Prints one JSON line on stdout.

    .venv-mediapipe/bin/python kyc_tools/bench/mediapipe_peer.py --video FILE [--limit N]
    .venv-mediapipe/bin/python kyc_tools/bench/mediapipe_peer.py --list FILES.txt [--limit N]

The graph is the legacy `mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=False)`: BlazeFace
short range on the first frame and whenever the face is lost, otherwise the crop comes from the previous
frame's landmarks (tracking) - the same two .tflite files as our float set (face_detection_short_range,
face_landmark), bundled in the wheel. `process_ms` is the wall time of `FaceMesh.process(rgb)` per frame:
image copy into the graph, detection or tracking, FaceMesh, and the landmark list handed back to Python.
Decoding is timed separately (`decode_ms`) and is not part of it. Frame 0 (graph warm-up) is left out of
the statistics and shown as `first_frame_ms`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def _stats(v):
    import numpy as np
    a = np.asarray(v, np.float64)
    if a.size == 0:
        return None
    return {"median": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def _frames(args):
    import cv2
    n = 0
    if args.video:
        cap = cv2.VideoCapture(args.video)
        if not cap.isOpened():
            raise SystemExit(f"cannot open {args.video}")
        while not (args.limit and n >= args.limit):
            t0 = time.perf_counter()
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield rgb, (time.perf_counter() - t0) * 1000.0
            n += 1
        cap.release()
        return
    with open(args.list) as fh:
        files = [line.strip() for line in fh if line.strip()]
    for f in files:
        if args.limit and n >= args.limit:
            break
        t0 = time.perf_counter()
        bgr = cv2.imread(f, cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        yield rgb, (time.perf_counter() - t0) * 1000.0
        n += 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--video")
    g.add_argument("--list", help="text file: one image path per line, in order")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--refine", action="store_true",
                   help="refine_landmarks=True: the attention mesh with iris and refined lips/eyes (the like-for-like "
                        "peer for our FaceMesh + iris refiner)")
    p.add_argument("--lockstep", action="store_true",
                   help="decode a frame, then wait for a line on stdin before processing it, and print "
                        "{'i','ms','face'} per frame: the bench interleaves MediaPipe with its own pass frame by "
                        "frame on the same core, so both see the same load")
    args = p.parse_args(argv)

    os.environ.setdefault("GLOG_minloglevel", "2")
    import mediapipe as mp
    t0 = time.perf_counter()
    fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=args.refine,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5)
    init_ms = (time.perf_counter() - t0) * 1000.0
    proc, proc_cpu, dec = [], [], []
    first = None
    faces = n = 0
    wall0 = time.perf_counter()
    it = _frames(args)
    while True:
        # lockstep: wait for the go before decoding too, so nothing of ours runs while the bench works
        if args.lockstep and not sys.stdin.readline():
            break
        nxt = next(it, None)
        if nxt is None:
            break
        rgb, dec_ms = nxt
        rgb.flags.writeable = False      # lets MediaPipe wrap the buffer instead of copying it
        t0, c0 = time.perf_counter(), time.process_time()
        res = fm.process(rgb)
        ms = (time.perf_counter() - t0) * 1000.0
        cpu_ms = (time.process_time() - c0) * 1000.0   # all of the graph's threads
        found = bool(res.multi_face_landmarks)
        faces += int(found)
        if args.lockstep:
            sys.stdout.write(json.dumps({"i": n, "ms": round(ms, 4), "cpu_ms": round(cpu_ms, 4), "face": found}) + "\n")
            sys.stdout.flush()
        if n == 0:
            first = {"process": round(ms, 3), "decode": round(dec_ms, 3)}
        else:
            proc.append(ms)
            proc_cpu.append(cpu_ms)
            dec.append(dec_ms)
        n += 1
    wall_s = time.perf_counter() - wall0
    fm.close()
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = None
    print(json.dumps({
        "peer": f"mediapipe.solutions.face_mesh (static_image_mode=False, max_num_faces=1, refine_landmarks={args.refine})",
        "mediapipe": mp.__version__, "python": sys.version.split()[0], "cpu_affinity": cpus,
        "frames": n, "frames_with_face": faces, "graph_init_ms": round(init_ms, 1),
        "first_frame_ms": first, "process_ms": _stats(proc), "process_cpu_ms": _stats(proc_cpu), "decode_ms": _stats(dec),
        "sustained_fps": None if args.lockstep else (
            round((n - 1) / max(wall_s - (first or {}).get("process", 0) / 1000.0, 1e-9), 2) if n > 1 else None),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
