"""Issue 20 items 1 and 8 (device side): a poisoned cmd/start is refused before anything is kept,
the next session is unaffected (also after a restart with the poison retained), the verdict signs
the binding of the cmd/start that started it, and a second cmd/start never re-binds it."""
from __future__ import annotations

import hashlib
import time

import pytest

from device import verdict as V
from tests.fault_rig import BASE, Rig


@pytest.fixture
def rig(tmp_path, broker, shared_data, model_dir):
    r = Rig(tmp_path, broker, shared_data, model_dir)
    yield r
    r.close()
    # retained commands would outlive the test in a shared broker; this one is per test


def _verify(signed, rig) -> dict:
    st = rig.status()
    return V.verify(signed, [st["public_key"]])


def test_poisoned_start_is_refused_and_the_next_session_is_unaffected(rig):
    rig.start()
    rig.publish("start", {"operator": "x"}, retain=True, CorrelationData=b"c" * 300)          # > 256 bytes
    rig.publish("start", {"operator": "x"}, ResponseTopic="ops/" + "r" * 300)                 # > 256 chars
    rig.publish("start", {"operator": "x"}, ResponseTopic="ops/#")                             # wildcard
    rig.publish("start", {"nonce": "short"})                                                   # bad nonce
    rig.wait(lambda: rig.refused("bad_command") >= 4, 15, "four refused events")
    signed, props = rig.session()
    v = _verify(signed, rig)
    assert v["result"] == "pass" and "binding" not in v
    assert getattr(props, "CorrelationData", None) is None and getattr(props, "ResponseTopic", None) is None
    assert "could not store" not in rig.log_text()

    # the retained poison comes back after a restart: refused again, the counter still serves
    assert rig.stop() == 0
    n = rig.refused("bad_command")
    rig.start()
    rig.wait(lambda: rig.refused("bad_command") > n, 15, "the retained poison to be refused again")
    signed, _ = rig.session()
    assert _verify(signed, rig)["result"] == "pass"
    rig.sub.publish(f"{BASE}/cmd/start", b"", qos=1, retain=True)     # clear the retained message


def test_verdict_signs_the_binding_and_a_second_start_cannot_rebind(rig):
    rig.start()
    rig.publish("start", {"operator": "desk-3"}, ResponseTopic="ops/desk-3/reply", CorrelationData=b"ticket-42")
    rig.wait(lambda: "start command received" in rig.log_text(), 10, "the start to be kept")
    # an attacker's start after the operator's (pending) and during the session: both refused
    rig.publish("start", {"operator": "evil"}, ResponseTopic="evil/reply", CorrelationData=b"evil-ticket")
    rig.wait(lambda: rig.refused("session_running") >= 1, 10, "the pending-start refusal")
    signed, props = rig.session(during=lambda: rig.publish(
        "start", {"nonce": "N" * 32}, ResponseTopic="evil/reply", CorrelationData=b"evil-2"))
    v = _verify(signed, rig)
    assert v["binding"] == {"kind": "correlation", "sha256": hashlib.sha256(b"ticket-42").hexdigest()}
    assert props.CorrelationData == b"ticket-42" and props.ResponseTopic == "ops/desk-3/reply"
    assert rig.refused("session_running") >= 2
    # the refused starts were not kept for the next session either
    time.sleep(0.3)
    nonce = "op-nonce-0123456789abcdef"
    rig.publish("start", {"nonce": nonce}, CorrelationData=b"ticket-43")
    rig.wait(lambda: rig.log_text().count("start command received") >= 2, 10, "the second start")
    signed, props = rig.session()
    v = _verify(signed, rig)
    assert v["binding"] == {"kind": "nonce", "sha256": hashlib.sha256(nonce.encode()).hexdigest()}
    assert props.CorrelationData == b"ticket-43"
    # a binding is signed: changing it breaks the signature
    forged = {"verdict": {**signed["verdict"], "binding": {"kind": "correlation", "sha256": "0" * 64}},
              "sig": signed["sig"]}
    with pytest.raises(V.VerdictError):
        _verify(forged, rig)
