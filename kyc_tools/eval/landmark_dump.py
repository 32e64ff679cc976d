"""Dump the tracker's per-frame geometry for offline study of landmark-only checks (flat_face).

    python -m kyc_tools.eval.landmark_dump --out DIR [--model-dir DIR]      # dump
    python -m kyc_tools.eval.landmark_dump --report DIR                      # flat_face figures (JSON)

Writes one .npz per clip set under DIR (t, yaw, pitch, roll, faces, landmarks (N,468,3), NaN where
no face): NUAA print and live sequences, the head-pose clips, the blink video, the sessions-dev
videos. Landmarks are geometry of real people: keep DIR outside the repository (e.g. /tmp) and
delete it after use; nothing here is committed.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def _run(tracker, frames):
    tracker.reset()
    t, yaw, pitch, roll, faces, lms = [], [], [], [], [], []
    for ts, load in frames:
        o = tracker.observe(load(), ts)
        t.append(ts)
        yaw.append(o.yaw if o.has_face else np.nan)
        pitch.append(o.pitch if o.has_face else np.nan)
        roll.append(o.roll if o.has_face else np.nan)
        faces.append(o.faces)
        lms.append(o.landmarks if o.has_face else np.full((468, 3), np.nan))
    return {"t": np.array(t), "yaw": np.array(yaw), "pitch": np.array(pitch), "roll": np.array(roll),
            "faces": np.array(faces), "lm": np.array(lms, np.float32)}


def report(d: Path, options=None) -> dict:
    """FlatFaceCheck over every dumped clip: per clip score / verdict, and counts per set and class."""
    from device.liveness.flatness import FlatFaceCheck
    out: dict = {"clips": {}, "summary": {}}
    for f in sorted(Path(d).glob("*.npz")):
        z = np.load(f)
        key, group = str(z["key"]), f.name.split("__")[0]
        chk = FlatFaceCheck(options)
        for t, y, lm in zip(z["t"], z["yaw"], z["lm"]):
            if np.isfinite(y):
                chk.update(float(t), float(y), lm)
        r = chk.result()
        cls = ("print" if key.startswith("print/") else "live" if key.startswith("live/") else
               "replay" if key.startswith("replay") else "genuine")
        if group == "nuaa" and cls == "print":
            cls = "print_pos" + key.rsplit("_p", 1)[1]
        out["clips"][f"{group}:{key}"] = {"score": r.score, "flat": r.flat, "turned_frames": r.pairs,
                                          "yaw_span": round(r.yaw_span, 1)}
        s = out["summary"].setdefault(f"{group}:{cls}", {"clips": 0, "flat": 0, "not_flat": 0, "no_verdict": 0})
        s["clips"] += 1
        s["flat" if r.flat else "no_verdict" if r.flat is None else "not_flat"] += 1
    return out


def main(argv=None) -> int:
    from kyc_tools.eval.commands_liveness import make_tracker, resolve_model_dir
    from kyc_tools.paths import shared_data_dir
    from kyc_tools.eval.liveness import _img_loader, clips
    from kyc_tools.eval.sessions import nuaa_sequences
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--report", help="dump folder: print the flat_face figures")
    ap.add_argument("--model-dir")
    ap.add_argument("--sets", default="nuaa,headpose,blink,sessions")
    ap.add_argument("--src-fps", type=float, default=20.0)
    a = ap.parse_args(argv)
    if a.report:
        from kyc_tools.eval.common import emit_json
        emit_json(report(Path(a.report)))
        return 0
    data = shared_data_dir()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tr = make_tracker(resolve_model_dir(a.model_dir), pad=False, iris=False)
    sets = a.sets.split(",")
    jobs: list[tuple[str, str, list]] = []
    if "nuaa" in sets:
        for label in ("print", "live"):
            for key, frames in nuaa_sequences(data / "nuaa-train", label):
                jobs.append(("nuaa", key, [(pic / a.src_fps, _img_loader(p)) for pic, p in frames]))
    if "headpose" in sets:
        for name, fr in clips(data / "headpose"):
            jobs.append(("headpose", name, fr))
    if "blink" in sets:
        jobs.append(("blink", "demo_old", None))
    if "sessions" in sets:
        with open(data / "sessions-dev" / "manifest.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                jobs.append(("sessions", f"{r['label']}|{r['subject']}|{r['path']}", None))
    for group, key, frames in jobs:
        if frames is None:
            from kyc_tools.eval.liveness import video_frames
            p = data / "blink" / "demo_old.mp4" if group == "blink" else data / "sessions-dev" / key.split("|", 2)[2]
            frames = video_frames(p)
        res = _run(tr, frames)
        safe = key.replace("/", "_").replace("|", "__")
        np.savez_compressed(out / f"{group}__{safe}.npz", key=key, **res)
        print(group, key, len(frames), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
