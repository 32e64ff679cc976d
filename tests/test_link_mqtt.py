"""Link against a real mosquitto: topics, MQTT 5 properties, status/LWT, commands, reconnect,
3.1.1 fallback, outbox-full alarm."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device import config as C
from device import verdict as V
from device.link.mqtt import Link, command_reply_info, topics_for
from device.link.outbox import Outbox
from tests.brokers import Mosquitto, Sub
from tests.test_verdict import make

REPO = Path(__file__).resolve().parents[1]
BASE = "kyc/v1/shop-7/counter-1"


def cfg_for(url: str, state: Path, **over) -> C.Config:
    ch = {"mqtt.url": url, "device.state_dir": str(state), "device.id": "counter-1",
          "device.site": "shop-7", "device.groups": ("north",), "mqtt.reconnect_min_s": 0.05,
          "mqtt.reconnect_max_s": 0.3, "mqtt.connect_timeout_s": 3.0}
    ch.update(over)
    return C.replace(C.Config(), **ch)


def verdict_for_device(**over):
    return make(device="counter-1", site="shop-7", **over)


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    signer = V.Signer.load_or_create(state)
    ob = Outbox(state / "outbox.sqlite", 50)
    yield state, signer, ob
    ob.close()


def gate_link(link) -> threading.Event:
    """Hold the link's next connection attempt until the returned event is set (lets a test
    subscribe to a restarted broker before the device reconnects)."""
    gate = threading.Event()
    gate.set()
    connect_once = link._one_connection
    link._one_connection = lambda: gate.wait(20) and connect_once()
    return gate


def status_states(sub):
    return [json.loads(m[1])["state"] for m in sub.on("/status")]


def test_topics_layout():
    t = topics_for("kyc/v1/", "shop-7", "counter-1")
    assert t == {"base": BASE, "verdict": BASE + "/verdict", "status": BASE + "/status",
                 "session": BASE + "/session", "cmd": BASE + "/cmd/#", "update_status": BASE + "/update/status"}


def test_verdicts_in_order_with_mqtt5_properties_and_correlation_echo(broker, env):
    state, signer, ob = env
    sub = Sub(broker.port, "kyc/#")
    ids = []
    for i in range(12):
        s = signer.sign(verdict_for_device())
        ob.put(s, response_topic="ops/desk-3/reply" if i == 4 else None,
               correlation=b"ticket-42" if i == 4 else None)
        ids.append(s["verdict"]["verdict_id"])
    link = Link(cfg_for(broker.url, state, **{"mqtt.message_expiry_s": 3600}), ob, signer=signer,
                health=lambda: {"camera": "ok", "reader": "ok", "models": {"detector": "bf@1a2b3c4d"}}).start()
    try:
        assert link.wait_connected(10)
        assert sub.wait_for(lambda: len(sub.on("/verdict")) >= 12)
        got = sub.on("/verdict")
        assert [json.loads(m[1])["verdict"]["verdict_id"] for m in got] == ids
        for topic, payload, props, retain in got:
            assert topic == BASE + "/verdict" and not retain
            assert V.verify(json.loads(payload), [signer.public_key_b64])
            assert props.ContentType == "application/json" and props.PayloadFormatIndicator == 1
            assert 3500 <= props.MessageExpiryInterval <= 3600
            up = dict(props.UserProperty)
            assert up["schema_version"] == "2" and up["verdict_id"] == json.loads(payload)["verdict"]["verdict_id"]
        p4 = got[4][2]
        assert p4.CorrelationData == b"ticket-42" and p4.ResponseTopic == "ops/desk-3/reply"
        assert not hasattr(got[3][2], "CorrelationData") or not got[3][2].CorrelationData
        assert sub.wait_for(lambda: ob.depth() == 0, 5)
        st = json.loads(sub.on("/status")[0][1])
        assert st["state"] == "online" and st["device"] == "counter-1" and st["site"] == "shop-7"
        assert st["key_id"] == signer.key_id and st["public_key"] == signer.public_key_b64
        assert st["camera"] == "ok" and st["models"] == {"detector": "bf@1a2b3c4d"}
        assert {"uptime_s", "outbox", "alarms", "cpu_temp_c", "schema_version"} <= set(st)
        assert sub.on("/status")[0][2].ContentType == "application/json"
    finally:
        link.stop()
        sub.close()
    assert link.stats["acked"] == 12 and link.stats["denied"] == 0


def test_status_retained_online_stopping_then_offline_will(broker, env):
    state, signer, ob = env
    early = Sub(broker.port, BASE + "/status")
    link = Link(cfg_for(broker.url, state), ob, signer=signer).start()
    assert link.wait_connected(10)
    assert early.wait_for(lambda: status_states(early) == ["online"])
    assert early.msgs[0][3] is False                    # live delivery
    early.close()
    late = Sub(broker.port, BASE + "/status")          # joins later: gets the retained one
    assert late.wait_for(lambda: status_states(late) == ["online"])
    assert late.msgs[0][3] is True                      # retained
    link.stop("config_reload")
    assert late.wait_for(lambda: status_states(late)[-2:] == ["stopping", "offline"])
    stopping = json.loads(late.on("/status")[-2][1])
    assert stopping["reason"] == "config_reload"
    late.close()
    after = Sub(broker.port, BASE + "/status")
    assert after.wait_for(lambda: status_states(after) == ["offline"])
    after.close()


CHILD = textwrap.dedent("""
    import sys, time
    from device import config as C
    from device.link.mqtt import Link
    from device.link.outbox import Outbox
    cfg = C.replace(C.Config(), **{"mqtt.url": sys.argv[1], "device.state_dir": sys.argv[2],
                                   "device.id": "counter-1", "device.site": "shop-7"})
    link = Link(cfg, Outbox(sys.argv[2] + "/outbox.sqlite", 10)).start()
    assert link.wait_connected(10)
    print("UP", flush=True)
    time.sleep(60)
""")


def test_will_offline_when_the_device_process_is_killed(broker, tmp_path):
    sub = Sub(broker.port, BASE + "/status")
    p = subprocess.Popen([sys.executable, "-c", CHILD, broker.url, str(tmp_path)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "UP"
        assert sub.wait_for(lambda: status_states(sub) == ["online"])
        os.kill(p.pid, signal.SIGKILL)
        assert sub.wait_for(lambda: status_states(sub) == ["online", "offline"], 10)
    finally:
        p.kill()
        p.wait()
        sub.close()


def test_broker_restart_online_again_and_queued_verdicts_in_order(tmp_path, env):
    state, signer, ob = env
    b = Mosquitto(tmp_path).start()
    link = Link(cfg_for(b.url, state), ob, signer=signer)
    gate = gate_link(link)
    link.start()
    try:
        assert link.wait_connected(10)
        gate.clear()
        b.stop()
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not link.connected
        ids = []
        for _ in range(15):                              # stored while the broker is away
            s = signer.sign(verdict_for_device())
            ob.put(s)
            link.kick()
            ids.append(s["verdict"]["verdict_id"])
        time.sleep(0.3)
        assert ob.depth() == 15
        b.start()                                        # same port
        sub = Sub(b.port, "kyc/#")
        gate.set()
        assert link.wait_connected(10)
        assert sub.wait_for(lambda: [json.loads(m[1])["verdict"]["verdict_id"]
                                     for m in sub.on("/verdict")][-15:] == ids, 10)
        assert sub.wait_for(lambda: "online" in status_states(sub))   # republished on reconnect
        assert sub.wait_for(lambda: ob.depth() == 0, 5)
        assert link.stats["connects"] >= 2
        sub.close()
    finally:
        link.stop()
        b.stop()


def test_commands_own_fleet_and_group_topics_with_reply_info(broker, env):
    state, signer, ob = env
    got = []
    link = Link(cfg_for(broker.url, state), ob, signer=signer,
                on_command=lambda name, payload, props: got.append((name, payload, command_reply_info(props)))).start()
    assert link.wait_connected(10)
    op = Sub(broker.port, "nothing/#")
    time.sleep(0.3)                                       # SUBACK
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = "ops/desk-3/reply"
    p.CorrelationData = b"\x00\x01req-7"
    op.publish(BASE + "/cmd/start", json.dumps({"operator": "desk-3"}), qos=1, properties=p)
    op.publish("kyc/v1/shop-7/counter-2/cmd/start", "{}", qos=1)         # another device's
    op.publish("kyc/v1/_fleet/all/cmd/update", json.dumps({"bundle": "x"}), qos=1)
    op.publish("kyc/v1/_fleet/group/north/cmd/update", "{}", qos=1)
    op.publish("kyc/v1/_fleet/group/south/cmd/update", "{}", qos=1)      # not our group
    op.publish(BASE + "/cmd/abort", b"\xff not json", qos=1)
    op.publish(BASE + "/cmd/abort", "{}", qos=1)
    deadline = time.monotonic() + 5
    while len(got) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    link.stop()
    op.close()
    assert got == [("start", {"operator": "desk-3"}, ("ops/desk-3/reply", b"\x00\x01req-7")),
                   ("_fleet/all/cmd/update", {"bundle": "x"}, (None, None)),
                   ("_fleet/group/north/cmd/update", {}, (None, None)),
                   ("abort", {}, (None, None))]
    assert link.stats["bad_commands"] == 1


def test_session_events_closed_schema_and_update_status_retained(broker, env):
    state, signer, ob = env
    sub = Sub(broker.port, "kyc/#")
    link = Link(cfg_for(broker.url, state), ob, signer=signer).start()
    try:
        assert link.wait_connected(10)
        link.publish_session_event({"event": "challenge", "challenge": "turn_left", "state": "started",
                                    "index": 1, "of": 2, "prompt": "turn_left"})
        with pytest.raises(V.VerdictError):
            link.publish_session_event({"event": "challenge", "prompt": "Turn left please, Mr Zhang"})
        link.publish_update_status({"state": "downloading", "bundle": "2026.11.2", "progress": 0.25})
        assert sub.wait_for(lambda: sub.on("/session") and sub.on("/update/status"))
        time.sleep(0.2)
        ses = sub.on("/session")
        assert len(ses) == 1
        ev = json.loads(ses[0][1])
        assert ev["challenge"] == "turn_left" and ev["at"].endswith("Z")
        assert ses[0][2].MessageExpiryInterval <= 60
        late = Sub(broker.port, BASE + "/update/status")
        assert late.wait_for(lambda: late.msgs and late.msgs[0][3])
        assert json.loads(late.msgs[0][1])["state"] == "downloading"
        late.close()
    finally:
        link.stop()
        sub.close()


def test_mqtt311_fallback(tmp_path, env):
    state, signer, ob = env
    b = Mosquitto(tmp_path).start()
    sub = Sub(b.port, "kyc/#", protocol="3.1.1")
    s = signer.sign(verdict_for_device())
    ob.put(s, response_topic="ops/r", correlation=b"c1")     # kept, but 3.1.1 has nowhere to put it
    link = Link(cfg_for(b.url, state, **{"mqtt.protocol": "3.1.1"}), ob, signer=signer).start()
    try:
        assert link.wait_connected(10)
        assert sub.wait_for(lambda: sub.on("/verdict"))
        assert V.verify(json.loads(sub.on("/verdict")[0][1]), [signer.public_key_b64])
        assert sub.wait_for(lambda: ob.depth() == 0, 5)
        link.stop()
        assert sub.wait_for(lambda: status_states(sub)[-2:] == ["stopping", "offline"])
    finally:
        link.stop()
        sub.close()
        b.stop()
    log = b.log_text()
    assert "as kyc-edge-shop-7-counter-1 (p2," in log          # mosquitto: p2 = 3.1.1, p5 = 5
    assert "as kyc-edge-shop-7-counter-1 (p5," not in log


def test_outbox_full_alarm_in_status(broker, tmp_path):
    state = tmp_path / "s"
    signer = V.Signer.load_or_create(state)
    ob = Outbox(state / "outbox.sqlite", 2)
    for _ in range(2):
        ob.put(signer.sign(verdict_for_device()))
    with pytest.raises(Exception) as ei:
        ob.put(signer.sign(verdict_for_device()))
    assert getattr(ei.value, "reason", "") == "outbox_full"
    link = Link(cfg_for(broker.url, state), ob, signer=signer)        # not started: stays full
    st = link.status_payload()
    assert st["outbox"] == {"depth": 2, "max": 2, "full": True} and "outbox_full" in st["alarms"]
    ob.close()


def test_link_survives_a_broken_health_callback_and_never_connects_to_nothing(tmp_path, env):
    state, signer, ob = env
    from tests.brokers import free_port
    link = Link(cfg_for(f"mqtt://127.0.0.1:{free_port()}", state), ob, signer=signer,
                health=lambda: 1 / 0).start()
    assert not link.wait_connected(0.5)
    assert link.status_payload()["state"] == "online"          # health failure is swallowed
    t0 = time.monotonic()
    link.stop()
    assert time.monotonic() - t0 < 3


def test_a_tampered_outbox_row_is_never_published(broker, env):
    state, signer, ob = env
    good = signer.sign(verdict_for_device())
    ob.put(good)
    bad = signer.sign(verdict_for_device())
    ob.put(bad)
    # someone edits the database behind the outbox's back: adds a field to the stored verdict
    row = json.loads(ob.rows(2)[1].payload)
    row["verdict"]["name"] = "x"
    ob._db.execute("UPDATE outbox SET payload = ? WHERE verdict_id = ?",
                   (json.dumps(row).encode(), bad["verdict"]["verdict_id"]))
    sub = Sub(broker.port, BASE + "/verdict")
    link = Link(cfg_for(broker.url, state), ob, signer=signer).start()
    try:
        assert link.wait_connected(10)
        assert sub.wait_for(lambda: ob.depth() == 0, 5)
        time.sleep(0.2)
        assert [json.loads(m[1])["verdict"]["verdict_id"] for m in sub.msgs] == [good["verdict"]["verdict_id"]]
        assert "outbox_invalid_row" in link.alarms
    finally:
        link.stop()
        sub.close()
