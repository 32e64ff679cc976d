"""The counter flow a customer sees, on real parts: pty card reader -> daemon subprocess (real models,
replay camera on the blink video) -> the display process over its Unix socket -> headless Chromium on
the page; verdicts over a real mosquitto. Consent is given (or not) by clicking the page's buttons and
by the operator command cmd/consent."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from device.cardreader.simulator import FakeCard, Simulator
from device.localbroker import free_port
from tests.daemon_harness import NotifySocket, Subscriber, daemon_config, start_daemon, stop_daemon, write_config
from tests.display_harness import (assert_spoken_without_overlap, browser, kyc, screenshot, start_display,
                                   subsequence, wait_js)
from tests.faces import BLINK_VIDEO, chip_jpeg, genuine_photo

NOTICE = "notice-2025-06"
TOPIC = "kyc/v1/shop-test/counter-e2e"


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    from device.display.voice import render
    out = tmp_path_factory.mktemp("voice")
    try:
        render(out)
    except RuntimeError as e:
        from tests.conftest import missing
        missing(str(e))
    return out


@pytest.fixture
def counter(tmp_path, broker, shared_data, model_dir, voices):
    sock_dir = Path(tempfile.mkdtemp(prefix="kyc-d-"))        # short: a Unix socket path is <= 107 bytes
    port = free_port()
    sim = Simulator(card=None)
    reader_port = sim.start_pty()
    cfg = daemon_config(tmp_path, broker_url=broker.url, reader_port=reader_port,
                        video=str(shared_data / BLINK_VIDEO), model_dir=model_dir, extra={
                            "display": {"enabled": True, "socket": str(sock_dir / "d.sock"), "port": port,
                                        "voice_dir": str(voices), "result_hold_s": 60.0, "language": "zh"},
                            "consent": {"required": True, "timeout_s": 30.0, "notice_version": NOTICE}})
    cfg_path = write_config(tmp_path / "config.toml", cfg)
    display = start_display(cfg_path, port, tmp_path / "display.log")
    notify = NotifySocket(tmp_path / "notify.sock")
    sub = Subscriber(broker.url)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg_path, notify, log_path=log)
    page = browser(tmp_path, (800, 480))
    rig = dict(sim=sim, sub=sub, proc=proc, log=log, page=page, url=f"http://127.0.0.1:{port}/", tmp=tmp_path,
               broker=broker, notify=notify, shots=tmp_path / "screens")
    rig["shots"].mkdir()
    try:
        assert notify.wait_for("READY=1", 60), "no READY=1; log:\n" + log.read_text()[-3000:]
        page.get(rig["url"])
        wait_js(page, "window.__kyc.ready && window.__kyc.connected", 20, "page ready")
        yield rig
    finally:
        page.quit()
        stop_daemon(proc)
        display.terminate()
        display.wait(10)
        sub.close()
        notify.close()
        sim.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _events(rig, verdict_id: str) -> list[dict]:
    out = []
    for topic, payload, _ in list(rig["sub"].messages):
        if topic.endswith("/session"):
            e = json.loads(payload)
            if e.get("session_id") == verdict_id:
                out.append(e)
    return out


def _verdict(rig, before: int, timeout=60.0) -> dict:
    got = rig["sub"].wait_verdicts(before + 1, timeout)
    assert len(got) > before, "no verdict; daemon log:\n" + rig["log"].read_text()[-3000:]
    return got[before]["verdict"]


def _insert(rig, photo):
    rig["sim"].insert(FakeCard.resident(photo_bytes=chip_jpeg(photo)))


def _next_card(rig):
    rig["sim"].remove()
    time.sleep(0.6)


def test_agree_then_a_real_session_shows_each_prompt_in_order(counter, shared_data):
    d, shots = counter["page"], counter["shots"]
    screenshot(d, shots / "idle-800x480.png", (800, 480))
    screenshot(d, shots / "idle-1920x1080.png", (1920, 1080))
    before = len(counter["sub"].verdicts())
    _insert(counter, genuine_photo(shared_data))
    wait_js(d, "document.body.dataset.screen === 'consent'", 30, "consent screen")
    assert NOTICE in d.find_element("id", "s-consent").text
    a = float(wait_js(d, "document.getElementById('ring-consent').dataset.left", 5))
    time.sleep(1.0)
    b = float(d.execute_script("return document.getElementById('ring-consent').dataset.left"))
    assert 25 < a <= 30 and a - b > 0.6, ("the consent countdown must move", a, b)
    screenshot(d, shots / "consent-1920x1080.png", (1920, 1080))
    screenshot(d, shots / "consent-800x480.png", (800, 480))
    # nothing was analysed while the notice was up: no capture event yet, and no verdict
    assert len(counter["sub"].verdicts()) == before
    d.find_element("id", "btn-agree").click()
    v = _verdict(counter, before)
    assert v["result"] == "pass", v
    assert v["schema_version"] == "2"
    assert v["consent"] == {"given": True, "channel": "display", "notice_version": NOTICE, "guardian_required": False}
    wait_js(d, "document.body.dataset.screen === 'result'", 10, "result screen")
    assert d.execute_script("return document.body.dataset.result") == v["result"]
    assert d.find_element("id", "result-title").text == "核验通过"
    screenshot(d, shots / "result-800x480.png", (800, 480))
    screenshot(d, shots / "result-1920x1080.png", (1920, 1080))
    d.find_element("id", "lang").click()
    assert d.find_element("id", "result-title").text == "Verified"
    k = kyc(d)
    assert subsequence(["reading", "consent", "answer:agree", "look", "challenge:blink:1", "deciding",
                        "result:pass"], k["screens"]), k["screens"]
    # the challenge countdown moved while the blink was awaited (deadline_s from the session event)
    ch = [r["left"] for r in k["ring"] if r["ring"] == "ring-challenge"]
    assert len(ch) >= 2 and ch[0] <= 8.0 and ch[-1] < ch[0], ch
    # each prompt spoken once, in order, never two at a time
    keys = [s["key"] for s in k["spoken"]]
    assert subsequence(["consent_ask", "look", "blink", "deciding", "pass"], keys), keys
    assert keys.count("blink") == 1
    assert_spoken_without_overlap(k)
    # on MQTT: consent before capture, same closed events the page saw
    kinds = [e["event"] for e in _events(counter, v["verdict_id"])]
    assert kinds.index("consent") < kinds.index("consent_given") < kinds.index("capturing") < kinds.index("verdict")


def test_decline_alternative_and_operator_consent(counter, shared_data):
    d, sub = counter["page"], counter["sub"]
    # decline: the session ends at once, no frame analysed
    before = len(sub.verdicts())
    _insert(counter, genuine_photo(shared_data))
    wait_js(d, "document.body.dataset.screen === 'consent'", 30, "consent screen")
    d.find_element("id", "btn-decline").click()
    v = _verdict(counter, before, 20)
    assert v["result"] == "fail" and v["reasons"] == ["consent_declined"], v
    assert v["consent"] == {"given": False, "channel": "display", "notice_version": NOTICE, "guardian_required": False}
    assert v["scores"]["similarity"] is None and v["scores"]["liveness"] is None and v["scores"]["spoof"] is None
    kinds = [e["event"] for e in _events(counter, v["verdict_id"])]
    assert "consent" in kinds and not {"capturing", "challenge", "deciding", "hint"} & set(kinds), kinds
    wait_js(d, "document.body.dataset.screen === 'alternative'", 10, "declined screen")
    assert "未采集任何人脸图像" in d.find_element("id", "alt-body").text
    screenshot(d, counter["shots"] / "declined-800x480.png", (800, 480))
    _next_card(counter)

    # verify without face scan: manual_review, the alternative screen
    before = len(sub.verdicts())
    _insert(counter, genuine_photo(shared_data))
    wait_js(d, "document.body.dataset.screen === 'consent'", 30, "consent screen")
    d.find_element("id", "btn-alternative").click()
    v = _verdict(counter, before, 20)
    assert v["reasons"] == ["manual_review"] and v["consent"]["given"] is False
    assert not {"capturing", "challenge"} & {e["event"] for e in _events(counter, v["verdict_id"])}
    wait_js(d, "document.body.dataset.screen === 'alternative'", 10)
    screenshot(d, counter["shots"] / "alternative-1920x1080.png", (1920, 1080))
    _next_card(counter)

    # the operator answers with cmd/consent carrying the notice version; a wrong version is ignored
    before = len(sub.verdicts())
    _insert(counter, genuine_photo(shared_data))
    wait_js(d, "document.body.dataset.screen === 'consent'", 30, "consent screen")
    host, port = counter["broker"].url.split("://")[1].rsplit(":", 1)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(host, int(port))
    c.loop_start()
    c.publish(f"{TOPIC}/cmd/consent", json.dumps({"notice_version": "notice-1999"}), qos=1).wait_for_publish(5)
    time.sleep(1.0)
    assert len(sub.verdicts()) == before and d.execute_script("return document.body.dataset.screen") == "consent"
    c.publish(f"{TOPIC}/cmd/consent", json.dumps({"notice_version": NOTICE}), qos=1).wait_for_publish(5)
    v = _verdict(counter, before)
    c.loop_stop()
    c.disconnect()
    assert v["consent"] == {"given": True, "channel": "operator", "notice_version": NOTICE, "guardian_required": False}
    assert v["result"] == "pass", v
    wait_js(d, "document.body.dataset.screen === 'result'", 10)
