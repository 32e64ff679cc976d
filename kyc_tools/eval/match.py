"""`kyc-edge eval match`: the 1:1 face match measured on LFW-style pairs with the device's own path.

Each pair goes through exactly what a session does: detect -> align (both images), one embedder call
with the batch of 2 (live, card), cosine similarity. `--card-style` first turns the pair's first
image into a chip-like photo: a 102x126 head-and-shoulders crop, JPEG-compressed to at most 1,024
bytes, which then takes the card path (`prepare_card_face`, with its padded retry).

A pair whose face is not found in either image counts as a rejection (score -1) and is reported in
`failure_to_enrol`. Accuracy follows the LFW protocol: for each fold the accuracy-maximising
threshold on the other folds is applied to it. TAR/FAR figures pool all selected folds.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import cv2
import numpy as np

from kyc_tools import paths
from kyc_tools.eval import common
from device.vision.detect import MODEL_FILES, DetectorOptions, FaceDetector
from device.vision.embed import EmbedderOptions, FaceEmbedder, align_detected, cosine, prepare_card_face
from device.vision import embed2
from device.vision.landmarks import FaceLandmarker, LandmarkerOptions

CARD_W, CARD_H = 102, 126
CARD_MAX_BYTES = 1024


# ------------------------------------------------------------------ chip-like photo
def card_style(rgb: np.ndarray, face=None, max_bytes: int = CARD_MAX_BYTES) -> np.ndarray:
    """A chip-like photo of `rgb`: 102x126 head-and-shoulders crop on a light background,
    JPEG-compressed (optimised Huffman tables, the highest quality that fits max_bytes), decoded to RGB.

    The crop is built around the detected face (box and eyes): face box about 62 % of the photo's
    width, eyes about 42 % down, as on ID photos, but never larger than the image (on LFW's tight
    150x150 crops the face then fills about 78 % of the width). Without a face, a centred crop.
    """
    h, w = rgb.shape[:2]
    wmax = min(w, h * CARD_W / CARD_H)       # the largest 102:126 crop that fits the image
    if face is not None:
        x0, y0, x1, y1 = face.box
        eyes = face.keypoints[:2].mean(0)
        cw = min((x1 - x0) / 0.62, wmax)
        ch = cw * CARD_H / CARD_W
        left, top = float(eyes[0]) - cw / 2, float(eyes[1]) - 0.42 * ch
    else:
        cw = wmax
        ch = cw * CARD_H / CARD_W
        left, top = (w - cw) / 2, (h - ch) / 2
    # keep the crop inside the image: padding would add hard edges the tiny JPEG cannot afford
    left = min(max(left, 0.0), w - cw)
    top = min(max(top, 0.0), h - ch)
    sx = CARD_W / cw
    m = np.array([[sx, 0, -left * sx], [0, sx, -top * sx]], np.float64)
    crop = cv2.warpAffine(rgb, m, (CARD_W, CARD_H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    lo, hi, best = 1, 95, None
    while lo <= hi:                       # highest quality whose file fits
        q = (lo + hi) // 2
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
        if ok and len(buf) <= max_bytes:
            best, lo = buf, q + 1
        else:
            hi = q - 1
    if best is None:                      # even q=1 too big: grey (never the case at 102x126)
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        _, best = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 1])
    out = cv2.imdecode(best, cv2.IMREAD_COLOR)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------ models
def default_model_dir() -> Path:
    found = paths.default_model_dir()
    if found is None:
        raise FileNotFoundError("no model directory: pass --models-dir or set KYC_EDGE_MODEL_DIR "
                                "(kyc-edge models install)")
    return found


def _find(name: str | None, default: str, dirs) -> str:
    n = name or default
    p = Path(n)
    if p.is_file():
        return str(p)
    for d in dirs:
        for q in (Path(d) / n, Path(d) / "alternatives" / n):
            if q.is_file():
                return str(q)
    return str(Path(dirs[0]) / n)     # load_interpreter names the missing file


def _second_model(emb_path: str, dirs) -> str:
    """The second embedder's file as the device picks it (models.derived): its int8 build beside an int8
    MobileFaceNet build, else its float build; the first of `dirs` that holds it."""
    from device import models as models_mod
    int8 = any(e.file == Path(emb_path).name and e.precision == "int8" for e in models_mod.entries())
    picks = [models_mod.derived(Path(d), "embedder2", model_set="int8" if int8 else "float") for d in dirs]
    found = next((p for p in picks if p is not None and p.is_file()), None)
    if found is None:
        raise ValueError("no second embedder model (scripts/build-dlib-embedder; or --no-second-embedder)")
    return str(found)


def read_pairs(path, folds=None, limit: int = 0) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            fold = int(r["fold"])
            if folds and fold not in folds:
                continue
            rows.append({"fold": fold, "img1": r["img1"], "img2": r["img2"], "same": int(r["same"])})
    if limit and limit < len(rows):
        # keep both classes and all folds: an even spread over the file
        idx = np.linspace(0, len(rows) - 1, limit).round().astype(int)
        rows = [rows[i] for i in idx]
    return rows


def _load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------ scoring
class PairScorer:
    """The device's match path for one pair of images: returns (similarity | None, live_ok, card_ok)."""

    def __init__(self, detector: FaceDetector, embedder: FaceEmbedder, card_style_first: bool = False,
                 landmarker=None, second=None, fusion_weight: float = 0.5, card_restore: str = "none"):
        self.det, self.emb, self.card, self.lmk = detector, embedder, card_style_first, landmarker
        self.card_restore = card_restore
        self.second, self.weight = second, float(fusion_weight)
        self.components = None       # (MobileFaceNet cosine, second embedder cosine) of the last score()
        self.second_cpu_s = 0.0      # thread CPU time spent on the second embedder (chips + calls)

    def live_face(self, rgb, on_points=None):
        """As the session aligns a tracked frame: FaceMesh's 5 points, else BlazeFace's keypoints."""
        f = self.det.detect(rgb).largest()
        return None if f is None else align_detected(rgb, f, self.lmk, on_points=on_points)

    def make_card(self, img1: np.ndarray) -> np.ndarray:
        """The card-side photo: img1 itself, or its chip-like version with --card-style."""
        if not self.card:
            return img1
        chip = card_style(img1, self.det.detect(img1).largest())
        if self.card_restore == "none":
            return chip
        from kyc_tools.eval.restore import restore
        out = restore(chip, self.card_restore)
        chip.fill(0)
        return out

    def score(self, img1: np.ndarray, img2: np.ndarray, card_ready: bool = False):
        """img1 is the card side (made chip-like here unless card_ready), img2 the live side."""
        chips = {"card": [], "live": []}
        on_card = on_live = None
        if self.second is not None:     # the second embedder's chips, on the same points (VisionSuite)
            def on_card(img, pts):
                t = time.thread_time()
                chips["card"].append(embed2.face_chip(img, pts))
                self.second_cpu_s += time.thread_time() - t

            def on_live(img, pts):
                t = time.thread_time()
                chips["live"].append(embed2.face_chip(img, pts))
                self.second_cpu_s += time.thread_time() - t
        self.components = None
        card = prepare_card_face(self.det, img1 if card_ready else self.make_card(img1), landmarker=self.lmk,
                                 on_points=on_card)
        live = self.live_face(img2, on_points=on_live)
        if live is None:                # LFW images are tight crops: give the live side the same padded retry
            live = prepare_card_face(self.det, img2, landmarker=self.lmk, on_points=on_live)
        if card is None or live is None:
            return None, live is not None, card is not None
        if self.lmk is None:            # --align blazeface: the old path, one call for both faces
            res = self.emb.embed(live, card)
            s = res.similarity()
            res.wipe()
            return s, True, True
        c, v = self.emb.embed_card(card), self.emb.embed_one(live)   # card with its mirror, as VisionSuite
        s = cosine(v.vector, c.vector)
        c.wipe()
        v.wipe()
        if self.second is not None:     # card chip with its mirror (one call), live chip (one call)
            t = time.thread_time()
            c2, v2 = self.second.embed_card(chips["card"][-1]), self.second.embed(chips["live"][-1:])
            self.second_cpu_s += time.thread_time() - t
            s2 = cosine(v2.vector, c2.vector)
            c2.wipe()
            v2.wipe()
            self.components = (s, s2)
            s = embed2.fuse(s, s2, self.weight)
        return s, True, True


def run_match_eval(args) -> dict:
    """args: pairs, images, folds ('1-5'), card_style, plot, model, detector_model, detector,
    models_dir, threads, flip_tta, limit. Returns the JSON-able result dict."""
    folds = common.parse_folds(getattr(args, "folds", None) or "1-5")
    rows = read_pairs(args.pairs, folds, getattr(args, "limit", 0) or 0)
    if not rows:
        raise ValueError(f"no pairs in {args.pairs} for folds {folds}")
    images = Path(args.images)
    mdir = Path(getattr(args, "models_dir", None) or default_model_dir())
    dirs = paths.lookup_dirs(mdir)
    variant = getattr(args, "detector", None) or "short_range"
    det_path = _find(getattr(args, "detector_model", None), MODEL_FILES[variant], dirs)
    emb_path = _find(getattr(args, "model", None), "mobilefacenet.tflite", dirs)
    threads = int(getattr(args, "threads", 1) or 1)
    det = FaceDetector.create(DetectorOptions(det_path, variant=variant, threads=threads))
    emb = FaceEmbedder.create(EmbedderOptions(emb_path, threads=threads, flip_tta=bool(getattr(args, "flip_tta", False))))
    lmk = None
    if (getattr(args, "align", None) or "mesh") == "mesh":
        lmk_path = _find(getattr(args, "landmark_model", None), "face_landmark.tflite", dirs)
        lmk = FaceLandmarker.create(LandmarkerOptions(lmk_path, threads=threads))
    second = None
    from device.config import MatchConfig
    defaults = MatchConfig()
    weight = getattr(args, "fusion_weight", None)
    if weight is None:
        weight = defaults.fusion_weight
    want2 = getattr(args, "second_embedder", None)
    if want2 is None:               # as the device is configured; the blazeface path has no mesh points for its chip
        want2 = defaults.second_embedder and lmk is not None
    if want2:
        if lmk is None:
            raise ValueError("--second-embedder needs --align mesh")
        name2 = getattr(args, "second_model", None)
        p2 = _find(name2, name2, dirs) if name2 else _second_model(emb_path, dirs)
        second = embed2.SecondEmbedder.create(embed2.SecondEmbedderOptions(p2, threads=threads))
    scorer = PairScorer(det, emb, card_style_first=bool(getattr(args, "card_style", False)), landmarker=lmk,
                        card_restore=getattr(args, "card_restore", None) or "none",
                        second=second, fusion_weight=weight)

    scores, labels, fold_of, comps = [], [], [], []
    fte_pairs = fte_card = fte_live = 0
    t_total = 0.0
    with common.Progress(len(rows), "eval match") as bar:
        for r in rows:
            img1, img2 = _load_rgb(images / r["img1"]), _load_rgb(images / r["img2"])
            img1 = scorer.make_card(img1)        # making the chip-like photo is not timed
            t0 = time.perf_counter()
            s, live_ok, card_ok = scorer.score(img1, img2, card_ready=True)
            t_total += time.perf_counter() - t0
            if s is None:
                fte_pairs += 1
                fte_card += not card_ok
                fte_live += not live_ok
                s = -1.0
            comps.append(scorer.components or (s, s))
            scores.append(s)
            labels.append(r["same"])
            fold_of.append(r["fold"])
            bar.update()
    s, y = np.array(scores), np.array(labels)
    m = common.summary(s, y, folds=np.array(fold_of))
    out = {
        "pairs": len(rows),
        "folds": f"{folds[0]}-{folds[-1]}" if folds == list(range(folds[0], folds[-1] + 1)) else ",".join(map(str, folds)),
        "card_style": bool(getattr(args, "card_style", False)),
        "card_restore": getattr(args, "card_restore", None) or "none",
        "model": Path(emb_path).name,
        "detector": Path(det_path).name,
        "flip_tta": bool(getattr(args, "flip_tta", False)),
        "align": "mesh" if lmk is not None else "blazeface",
        "accuracy": m["accuracy"],
        "accuracy_std": m["accuracy_std"],
        "tar_at_far_1e-2": m["tar_at_far_1e-2"],
        "tar_at_far_1e-3": m["tar_at_far_1e-3"],
        "eer": m["eer"],
        "auc": m["auc"],
        "threshold_at_far_1e-3": m["threshold_at_far_1e-3"],
        "threshold_at_far_1e-2": m["threshold_at_far_1e-2"],
        "failure_to_enrol": {"pairs": fte_pairs, "rate": fte_pairs / len(rows), "card_side": fte_card,
                             "live_side": fte_live},
        "ms_per_pair": 1000.0 * t_total / len(rows),   # detect+align both sides, one embedder call, cosine
        "threads": threads,
        "same_pairs": int(y.sum()),
        "different_pairs": int((1 - y).sum()),
    }
    thr = getattr(args, "threshold", None)
    if thr is not None:
        out["at_threshold"] = {"threshold": thr, "tar": float((s[y == 1] >= thr).mean()),
                               "far": float((s[y == 0] >= thr).mean())}
    if second is not None:
        out["second_embedder"] = {"model": Path(second.options.model_path).name, "fusion_weight": weight,
                                  # thread CPU per pair: chips of both sides, the card call (chip + mirror)
                                  # and one live call: what a session adds with match.second_top_k = 2
                                  "cpu_ms_per_pair": round(1000.0 * scorer.second_cpu_s / len(rows), 2),
                                  "calibration": {"a": embed2.CAL_A, "b": embed2.CAL_B},
                                  "chip": {"scale": embed2.CHIP_SCALE, "centre": list(embed2.CHIP_CENTRE)}}
        cs = np.array(comps)
        out["components"] = {}
        for name, col in (("primary", cs[:, 0]), ("second", cs[:, 1])):
            cm = common.summary(col, y, folds=np.array(fold_of))
            out["components"][name] = {k: cm[k] for k in ("accuracy", "tar_at_far_1e-2", "tar_at_far_1e-3", "eer",
                                                           "auc", "threshold_at_far_1e-3")}
    if getattr(args, "plot", None):
        t = m["threshold_at_far_1e-3"]
        far = float((s[y == 0] >= t).mean())
        frr = float((s[y == 1] < t).mean())
        label = f"{out['model']}{' card-style' if out['card_style'] else ''}{' flip' if out['flip_tta'] else ''}"
        pts = [(f"FAR=1e-3 threshold {t:.3f}", far, frr)]
        if thr is not None:
            pts.append((f"configured threshold {thr:.3f}", out["at_threshold"]["far"], 1 - out["at_threshold"]["tar"]))
        common.plot_det(args.plot, [(label, s, y)], pts,
                        title=f"DET, LFW folds {out['folds']} ({len(rows)} pairs)")
        out["plot"] = str(args.plot)
    return out
