"""Operator side: `kyc-edge verdicts listen` flags forged/tampered verdicts and deduplicates;
`kyc-edge keys show` prints the device key. Run through link.commands.register() on a fresh
argparse parser in a subprocess (what device/cli.py does)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from device import verdict as V
from kyc_tools.verdicts.listen import Dedup, bound_keys, check_message
from tests.brokers import Sub
from tests.test_verdict import make

REPO = Path(__file__).resolve().parents[1]
HARNESS = textwrap.dedent("""
    import sys
    from device.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-c", HARNESS, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                            cwd=REPO, **kw)


def test_keys_show_prints_the_state_dir_key(tmp_path):
    p = cli("keys", "show", "--state-dir", str(tmp_path), "--format", "json")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    shown = json.loads(out)
    s = V.Signer.load_or_create(tmp_path)           # the key keys-show created on first use
    assert shown == {"alg": "Ed25519", "key_id": s.key_id, "public_key": s.public_key_b64}
    p = cli("keys", "show", "--state-dir", str(tmp_path))
    out, _ = p.communicate(timeout=30)
    assert out.strip() == s.public_key_b64


def test_check_message_statuses(tmp_path):
    good = V.Signer.load_or_create(tmp_path / "good")
    evil = V.Signer.load_or_create(tmp_path / "evil")
    dd = Dedup()
    topic = "kyc/v1/s1/dev1/verdict"
    s = good.sign(make(device="dev1", site="s1"))
    raw = json.dumps(s).encode()
    assert check_message(topic, raw, [good.public_key], dd).status == "ok"
    assert check_message(topic, raw, [good.public_key], dd).status == "duplicate"
    t = copy.deepcopy(s)
    t["verdict"]["scores"]["similarity"] = 0.99
    assert check_message(topic, json.dumps(t).encode(), [good.public_key], dd).status == "forged"
    f = evil.sign(make(device="dev1", site="s1"))
    assert check_message(topic, json.dumps(f).encode(), [good.public_key], dd).status == "forged"
    other = good.sign(make(device="dev2", site="s1"))     # right key, wrong topic
    assert check_message(topic, json.dumps(other).encode(), [good.public_key], dd).status == "forged"
    assert check_message(topic, b"{not json", [good.public_key], dd).status == "invalid"
    assert check_message(topic, json.dumps({"verdict": {}}).encode(), [good.public_key], dd).status == "invalid"
    assert dd.duplicates == 1 and len(dd) == 1
    # key directory naming the devices: dev1's verdict signed by dev2's (also trusted) key is flagged
    kd = tmp_path / "keys"
    kd.mkdir()
    (kd / "dev1.pub").write_text(good.public_key_b64)
    (kd / "dev2.pub").write_text(evil.public_key_b64)
    keys, bound = V.load_public_keys(kd), bound_keys(str(kd))
    assert bound == {"dev1": good.key_id, "dev2": evil.key_id}
    by_dev2 = evil.sign(make(device="dev1", site="s1"))
    assert check_message(topic, json.dumps(by_dev2).encode(), keys, Dedup()).status == "ok"   # unbound
    r = check_message(topic, json.dumps(by_dev2).encode(), keys, Dedup(), bound=bound)
    assert (r.status, r.error) == ("forged", "signed with another device's key")
    assert check_message(topic, raw, keys, Dedup(), bound=bound).status == "ok"


def test_listen_prints_verified_flags_forged_and_dedups(broker, tmp_path):
    good = V.Signer.load_or_create(tmp_path / "good")
    evil = V.Signer.load_or_create(tmp_path / "evil")
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / "dev1.pub").write_text(good.public_key_b64)
    p = cli("verdicts", "listen", "--broker", broker.url, "--verify-key", str(keydir),
            "--topic", "kyc/v1/+/+/verdict", "--timeout", "8", "--count", "2", "--state", str(tmp_path / "l.db"))
    pub = Sub(broker.port, "nothing")
    try:
        assert "subscribed to kyc/v1/+/+/verdict" in p.stderr.readline()
        topic = "kyc/v1/s1/dev1/verdict"
        s1 = good.sign(make(device="dev1", site="s1", started_at=time.time() - 6, decided_at=time.time()))
        s2 = good.sign(make(device="dev1", site="s1", started_at=time.time() - 6, decided_at=time.time()))
        tampered = copy.deepcopy(s1)
        tampered["verdict"]["result"], tampered["verdict"]["reasons"] = "pass", []
        forged = evil.sign(make(device="dev1", site="s1"))
        for payload in (s1, s1, tampered, forged, s2):
            pub.publish(topic, json.dumps(payload), qos=1)
        out, err = p.communicate(timeout=20)
    finally:
        pub.close()
        if p.poll() is None:
            p.kill()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert [x["status"] for x in lines] == ["ok", "duplicate", "forged", "forged", "ok"]
    assert lines[0]["verdict"] == s1["verdict"] and lines[4]["verdict"] == s2["verdict"]
    assert lines[2]["verdict_id"] == s1["verdict"]["verdict_id"]
    assert err.count("WARNING: FORGED") == 2
    assert p.returncode == 1                               # forged ones were seen
