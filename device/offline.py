"""`kyc-edge verify`: one session offline, on files, with the daemon's own Session and models.

The card is a fabricated record (never a real person's data) carrying the given photo; the camera is
the replay backend in `fast` pace, so every frame is seen and timing follows the media timestamps.
Exit: 0 pass, 1 fail, 2 error (bad files, config or models).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from device import config as config_mod
from device.errors import KycError


def load_rgb(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise KycError("internal_error", f"cannot read image {path}")
    return np.ascontiguousarray(img[:, :, ::-1])


def fabricated_card(photo_rgb: np.ndarray, *, card_style: bool = False):
    """A CardRead with a fabricated resident record and the given photo (chip-degraded if asked)."""
    from device.cardreader.photo import card_photo_jpeg, make_decoder
    from device.cardreader.reader import CardRead
    from device.cardreader.records import parse_text
    from device.cardreader.simulator import FakeCard

    if card_style:
        photo_rgb = make_decoder("jpeg").decode(card_photo_jpeg(photo_rgb))
    return CardRead(record=parse_text(FakeCard.resident().text), photo=photo_rgb)


def offline_config(args) -> config_mod.Config:
    if getattr(args, "config", None):
        cfg = config_mod.load(args.config)
    else:
        cfg = config_mod.from_dict({})
    changes = {}
    if getattr(args, "models_dir", None):
        changes["models.dir"] = args.models_dir
    else:
        from device.models import find_model_dir
        changes["models.dir"] = str(find_model_dir(configured=cfg.models.dir))
    if getattr(args, "model_set", None):
        changes["models.set"] = args.model_set
    from device import wiring
    return wiring.offline_replay(cfg, args.video, **changes)


def run_offline(cfg: config_mod.Config, card, challenges=None, vision=None, events=None) -> dict:
    """One Session over a replay camera; returns the verdict (nothing is signed or stored)."""
    from device import wiring
    from device.session import Session

    vision = vision or wiring.vision(cfg)
    out: list[dict] = []
    with wiring.camera(cfg) as cam:
        Session(cfg, reader=None, camera=cam, vision=vision, sink=out.append,
                events=events or (lambda e: None), challenges=challenges).run(card=card)
    return out[0]


def verify_offline(args) -> int:
    try:
        cfg = offline_config(args)
    except config_mod.ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return 2
    if not Path(args.video).exists():
        print(f"verify: --video {args.video}: no such file or folder", file=sys.stderr)
        return 2
    challenges = [c.strip() for c in args.challenges.split(",") if c.strip()] if args.challenges else None
    from device.challenge_names import CHALLENGES as allowed
    if challenges and not set(challenges) <= set(allowed):
        print(f"verify: --challenges {args.challenges!r}: expected names from {sorted(allowed)}", file=sys.stderr)
        return 2
    try:
        card = fabricated_card(load_rgb(args.card_photo), card_style=args.card_style)
        v = run_offline(cfg, card, challenges)
    except KycError as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    print(json.dumps(v, indent=2))
    return 0 if v["result"] == "pass" else 1
