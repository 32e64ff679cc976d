"""The spine, end to end on real parts: serial bytes over a pty -> daemon subprocess (real models,
replay camera on a real face video) -> real mosquitto -> a subscriber. Only systemd is stood in for,
by a NOTIFY_SOCKET this test owns."""
from __future__ import annotations

import time

import pytest

from device.cardreader.simulator import FakeCard, Simulator
from tests.daemon_harness import (NotifySocket, Subscriber, daemon_config, start_daemon, stop_daemon,
                                  write_config)
from tests.faces import BLINK_VIDEO, chip_jpeg, genuine_photo, impostor_photo


@pytest.fixture
def rig(tmp_path, broker, shared_data, model_dir):
    sim = Simulator(card=None)
    port = sim.start_pty()
    cfg = daemon_config(tmp_path, broker_url=broker.url, reader_port=port,
                        video=str(shared_data / BLINK_VIDEO), model_dir=model_dir)
    cfg_path = write_config(tmp_path / "config.toml", cfg)
    notify = NotifySocket(tmp_path / "notify.sock")
    sub = Subscriber(broker.url)
    log_path = tmp_path / "daemon.log"
    proc = start_daemon(cfg_path, notify, log_path=log_path)
    yield dict(sim=sim, notify=notify, sub=sub, proc=proc, log=log_path, tmp=tmp_path)
    stop_daemon(proc)
    sub.close()
    notify.close()
    sim.stop()


def _session(rig, photo_rgb, timeout=45.0) -> dict:
    before = len(rig["sub"].verdicts())
    rig["sim"].insert(FakeCard.resident(photo_bytes=chip_jpeg(photo_rgb)))
    got = rig["sub"].wait_verdicts(before + 1, timeout)
    rig["sim"].remove()
    assert len(got) > before, "no verdict arrived; daemon log:\n" + rig["log"].read_text()[-3000:]
    return got[before]


def test_daemon_ready_watchdog_and_verdicts_over_mqtt(rig, shared_data):
    notify, proc = rig["notify"], rig["proc"]
    assert notify.wait_for("READY=1", 30), "no READY=1; log:\n" + rig["log"].read_text()[-3000:]
    assert any(m.startswith("STATUS=") for m in notify.messages)
    assert notify.wait_for("WATCHDOG=1", 5), "no WATCHDOG=1 within 5 s of READY (WATCHDOG_USEC=2s)"

    genuine = _session(rig, genuine_photo(shared_data))
    payload = genuine["verdict"]
    assert payload["result"] == "pass", payload
    assert payload["reasons"] == []
    assert payload["scores"]["similarity"] >= payload["scores"]["threshold"]
    assert genuine["sig"]["alg"] == "Ed25519"

    time.sleep(0.5)   # the daemon sees the card removed before the next one goes in
    impostor = _session(rig, impostor_photo(shared_data))
    assert impostor["verdict"]["result"] == "fail"
    assert "face_mismatch" in impostor["verdict"]["reasons"]
    assert impostor["verdict"]["scores"]["similarity"] < impostor["verdict"]["scores"]["threshold"]

    # status is retained and says online; session events carried the blink prompt
    topics = [t for t, _, _ in rig["sub"].messages]
    assert "kyc/v1/shop-test/counter-e2e/status" in topics
    prompts = [p for t, p, _ in rig["sub"].messages if t.endswith("/session") and b'"prompt"' in p]
    assert any(b'"blink"' in p for p in prompts)

    t0 = time.monotonic()
    assert stop_daemon(proc) == 0
    assert time.monotonic() - t0 < 5.0, "SIGTERM must end the daemon within 5 s"


def test_demo_prints_a_verdict(shared_data, tmp_path):
    """`kyc-edge demo` starts its own broker, simulator, camera and daemon in one command."""
    import json
    import subprocess
    import sys

    import cv2

    from tests.daemon_harness import REPO
    card = tmp_path / "card.jpg"
    cv2.imwrite(str(card), genuine_photo(shared_data)[:, :, ::-1])
    r = subprocess.run([sys.executable, "-m", "device.cli", "demo", "--card-photo", str(card),
                        "--video", str(shared_data / BLINK_VIDEO), "--timeout", "60"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    payload = json.loads(r.stdout)
    assert payload["verdict"]["result"] == "pass" and payload["verdict"]["device"] == "demo-counter"
