"""Frame-level presentation-attack detection figures in ISO/IEC 30107-3 terms.

    kyc-edge eval pad --labels ../shared/data/nuaa-train/labels.csv [--root DIR] [--model-dir DIR]
                      [--threshold T] [--config FILE] [--split train|devel] [--plot det.png]
                      [--limit N] [--stride K]

`--threshold` defaults to the configured `liveness.pad_threshold` (--config FILE, else the default
config file when it exists, else the built-in default); the JSON says which (`threshold_source`).
`--split` keeps only the rows whose `split` column equals it (replay-attack-dev: train / devel).

Input: a CSV with columns `path,label` (more columns are fine); `path` relative to --root (default:
the CSV's folder). Bona fide labels: live, real, bonafide, genuine, 1. Every other label is an attack
type (PAI species): nuaa `print`, celeba-spoof `spoof`. For NUAA the print attacks are also broken
down by `pos` (00 still, 01-04 moved/bent) when the column exists.

Per image: BlazeFace, the largest face, the PAD score the device computes -> p_real: `--fusion`
(default the configured liveness.pad_fusion) `logit4` = V2 2.7 + V1SE 4.0 + both on the face box,
log-odds fused; `mean2` = the upstream V2 (2.7) + V1SE (4.0) mean.
An image without a detected face is a failure to acquire: it is counted (`fta`) and scored 0
(rejected), which counts against BPCER for bona fide images and is a correct rejection for attacks.

Figures (accept as bona fide when p_real >= threshold):
- APCER per attack type = accepted attacks / attacks of that type; APCER_max over types;
- BPCER = rejected bona fide / bona fide;
- ACER = (APCER_max + BPCER) / 2 (the conventional average; ISO 30107-3 itself reports the pair);
- EER and its threshold (from kyc_tools.eval.common), and APCER/BPCER/ACER at that threshold
  (an a-posteriori operating point: optimistic, shown for comparison only);
- BPCER at APCER = 1 % and 5 % (BPCER20 style).

Video level (when the CSV has a `video` column, e.g. replay-attack-dev): the frames of a video are
fused into one score exactly as a session fuses its per-frame scores (device.liveness.decision
.fuse_pad over the frames with a face; a video with no scored frame scores 0), and the same figures
are reported under `video` (APCER per attack type, BPCER, ACER, EER, BPCER at APCER 1 % / 5 %).
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import cv2
import numpy as np

from kyc_tools.eval.common import Progress, emit_json, eer, plot_det

BONA_FIDE = {"live", "real", "bonafide", "bona_fide", "genuine", "1"}
DET = "face_detection_short_range.tflite"
PAD = ("minifasnet_v2_2.7_80x80.tflite", "minifasnet_v1se_4.0_80x80.tflite")


def read_labels(csv_path: Path, root: Path | None = None, limit: int = 0, stride: int = 1) -> list[dict]:
    csv_path = Path(csv_path)
    root = Path(root) if root else csv_path.parent
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise ValueError(f"{csv_path}: expected columns path,label")
    rows = rows[:: max(1, stride)]
    if limit:
        rows = rows[:limit]
    for r in rows:
        r["file"] = str(root / r["path"])
        r["bona_fide"] = r["label"].strip().lower() in BONA_FIDE
    return rows


def model_paths(model_dir: Path) -> tuple[Path, tuple[Path, Path]]:
    from kyc_tools.eval.commands_liveness import model_files
    f = model_files(Path(model_dir))
    return f["detector"], (f["antispoof_v2"], f["antispoof_v1se"])


class FramePad:
    """Detector + ensemble on still images (largest face)."""

    def __init__(self, model_dir: Path, threads: int = 1, box_expand: float = 1.0, fusion: str = "mean2"):
        from device.vision.antispoof import AntiSpoof, AntiSpoofOptions
        from device.vision.detect import DetectorOptions, FaceDetector
        det, pads = model_paths(model_dir)
        self.det = FaceDetector.create(DetectorOptions(str(det), threads=threads))
        self.pad = AntiSpoof.create(AntiSpoofOptions(tuple(str(p) for p in pads), threads=threads,
                                                     box_expand=box_expand, fusion=fusion))
        self.ms: list[float] = []

    def score(self, rgb: np.ndarray) -> float | None:
        faces = self.det.detect(rgb).faces
        if not faces:
            return None
        f = max(faces, key=lambda f: f.width * f.height)
        t0 = time.perf_counter()
        s = self.pad.score(rgb, f.box).p_real
        self.ms.append((time.perf_counter() - t0) * 1000)
        return s


def rates(scores: np.ndarray, bona: np.ndarray, types: np.ndarray, thr: float) -> dict:
    acc = scores >= thr
    out = {"threshold": float(thr)}
    ap = {}
    for t in sorted(set(types[~bona].tolist())):
        m = (~bona) & (types == t)
        ap[t] = float(acc[m].mean())
    out["apcer"] = ap
    out["apcer_max"] = max(ap.values()) if ap else None
    out["bpcer"] = float((~acc[bona]).mean()) if bona.any() else None
    if out["apcer_max"] is not None and out["bpcer"] is not None:
        out["acer"] = (out["apcer_max"] + out["bpcer"]) / 2
    return out


def bpcer_at_apcer(scores, bona, target: float) -> tuple[float, float]:
    att = np.sort(scores[~bona])[::-1]
    k = int(np.floor(target * len(att) + 1e-9))
    thr = float(np.nextafter(att[k], np.inf)) if k < len(att) else float(att[-1])
    return float((scores[bona] < thr).mean()), thr


def evaluate(rows: list[dict], model_dir: Path, threshold: float = 0.5, threads: int = 1,
             box_expand: float = 1.0, progress: bool = True, fusion: str = "mean2") -> tuple[dict, np.ndarray]:
    """-> (summary dict, per-row p_real scores; 0 where no face was found)."""
    fp = FramePad(model_dir, threads, box_expand, fusion)
    scores, fta = [], 0
    bar = Progress(len(rows), "eval pad") if progress else None
    for r in rows:
        bgr = cv2.imread(r["file"], cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(r["file"])
        s = fp.score(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        r["_found"] = s is not None
        if s is None:
            fta += 1
            s = 0.0
        scores.append(s)
        if bar:
            bar.update()
    if bar:
        bar.close()
    sc = np.asarray(scores)
    return summarise(rows, sc, threshold, fta, fp.ms), sc


def attack_type(r: dict) -> str:
    return r["label"].strip().lower()


def summarise(rows, scores, threshold, fta=0, ms=()) -> dict:
    bona = np.array([r["bona_fide"] for r in rows])
    types = np.array([attack_type(r) for r in rows])
    out = {"images": len(rows), "bona_fide": int(bona.sum()), "attacks": int((~bona).sum()),
           "attack_types": {t: int(((~bona) & (types == t)).sum()) for t in sorted(set(types[~bona].tolist()))},
           "fta": int(fta), "at_threshold": rates(scores, bona, types, threshold)}
    if "pos" in rows[0]:
        sub = {}
        for p in sorted({r["pos"] for r, b in zip(rows, bona) if not b}):
            m = (~bona) & np.array([r["pos"] == p for r in rows])
            sub[f"pos_{p}"] = float((scores[m] >= threshold).mean())
        out["at_threshold"]["apcer_by_pos"] = sub
    if bona.any() and (~bona).any():
        e, t = eer(scores, bona.astype(int))
        out["eer"] = e
        out["threshold_at_eer"] = t
        out["at_eer_threshold"] = rates(scores, bona, types, t)
        for target in (0.01, 0.05):
            b, th = bpcer_at_apcer(scores, bona, target)
            out[f"bpcer_at_apcer_{int(target * 100)}pct"] = b
            out[f"threshold_at_apcer_{int(target * 100)}pct"] = th
    if len(ms):
        out["pad_ms_median"] = float(np.median(ms))
    out["scores_real_median"] = {"bona_fide": float(np.median(scores[bona])) if bona.any() else None,
                                 "attack": float(np.median(scores[~bona])) if (~bona).any() else None}
    return out


def video_rows(rows: list[dict], scores: np.ndarray, found: np.ndarray | None = None,
               fuse=None) -> tuple[list[dict], np.ndarray]:
    """Group frames by their `video` column -> (one row a video, one fused score a video).

    fuse: per-frame scores -> fused score or None (default: the session's fuse_pad). Frames without
    a face (`found` False) are not scored, as in a session; a video without a scored frame is 0."""
    from device.liveness.decision import fuse_pad
    fuse = fuse or fuse_pad
    found = np.ones(len(rows), bool) if found is None else np.asarray(found, bool)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["video"], []).append(i)
    vrows, vscores = [], []
    for v, idx in groups.items():
        r0 = rows[idx[0]]
        labels = {rows[i]["label"] for i in idx}
        if len(labels) != 1:
            raise ValueError(f"video {v}: frames with different labels {sorted(labels)}")
        f = fuse([float(scores[i]) for i in idx if found[i]])
        vrows.append({"video": v, "label": r0["label"], "bona_fide": r0["bona_fide"], "frames": len(idx)})
        vscores.append(0.0 if f is None else f)
    return vrows, np.asarray(vscores, float)


def plot(path, rows, scores, title="PAD", video=None) -> None:
    bona = np.array([r["bona_fide"] for r in rows]).astype(int)
    curves = [("MiniFASNet V2+V1SE, frames", scores, bona)]
    if video is not None:
        vr, vs = video
        curves.append(("same, videos (session fusion)", vs, np.array([r["bona_fide"] for r in vr]).astype(int)))
    plot_det(path, curves, title=title)


def configured_fusion(config_path: str | None) -> str:
    from device import config as config_mod
    try:
        if config_path or Path(config_mod.DEFAULT_PATH).is_file():
            return config_mod.load(config_path).liveness.pad_fusion
    except config_mod.ConfigError:
        pass
    return config_mod.Config().liveness.pad_fusion


def configured_threshold(config_path: str | None) -> tuple[float, str]:
    from device import config as config_mod
    if config_path:
        return config_mod.load(config_path).liveness.pad_threshold, str(config_path)
    if Path(config_mod.DEFAULT_PATH).is_file():
        try:
            return config_mod.load(None).liveness.pad_threshold, str(config_mod.DEFAULT_PATH)
        except config_mod.ConfigError:
            pass
    return config_mod.Config().liveness.pad_threshold, "built-in default"


def run(args) -> int:
    from kyc_tools.eval.commands_liveness import resolve_model_dir
    rows = read_labels(Path(args.labels), Path(args.root) if args.root else None, 0, 1)
    split = getattr(args, "split", None)
    if split:
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise SystemExit(f"no rows with split={split}")
    rows = rows[:: max(1, args.stride)]
    if args.limit:
        rows = rows[: args.limit]
    md = resolve_model_dir(args.model_dir)
    if args.threshold is None:
        thr, source = configured_threshold(getattr(args, "config", None))
    else:
        thr, source = float(args.threshold), "--threshold"
    fusion = getattr(args, "fusion", None) or configured_fusion(getattr(args, "config", None))
    res, scores = evaluate(rows, md, thr, args.threads, args.box_expand, fusion=fusion)
    from kyc_tools.eval.commands_liveness import model_files
    files = model_files(md)
    res = {"command": "eval pad", "labels": str(args.labels), **({"split": split} if split else {}),
           "model_dir": str(md), "threshold_source": source, "fusion": fusion,
           "models": {k: files[k].name for k in ("detector", "antispoof_v2", "antispoof_v1se")}, **res}
    video = None
    if rows and "video" in rows[0]:
        video = video_rows(rows, scores, found=np.array([r.get("_found", True) for r in rows]))
        vres = summarise(video[0], video[1], thr)
        vres["videos"] = vres.pop("images")
        vres.pop("fta", None)
        res["video"] = {"fusion": "device.liveness.decision.fuse_pad over the frames with a face", **vres}
    if args.plot:
        plot(args.plot, rows, scores, title=f"PAD DET: {Path(args.labels).parent.name}", video=video)
        res["plot"] = str(args.plot)
    emit_json(res)
    return 0
