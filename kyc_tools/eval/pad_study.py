"""Passive-layer candidates, measured per frame (the figures in docs/liveness.md "Passive candidates").

    python -m kyc_tools.eval.pad_study dump --labels CSV --out scores.npz [--model-dir DIR]
    python -m kyc_tools.eval.pad_study report --train A.npz --test B.npz [--test C.npz ...]

`dump` runs BlazeFace (largest face) on every image of a labels CSV (`path,label[,video,...]`) and
stores, per image, the real-class probability of every MiniFASNet model under every crop candidate,
plus a few hand-crafted texture cues of the face region. `report` evaluates each candidate: a
threshold (or a logistic fusion of a few scores) is chosen on --train only and applied unchanged to
every --test file. Nothing is learned but a threshold and at most a handful of fusion weights.

Crop candidates (box = BlazeFace square, about eyebrows to mouth):
- raw:   the raw box (what the device uses today);
- mv:    a minivision-like box (its Caffe detector: forehead to chin): height x1.2, centre up 0.1 h;
- mvw:   height x1.25, width x1.0, centre up 0.12 h, then scales as trained;
- e115:  box x1.15 both sides;
- flip:  raw box, horizontally flipped image (test-time augmentation).
Each model is also run at the other model's scale (`v2@4.0`, `v1se@2.7`) and at 1.0 / 5.0.

Texture cues on a 1.6x face crop resized to 128x128 grey (all cheap, < 0.5 ms):
- hf:   share of spectral energy above 0.25 cycles/px (screens and prints lose or alias it);
- moire: peak-to-median ratio of the mid/high-frequency spectrum (periodic screen patterns);
- spec: share of near-white low-saturation pixels in the face (specular highlights of a glossy screen);
- sat:  mean saturation of the face (print tone loss);
- lap:  log Laplacian variance (sharpness).
Edge cues on the whole frame (`edge_cues`, ~1 ms at 320x240): long straight near-vertical / near-horizontal
edges beside the face (a screen's bezel, a phone's or a print's border): edge_sides, edge_lr, edge_len.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

from device.vision.antispoof import crop_box

VARIANTS = {"raw": (1.0, 1.0, 0.0), "mv": (1.0, 1.2, 0.1), "mvw": (1.0, 1.25, 0.12), "e115": (1.15, 1.0, 0.0)}
SCALES = (1.0, 2.7, 4.0, 5.0)


def _box_xywh(box, expand, tall, shift):
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2 - shift * h
    w, h = w * expand, h * expand * tall
    return (cx - w / 2, cy - h / 2, w, h)


def texture_cues(rgb: np.ndarray, box) -> dict[str, float]:
    x, y, w, h = _box_xywh(box, 1.0, 1.0, 0.0)
    patch = crop_box(rgb, (x, y, w, h), 1.6, 128)
    g = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).astype(np.float32)
    g -= g.mean()
    win = np.outer(np.hanning(128), np.hanning(128)).astype(np.float32)
    F = np.abs(np.fft.fftshift(np.fft.fft2(g * win))) ** 2
    yy, xx = np.mgrid[-64:64, -64:64] / 128.0
    r = np.hypot(yy, xx)
    tot = F[r > 0.02].sum() + 1e-9
    hf = float(F[r > 0.25].sum() / tot)
    band = F[(r > 0.12) & (r < 0.45)]
    moire = float(np.log(band.max() / (np.median(band) + 1e-9) + 1e-9))
    inner = crop_box(rgb, (x, y, w, h), 1.0, 64)
    hsv = cv2.cvtColor(inner, cv2.COLOR_RGB2HSV).astype(np.float32)
    spec = float(((hsv[..., 2] > 240) & (hsv[..., 1] < 40)).mean())
    sat = float(hsv[..., 1].mean() / 255.0)
    lap = float(np.log(cv2.Laplacian(cv2.cvtColor(inner, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var() + 1.0))
    return {"hf": hf, "moire": moire, "spec": spec, "sat": sat, "lap": lap}


def edge_cues(rgb: np.ndarray, box) -> dict[str, float]:
    """A screen's, a phone's or a print's border around the face: long straight edges beside it.

    Canny on the whole grey frame (thresholds from its median), probabilistic Hough lines at least 0.8 face
    sizes long, kept if near-vertical / near-horizontal (15 deg), beside the face (left / right of the face
    box widened by 0.15 w, above / below it with room for forehead and chin) within 3 face sizes, and
    overlapping the face's extent across. edge_sides: how many of the 4 sides have one; edge_lr: 1 if both
    left and right do (a frame around the face); edge_len: their total length in face sizes (capped at 20)."""
    g = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (5, 5), 0)
    x0, y0, x1, y1 = (float(v) for v in box)
    fw, fh = x1 - x0, y1 - y0
    size = max(fw, fh, 1.0)
    med = float(np.median(g))
    edges = cv2.Canny(g, 0.66 * med, 1.33 * med)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=30, minLineLength=int(0.8 * size), maxLineGap=4)
    ex0, ex1 = x0 - 0.15 * fw, x1 + 0.15 * fw
    ey0, ey1 = y0 - 0.35 * fh, y1 + 0.6 * fh
    sides = {"l": 0, "r": 0, "t": 0, "b": 0}
    total = 0.0
    for xa, ya, xb, yb in (np.asarray(lines, np.float64).reshape(-1, 4) if lines is not None else []):
        ang = abs(np.degrees(np.arctan2(float(yb - ya), float(xb - xa)))) % 180.0
        if abs(ang - 90.0) < 15.0:
            if max(ya, yb) < y0 or min(ya, yb) > y1:
                continue
            xm = (xa + xb) / 2.0
            side = "l" if ex0 - 3 * size < xm < ex0 else "r" if ex1 < xm < ex1 + 3 * size else None
        elif ang < 15.0 or ang > 165.0:
            if max(xa, xb) < x0 or min(xa, xb) > x1:
                continue
            ym = (ya + yb) / 2.0
            side = "t" if ey0 - 3 * size < ym < ey0 else "b" if ey1 < ym < ey1 + 3 * size else None
        else:
            continue
        if side is None:
            continue
        sides[side] = 1
        total += float(np.hypot(xb - xa, yb - ya)) / size
    return {"edge_sides": float(sum(sides.values())), "edge_lr": float(sides["l"] and sides["r"]),
            "edge_len": min(total, 20.0)}


def dump(labels: Path, out: Path, model_dir: Path, limit: int = 0) -> None:
    from kyc_tools.eval.commands_liveness import model_files
    from kyc_tools.eval.common import Progress
    from device.vision.detect import DetectorOptions, FaceDetector
    from device.vision.runtime import load_interpreter
    f = model_files(model_dir)
    det = FaceDetector.create(DetectorOptions(str(f["detector"])))
    models = {}
    for name, role in (("v2", "antispoof_v2"), ("v1se", "antispoof_v1se")):
        it = load_interpreter(str(f[role]), 1)
        models[name] = (it, it.get_input_details()[0]["index"], it.get_output_details()[0]["index"])

    def p_real(name, patch_rgb):
        it, i, o = models[name]
        it.set_tensor(i, patch_rgb[..., ::-1].astype(np.float32)[None])
        it.invoke()
        z = it.get_tensor(o)[0].astype(np.float64)
        p = np.exp(z - z.max())
        return float(p[1] / p.sum())

    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    root = Path(labels).parent
    keys: list[str] = []
    data: list[list[float]] = []
    meta = {"label": [], "video": [], "split": [], "path": []}
    bar = Progress(len(rows), f"dump {Path(labels).parent.name}")
    for r in rows:
        bgr = cv2.imread(str(root / r["path"]))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        faces = det.detect(rgb).faces
        feats: dict[str, float] = {}
        if faces:
            face = max(faces, key=lambda q: q.width * q.height)
            for vn, (e, t, s) in VARIANTS.items():
                xywh = _box_xywh(face.box, e, t, s)
                for m in ("v2", "v1se"):
                    for sc in (SCALES if vn == "raw" else ((2.7,) if m == "v2" else (4.0,))):
                        feats[f"{m}@{sc}/{vn}"] = p_real(m, crop_box(rgb, xywh, sc))
            flipped = rgb[:, ::-1].copy()
            W = rgb.shape[1]
            x0, y0, x1, y1 = face.box
            fb = (W - x1, y0, W - x0, y1)
            xywh = _box_xywh(fb, 1, 1, 0)
            feats["v2@2.7/flip"] = p_real("v2", crop_box(flipped, xywh, 2.7))
            feats["v1se@4.0/flip"] = p_real("v1se", crop_box(flipped, xywh, 4.0))
            feats.update(texture_cues(rgb, face.box))
            feats.update(edge_cues(rgb, face.box))
            feats["face_frac"] = float(face.width / rgb.shape[1])
            feats["found"] = 1.0
            if not keys:
                keys = list(feats)
        data.append([feats.get(k, np.nan) for k in keys] if keys else feats)
        for k in meta:
            meta[k].append(r.get(k, ""))
        bar.update()
    bar.close()
    # rows before the first face found carry an empty dict
    width = len(keys)
    arr = np.array([d if isinstance(d, list) else [np.nan] * width for d in data], np.float64)
    np.savez_compressed(out, X=arr, keys=np.array(keys), **{k: np.array(v) for k, v in meta.items()})


# ------------------------------------------------------------------ report
def _load(p):
    z = np.load(p, allow_pickle=False)
    d = {k: z[k] for k in z.files}
    d["bona"] = np.isin(np.char.lower(d["label"].astype(str)), ["live", "real", "genuine"])
    return d


def _col(d, expr):
    keys = list(d["keys"])
    X = d["X"]
    parts = expr.split("+")
    cols = [X[:, keys.index(p)] for p in parts]
    s = np.mean(cols, axis=0)
    return np.where(np.isnan(s), 0.0, s)   # no face: scored 0 (rejected)


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _features(d, names):
    keys = list(d["keys"])
    cols = []
    for n in names:
        c = d["X"][:, keys.index(n)]
        if "@" in n:
            c = _logit(np.nan_to_num(c, nan=1e-6))
        cols.append(np.nan_to_num(c, nan=0.0))
    return np.stack(cols, 1)


def fit_logistic(X, y, l2=1e-2, iters=500):
    """Plain L2 logistic regression (Newton steps); standardised inputs. -> (mu, sd, w, b)."""
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    n, k = Z.shape
    A = np.c_[Z, np.ones(n)]
    w = np.zeros(k + 1)
    # balance the classes
    cw = np.where(y, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-A @ w))
        g = A.T @ (cw * (p - y)) / n + l2 * np.r_[w[:-1], 0]
        H = (A * (cw * p * (1 - p))[:, None]).T @ A / n + l2 * np.diag(np.r_[np.ones(k), 0])
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mu, sd, w[:-1], w[-1]


def apply_logistic(model, X):
    mu, sd, w, b = model
    return 1 / (1 + np.exp(-(((X - mu) / sd) @ w + b)))


def _video_scores(d, s, fuse):
    vids = d["video"].astype(str)
    uniq = sorted(set(vids.tolist()))
    vs, vb, vt = [], [], []
    for v in uniq:
        m = vids == v
        vs.append(fuse(s[m]))
        vb.append(bool(d["bona"][m][0]))
        vt.append(str(d["label"][m][0]))
    return np.array(vs), np.array(vb), np.array(vt)


def figures(s, bona, types, thr):
    from kyc_tools.eval.pad import rates
    from kyc_tools.eval.common import eer
    out = rates(s, bona, types, thr)
    out["eer"] = eer(s, bona.astype(int))[0]
    return out


def thr_for_bpcer(s, bona, target):
    """Highest threshold keeping BPCER <= target on these scores."""
    b = np.sort(s[bona])
    k = int(np.floor(target * len(b)))
    return float(b[k]) if k < len(b) else float(b[-1])


def report(train: Path, tests: list[Path], candidates=None, bpcer=0.05) -> dict:
    from device.liveness.decision import fuse_pad
    tr = _load(train)
    tes = {Path(t).stem: _load(t) for t in tests}
    cands = candidates or [
        "v2@2.7/raw+v1se@4.0/raw", "v2@2.7/raw", "v1se@4.0/raw", "v2@2.7/mv+v1se@4.0/mv",
        "v2@2.7/mvw+v1se@4.0/mvw", "v2@2.7/e115+v1se@4.0/e115",
        "v2@2.7/raw+v1se@4.0/raw+v2@2.7/flip+v1se@4.0/flip",
        "v2@2.7/raw+v1se@4.0/raw+v2@4.0/raw+v1se@2.7/raw",
        "v2@1.0/raw+v1se@1.0/raw", "v2@5.0/raw+v1se@5.0/raw", "v2@4.0/raw+v1se@4.0/raw",
        "v2@2.7/raw+v1se@4.0/raw+v2@2.7/mv+v1se@4.0/mv",
    ]
    fusions = {
        "lr_models4": ["v2@2.7/raw", "v1se@4.0/raw", "v2@2.7/mv", "v1se@4.0/mv"],
        "lr_models2_tex": ["v2@2.7/raw", "v1se@4.0/raw", "hf", "moire", "spec", "sat", "lap"],
        "lr_tex_only": ["hf", "moire", "spec", "sat", "lap"],
        "lr_models_scales": ["v2@2.7/raw", "v1se@4.0/raw", "v2@1.0/raw", "v1se@1.0/raw", "v2@5.0/raw", "v1se@5.0/raw"],
        "lr_logit4": ["v2@2.7/raw", "v1se@4.0/raw", "v2@1.0/raw", "v1se@1.0/raw"],
        "lr_logit4_edges": ["v2@2.7/raw", "v1se@4.0/raw", "v2@1.0/raw", "v1se@1.0/raw", "edge_sides", "edge_lr", "edge_len"],
        "lr_edges_only": ["edge_sides", "edge_lr", "edge_len"],
    }
    res = {"train": str(train), "bpcer_target_on_train": bpcer, "candidates": {}}

    def evaluate(name, s_tr, s_te_map):
        thr = thr_for_bpcer(s_tr, tr["bona"], bpcer)
        e = {"threshold_from_train": thr}
        for split, (d, s) in {"train": (tr, s_tr), **s_te_map}.items():
            types = np.char.lower(d["label"].astype(str))
            r = {"frame_at_0.5": figures(s, d["bona"], types, 0.5),
                 "frame_at_train_thr": figures(s, d["bona"], types, thr)}
            if "video" in d and d["video"].astype(str)[0]:
                vs, vb, vt = _video_scores(d, s, fuse_pad)
                vthr = thr_for_bpcer(*_video_scores(tr, s_tr, fuse_pad)[:2], bpcer)
                r["video_at_train_thr"] = figures(vs, vb, np.char.lower(vt), vthr)
                r["video_at_train_thr"]["threshold"] = vthr
            e[split] = r
        res["candidates"][name] = e

    for c in cands:
        evaluate(c, _col(tr, c), {k: (d, _col(d, c)) for k, d in tes.items()})
    for name, feats in fusions.items():
        model = fit_logistic(_features(tr, feats), tr["bona"].astype(float))
        s_tr = apply_logistic(model, _features(tr, feats))
        evaluate(name, s_tr, {k: (d, apply_logistic(model, _features(d, feats))) for k, d in tes.items()})
        res["candidates"][name]["weights"] = {"features": feats, "mu": model[0].tolist(), "sd": model[1].tolist(),
                                              "w": model[2].tolist(), "b": float(model[3])}
    return res


def main(argv=None) -> int:
    from kyc_tools.eval.common import emit_json
    ap = argparse.ArgumentParser(prog="pad_study")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dump")
    p.add_argument("--labels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model-dir")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--split", help="keep only rows of this split (replay-attack: train / devel)")
    p = sub.add_parser("report")
    p.add_argument("--train", required=True)
    p.add_argument("--test", action="append", default=[])
    a = ap.parse_args(argv)
    if a.cmd == "dump":
        from kyc_tools.eval.commands_liveness import resolve_model_dir
        labels = Path(a.labels)
        if a.split:
            import tempfile
            with open(labels, newline="") as fh:
                rows = list(csv.DictReader(fh))
            keep = [r for r in rows if r.get("split") == a.split]
            tmp = Path(tempfile.mkdtemp()) / "labels.csv"
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(keep)
            # paths stay relative to the original folder
            for r in keep:
                r["path"] = str((labels.parent / r["path"]).resolve())   # absolute: the temp CSV lives elsewhere
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(keep)
            labels = tmp
        dump(labels, Path(a.out), resolve_model_dir(a.model_dir), a.limit)
        return 0
    emit_json(report(Path(a.train), [Path(t) for t in a.test]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
