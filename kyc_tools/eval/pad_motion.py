"""Does the face move against its background? A video-level passive candidate (issue 12: "a face and
background that move rigidly together (a hand-held photo or phone)").

    python -m kyc_tools.eval.pad_motion --labels ../shared/data/replay-attack-dev/labels.csv \\
        --scores-train tr.npz --scores-test dv.npz

A printed or displayed photo is one rigid plane: held still (fixed support) neither the face nor the scene
around it moves; held by hand both shift together. A live face moves against a still background. Per pair
of consecutive frames of a video: the shift of the face region and of the rest of the frame (the face and
the body below it masked), each by phase correlation of the grey frames (cv2.phaseCorrelate, Hanning
window), in face widths. Per video: the median over its pairs of |face shift - background shift|
(`relative`), of the background shift (`background`) and of the face shift (`face`).

The PAD score of a video is the shipped one (logit4 frame scores from a `pad_study dump` .npz, fused as a
session fuses them, `decision.fuse_pad`). A logistic fusion of its log-odds with log(relative) and
log(background) (4 numbers) is fitted on the train videos; its threshold keeps train video BPCER at 5 %;
both are applied unchanged to the test videos. Nothing here is shipped: it is an evaluation.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

EPS = 0.005     # face widths: below any shift phase correlation resolves at 320x240


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    win = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, win)
    return float(np.hypot(dx, dy))


def pair_motion(g0: np.ndarray, g1: np.ndarray, box) -> tuple[float, float]:
    """(face shift, background shift) in face widths between two grey float32 frames; box = the face in g0."""
    h, w = g0.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    fw = max(x1 - x0, 8)
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    face = _shift(np.ascontiguousarray(g0[fy0:fy1, fx0:fx1]), np.ascontiguousarray(g1[fy0:fy1, fx0:fx1]))
    # the background: everything but the face (widened, with the hair) and the body below it
    m0, m1 = g0.copy(), g1.copy()
    bx0, bx1 = max(0, x0 - fw // 2), min(w, x1 + fw // 2)
    by0 = max(0, y0 - fw // 2)
    for m in (m0, m1):
        m[by0:, bx0:bx1] = float(m.mean())
    return face / fw, _shift(m0, m1) / fw


def video_motion(frames: list[np.ndarray], detector) -> dict | None:
    """frames: RGB images of one video in time order -> its median motion figures, or None without a face."""
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
    faces, bgs, rels = [], [], []
    for i in range(len(frames) - 1):
        found = detector.detect(frames[i]).faces
        if not found:
            continue
        box = max(found, key=lambda q: q.width * q.height).box
        f, b = pair_motion(grey[i], grey[i + 1], box)
        faces.append(f)
        bgs.append(b)
        rels.append(abs(f - b))
    if not rels:
        return None
    return {"face": float(np.median(faces)), "background": float(np.median(bgs)),
            "relative": float(np.median(rels)), "pairs": len(rels)}


def motion_table(labels: Path, split: str, detector) -> dict[str, dict]:
    """video -> motion figures and label, for the rows of one split."""
    root = Path(labels).parent
    by_video: dict[str, list[dict]] = {}
    with open(labels, newline="") as fh:
        for r in csv.DictReader(fh):
            if r.get("split") == split:
                by_video.setdefault(r["video"], []).append(r)
    out = {}
    for v, rows in sorted(by_video.items()):
        rows.sort(key=lambda r: r["path"])
        frames = [cv2.cvtColor(cv2.imread(str(root / r["path"])), cv2.COLOR_BGR2RGB) for r in rows]
        m = video_motion(frames, detector)
        out[v] = {"label": rows[0]["label"].lower(), **(m or {})}
    return out


def video_pad(npz: Path) -> dict[str, float]:
    """video -> the shipped logit4 score of its frames, fused as a session fuses them."""
    from device.liveness.decision import fuse_pad
    from device.vision.antispoof import fuse_logit4
    z = np.load(npz, allow_pickle=False)
    keys = list(z["keys"])
    idx = [keys.index(k) for k in ("v2@2.7/raw", "v1se@4.0/raw", "v2@1.0/raw", "v1se@1.0/raw")]
    out: dict[str, list[float]] = {}
    for v, row in zip(z["video"].astype(str), z["X"]):
        per = row[idx]
        out.setdefault(v, []).append(0.0 if np.isnan(per).any() else fuse_logit4(per))   # no face: 0
    return {v: (fuse_pad(x) or 0.0) for v, x in out.items()}


def _design(table: dict, pad: dict, videos: list[str], use_motion: bool) -> np.ndarray:
    from kyc_tools.eval.pad_study import _logit
    rows = []
    for v in videos:
        row = [float(_logit(pad.get(v, 0.0)))]
        if use_motion:
            m = table[v]
            row += [np.log(m.get("relative", 0.0) + EPS), np.log(m.get("background", 0.0) + EPS)]
        rows.append(row)
    return np.array(rows, np.float64)


def study(labels: Path, scores_train: Path, scores_test: Path, model_dir=None) -> dict:
    from device.vision.detect import DetectorOptions, FaceDetector
    from kyc_tools.eval.commands_liveness import model_files, resolve_model_dir
    from kyc_tools.eval.pad_study import apply_logistic, figures, fit_logistic, thr_for_bpcer
    det = FaceDetector.create(DetectorOptions(str(model_files(resolve_model_dir(model_dir))["detector"])))
    out: dict = {"command": "pad_motion", "labels": str(labels), "candidates": {}, "motion_medians": {}}
    tabs = {sp: motion_table(labels, sp, det) for sp in ("train", "devel")}
    pads = {"train": video_pad(scores_train), "devel": video_pad(scores_test)}
    for sp, t in tabs.items():
        med: dict[str, dict] = {}
        for lab in sorted({m["label"] for m in t.values()}):
            ms = [m for m in t.values() if m["label"] == lab and "relative" in m]
            med[lab] = {k: round(float(np.median([m[k] for m in ms])), 4) for k in ("relative", "background", "face")}
        out["motion_medians"][sp] = med
    vids = {sp: sorted(tabs[sp]) for sp in tabs}
    types = {sp: np.array([tabs[sp][v]["label"] for v in vids[sp]]) for sp in tabs}
    bona = {sp: np.isin(types[sp], ["live", "real", "genuine"]) for sp in tabs}      # as pad_study._load
    for name, use in (("pad_only", False), ("pad_plus_motion", True)):
        X = {sp: _design(tabs[sp], pads[sp], vids[sp], use) for sp in tabs}
        model = fit_logistic(X["train"], bona["train"].astype(float))
        s = {sp: apply_logistic(model, X[sp]) for sp in tabs}
        thr = thr_for_bpcer(s["train"], bona["train"], 0.05)
        out["candidates"][name] = {"threshold_from_train": thr,
                                   "weights": {"w": model[2].tolist(), "b": float(model[3])},
                                   **{sp: figures(s[sp], bona[sp], types[sp], thr) for sp in tabs}}
    return out


def main(argv=None) -> int:
    from kyc_tools.eval.common import emit_json
    ap = argparse.ArgumentParser(prog="pad_motion")
    ap.add_argument("--labels", required=True, help="replay-attack-dev labels.csv (video and split columns)")
    ap.add_argument("--scores-train", required=True, help="pad_study dump of the train split")
    ap.add_argument("--scores-test", required=True, help="pad_study dump of the devel split")
    ap.add_argument("--model-dir")
    a = ap.parse_args(argv)
    emit_json(study(Path(a.labels), Path(a.scores_train), Path(a.scores_test), a.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
