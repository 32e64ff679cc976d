"""`kyc-edge eval mask`: how well the `face_covered` check (device/vision/occlusion.py) sees a mask.

Masks are synthetic: a face-mask shape drawn over the lower face of real faces (LFW dev images, frames
of the blink video), in the ArcFace template's coordinates mapped back into the image through the
inverse alignment, with shading and pleat lines, in several colours. Each masked image then goes the
device's way: BlazeFace on the whole image -> alignment -> the covered check. Reported per colour:
detection rate (the face is still found), covered rate (the check fires, of the faces found), and
each cue's share (colour: covered_fraction; structure: lower_texture); and on the same faces
unmasked: the false-alarm rate. `*_fabric` masks add folds, weave and grain (a flat synthetic surface
is trivially textureless). `--offset` picks the LFW images (the texture threshold was tuned on the
first 200, `--offset 200 --limit 200` is the confirmation half). With `--pairs N`, masks the check
misses go through the match against the same person's card-style photo (missed_masks_match).
Nothing is written to disk.
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


# fabric variants: the same shape with crumpled-cloth shading (low-frequency folds, +-18 %), a coarse
# weave and strong grain, so a texture cue (occlusion.lower_texture) is not measured on flat colour only
FABRIC_MASKS = {"skin_beige_fabric": MASK_COLOURS["skin_beige"], "pink_fabric": MASK_COLOURS["pink"]}


def draw_mask(rgb: np.ndarray, keypoints: np.ndarray, colour: tuple[int, int, int], seed: int = 0,
              fabric: bool = False) -> np.ndarray:
    """A copy of `rgb` with a synthetic mask over the face whose detector keypoints are given
    (`fabric`: with folds, weave and grain instead of a smooth surface)."""
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
    if fabric:
        # folds: smooth random relief at ~1/8 of the face width; weave: a grating at ~1/40 of it
        fw = float(np.linalg.norm(keypoints[0] - keypoints[1])) * 2.5
        relief = cv2.GaussianBlur(rng.normal(0, 1, rgb.shape[:2]).astype(np.float32), (0, 0), max(1.0, fw / 16))
        relief /= max(1e-6, float(relief[area > 0].std()))
        shade *= 1.0 + 0.18 * np.clip(relief, -2.5, 2.5) / 2.5
        period = max(2.0, fw / 40)
        yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]].astype(np.float32)
        shade *= 1.0 + 0.05 * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
    noisy = layer.astype(np.float32) * shade[..., None] + rng.normal(0, 10 if fabric else 4, rgb.shape)
    for k in (0.35, 0.55, 0.75):
        a = (np.array([14, 58 + 50 * k]) @ inv[:, :2].T + inv[:, 2]).astype(int)
        b = (np.array([98, 58 + 50 * k]) @ inv[:, :2].T + inv[:, 2]).astype(int)
        cv2.line(noisy, tuple(int(v) for v in a), tuple(int(v) for v in b),
                 tuple(0.8 * c for c in colour), 1, cv2.LINE_AA)
    sel = area > 0
    out[sel] = np.clip(noisy[sel], 0, 255).astype(np.uint8)
    return out


def _faces(shared_data: Path, limit: int, offset: int = 0):
    imgs = sorted((shared_data / "lfw-dev" / "images").glob("*.jpg"))[offset:offset + limit]
    for p in imgs:
        bgr = cv2.imread(str(p))
        if bgr is not None:
            yield "lfw", np.ascontiguousarray(bgr[:, :, ::-1])
    if offset:
        return            # the blink frames belong to the first part (--offset 0)
    from device.camera.replay import decode_video
    for rgb, _t in decode_video(shared_data / "blink" / "demo_old.mp4", limit=max(10, limit // 10), step=10):
        yield "blink", rgb


def _masks():
    """(name, colour, fabric) of every mask the eval draws."""
    return [(n, c, False) for n, c in MASK_COLOURS.items()] + [(n, c, True) for n, c in FABRIC_MASKS.items()]


def evaluate(shared_data: Path, model_dir: Path, limit: int = 400, threshold: float | None = None,
             offset: int = 0, pairs: int = 0, min_texture: float | None = None) -> dict:
    from device import models as models_mod
    from device.vision.detect import DetectorOptions, FaceDetector
    from device.vision.occlusion import MIN_TEXTURE, cues

    cfg = config_mod.from_dict({})
    thr = cfg.quality.max_covered if threshold is None else threshold
    min_tx = MIN_TEXTURE if min_texture is None else min_texture      # 0: the colour cue alone
    paths = models_mod.resolve(Path(model_dir), cfg.models.set, cfg.models.detector)
    det = FaceDetector.create(DetectorOptions(str(paths["detector"])))

    def verdicts(rgb):
        """(found, {cue: fired}) on the detector's alignment (occlusion.cues)."""
        faces = det.detect(rgb).faces
        if not faces:
            return False, {}
        return True, cues(align_face(rgb, max(faces, key=lambda f: f.score).keypoints), thr, min_tx)

    def row():
        return {"n": 0, "found": 0, "flagged": 0, "colour": 0, "structure": 0, "flat": 0, "undecidable": 0}

    t0 = time.monotonic()
    masks = _masks()
    rows = {"unmasked": row(), **{name: row() for name, _, _ in masks}}
    by_source: dict[str, dict] = {}
    for i, (src, rgb) in enumerate(_faces(shared_data, limit, offset)):
        faces = det.detect(rgb).faces
        if not faces:
            continue          # the unmasked face is not found: not a mask question
        kp = max(faces, key=lambda f: f.score).keypoints
        s = by_source.setdefault(src, {"faces": 0, "false_alarms": 0, "masked": 0, "masked_flagged": 0})
        s["faces"] += 1
        for j, (name, colour, fabric) in enumerate([("unmasked", None, False)] + masks):
            img = rgb if colour is None else draw_mask(rgb, kp, colour, seed=(i + offset) * 31 + j - 1, fabric=fabric)
            found, c = verdicts(img)
            r = rows[name]
            r["n"] += 1
            r["found"] += int(found)
            for k in ("colour", "structure", "flat", "undecidable"):
                r[k] += int(bool(c.get(k)))
            flagged = bool(c.get("colour") or c.get("structure") or c.get("flat"))
            r["flagged"] += int(flagged)
            if colour is None:
                s["false_alarms"] += int(flagged)
            else:
                s["masked"] += 1
                s["masked_flagged"] += int(flagged)
    u = rows["unmasked"]
    out = {"threshold": thr, "min_texture": min_tx, "faces": u["n"], "limit": limit, "offset": offset,
           "false_alarm_rate_unmasked": _rate(u["flagged"], u["found"]),
           "false_alarm_rate_unmasked_colour_cue": _rate(u["colour"], u["found"]),
           "false_alarm_rate_unmasked_structure_cue": _rate(u["structure"], u["found"]),
           "false_alarm_rate_unmasked_flat_cue": _rate(u["flat"], u["found"]),
           "per_mask": {}, "by_source": by_source}
    for name, _, _ in masks:
        r = rows[name]
        out["per_mask"][name] = {"detection_rate": _rate(r["found"], r["n"]),
                                 "covered_rate": _rate(r["flagged"], r["found"]),
                                 "covered_rate_colour_cue": _rate(r["colour"], r["found"]),
                                 "covered_rate_structure_cue": _rate(r["structure"], r["found"]),
                                 "covered_rate_flat_cue": _rate(r["flat"], r["found"]),
                                 "undecidable": r["undecidable"]}
    strong = [n for n in MASK_COLOURS if n != "skin_beige"]
    out["covered_rate_non_skin_masks"] = _rate(sum(rows[n]["flagged"] for n in strong),
                                               sum(rows[n]["found"] for n in strong))
    out["undecidable_unmasked"] = u["undecidable"]
    if pairs:
        out.update(missed_masks_match(shared_data, model_dir, cfg, thr, pairs, min_tx))
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def missed_masks_match(shared_data: Path, model_dir: Path, cfg, thr: float, limit: int,
                       min_texture: float) -> dict:
    """Masks the check misses, through the device's match path: LFW matched pairs (pairs.csv, same=1,
    spread over the file), img1 made a chip-like card photo (kyc_tools.eval.match.card_style), img2 the
    live face with a mask drawn on. As the session: BlazeFace, then FaceMesh on its box; no landmarks
    (presence < 0.5) = no match frame at all (`no_mesh`); else the FaceMesh-aligned crop goes through the
    covered check (`flagged`: dropped from the match) and, when missed, is embedded and scored against the
    card (MobileFaceNet, card with its mirror). `missed_masks_match_rate`: share of the missed masks at or
    above match.threshold; `masked_match_rate`: the same share of all masked attempts whose face was found."""
    from device import models as models_mod
    from device.vision.align import align_on_mesh
    from device.vision.detect import DetectorOptions, FaceDetector
    from device.vision.embed import EmbedderOptions, FaceEmbedder, cosine, prepare_card_face
    from device.vision.landmarks import FaceLandmarker, LandmarkerOptions, roi_from_keypoints
    from device.vision.occlusion import lower_face_covered
    from kyc_tools.eval.match import card_style, read_pairs

    paths = models_mod.resolve(Path(model_dir), cfg.models.set, cfg.models.detector)
    det = FaceDetector.create(DetectorOptions(str(paths["detector"])))
    lmk = FaceLandmarker.create(LandmarkerOptions(str(paths["landmarks"])))
    emb = FaceEmbedder.create(EmbedderOptions(str(paths["embedder"])))
    match_thr = cfg.match.threshold
    lfw = shared_data / "lfw-dev"
    rows = [r for r in read_pairs(lfw / "pairs.csv") if r["same"] == 1]
    if limit < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]

    def load(name):
        bgr = cv2.imread(str(lfw / "images" / name))
        return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])

    def count():
        return {"masked": 0, "found": 0, "no_mesh": 0, "flagged": 0, "missed": 0, "missed_match": 0}

    per = {name: count() for name, _, _ in [("unmasked", None, False)] + _masks()}
    used = 0
    for k, r in enumerate(rows):
        img1, img2 = load(r["img1"]), load(r["img2"])
        if img1 is None or img2 is None:
            continue
        card = prepare_card_face(det, card_style(img1, det.detect(img1).largest()), landmarker=lmk)
        f2 = det.detect(img2).largest()
        if card is None or f2 is None:
            continue
        used += 1
        card_vec = emb.embed_card(card).vector
        for j, (name, colour, fabric) in enumerate([("unmasked", None, False)] + _masks()):
            live = img2 if colour is None else draw_mask(img2, f2.keypoints, colour, seed=k * 31 + j, fabric=fabric)
            c = per[name]
            c["masked"] += 1
            f = det.detect(live).largest()
            if f is None:
                continue
            c["found"] += 1
            lm = lmk.detect(live, roi_from_keypoints(f.box, f.keypoints))
            if lm.presence < 0.5:
                c["no_mesh"] += 1
                continue
            aligned = align_on_mesh(live, lm.landmarks)
            if lower_face_covered(aligned, thr, min_texture):
                c["flagged"] += 1
                continue
            c["missed"] += 1
            c["missed_match"] += int(cosine(emb.embed_one(aligned).vector, card_vec) >= match_thr)
    masked = [n for n in per if n != "unmasked"]
    missed = sum(per[n]["missed"] for n in masked)
    passed = sum(per[n]["missed_match"] for n in masked)
    found = sum(per[n]["found"] for n in masked)
    u = per["unmasked"]
    return {"match_pairs": used, "match_threshold": match_thr,
            "missed_masks": missed, "missed_masks_match_rate": _rate(passed, missed),
            "masked_match_rate": _rate(passed, found),
            "unmasked_match_rate": _rate(u["missed_match"], u["found"]),   # the same pairs, no mask: context
            "unmasked_flagged": u["flagged"],
            "match_per_mask": {n: {**per[n], "missed_match_rate": _rate(per[n]["missed_match"], per[n]["missed"])}
                               for n in per}}


def _rate(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def cmd_mask(args) -> int:
    shared = Path(args.shared)
    print(json.dumps(evaluate(shared / "data" if (shared / "data").exists() else shared,
                              Path(args.models_dir or config_mod.models_dir(config_mod.from_dict({}))),
                              args.limit, args.threshold, offset=args.offset, pairs=args.pairs,
                              min_texture=args.min_texture), indent=2))
    return 0


def register_eval(sub) -> None:
    p = sub.add_parser("mask", help="face_covered check on synthetic masks over LFW / blink faces; "
                                    "and how masks the check misses score in the match")
    p.add_argument("--shared", default=str(tool_paths.shared_dir() or "$KYC_EDGE_SHARED"))
    p.add_argument("--models-dir")
    p.add_argument("--limit", type=int, default=400, help="LFW images (blink frames: limit/10, every 10th)")
    p.add_argument("--offset", type=int, default=0,
                   help="skip this many LFW images first (e.g. 200: the confirmation half; no blink frames)")
    p.add_argument("--pairs", type=int, default=200,
                   help="LFW matched pairs for the missed-mask match figure (0 = skip)")
    p.add_argument("--threshold", type=float, help="covered fraction (default: config quality.max_covered)")
    p.add_argument("--min-texture", type=float,
                   help="structure cue threshold (default: occlusion.MIN_TEXTURE; 0 = the colour cue alone)")
    p.set_defaults(func=cmd_mask)
