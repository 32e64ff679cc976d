"""Issue 20, operator side (items 8 and 15): `kyc-edge verdicts listen` against a real mosquitto.

* item 15: keys given as separate files are bound to the device their file names (or a registry
  file) name, so counter-0001's verdict signed with counter-0002's key is `forged`; a private key
  in the key directory is a one-line error, not a traceback.
* item 8: a captured genuine pass re-published 16 minutes later, or with new Correlation Data, or
  to a freshly restarted listener, is not `ok` (stale / replayed / duplicate from the persistent
  state); a nonce sent by `verdicts start` binds exactly one verdict."""
from __future__ import annotations

import hashlib
import json
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device import verdict as V
from kyc_tools.verdicts.check import KeyRing, Policy, SeenStore, check
from tests.brokers import Sub
from tests.test_link_listen import cli
from tests.test_verdict import make

SITE = "site-0001"


def fresh(device: str, *, age: float = 0.0, binding: dict | None = None, **kw) -> dict:
    now = time.time() - age
    return make(device=device, site=SITE, started_at=now - 6, decided_at=now, binding=binding, **kw)


def corr_binding(cd: bytes) -> dict:
    return {"kind": "correlation", "sha256": hashlib.sha256(cd).hexdigest()}


def props(cd: bytes | None) -> Properties | None:
    if cd is None:
        return None
    p = Properties(PacketTypes.PUBLISH)
    p.CorrelationData = cd
    return p


def topic(dev: str) -> str:
    return f"kyc/v1/{SITE}/{dev}/verdict"


def listen(broker, *args, n: int = 0, timeout: float = 10):
    p = cli("verdicts", "listen", "--broker", broker.url, "--timeout", str(timeout),
            *(["--count", str(n)] if n else []), *args)
    line = p.stderr.readline()
    return p, line


def run(p, pub_msgs, pub) -> tuple[list[dict], str, int]:
    try:
        for t, payload, cd in pub_msgs:
            kw = {"properties": props(cd)} if cd is not None else {}
            pub.publish(t, json.dumps(payload), qos=1, **kw)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    return [json.loads(x) for x in out.splitlines() if x.strip()], err, p.returncode


@pytest.fixture
def signers(tmp_path):
    return {d: V.Signer.load_or_create(tmp_path / d) for d in ("counter-0001", "counter-0002")}


def test_key_files_given_separately_bind_each_key_to_its_device(broker, tmp_path, signers):
    kd = tmp_path / "keys"
    kd.mkdir()
    files = []
    for d, s in signers.items():
        (kd / f"{d}.pub").write_text(s.public_key_b64 + "\n")
        files += ["--verify-key", str(kd / f"{d}.pub")]
    genuine = signers["counter-0001"].sign(fresh("counter-0001"))
    cross = signers["counter-0002"].sign(fresh("counter-0001"))        # 0001's verdict, 0002's key
    pub = Sub(broker.port, "nothing")
    try:
        p, line = listen(broker, *files, "--state", str(tmp_path / "a.db"), n=1)
        assert "subscribed to" in line, line
        lines, err, rc = run(p, [(topic("counter-0001"), cross, None), (topic("counter-0001"), genuine, None)], pub)
        assert [x["status"] for x in lines] == ["forged", "ok"], lines
        assert lines[0]["error"] == "signed with another device's key" and rc == 1

        # an explicit registry file does the same for keys whose file names are not device ids
        (kd / "k1.b64").write_text(signers["counter-0001"].public_key_b64)
        reg = tmp_path / "registry.toml"
        reg.write_text(f'"counter-0001" = "keys/k1.b64"\n"counter-0002" = "{signers["counter-0002"].public_key_b64}"\n')
        cross2 = signers["counter-0002"].sign(fresh("counter-0001"))
        p, line = listen(broker, "--key-registry", str(reg), "--state", str(tmp_path / "b.db"), n=1)
        assert "subscribed to" in line, line
        lines, err, rc = run(p, [(topic("counter-0001"), cross2, None),
                                 (topic("counter-0001"), signers["counter-0001"].sign(fresh("counter-0001")), None)], pub)
        assert [x["status"] for x in lines] == ["forged", "ok"], lines
    finally:
        pub.close()

    # a private key in the key directory: one clear line and exit 2, no traceback
    (kd / "counter-0003.key").write_bytes((tmp_path / "counter-0001" / "verdict_signing.key").read_bytes())
    p = cli("verdicts", "listen", "--broker", broker.url, "--verify-key", str(kd), "--timeout", "1",
            "--state", str(tmp_path / "c.db"))
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "counter-0003.key: is a private key" in err, err


def test_replayed_verdict_is_rejected_even_by_a_freshly_started_listener(broker, tmp_path, signers):
    s = signers["counter-0001"]
    kd = tmp_path / "keys"
    kd.mkdir()
    (kd / "counter-0001.pub").write_text(s.public_key_b64)
    state = tmp_path / "listen.db"
    args = ("--verify-key", str(kd), "--state", str(state), "--max-age", "600", "--clock-skew", "30")
    t42 = b"ticket-42"
    genuine = s.sign(fresh("counter-0001", binding=corr_binding(t42), result="pass", reasons=[]))
    old = s.sign(fresh("counter-0001", age=16 * 60, binding=corr_binding(b"ticket-7"), result="pass", reasons=[]))
    unbound = s.sign(fresh("counter-0001", result="pass", reasons=[]))
    fresh2 = s.sign(fresh("counter-0001", binding=corr_binding(b"ticket-43"), result="pass", reasons=[]))
    pub = Sub(broker.port, "nothing")
    try:
        p, line = listen(broker, *args, n=1)
        assert "subscribed to" in line, line
        lines, _, rc = run(p, [(topic("counter-0001"), genuine, t42)], pub)
        assert [x["status"] for x in lines] == ["ok"] and rc == 0 and lines[0]["correlation"] == t42.hex()

        # the listener restarts (fresh process, same state file); the attacker replays
        p, line = listen(broker, *args, n=1)
        assert "subscribed to" in line, line
        lines, err, rc = run(p, [
            (topic("counter-0001"), genuine, b"ticket-99"),     # captured pass, new ticket
            (topic("counter-0001"), genuine, t42),              # same message again: remembered
            (topic("counter-0001"), old, b"ticket-7"),          # a pass captured 16 minutes ago
            (topic("counter-0001"), unbound, b"ticket-99"),     # an unbound pass claiming a ticket
            (topic("counter-0001"), fresh2, None),              # Correlation Data stripped on the way
            (topic("counter-0001"), fresh2, b"ticket-43"),      # ... the genuine copy is still ok
        ], pub)
        assert [x["status"] for x in lines] == ["replayed", "duplicate", "stale", "unbound", "unbound", "ok"], lines
        assert rc == 1 and err.count("WARNING: REPLAYED") == 1 and "WARNING: STALE" in err
    finally:
        pub.close()


def test_nonce_from_verdicts_start_binds_exactly_one_verdict(broker, tmp_path, signers):
    s = signers["counter-0001"]
    state = tmp_path / "listen.db"
    watch = Sub(broker.port, f"kyc/v1/{SITE}/counter-0001/cmd/start")
    try:
        p = cli("verdicts", "start", "--broker", broker.url, "--device", f"{SITE}/counter-0001",
                "--state", str(state), "--correlation", "ticket-5")
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert watch.wait_for(lambda: watch.msgs, 10)
        t, payload, pr, _ = watch.msgs[0]
        nonce = json.loads(payload)["nonce"]
        h = hashlib.sha256(nonce.encode("ascii")).hexdigest()
        assert json.loads(out)["nonce_sha256"] == h and bytes(pr.CorrelationData) == b"ticket-5"
    finally:
        watch.close()
    ring = KeyRing()
    ring.add(s.public_key, "counter-0001")
    store = SeenStore(state)
    bind = {"kind": "nonce", "sha256": h}
    first = json.dumps(s.sign(fresh("counter-0001", binding=bind)))
    second = json.dumps(s.sign(fresh("counter-0001", binding=bind)))
    stranger = json.dumps(s.sign(fresh("counter-0001", binding={"kind": "nonce", "sha256": "0" * 64})))
    kw = dict(topic=topic("counter-0001"), ring=ring, policy=Policy(), seen=store, nonces=store)
    assert check(first, **kw).status == "ok"
    assert check(first, **kw).status == "duplicate"          # redelivery of the same verdict
    assert check(second, **kw).status == "replayed"          # a second session on one cmd/start
    assert check(stranger, **kw).status == "unbound"          # not a nonce this operator sent
    store.close()


def test_check_policy_edges(tmp_path, signers):
    """The pure check: freshness window with skew, future dates, and nothing recorded on rejection."""
    s = signers["counter-0001"]
    ring = KeyRing()
    ring.add(s.public_key, "counter-0001")
    store = SeenStore(tmp_path / "x.db")
    pol = Policy(max_age_s=600, skew_s=60)
    now = time.time()
    v = s.sign(fresh("counter-0001", age=650))
    assert check(json.dumps(v), topic=topic("counter-0001"), ring=ring, policy=pol, seen=store, now=now).status == "ok"
    v = s.sign(fresh("counter-0001", age=670))
    r = check(json.dumps(v), topic=topic("counter-0001"), ring=ring, policy=pol, seen=store, now=now)
    assert r.status == "stale" and len(store) == 1
    v = s.sign(fresh("counter-0001", age=-120))                # two minutes in the future
    assert check(json.dumps(v), topic=topic("counter-0001"), ring=ring, policy=pol, seen=store, now=now).status == "stale"
    # a key given as bare text is unbound, but may not sign for a device that has a bound key
    other = V.Signer.load_or_create(tmp_path / "o")
    ring.add(other.public_key)
    v = other.sign(fresh("counter-0001"))
    assert check(json.dumps(v), topic=topic("counter-0001"), ring=ring, policy=pol).status == "forged"
    v = other.sign(fresh("counter-0009"))
    assert check(json.dumps(v), topic=topic("counter-0009"), ring=ring, policy=pol).status == "ok"
    # Correlation Data on an unbound verdict: unbound, unless the operator allows legacy devices
    v = json.dumps(s.sign(fresh("counter-0001")))
    assert check(v, topic=topic("counter-0001"), ring=ring, policy=pol, correlation=b"t-1").status == "unbound"
    legacy = Policy(max_age_s=600, skew_s=60, require_binding=False)
    assert check(v, topic=topic("counter-0001"), ring=ring, policy=legacy, correlation=b"t-1").status == "ok"
    store.close()
