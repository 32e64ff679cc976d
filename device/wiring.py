"""The one composition root: the runtime parts built from a Config, the same way for the daemon
(`kyc-edge run`, and so `kyc-edge demo`, which runs it), the offline `kyc-edge verify` and the
benches in kyc_tools/bench. It builds parts and nothing else: no session, no threads started,
no policy. Heavy imports (TFLite, OpenCV, pyserial, paho) happen inside each builder, so
importing this module is cheap and a caller only pays for the parts it builds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from device import config as config_mod

# the offline replay camera: every frame seen, timing from the media timestamps, generous stall/lost
OFFLINE_CAMERA = {"camera.backend": "replay", "camera.replay.pace": "fast", "camera.replay.loop": False,
                  "camera.stall_s": 30.0, "camera.lost_s": 60.0}


def offline_replay(cfg: config_mod.Config, video: str | os.PathLike, **changes: Any) -> config_mod.Config:
    """`cfg` with the camera replaying `video` offline (and any further dotted-key changes)."""
    return config_mod.replace(cfg, **{**OFFLINE_CAMERA, "camera.replay.path": str(video), **changes})


def signer(state_dir: str | os.PathLike):
    """The box's Ed25519 verdict signer (created on first use)."""
    from device.verdict import Signer
    return Signer.load_or_create(state_dir)


def outbox(cfg: config_mod.Config):
    """(Outbox, recovery) at `[outbox] path` (else <state_dir>/outbox.sqlite); an unreadable file
    is moved aside and a fresh outbox opened (`recovery` says so, else None)."""
    from device import store
    return store.open_outbox(config_mod.outbox_path(cfg), cfg.outbox.max_rows)


def link(cfg: config_mod.Config, ob, *, signer=None, health: Callable[[], dict] | None = None,
         on_command: Callable | None = None, **kw):
    """The broker link (not started)."""
    from device.link.mqtt import Link
    if health is not None:
        kw["health"] = health
    if on_command is not None:
        kw["on_command"] = on_command
    return Link(cfg, ob, signer=signer, **kw)


def verdict_store(signer, ob, state_dir: str | os.PathLike, *, alarm, kick):
    from device import store
    return store.VerdictStore(signer, ob, Path(state_dir), alarm=alarm, kick=kick)


def vision(cfg: config_mod.Config, model_dir: str | os.PathLike | None = None):
    """Every model of the pipeline (`models.dir` / the model lookup unless `model_dir` is given)."""
    from device.vision.suite import VisionSuite
    return VisionSuite.create(cfg, Path(model_dir) if model_dir is not None else config_mod.models_dir(cfg))


def camera(cfg: config_mod.Config):
    """The configured camera source, opened (a context manager: `with wiring.camera(cfg) as cam`)."""
    from device.camera import open_source
    return open_source(cfg.camera)


def reader(cfg: config_mod.Config):
    """The card reader (not opened)."""
    from device.cardreader.reader import CardReader
    return CardReader(cfg.reader)
