"""Live-side fusion of the top-k crops (issue 18): plain mean (the session's rule) against a quality-
weighted mean and the single best crop, for k = 1..3, on LFW identities with several photos.

    python -m kyc_tools.eval.topk_study --images ../shared/data/lfw-dev/images [--model-dir DIR] [--min-photos 4]

A "session" here is one identity's card (its first photo, made chip-like as `eval match --card-style`)
against k other photos of a person as the live crops, each scored by the quality gate the session uses
(device.vision.quality.gate on a tracker observation). Genuine: the same person; impostor: the card of
one person against the live photos of every other. LFW photos of one person differ far more than the
frames of one session, so this measures the fusion rule, not a session. Identities are split in two
halves by name: the rule is chosen on the first half and confirmed on the second. Prints JSON (numbers
only; no photo, crop or vector leaves the process).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

RULES = ("mean", "weighted", "best")


def _load(images: Path, min_photos: int) -> dict[str, list[Path]]:
    by: dict[str, list[Path]] = defaultdict(list)
    for p in sorted(images.glob("*.jpg")):
        by[p.stem.rsplit("_", 1)[0]].append(p)
    return {k: v for k, v in by.items() if len(v) >= min_photos}


def _embed_people(people, model_dir: Path) -> dict:
    import cv2
    from device.config import Config
    from device.vision.embed import l2n, prepare_card_face
    from device.vision.quality import gate
    from device.vision.suite import VisionSuite
    from kyc_tools.eval.match import card_style
    cfg = Config()
    suite = VisionSuite(cfg, model_dir)
    out = {}
    for name, photos in people.items():
        card_rgb = cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB)
        chip = card_style(card_rgb, suite.detector.detect(card_rgb).largest())
        face = prepare_card_face(suite.detector, chip, landmarker=suite.tracker.landmarker)
        if face is None:
            continue
        card = suite.embedder.embed_card(face).vector.copy()
        live = []
        for p in photos[1:]:
            rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            suite.tracker.reset()
            obs = suite.tracker.observe(rgb, 0.0)
            q, aligned = gate(rgb, obs, cfg.quality)
            if aligned is None:          # no single face, or it failed a gate: the session would not keep it
                continue
            live.append((q.score, l2n(suite.embedder.embed_one(aligned).vector.copy())))
            aligned.fill(0)
        if len(live) >= 1:
            out[name] = (card, live)
    suite.reset()
    return out


def _fuse(live, k: int, rule: str) -> np.ndarray:
    top = sorted(live, key=lambda x: -x[0])[:k]        # BestFrames: the k best by quality score
    if rule == "best":
        v = top[0][1]
    elif rule == "weighted":
        w = np.array([s for s, _ in top], np.float64)
        v = (w[:, None] * np.stack([e for _, e in top])).sum(0) / max(w.sum(), 1e-9)
    else:
        v = np.mean([e for _, e in top], axis=0)
    return v / max(np.linalg.norm(v), 1e-9)


def _figures(gen: np.ndarray, imp: np.ndarray) -> dict:
    from kyc_tools.eval.common import summary
    s = np.concatenate([gen, imp])
    y = np.concatenate([np.ones(len(gen)), np.zeros(len(imp))])
    m = summary(s, y)
    return {"genuine": len(gen), "impostor": len(imp), "eer": m.get("eer"),
            "tar_at_far_1e-3": m.get("tar_at_far_1e-3"), "tar_at_far_1e-2": m.get("tar_at_far_1e-2")}


def study(vecs: dict, names: list[str], k: int, rule: str) -> dict:
    gen, imp = [], []
    fused = {n: _fuse(vecs[n][1], k, rule) for n in names}
    for n, v in fused.items():
        gen.append(float(v @ vecs[n][0]))
        for m in fused:
            if m != n:
                imp.append(float(fused[m] @ vecs[n][0]))
    return _figures(np.array(gen), np.array(imp))


def main(argv=None) -> int:
    from kyc_tools import paths
    ap = argparse.ArgumentParser(prog="python -m kyc_tools.eval.topk_study")
    ap.add_argument("--images", default=str(paths.shared_path("data", "lfw-dev", "images")))
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--min-photos", type=int, default=4, help="identities with at least this many photos")
    a = ap.parse_args(argv)
    from device.models import find_model_dir
    mdir = find_model_dir(a.model_dir, search=True)
    people = _load(Path(a.images), a.min_photos)
    vecs = _embed_people(people, mdir)
    names = sorted(n for n in vecs if len(vecs[n][1]) >= 3)   # the same identities for every k
    halves = {"tune": names[0::2], "confirm": names[1::2]}
    out = {"identities": len(names), "min_photos": a.min_photos, "model_dir": str(mdir), "results": {}}
    for half, ns in halves.items():
        for k in (1, 2, 3):
            for rule in RULES if k > 1 else ("mean",):
                out["results"][f"{half}:k{k}:{rule}"] = study(vecs, ns, k, rule)
    for _, (card, live) in vecs.items():
        card.fill(0)
        for _, e in live:
            e.fill(0)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
