"""A simulated counter for fleet tests and `kyc-edge bench fleet`: the box's real verdict path
without the biometric side: its own Ed25519 signing key (device.verdict.Signer), its own durable
Outbox (SQLite), and its own device.link.mqtt.Link (MQTT client, retained status with LWT).

Verdicts are fabricated (fixed scores, no card data but the schema's optional fields) and carry the
real decided_at, so `decision -> commit` latency can be measured at the operator.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from device import config as config_mod
from device import verdict as _verdict
from device import wiring
from device.link.outbox import Outbox


def box_config(url: str, state: Path, site: str, device: str, **over) -> config_mod.Config:
    ch = {"mqtt.url": url, "device.state_dir": str(state), "device.id": device, "device.site": site,
          "mqtt.reconnect_min_s": 0.2, "mqtt.reconnect_max_s": 2.0, "mqtt.connect_timeout_s": 5.0,
          "mqtt.status_interval_s": 0.0}
    ch.update(over)
    return config_mod.replace(config_mod.Config(), **ch)


def fake_verdict(site: str, device: str, *, result: str | None = None, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    result = result or ("pass" if random.random() < 0.9 else "fail")
    return _verdict.build(
        device=device, site=site, result=result, reasons=[] if result == "pass" else ["face_mismatch"],
        scores={"liveness": 0.93, "spoof": 0.04, "similarity": 0.71 if result == "pass" else 0.21,
                "threshold": 0.42},
        card={"type": "resident", "expired": False},
        models={"detector": "face_detection_short_range@1a2b3c4d"},
        timings_ms={"total": 6120.5}, started_at=now - 6.12, decided_at=now)


class SimBox:
    def __init__(self, url: str, state_dir: Path, site: str, device: str, *, max_rows: int = 10000,
                 health: dict | None = None, on_command=None, health_fn=None, **cfg_over):
        self.site, self.device = site, device
        self.state = Path(state_dir)
        self.signer = wiring.signer(self.state)
        self.outbox = Outbox(self.state / "outbox.sqlite", max_rows)
        self.cfg = box_config(url, self.state, site, device, **cfg_over)
        extra = dict(health or {})
        self.link = wiring.link(self.cfg, self.outbox, signer=self.signer,
                         on_command=on_command or (lambda name, payload, props: None),
                         health=lambda: {"outbox_depth": self.outbox.depth(), **extra,
                                         **(health_fn() if health_fn else {})})
        self.sent: dict[str, bytes] = {}          # verdict_id -> signed payload as published

    def key_record(self) -> dict:
        """What `kyc-edge keys show --format json --config ...` prints on this box."""
        return {"alg": "Ed25519", "key_id": self.signer.key_id, "public_key": self.signer.public_key_b64,
                "site": self.site, "device": self.device}

    def start(self) -> "SimBox":
        self.link.start()
        return self

    def decide(self, result: str | None = None) -> str:
        s = self.signer.sign(fake_verdict(self.site, self.device, result=result))
        self.outbox.put(s)
        self.link.kick()
        vid = s["verdict"]["verdict_id"]
        self.sent[vid] = json.dumps(s, sort_keys=True, separators=(",", ":")).encode()
        return vid

    def stop(self) -> None:
        self.link.stop(timeout=5)
        self.outbox.close()


def forged_payload(box: SimBox, **change) -> bytes:
    """A verdict of `box`'s signed by it, then altered (e.g. result=pass): the signature no longer holds."""
    s = box.signer.sign(fake_verdict(box.site, box.device, result="fail"))
    s["verdict"].update(change)
    return json.dumps(s).encode()
