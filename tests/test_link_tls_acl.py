"""TLS with per-device client certificates + username/password + the example ACL
(systemd/mosquitto-acl.example) on a real mosquitto. Certificates are made in tmp_path."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from device import config as C
from device import verdict as V
from kyc_tools.verdicts.listen import Listener
from device.link.mqtt import Link
from device.link.outbox import Outbox
from tests.brokers import Mosquitto, Sub, client_tls_context, make_pki
from tests.test_verdict import make

REPO = Path(__file__).resolve().parents[1]
ACL = (REPO / "systemd" / "mosquitto-acl.example").read_text()
PASSWORDS = {"dev1": "pw-dev1", "dev2": "pw-dev2", "operator": "pw-op"}


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    pki = make_pki(d / "good", ["dev1", "dev2", "operator"])
    rogue = make_pki(d / "rogue", ["dev1"])
    b = Mosquitto.secure(d, pki, passwords=PASSWORDS, acl=ACL).start()
    for name, pw in PASSWORDS.items():
        (d / f"{name}.pw").write_text(pw + "\n")
    (d / "wrong.pw").write_text("nope\n")
    yield b, pki, rogue, d
    b.stop()


def device_cfg(b, pki, d, *, device="dev1", user="dev1", cert_of="dev1", pw="dev1", state=None, site="s1"):
    cert, key = pki.client(cert_of)
    return C.replace(C.Config(), **{
        "mqtt.url": b.url, "device.id": device, "device.site": site, "device.state_dir": str(state),
        "mqtt.username": user, "mqtt.password_file": str(d / f"{pw}.pw"), "mqtt.ca_file": str(pki.ca_cert),
        "mqtt.cert_file": str(cert), "mqtt.key_file": str(key), "mqtt.reconnect_min_s": 0.1,
        "mqtt.reconnect_max_s": 0.5, "mqtt.connect_timeout_s": 3.0})


def operator_sub(b, pki, topic="kyc/#"):
    return Sub(b.port, topic, tls_context=client_tls_context(pki, "operator"),
               username="operator", password=PASSWORDS["operator"])


def test_device_publishes_over_tls_and_operator_verifies(secure, tmp_path):
    b, pki, _, d = secure
    signer = V.Signer.load_or_create(tmp_path)
    ob = Outbox(tmp_path / "outbox.sqlite", 10)
    got = []
    lst = Listener(b.url, [signer.public_key_b64], got.append, topic="kyc/v1/+/+/verdict",
                   tls_context=client_tls_context(pki, "operator"), username="operator",
                   password=PASSWORDS["operator"]).start()
    assert lst.wait_subscribed(10)
    s = signer.sign(make(device="dev1", site="s1"))
    ob.put(s)
    link = Link(device_cfg(b, pki, d, state=tmp_path), ob, signer=signer).start()
    try:
        assert link.wait_connected(10)
        end = time.monotonic() + 10
        while not got and time.monotonic() < end:
            time.sleep(0.02)
        assert [r.status for r in got] == ["ok"]
        assert got[0].verdict["verdict_id"] == s["verdict"]["verdict_id"]
        assert got[0].topic == "kyc/v1/s1/dev1/verdict"
        end = time.monotonic() + 5
        while ob.depth() and time.monotonic() < end:
            time.sleep(0.02)
        assert ob.depth() == 0 and link.alarms == set()
    finally:
        link.stop()
        lst.stop()
        ob.close()


def test_publishing_as_another_device_is_denied_detected_and_logged(secure, tmp_path, caplog):
    b, pki, _, d = secure
    signer = V.Signer.load_or_create(tmp_path)
    ob = Outbox(tmp_path / "outbox.sqlite", 10)
    s = signer.sign(make(device="dev2", site="s1"))
    ob.put(s)
    op = operator_sub(b, pki, "kyc/v1/+/dev2/#")
    # dev1's certificate and password, but configured as dev2: its topics are dev2's
    link = Link(device_cfg(b, pki, d, device="dev2", state=tmp_path), ob, signer=signer)
    caplog.set_level(logging.ERROR, logger="kyc_edge.link")
    link.start()
    try:
        assert link.wait_connected(10)
        end = time.monotonic() + 10
        while link.stats["denied"] < 2 and time.monotonic() < end:     # the verdict and the status
            time.sleep(0.02)
        assert "publish_denied" in link.alarms
        assert ob.depth() == 1                                    # kept, never deleted
        assert ob.pending(1)[0] == s
        text = caplog.text
        assert "0x87" in text and "Not authorized" in text
        assert s["verdict"]["verdict_id"] in text and "kept in the outbox" in text
        assert link.status_payload()["alarms"] == ["publish_denied"]
        time.sleep(0.3)
        assert op.on("/verdict") == [] and op.on("/status") == []   # nothing reached dev2's topics
    finally:
        link.stop()
        op.close()
        ob.close()


@pytest.mark.parametrize("case", ["wrong password", "rogue CA certificate", "no client certificate"])
def test_bad_credentials_never_connect(secure, tmp_path, case, caplog):
    b, pki, rogue, d = secure
    cfg = device_cfg(b, pki, d, state=tmp_path, pw="wrong" if case == "wrong password" else "dev1")
    if case == "rogue CA certificate":
        cert, key = rogue.client("dev1")
        cfg = C.replace(cfg, **{"mqtt.cert_file": str(cert), "mqtt.key_file": str(key)})
    if case == "no client certificate":
        cfg = C.replace(cfg, **{"mqtt.cert_file": "", "mqtt.key_file": ""})
    caplog.set_level(logging.INFO, logger="kyc_edge.link")
    ob = Outbox(tmp_path / "outbox.sqlite", 10)
    link = Link(cfg, ob).start()
    try:
        assert not link.wait_connected(1.5)
        if case == "wrong password":
            assert link.stats["refused_connects"] >= 1
            assert "refused the connection" in caplog.text
        else:
            assert link.stats["connects"] == 0
    finally:
        link.stop()
        ob.close()


def test_device_reads_only_its_own_commands(secure, tmp_path):
    b, pki, _, d = secure
    got = []
    ob = Outbox(tmp_path / "outbox.sqlite", 10)
    link = Link(device_cfg(b, pki, d, state=tmp_path), ob,
                on_command=lambda n, p, props: got.append((n, p))).start()
    op = operator_sub(b, pki, "nothing")
    try:
        assert link.wait_connected(10)
        time.sleep(0.3)
        op.publish("kyc/v1/s1/dev2/cmd/start", json.dumps({"who": "dev2"}), qos=1)
        op.publish("kyc/v1/s1/dev1/cmd/start", json.dumps({"who": "dev1"}), qos=1)
        op.publish("kyc/v1/_fleet/all/cmd/update", json.dumps({"who": "all"}), qos=1)
        end = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.2)
        assert got == [("start", {"who": "dev1"}), ("_fleet/all/cmd/update", {"who": "all"})]
        assert "command_subscribe_denied" not in link.alarms
    finally:
        link.stop()
        op.close()
        ob.close()


def test_a_device_cannot_send_commands_or_read_others(secure, tmp_path):
    """The ACL side of isolation, seen from a raw client holding dev2's credentials."""
    b, pki, _, d = secure
    spy = Sub(b.port, "kyc/v1/s1/dev1/#", tls_context=client_tls_context(pki, "dev2"),
              username="dev2", password=PASSWORDS["dev2"])
    dev1_cmds = []
    ob = Outbox(tmp_path / "outbox.sqlite", 10)
    signer = V.Signer.load_or_create(tmp_path)
    ob.put(signer.sign(make(device="dev1", site="s1")))
    link = Link(device_cfg(b, pki, d, state=tmp_path), ob, signer=signer,
                on_command=lambda n, p, props: dev1_cmds.append(n)).start()
    try:
        assert link.wait_connected(10)
        spy.publish("kyc/v1/s1/dev1/cmd/start", "{}", qos=1)      # dev2 may not command dev1
        end = time.monotonic() + 5
        while ob.depth() and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.3)
        assert ob.depth() == 0                 # dev1's verdict was delivered...
        assert spy.msgs == []                  # ...but dev2 could not read it (or dev1's status)
        assert dev1_cmds == []
    finally:
        link.stop()
        spy.close()
        ob.close()
