"""Fleet updates against the real daemon (`kyc-edge run` subprocess: pty card reader, replay camera,
real models, real mosquitto)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from device.config import MatchConfig

from device.cardreader.simulator import FakeCard, Simulator
from device.fleet import manifest as mf
from device.fleet import slots
from kyc_tools.fleet.commands import SIGNED, build_bundle, sign_bundle
from kyc_tools.fleet.rollout import FleetClient
from tests.daemon_harness import NotifySocket, daemon_config, start_daemon, stop_daemon, write_config
from tests.faces import BLINK_VIDEO, chip_jpeg, genuine_photo

REPO = Path(__file__).resolve().parents[1]
DEV = "shop-test/counter-e2e"
DET = "face_detection_short_range.tflite"


@pytest.fixture
def fleet_rig(tmp_path, broker, shared_data, model_dir):
    key, pub, _ = mf.keygen(tmp_path / "fleetkey")
    sim = Simulator(card=None)
    port = sim.start_pty()
    cfg = daemon_config(tmp_path, broker_url=broker.url, reader_port=port, video=str(shared_data / BLINK_VIDEO),
                        model_dir=model_dir, extra={"fleet": {"public_keys": [pub.read_text().strip()],
                                                              "min_free_bytes": 0, "crash_loop_window_s": 120},
                                                    "mqtt": {"status_interval_s": 1.0}})
    cfg_path = write_config(tmp_path / "config.toml", cfg)
    fc = FleetClient(broker.url, watch=("kyc/v1/+/+/session", "kyc/v1/+/+/verdict")).connect()
    rig = dict(sim=sim, fc=fc, cfg=cfg_path, key=key, tmp=tmp_path, state=tmp_path / "state", procs=[],
               model_dir=model_dir)
    yield rig
    for p in rig["procs"]:
        stop_daemon(p)
    fc.close()
    sim.stop()


def _bundle(rig, version: int, models: dict[str, bytes], patch=None) -> Path:
    b = rig["tmp"] / f"b{version}"
    (b / "src").mkdir(parents=True)
    for name, data in models.items():
        (b / "src" / name).write_bytes(data)
    build_bundle(b / "src", b, version, patch)
    sign_bundle(b, str(rig["key"]), ["*"])
    return b


def _logs(rig) -> str:
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(rig["tmp"].glob("daemon*.log")))


def _wait(rig, pred, timeout, what):
    ok = rig["fc"].wait_for(pred, timeout)
    assert ok, f"{what}: update={rig['fc'].updates.get(DEV)}\n{_logs(rig)}"


def test_daemon_defers_the_switch_to_after_the_verdict_then_hot_swaps(fleet_rig, shared_data):
    rig, fc = fleet_rig, fleet_rig["fc"]
    notify = NotifySocket(rig["tmp"] / "notify.sock")
    rig["procs"].append(start_daemon(rig["cfg"], notify, log_path=rig["tmp"] / "daemon0.log"))
    assert notify.wait_for("READY=1", 40), _logs(rig)
    det = (rig["model_dir"] / DET).read_bytes() + b"\0" * 8
    new_sha8 = hashlib.sha256(det).hexdigest()[:8]
    old_threshold = MatchConfig().threshold
    b = _bundle(rig, 2, {DET: det}, patch={"match": {"threshold": round(old_threshold + 0.01, 2)}})
    rig["sim"].insert(FakeCard.resident(photo_bytes=chip_jpeg(genuine_photo(shared_data))))
    _wait(rig, lambda: any(t.endswith("/session") and o.get("event") == "card_read" for _, t, o in fc.log), 30,
          "no session started")
    fc.publish(json.loads((b / SIGNED).read_text()), b / "artifacts", "*")
    _wait(rig, lambda: fc.updates.get(DEV, {}).get("state") in ("staged", "applied"), 30, "not staged")
    _wait(rig, lambda: any(t.endswith("/verdict") for _, t, o in fc.log), 60, "no verdict")
    rig["sim"].remove()
    _wait(rig, lambda: fc.updates.get(DEV, {}).get("state") == "applied", 30, "not applied")
    t_verdict = next(t for t, topic, o in fc.log if topic.endswith("/verdict"))
    t_applied = next(t for t, topic, o in fc.log if topic.endswith("/update/status") and o.get("state") == "applied")
    t_staged = next(t for t, topic, o in fc.log if topic.endswith("/update/status") and o.get("state") == "staged")
    assert t_staged < t_verdict < t_applied      # staged mid-session; switched only after the verdict
    v = next(o for _, topic, o in fc.log if topic.endswith("/verdict"))["verdict"]
    assert v["result"] == "pass" and v["scores"]["threshold"] == pytest.approx(old_threshold)  # old bundle served it
    assert not v["models"]["detector"].endswith(new_sha8)
    assert fc.updates[DEV]["bundle_version"] == 2 and slots.current_version(rig["state"]) == 2
    # the live pipeline now runs the new slot's detector (health status lists the loaded models)
    _wait(rig, lambda: str(fc.status.get(DEV, {}).get("models", {}).get("detector", "")).endswith(new_sha8), 10,
          "status does not show the new detector")


def test_daemon_crash_loop_after_a_switch_rolls_back_to_the_serving_bundle(fleet_rig):
    rig, fc = fleet_rig, fleet_rig["fc"]
    emb = (rig["model_dir"] / DET).read_bytes()          # a detector where the embedder belongs: loads and
    b = _bundle(rig, 2, {"mobilefacenet.tflite": emb})   # passes its vectors, but the pipeline cannot start
    exits: list[int] = []
    stop = threading.Event()

    def systemd():   # Restart=on-failure; the first start has a power cut right after the switch
        n = 0
        while not stop.is_set() and n < 6:
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
            if n == 0:
                env[slots.KILL_ENV] = "switched"
            p = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(rig["cfg"])],
                                 cwd=REPO, env=env, stdout=open(rig["tmp"] / f"daemon{n}.log", "wb"),
                                 stderr=subprocess.STDOUT)
            rig["procs"].append(p)
            rc = p.wait()
            exits.append(rc)
            n += 1
            if rc == 0 or stop.is_set():
                return
            time.sleep(0.3)

    t = threading.Thread(target=systemd, daemon=True)
    t.start()
    # the agent announces itself (retained `idle`) once it exists; the daemon creates it after the
    # models are loaded, and an update sent before that is not seen by it
    _wait(rig, lambda: fc.updates.get(DEV, {}).get("state") == "idle", 40, "update agent not up")
    fc.publish(json.loads((b / SIGNED).read_text()), b / "artifacts", "*")
    _wait(rig, lambda: fc.updates.get(DEV, {}).get("state") == "rolled_back", 90, "no rollback")
    u = fc.updates[DEV]
    assert u["reason"] == "crash_loop" and u["bundle_version"] == 0 and u["target_version"] == 2
    assert exits[0] == -signal.SIGKILL and exits[1:] == [1, 1], exits
    assert slots.active_bundle(rig["state"]) is None                      # factory models again
    _wait(rig, lambda: fc.status.get(DEV, {}).get("state") == "online", 30, "not serving after rollback")
    stop.set()


def test_three_daemons_canary_then_widen_all_applied(tmp_path, broker, shared_data, model_dir):
    key, pub, _ = mf.keygen(tmp_path / "fleetkey")
    sims, procs = [], []
    fc = FleetClient(broker.url).connect()
    try:
        for name, groups in (("c1", ["canary", "north"]), ("n1", ["north"]), ("n2", ["north"])):
            sim = Simulator(card=None)
            sims.append(sim)
            cfg = daemon_config(tmp_path / name, broker_url=broker.url, reader_port=sim.start_pty(),
                                video=str(shared_data / BLINK_VIDEO), model_dir=model_dir,
                                extra={"device": {"id": name, "site": "shop-test", "groups": groups,
                                                  "state_dir": str(tmp_path / name / "state")},
                                       "fleet": {"public_keys": [pub.read_text().strip()], "min_free_bytes": 0}})
            (tmp_path / name).mkdir()
            procs.append(start_daemon(write_config(tmp_path / name / "config.toml", cfg), None,
                                      log_path=tmp_path / name / "daemon.log"))
        devs = [f"shop-test/{n}" for n in ("c1", "n1", "n2")]
        assert fc.wait_for(lambda: all(fc.updates.get(d, {}).get("state") == "idle" for d in devs), 60), \
            fc.updates
        b = tmp_path / "b2"
        (b / "src").mkdir(parents=True)
        (b / "src" / DET).write_bytes((model_dir / DET).read_bytes() + b"\0" * 4)
        build_bundle(b / "src", b, 2, {"match": {"threshold": 0.42}})
        sign_bundle(b, str(key), ["group:north"])
        r = subprocess.run([sys.executable, "-m", "device.cli", "fleet", "publish", str(b), "--broker", broker.url,
                            "--prefix", "kyc/v1", "--target", "group:canary", "--target", "group:north",
                            "--expect", "3", "--timeout", "60"], cwd=REPO, capture_output=True, text=True, timeout=90)
        res = json.loads(r.stdout)
        logs = "\n".join((tmp_path / n / "daemon.log").read_text()[-2000:] for n in ("c1", "n1", "n2"))
        assert r.returncode == 0 and res["result"] == "completed", r.stdout + r.stderr + logs
        assert sorted(res["applied"]) == devs and "canary ok: 1 APPLIED" in r.stderr
        for n in ("c1", "n1", "n2"):
            assert slots.current_version(tmp_path / n / "state") == 2
            assert fc.updates[f"shop-test/{n}"]["bundle_version"] == 2
    finally:
        for p in procs:
            stop_daemon(p)
        for s in sims:
            s.stop()
        fc.close()


def test_daemon_keeps_a_fleet_threshold_through_a_later_models_only_bundle(fleet_rig, shared_data):
    """Issue 20 item 11 on the real daemon: threshold 0.55 from a config bundle is what the verdict
    is decided with after a later models-only bundle (patches stack onto the running slot's)."""
    rig, fc = fleet_rig, fleet_rig["fc"]
    notify = NotifySocket(rig["tmp"] / "notify.sock")
    rig["procs"].append(start_daemon(rig["cfg"], notify, log_path=rig["tmp"] / "daemon0.log"))
    assert notify.wait_for("READY=1", 40), _logs(rig)
    _wait(rig, lambda: fc.updates.get(DEV, {}).get("state") == "idle", 30, "update agent not up")
    det = (rig["model_dir"] / DET).read_bytes()
    assert MatchConfig().threshold != 0.55
    for version, pad, patch in ((2, 8, {"match": {"threshold": 0.55}}), (3, 16, None)):
        b = _bundle(rig, version, {DET: det + b"\0" * pad}, patch=patch)
        fc.publish(json.loads((b / SIGNED).read_text()), b / "artifacts", "*")
        _wait(rig, lambda v=version: fc.updates.get(DEV, {}).get("state") == "applied"
              and fc.updates[DEV]["bundle_version"] == v, 60, f"v{version} not applied")
    rig["sim"].insert(FakeCard.resident(photo_bytes=chip_jpeg(genuine_photo(shared_data))))
    _wait(rig, lambda: any(t.endswith("/verdict") for _, t, o in fc.log), 90, "no verdict")
    rig["sim"].remove()
    v = next(o for _, topic, o in fc.log if topic.endswith("/verdict"))["verdict"]
    assert v["scores"]["threshold"] == pytest.approx(0.55), v["scores"]
    assert slots.config_patch(slots.active_bundle(rig["state"])) == {"match": {"threshold": 0.55}}
