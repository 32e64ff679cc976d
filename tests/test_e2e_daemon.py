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
def rig(request, tmp_path, broker, shared_data, model_dir):
    challenges = getattr(request, "param", ("blink",))
    sim = Simulator(card=None)
    port = sim.start_pty()
    cfg = daemon_config(tmp_path, broker_url=broker.url, reader_port=port,
                        video=str(shared_data / BLINK_VIDEO), model_dir=model_dir, challenges=challenges)
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


def test_sighup_reload_keeps_old_config_when_new_is_invalid(rig, shared_data):
    import signal
    assert rig["notify"].wait_for("READY=1", 30)
    cfg_path = rig["tmp"] / "config.toml"
    good = cfg_path.read_text()
    cfg_path.write_text(good + "\n[match]\nthreshold = 7\n")
    rig["proc"].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "reload refused" not in rig["log"].read_text():
        time.sleep(0.1)
    log = rig["log"].read_text()
    assert "reload refused, keeping the old config: config: match.threshold = 7" in log
    assert rig["proc"].poll() is None, "an invalid reload must not stop the daemon"
    # the old config still serves a session
    assert _session(rig, genuine_photo(shared_data))["verdict"]["result"] == "pass"
    # a valid reload is taken
    cfg_path.write_text(good + "\n[match]\nthreshold = 0.99\n")
    rig["proc"].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "config reloaded" not in rig["log"].read_text():
        time.sleep(0.1)
    time.sleep(0.5)
    v = _session(rig, genuine_photo(shared_data))["verdict"]
    assert v["scores"]["threshold"] == 0.99 and v["reasons"] == ["face_mismatch"]


@pytest.mark.parametrize("rig", [("turn_left",)], indirect=True)
def test_sigterm_mid_session_aborts_cleanly(rig, shared_data):
    """The subject of the blink video never turns: SIGTERM always lands mid-capture."""
    assert rig["notify"].wait_for("READY=1", 30)
    rig["sim"].insert(FakeCard.resident(photo_bytes=chip_jpeg(genuine_photo(shared_data))))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(
            t.endswith("/session") and b'"capturing"' in p for t, p, _ in rig["sub"].messages):
        time.sleep(0.02)
    t0 = time.monotonic()
    assert stop_daemon(rig["proc"]) == 0
    assert time.monotonic() - t0 < 5.0
    got = rig["sub"].wait_verdicts(1, 5)
    assert got, "the aborted session's verdict must still be published (or wait in the outbox)"
    v = got[0]["verdict"]
    assert v["result"] == "fail" and v["reasons"] == ["aborted"]
    status = [p for t, p, _ in rig["sub"].messages if t.endswith("/status")]
    assert b'"stopping"' in status[-1] or b'"offline"' in status[-1]


def test_broker_down_at_boot_then_verdict_delivered_from_outbox(tmp_path, shared_data, model_dir):
    """The counter serves with the broker down; the verdict waits in the outbox and is delivered later."""
    from tests.brokers import Mosquitto, free_port
    port = free_port()
    sim = Simulator(card=None)
    cfg = daemon_config(tmp_path, broker_url=f"mqtt://127.0.0.1:{port}", reader_port=sim.start_pty(),
                        video=str(shared_data / BLINK_VIDEO), model_dir=model_dir,
                        extra={"mqtt": {"connect_timeout_s": 1.0}})
    notify = NotifySocket(tmp_path / "n.sock")
    proc = start_daemon(write_config(tmp_path / "c.toml", cfg), notify, log_path=tmp_path / "d.log")
    try:
        assert notify.wait_for("READY=1", 30), (tmp_path / "d.log").read_text()[-2000:]
        assert any("broker unreachable" in m for m in notify.messages)
        sim.insert(FakeCard.resident(photo_bytes=chip_jpeg(genuine_photo(shared_data))))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "verdict " not in (tmp_path / "d.log").read_text():
            time.sleep(0.1)
        assert "verdict " in (tmp_path / "d.log").read_text()
        with Mosquitto(tmp_path, port=port) as b:
            sub = Subscriber(b.url)
            got = sub.wait_verdicts(1, 30)
            sub.close()
        assert got and got[0]["verdict"]["result"] == "pass"
    finally:
        stop_daemon(proc)
        notify.close()
        sim.stop()
