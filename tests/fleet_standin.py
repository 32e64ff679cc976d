"""Stand-in device process for the fleet tests: the real boot_guard, UpdateAgent, Link (MQTT 5,
retained status + update/status, LWT) and Outbox, plus a tiny "pipeline" that loads every model of
the active slot with the real TFLite runtime and runs it on fabricated inputs.

Fault hooks (hardware/crash behaviour that cannot be produced otherwise in a test):
    STANDIN_CRASH_SHA=<sha256,...>       a model with this sha256 aborts the process when the live
                                         pipeline loads it (a native crash after the switch)
    STANDIN_PROBE_FAIL_SHA=<sha256,...>  the health probe fails while such a model is live
    KYC_EDGE_FLEET_KILL_AT=<step>        SIGKILL at a switch step (device/fleet/slots.killpoint)
Sessions are driven by commands on cmd/test_session {"action": "start"|"end"}; the end of a session
publishes a `verdict` session event before the session is marked finished.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from device import config as config_mod
from device.fleet.agent import UpdateAgent
from device.fleet.slots import active_bundle, boot_guard, merged_config, model_dir
from device.link.mqtt import Link, open_outbox
from device.models import sha256_file
from device.selftest import bundle_self_test
from device.vision.runtime import load_interpreter


def _set(name: str) -> set[str]:
    return {s for s in os.environ.get(name, "").split(",") if s}


class Pipeline:
    def __init__(self, mdir: Path, cfg: config_mod.Config):
        self.cfg = cfg
        self.models = {}
        self.shas = set()
        for p in sorted(Path(mdir).glob("*.tflite")):
            sha = sha256_file(p)
            if sha in _set("STANDIN_CRASH_SHA"):
                print(json.dumps({"event": "crash", "model": p.name}), flush=True)
                os.abort()
            self.models[p.name] = load_interpreter(p, cfg.models.threads)
            self.shas.add(sha)

    def probe(self) -> None:
        if self.shas & _set("STANDIN_PROBE_FAIL_SHA"):
            raise RuntimeError("canned verification failed")
        for it in self.models.values():
            for d in it.get_input_details():
                it.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
            it.invoke()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    a = ap.parse_args()
    cfg = config_mod.load(a.config)
    state = Path(cfg.device.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    guard = boot_guard(state, cfg.fleet)
    print(json.dumps({"event": "boot", "guard": guard}), flush=True)
    factory = config_mod.models_dir(cfg)
    b = active_bundle(state)
    holder = {"p": Pipeline(model_dir(b, factory), merged_config(cfg, b))}
    sess = {"active": False, "end": False, "n": 0}
    stop = threading.Event()

    def apply(bundle_dir):
        eff = merged_config(cfg, bundle_dir)          # what the daemon's _apply_bundle runs with
        holder["p"] = Pipeline(model_dir(bundle_dir, factory), eff)
        print(json.dumps({"event": "applied", "dir": str(bundle_dir), "threshold": eff.match.threshold}), flush=True)

    link_box: dict = {}
    agent = UpdateAgent(cfg, state, publish_status=lambda st: link_box["l"].publish_update_status(st),
                        self_test=bundle_self_test(cfg), health_probe=lambda: holder["p"].probe(),
                        apply=apply, factory_models=factory)

    def on_command(name, payload, props):
        if agent.on_command(name, payload, props):
            return
        if name == "test_session":
            if payload.get("action") == "start":
                sess["active"] = True
            elif payload.get("action") == "end":
                sess["end"] = True

    outbox = open_outbox(cfg)
    link = Link(cfg, outbox, on_command=on_command,
                health=lambda: {"bundle_version": agent.bundle_version, "session": "active" if sess["active"] else "idle"})
    link_box["l"] = link
    link.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        if sess["end"]:
            sess["end"] = False
            sess["n"] += 1
            link.publish_session_event({"event": "verdict", "result": "pass"})
            time.sleep(0.05)
            sess["active"] = False
        agent.poll(sess["active"])
        stop.wait(0.05)
    agent.close()
    link.stop()
    outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
