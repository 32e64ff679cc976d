"""`kyc-edge eval mask`: how well the `face_covered` check (device/vision/occlusion.py) sees a mask.

Masks are synthetic: a face-mask shape drawn over the lower face of real faces (LFW dev images, frames
of the blink video), in the ArcFace template's coordinates mapped back into the image through the
inverse alignment, with shading and pleat lines, in several colours. Each masked image then goes the
device's way: BlazeFace on the whole image -> alignment -> the covered check. Reported per colour:
detection rate (the face is still found), covered rate (the check fires, of the faces found); and on
the same faces unmasked: the false-alarm rate. Nothing is written to disk.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from kyc_tools import paths as tool_paths

import cv2
import numpy as np

from device import config as config_mod
from device.vision.align import align_face, align_matrix

# RGB; "skin" is a beige close to many skin tones: the known weak spot, reported, not hidden
MASK_COLOURS = {"surgical_blue": (150, 190, 215), "white": (236, 236, 232), "black": (28, 28, 32),
                "grey": (120, 122, 126), "pink": (225, 160, 185), "skin_beige": (210, 170, 140)}

# a face mask in template coordinates: over the nose below the eyes, cheek to cheek, under the chin
_MASK_POLY = np.array([[10, 66], [30, 60], [56, 58], [82, 60], [102, 66], [104, 88], [92, 108],
                       [56, 124], [20, 108], [8, 88]], np.float64)


def draw_mask(rgb: np.ndarray, keypoints: np.ndarray, colour: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A copy of `rgb` with a synthetic mask over the face whose detector keypoints are given."""
    m = align_matrix(keypoints)
    inv = cv2.invertAffineTransform(m)
    pts = (_MASK_POLY @ inv[:, :2].T + inv[:, 2]).astype(np.int32)
    out = rgb.copy()
    layer = np.zeros_like(rgb)
    cv2.fillPoly(layer, [pts], colour, lineType=cv2.LINE_AA)
    area = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(area, [pts], 255)
    # shading: darker towards the lower edge, plus sensor-like noise, plus three pleats
    ys, xs = np.nonzero(area)
    if len(ys) == 0:
        return out
    y0, y1 = ys.min(), ys.max()
    shade = np.ones(rgb.shape[:2], np.float32)
    rows = np.arange(rgb.shape[0], dtype=np.float32)
    shade *= (1.0 - 0.25 * np.clip((rows - y0) / max(1, y1 - y0), 0, 1))[:, None]
    rng = np.random.default_rng(seed)
    noisy = layer.astype(np.float32) * shade[..., None] + rng.normal(0, 4, rgb.shape)
    for k in (0.35, 0.55, 0.75):
        a = (np.array([14, 58 + 50 * k]) @ inv[:, :2].T + inv[:, 2]).astype(int)
        b = (np.array([98, 58 + 50 * k]) @ inv[:, :2].T + inv[:, 2]).astype(int)
        cv2.line(noisy, tuple(int(v) for v in a), tuple(int(v) for v in b),
                 tuple(0.8 * c for c in colour), 1, cv2.LINE_AA)
    sel = area > 0
    out[sel] = np.clip(noisy[sel], 0, 255).astype(np.uint8)
    return out


def _faces(shared_data: Path, limit: int):
    imgs = sorted((shared_data / "lfw-dev" / "images").glob("*.jpg"))[:limit]
    for p in imgs:
        bgr = cv2.imread(str(p))
        if bgr is not None:
            yield "lfw", np.ascontiguousarray(bgr[:, :, ::-1])
    video = shared_data / "blink" / "demo_old.mp4"
    cap = cv2.VideoCapture(str(video))
    n = 0
    try:
        while n < max(10, limit // 10) * 10:
            ok, bgr = cap.read()
            if not ok:
                break
            if n % 10 == 0:
                yield "blink", np.ascontiguousarray(bgr[:, :, ::-1])
            n += 1
    finally:
        cap.release()


def evaluate(shared_data: Path, model_dir: Path, limit: int = 400, threshold: float | None = None) -> dict:
    from device import models as models_mod
    from device.vision.detect import DetectorOptions, FaceDetector
    from device.vision.occlusion import covered_fraction

    cfg = config_mod.from_dict({})
    thr = cfg.quality.max_covered if threshold is None else threshold
    paths = models_mod.resolve(Path(model_dir), cfg.models.set, cfg.models.detector)
    det = FaceDetector.create(DetectorOptions(str(paths["detector"])))

    def fraction(rgb):
        faces = det.detect(rgb).faces
        if not faces:
            return None, False
        f = max(faces, key=lambda f: f.score)
        return covered_fraction(align_face(rgb, f.keypoints)), True

    t0 = time.monotonic()
    rows = {"unmasked": {"n": 0, "found": 0, "flagged": 0, "undecidable": 0}}
    for c in MASK_COLOURS:
        rows[c] = {"n": 0, "found": 0, "flagged": 0, "undecidable": 0}
    by_source: dict[str, dict] = {}
    for i, (src, rgb) in enumerate(_faces(shared_data, limit)):
        faces = det.detect(rgb).faces
        if not faces:
            continue          # the unmasked face is not found: not a mask question
        kp = max(faces, key=lambda f: f.score).keypoints
        fr, _ = fraction(rgb)
        r = rows["unmasked"]
        r["n"] += 1
        r["found"] += 1
        s = by_source.setdefault(src, {"faces": 0, "false_alarms": 0, "masked": 0, "masked_flagged": 0})
        s["faces"] += 1
        if fr is None:
            r["undecidable"] += 1
        elif fr >= thr:
            r["flagged"] += 1
            s["false_alarms"] += 1
        for j, (name, colour) in enumerate(MASK_COLOURS.items()):
            masked = draw_mask(rgb, kp, colour, seed=i * 31 + j)
            mfr, found = fraction(masked)
            r = rows[name]
            r["n"] += 1
            r["found"] += int(found)
            if found and mfr is None:
                r["undecidable"] += 1
            elif found and mfr >= thr:
                r["flagged"] += 1
            s["masked"] += 1
            s["masked_flagged"] += int(bool(found and mfr is not None and mfr >= thr))
    out = {"threshold": thr, "faces": rows["unmasked"]["n"], "limit": limit,
           "false_alarm_rate_unmasked": _rate(rows["unmasked"]["flagged"], rows["unmasked"]["found"]),
           "per_mask": {}, "by_source": by_source, "seconds": round(time.monotonic() - t0, 1)}
    for name in MASK_COLOURS:
        r = rows[name]
        out["per_mask"][name] = {"detection_rate": _rate(r["found"], r["n"]),
                                 "covered_rate": _rate(r["flagged"], r["found"]),
                                 "undecidable": r["undecidable"]}
    strong = [n for n in MASK_COLOURS if n != "skin_beige"]
    out["covered_rate_non_skin_masks"] = _rate(sum(rows[n]["flagged"] for n in strong),
                                               sum(rows[n]["found"] for n in strong))
    out["undecidable_unmasked"] = rows["unmasked"]["undecidable"]
    return out


def _rate(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def cmd_mask(args) -> int:
    shared = Path(args.shared)
    print(json.dumps(evaluate(shared / "data" if (shared / "data").exists() else shared,
                              Path(args.models_dir or config_mod.models_dir(config_mod.from_dict({}))),
                              args.limit, args.threshold), indent=2))
    return 0


def register_eval(sub) -> None:
    p = sub.add_parser("mask", help="face_covered check on synthetic masks over LFW / blink faces")
    p.add_argument("--shared", default=str(tool_paths.shared_dir() or "$KYC_EDGE_SHARED"))
    p.add_argument("--models-dir")
    p.add_argument("--limit", type=int, default=400, help="LFW images (blink frames: limit/10, every 10th)")
    p.add_argument("--threshold", type=float, help="covered fraction (default: config quality.max_covered)")
    p.set_defaults(func=cmd_mask)
