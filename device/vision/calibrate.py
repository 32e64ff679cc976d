"""`kyc-edge calibrate-match`: set match.threshold on the operator's own chip photos, on the device.

    kyc-edge calibrate-match --pairs pairs.csv --images DIR [--config FILE] [--models-dir DIR]

pairs.csv has columns `img1,img2,same` (a `fold` column may be there too): img1 the decoded chip
photo as the reader returns it, img2 a live frame from the counter camera, same = 1 for the same
person. Each pair goes through the session's own match path with the configured model set
(VisionSuite: card_face, BestFrames, match; `match.second_embedder` fused when on). Nothing but
counts and thresholds is printed (one JSON object): no image, file name, score list or embedding
leaves the command, and every buffer is wiped after each pair (VisionSuite.reset).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

# numpy, cv2 and the models are imported inside the functions: the CLI imports this module (register)
# for every verb
FARS = (1e-2, 1e-3)
BINS = tuple(round(-0.2 + 0.05 * i, 2) + 0.0 for i in range(25))      # lower bin edges, -0.2 .. 1.0


def threshold_at_far(impostor, far: float) -> float | None:
    """The lowest threshold at which at most far * N impostor scores are >= it (None without impostors)."""
    import numpy as np
    if impostor.size == 0:
        return None
    desc = np.sort(impostor)[::-1]
    allowed = int(np.floor(far * impostor.size))
    return float(desc[allowed] + 1e-6) if allowed < desc.size else float(desc[-1])


def summarise(scores: list[float | None], same: list[int], threshold: float) -> dict:
    """Counts and thresholds only. A pair without a face on either side scores as a rejection."""
    import numpy as np
    y = np.array(same, bool)
    ok = np.array([s is not None for s in scores])
    s = np.array([-1.0 if v is None else float(v) for v in scores])
    gen, imp = s[y], s[~y]
    out = {"pairs": int(len(s)), "genuine": int(y.sum()), "impostor": int((~y).sum()),
           "failure_to_enrol": int((~ok).sum()), "configured_threshold": threshold,
           "at_configured": {"tar": float((gen >= threshold).mean()) if gen.size else None,
                             "far": float((imp >= threshold).mean()) if imp.size else None,
                             "genuine_rejected": int((gen < threshold).sum()),
                             "impostor_accepted": int((imp >= threshold).sum())}}
    for far in FARS:
        t = threshold_at_far(imp, far)
        tag = f"{far:.0e}".replace("e-0", "e-")
        out[f"threshold_at_far_{tag}"] = t
        out[f"tar_at_far_{tag}"] = float((gen >= t).mean()) if t is not None and gen.size else None
    edges = np.concatenate([[-np.inf], BINS[1:], [np.inf]])
    out["histogram"] = {"bin_lower_edges": list(BINS),
                        "genuine": np.histogram(gen, edges)[0].tolist(),
                        "impostor": np.histogram(imp, edges)[0].tolist()}
    if imp.size < 1000:
        out["note"] = "fewer than 1,000 impostor pairs: the FAR=1e-3 threshold is the highest impostor score"
    return out


def pair_score(suite, card_rgb, live_rgb) -> float | None:
    """The session's match on one pair: the card path, the live face as one best frame, match()."""
    try:
        card_face = suite.card_face(card_rgb)
        live, chip = suite.align_still(live_rgb)
        if card_face is None or live is None:
            return None
        best = suite.best_frames()
        best.offer(1.0, live, chip)
        r = suite.match(card_face, best.crops(), None, None)
        sim = r.similarity
        r.wipe()
        best.wipe()
        live.fill(0)
        card_face.fill(0)
        if chip is not None:
            chip.fill(0)
        return sim
    finally:
        suite.reset()


def run(cfg, model_dir: Path, pairs: Path, images: Path) -> dict:
    import cv2
    import numpy as np
    from device.vision.suite import VisionSuite
    suite = VisionSuite.create(cfg, model_dir)
    scores, same = [], []
    with open(pairs, newline="") as f:
        for row in csv.DictReader(f):
            a = cv2.imread(str(images / row["img1"]), cv2.IMREAD_COLOR)
            b = cv2.imread(str(images / row["img2"]), cv2.IMREAD_COLOR)
            if a is None or b is None:
                raise FileNotFoundError("an image of the pairs file cannot be read (check --images)")
            scores.append(pair_score(suite, np.ascontiguousarray(a[:, :, ::-1]), np.ascontiguousarray(b[:, :, ::-1])))
            a.fill(0)
            b.fill(0)
            same.append(int(row["same"]))
    out = summarise(scores, same, cfg.match.threshold)
    out["models"] = dict(suite.versions)
    out["second_embedder"] = suite.embedder2 is not None
    return out


def cmd(args) -> int:
    from device import config as config_mod
    from device import models as models_mod
    from device.errors import KycError
    try:
        cfg = config_mod.load(args.config)
    except (config_mod.ConfigError, OSError) as e:
        print(f"calibrate-match: {e}", file=sys.stderr)
        return 2
    model_dir = models_mod.find_model_dir(args.models_dir, cfg.models.dir or None, search=True)
    try:
        out = run(cfg, model_dir, Path(args.pairs), Path(args.images))
    except (FileNotFoundError, KeyError, ValueError, KycError) as e:
        print(f"calibrate-match: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


def register(sub) -> None:
    s = sub.add_parser("calibrate-match",
                       help="match threshold from the operator's own pairs, on the device (prints counts and thresholds only)")
    s.add_argument("--config", "-c", help="config file (default /etc/kyc-edge/config.toml)")
    s.add_argument("--pairs", required=True, help="CSV with columns img1 (chip photo), img2 (live frame), same")
    s.add_argument("--images", required=True, help="directory holding the pair images")
    s.add_argument("--models-dir", help="model directory (default from config / KYC_EDGE_MODEL_DIR)")
    s.set_defaults(func=cmd)
