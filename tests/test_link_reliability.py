"""Replay window after a broker crash, purge of delivered rows, and a privacy scan of everything
the link puts on the wire, in its state directory and in its logs."""
from __future__ import annotations

import json
import logging
import time

import pytest

from device import verdict as V
from device.link.mqtt import Link
from device.link.outbox import Outbox
from tests import privacy_scan as ps
from tests.brokers import Mosquitto, Sub
from tests.test_link_mqtt import BASE, cfg_for, gate_link, verdict_for_device


@pytest.mark.parametrize("window", [10.0, 0.0])
def test_verdicts_acked_just_before_a_broker_crash_are_sent_again(tmp_path, window):
    state = tmp_path / "state"
    signer = V.Signer.load_or_create(state)
    ob = Outbox(state / "outbox.sqlite", 50)
    b = Mosquitto(tmp_path).start()              # no persistence: a crash loses what it held
    link = Link(cfg_for(b.url, state, **{"mqtt.replay_window_s": window}), ob, signer=signer)
    gate = gate_link(link)              # holds the link's next connection attempt until we say so
    link.start()
    back_office = Sub(b.port, BASE + "/verdict")    # someone takes the verdicts in (0x10 otherwise)
    try:
        assert link.wait_connected(10)
        ids = []
        for _ in range(5):
            s = signer.sign(verdict_for_device())
            ob.put(s)
            ids.append(s["verdict"]["verdict_id"])
        link.kick()
        end = time.monotonic() + 5
        while (link.stats["acked"] < 5 or ob.depth()) and time.monotonic() < end:
            time.sleep(0.02)
        assert ob.depth() == 0 and link.stats["acked"] == 5       # broker acknowledged all five
        gate.clear()
        b.kill()                                                  # ...then crashed
        b.start()
        sub = Sub(b.port, BASE + "/verdict")                      # subscribed before the device is back
        gate.set()
        assert link.wait_connected(10)
        if window:
            assert sub.wait_for(lambda: len(sub.on("/verdict")) >= 5, 10)
            assert [json.loads(m[1])["verdict"]["verdict_id"] for m in sub.on("/verdict")] == ids
            assert link.stats["replayed"] == 5
        else:
            time.sleep(1.0)
            assert sub.on("/verdict") == [] and link.stats["replayed"] == 0
        sub.close()
    finally:
        back_office.close()
        link.stop()
        b.stop()
        ob.close()


def test_delivered_rows_are_purged_after_the_window(broker, tmp_path):
    state = tmp_path / "state"
    signer = V.Signer.load_or_create(state)
    ob = Outbox(state / "outbox.sqlite", 50)
    back_office = Sub(broker.port, BASE + "/verdict")
    link = Link(cfg_for(broker.url, state, **{"mqtt.replay_window_s": 0.5}), ob, signer=signer).start()
    try:
        assert link.wait_connected(10)
        for _ in range(3):
            ob.put(signer.sign(verdict_for_device()))
        link.kick()
        end = time.monotonic() + 5
        while ob.depth() and time.monotonic() < end:
            time.sleep(0.02)
        assert ob.depth() == 0
        end = time.monotonic() + 5
        while ob.delivered_count() and time.monotonic() < end:
            time.sleep(0.05)
        assert ob.delivered_count() == 0
    finally:
        back_office.close()
        link.stop()
        ob.close()


def test_a_verdict_nobody_subscribed_to_waits_in_the_outbox_until_someone_does(broker, tmp_path):
    """PUBACK 0x10 No matching subscribers is a success code, but no back office took the verdict in
    (a restarted broker that has not restored the ingest's $share subscription, a mistyped topic in
    the ACL-free lab): the row stays pending, `verdict_no_subscribers` is raised, and the verdict goes
    out, once, when a subscriber is there; the alarm clears."""
    state = tmp_path / "state"
    signer = V.Signer.load_or_create(state)
    ob = Outbox(state / "outbox.sqlite", 50)
    link = Link(cfg_for(broker.url, state, **{"mqtt.reconnect_max_s": 0.5}), ob, signer=signer).start()
    try:
        assert link.wait_connected(10)
        s = signer.sign(verdict_for_device())
        ob.put(s)
        link.kick()
        end = time.monotonic() + 10
        while "verdict_no_subscribers" not in link.alarms and time.monotonic() < end:
            time.sleep(0.02)
        assert "verdict_no_subscribers" in link.alarms and ob.depth() == 1 and link.stats["acked"] == 0
        assert "verdict_no_subscribers" in link.status_payload()["alarms"]
        sub = Sub(broker.port, BASE + "/verdict")
        try:
            assert sub.wait_for(lambda: len(sub.on("/verdict")) >= 1, 10)
            end = time.monotonic() + 10
            while (ob.depth() or "verdict_no_subscribers" in link.alarms) and time.monotonic() < end:
                time.sleep(0.02)
            assert ob.depth() == 0 and "verdict_no_subscribers" not in link.alarms
            got = [json.loads(m[1])["verdict"]["verdict_id"] for m in sub.on("/verdict")]
            assert got == [s["verdict"]["verdict_id"]]
        finally:
            sub.close()
    finally:
        link.stop()
        ob.close()


NAME, ID_NUMBER = "张伟", "11010119900307123X"


def test_nothing_biometric_or_personal_on_the_wire_on_disk_or_in_logs(broker, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    signer = V.Signer.load_or_create(state)
    ob = Outbox(state / "outbox.sqlite", 50)
    sub = Sub(broker.port, "#")
    got = []
    link = Link(cfg_for(broker.url, state), ob, signer=signer,
                health=lambda: {"camera": "ok", "reader": "ok", "models": {"detector": "bf@1a2b3c4d"},
                                "last_card": NAME, "vec": [0.1] * 192},      # a careless health callback
                on_command=lambda n, p, props: got.append(n)).start()
    try:
        assert link.wait_connected(10)
        for ev in ({"event": "state", "state": "card_read"},
                   {"event": "challenge", "challenge": "blink", "state": "started", "index": 0, "of": 2}):
            link.publish_session_event(ev)
        with pytest.raises(V.VerdictError):
            link.publish_session_event({"event": "state", "state": "card_read", "name": NAME})
        for i in range(3):
            ob.put(signer.sign(verdict_for_device(card={"type": "resident", "expired": False,
                                                        "number_hmac": "0f" * 32})),
                   correlation=b"req-%d" % i)
            link.kick()
        sub.publish(BASE + "/cmd/start", json.dumps({"operator": "desk-1"}), qos=1)
        assert sub.wait_for(lambda: len(sub.on("/verdict")) == 3 and sub.on("/session"))
        link.publish_status()
        time.sleep(0.3)
    finally:
        link.stop()
        sub.close()
        ob.close()
    status = [json.loads(m[1]) for m in sub.msgs if m[0].endswith("/status")]
    assert status and all("vec" not in s and "last_card" not in s for s in status)   # dropped by the sanitiser
    assert status[0]["camera"] == "ok" and status[0]["models"] == {"detector": "bf@1a2b3c4d"}
    assert len(sub.on("/verdict")) == 3 and got == ["start"]
    forbidden = [NAME, ID_NUMBER]
    ps.assert_clean(ps.scan_mqtt(sub.msgs, forbidden), "mqtt payloads (verdict, session, status)")
    ps.assert_clean(ps.scan_text(caplog.text, forbidden), "link logs")
    ps.assert_clean(ps.scan_dirs([state], forbidden), "state dir (key, outbox)")


def test_two_boxes_with_one_device_id_back_off_raise_an_alarm_and_lose_nothing(broker, tmp_path):
    """A cloned SD card: two boxes, one site/device id, so one MQTT client id; each connection takes
    the other's session over. Before, each box reconnected at once after every takeover (~130
    disconnects each in 12 s, every one replaying the window: 1,150 copies of 10 verdicts). Now the
    back-off only starts over after a connection that outlived it, `connection_flapping` is raised,
    and every verdict of both still arrives; the survivor's alarm clears once its connection holds."""
    sub = Sub(broker.port, BASE + "/verdict")
    links, sent = [], []
    try:
        for k in range(2):
            st = tmp_path / f"box{k}"
            signer = V.Signer.load_or_create(st)
            ob = Outbox(st / "outbox.sqlite", 50)
            link = Link(cfg_for(broker.url, st, **{"mqtt.reconnect_max_s": 1.0}), ob, signer=signer).start()
            links.append((link, ob))
            for _ in range(5):
                s = signer.sign(verdict_for_device())
                ob.put(s)
                sent.append(s["verdict"]["verdict_id"])
            link.kick()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6.0:
            time.sleep(0.1)
        got = {json.loads(m[1])["verdict"]["verdict_id"] for m in sub.on("/verdict")}
        assert got == set(sent) and all(ob.depth() == 0 for _, ob in links)
        disconnects = [link.stats["disconnects"] for link, _ in links]
        assert max(disconnects) <= 14, disconnects          # back-off, not a reconnect storm
        assert any("connection_flapping" in link.alarms for link, _ in links)
        copies = len(sub.on("/verdict"))
        assert copies <= 10 + 5 * sum(disconnects), copies  # at most one window replay per takeover
        survivor = links[0][0]
        links[1][0].stop()
        end = time.monotonic() + 15
        while ("connection_flapping" in survivor.alarms or not survivor.connected) and time.monotonic() < end:
            time.sleep(0.1)
        assert survivor.connected and "connection_flapping" not in survivor.alarms
    finally:
        for link, ob in links:
            link.stop()
            ob.close()
        sub.close()
