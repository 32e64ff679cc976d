"""verdict.py: closed schema, build/validate, Ed25519 signing and verification."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import stat
import time
from datetime import datetime

import pytest
from hypothesis import given, settings, strategies as st

from device import verdict as V

CONTRACT_REASONS = {
    "face_mismatch", "no_face", "multiple_faces", "face_lost", "challenge_timeout", "spoof_suspected",
    "identity_changed", "card_expired", "card_invalid_number", "card_read_failed", "card_removed",
    "unsupported_card_type", "photo_decoder_unavailable", "card_photo_no_face", "camera_lost",
    "session_timeout", "outbox_full", "aborted", "internal_error", "reader_unavailable", "quality_too_low",
}


def make(**over) -> dict:
    now = 1_790_000_000.25
    kw = dict(device="counter-0001", site="site-0001", result="fail", reasons=["face_mismatch"],
              scores={"liveness": 0.93, "spoof": 0.04, "similarity": 0.21, "threshold": 0.4},
              card={"type": "resident", "expired": False, "number_hmac": "ab" * 32},
              models={"detector": "face_detection_short_range@1a2b3c4d", "embedder": "mobilefacenet_int8@90817263"},
              timings_ms={"card_read": 812.34, "capture": 5012.0, "total": 6120.5},
              started_at=now - 6.12, decided_at=now)
    kw.update(over)
    return V.build(**kw)


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return V.Signer.load_or_create(tmp_path_factory.mktemp("state"))


def test_reasons_cover_the_contract_and_errors_module():
    assert CONTRACT_REASONS <= V.REASONS
    assert "model_unavailable" in V.REASONS          # device.errors.ModelError.reason
    assert all(r.islower() and " " not in r for r in V.REASONS)


def test_build_outputs_rfc3339_utc_and_a_uuid():
    v = make()
    assert v["schema_version"] == V.SCHEMA_VERSION == "2"
    for k in ("started_at", "decided_at"):
        assert v[k].endswith("Z")
        dt = datetime.fromisoformat(v[k].replace("Z", "+00:00"))
        assert dt.utcoffset().total_seconds() == 0
    assert abs(datetime.fromisoformat(v["decided_at"].replace("Z", "+00:00")).timestamp() - 1_790_000_000.25) < 0.001
    assert len(v["verdict_id"]) == 36 and v["verdict_id"] != make()["verdict_id"]
    assert v["timings_ms"]["card_read"] == 812.3        # rounded to 0.1 ms
    V.validate(json.loads(json.dumps(v)))                # survives a JSON round trip


def test_build_fills_missing_score_and_card_keys_with_null():
    v = make(result="fail", reasons=["card_read_failed"], scores={}, card={}, models={}, timings_ms={})
    assert v["scores"] == {"liveness": None, "spoof": None, "similarity": None, "threshold": None}
    assert v["card"] == {"type": None, "expired": None}


def _mut(path, value=..., delete=False):
    def f(v):
        *head, last = path
        d = v
        for k in head:
            d = d[k]
        if delete:
            del d[last]
        else:
            d[last] = value
    return f


BAD = {
    "unknown top-level field": _mut(["comment"], "x"),
    "unknown score": _mut(["scores", "quality"], 0.5),
    "unknown card field": _mut(["card", "number"], "110101199003071234"),
    "result not pass/fail": _mut(["result"], "maybe"),
    "reason not a code": _mut(["reasons"], ["the face did not match"]),
    "unknown reason code": _mut(["reasons"], ["bad_vibes"]),
    "duplicate reasons": _mut(["reasons"], ["no_face", "no_face"]),
    "pass with reasons": lambda v: v.update(result="pass"),
    "fail without reasons": _mut(["reasons"], []),
    "similarity out of range": _mut(["scores", "similarity"], 1.5),
    "liveness negative": _mut(["scores", "liveness"], -0.1),
    "score is a bool": _mut(["scores", "spoof"], True),
    "score is a string": _mut(["scores", "spoof"], "0.1"),
    "score NaN": _mut(["scores", "liveness"], float("nan")),
    "timing infinite": _mut(["timings_ms", "total"], float("inf")),
    "timing negative": _mut(["timings_ms", "total"], -1.0),
    "timing array": _mut(["timings_ms", "total"], [1.0, 2.0]),
    "device with space": _mut(["device"], "counter 1"),
    "device too long": _mut(["device"], "d" * 65),
    "site empty": _mut(["site"], ""),
    "model version free text": _mut(["models", "detector"], "the big one"),
    "model version too long": _mut(["models", "detector"], "v" * 65),
    "model version hides a phone number": _mut(["models", "detector"], "cam13812345678"),
    "model version hides an id number": _mut(["models", "detector"], "x@110101199003071234"),
    "model role not a token": _mut(["models"], {"Detector Model": "1"}),
    "card type free text": _mut(["card", "type"], "Resident ID of Zhang"),
    "expired not bool": _mut(["card", "expired"], "no"),
    "hmac not hex": _mut(["card", "number_hmac"], "zz" * 32),
    "hmac wrong length": _mut(["card", "number_hmac"], "ab" * 16),
    "verdict_id not a uuid": _mut(["verdict_id"], "1234"),
    "timestamp not rfc3339": _mut(["started_at"], "yesterday"),
    "timestamp with offset": _mut(["started_at"], "2026-11-29T04:52:33+08:00"),
    "decided before started": lambda v: v.update(started_at=v["decided_at"].replace("20", "21", 1)),
    "missing field": _mut(["models"], delete=True),
    "schema version": _mut(["schema_version"], "3"),
    "too many timings": _mut(["timings_ms"], {f"t{i}": 1.0 for i in range(17)}),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_validate_rejects(name):
    v = make()
    V.validate(v)
    BAD[name](v)
    with pytest.raises(V.VerdictError):
        V.validate(v)


def test_error_messages_name_the_path_not_the_value():
    v = make()
    v["card"]["type"] = "ZHANG WEI 110101199003071234"
    with pytest.raises(V.VerdictError) as ei:
        V.validate(v)
    assert "$.card.type" in str(ei.value)
    assert "ZHANG" not in str(ei.value) and "110101" not in str(ei.value)


def test_validation_memo_does_not_hide_a_later_mutation():
    v = make()
    V.validate(v)
    V.validate(v)          # memoised
    v["name"] = "x"
    with pytest.raises(V.VerdictError):
        V.validate(v)


def test_build_rejects_bad_arguments():
    with pytest.raises(V.VerdictError):
        make(reasons=["nope"])
    with pytest.raises(V.VerdictError):
        make(started_at=float("nan"))
    with pytest.raises(V.VerdictError):
        make(scores=[0.1, 0.2])


# ---------------------------------------------------------------- keys
def test_key_created_0600_on_first_start_and_reloaded(tmp_path):
    state = tmp_path / "state"
    s1 = V.Signer.load_or_create(state)
    p = state / V.KEY_FILE
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert b"PRIVATE KEY" in p.read_bytes()
    s2 = V.Signer.load_or_create(state)
    assert s2.key_id == s1.key_id and s2.public_key_b64 == s1.public_key_b64
    assert len(base64.b64decode(s1.public_key_b64)) == 32
    # key_id: the first 16 hex of SHA-256 over the raw 32-byte public key, computed here independently
    assert s1.key_id == hashlib.sha256(base64.b64decode(s1.public_key_b64)).hexdigest()[:16]
    assert "PRIVATE" not in repr(s1) and s1.public_key_b64 not in repr(s1)
    os.chmod(p, 0o644)                    # loosened by someone: tightened again
    V.Signer.load_or_create(state)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    other = V.Signer.load_or_create(tmp_path / "other")
    assert other.key_id != s1.key_id


def test_sign_verify_roundtrip_through_json(signer):
    signed = signer.sign(make())
    wire = json.loads(json.dumps(signed))
    assert set(wire) == {"verdict", "sig"}
    assert V.verify(wire, [signer.public_key_b64]) == signed["verdict"]
    assert V.verify(wire, [signer.public_key]) == signed["verdict"]


def test_verify_rejects_tampered_forged_and_unknown(signer, tmp_path):
    signed = signer.sign(make())
    t = copy.deepcopy(signed)
    t["verdict"]["result"], t["verdict"]["reasons"] = "pass", []
    with pytest.raises(V.VerdictError, match="forged or tampered"):
        V.verify(t, [signer.public_key_b64])
    rogue = V.Signer.load_or_create(tmp_path / "rogue")
    forged = rogue.sign(make())
    with pytest.raises(V.VerdictError, match="unknown"):
        V.verify(forged, [signer.public_key_b64])
    forged["sig"]["key_id"] = signer.key_id          # claims the real device's key
    with pytest.raises(V.VerdictError, match="forged or tampered"):
        V.verify(forged, [signer.public_key_b64])
    for bad in ({"verdict": signed["verdict"]},
                {**signed, "extra": 1},
                {"verdict": signed["verdict"], "sig": {**signed["sig"], "alg": "RS256"}},
                {"verdict": signed["verdict"], "sig": {**signed["sig"], "value": "!!"}}):
        with pytest.raises(V.VerdictError):
            V.verify(bad, [signer.public_key_b64])
    with pytest.raises(V.VerdictError):
        V.verify(signed, [])


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path, obj


_SIGNED_CACHE: dict = {}


def _fixed_signed():
    if "s" not in _SIGNED_CACHE:
        import tempfile
        s = V.Signer.load_or_create(tempfile.mkdtemp())
        _SIGNED_CACHE["s"] = (s, s.sign(make()))
    return _SIGNED_CACHE["s"]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_single_change_to_a_signed_verdict_is_caught(data):
    signer, signed = _fixed_signed()
    leaves = list(_leaves(signed["verdict"]))
    path, old = data.draw(st.sampled_from(leaves))
    new = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-5, 5),
                              st.floats(-1, 1, allow_nan=False), st.text(max_size=8)).filter(
        lambda x: x != old or type(x) is not type(old)))
    t = copy.deepcopy(signed)
    d = t["verdict"]
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = new
    with pytest.raises(V.VerdictError):
        V.verify(t, [signer.public_key_b64])


def test_load_public_keys_from_file_dir_and_pem(signer, tmp_path):
    from cryptography.hazmat.primitives import serialization
    d = tmp_path / "keys"
    d.mkdir()
    (d / "counter-0001.pub").write_text(signer.public_key_b64 + "\n")
    (d / "other.pem").write_bytes(V.Signer.load_or_create(tmp_path / "o").public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (d / "README").write_text("not a key")
    keys = V.load_public_keys(d)
    assert len(keys) == 2
    signed = signer.sign(make())
    assert V.verify(signed, keys)["verdict_id"] == signed["verdict"]["verdict_id"]
    assert len(V.load_public_keys(d / "counter-0001.pub")) == 1
    assert len(V.load_public_keys(signer.public_key_b64)) == 1
    with pytest.raises(V.VerdictError):
        V.load_public_keys("bm90IGEga2V5")        # base64 of 'not a key'


def test_sign_is_fast_enough(signer):
    v = make()
    t0 = time.perf_counter()
    for _ in range(50):
        signer.sign(v)
    assert (time.perf_counter() - t0) / 50 < 0.05    # generous: loaded 2-core CI box


def test_v1_verdicts_still_verify_and_v2_fields_are_closed(tmp_path):
    """Schema v2 (consent, binding) is additive: a v1 verdict signed before the upgrade verifies."""
    signer = V.Signer.load_or_create(tmp_path)
    v1 = make()
    v1["schema_version"] = "1"
    V.validate(v1)
    assert V.verify(signer.sign(v1), [signer.public_key_b64])["schema_version"] == "1"
    with_consent = {**v1, "consent": {"given": True, "channel": "display", "notice_version": "n1"}}
    with pytest.raises(V.VerdictError):
        V.validate(with_consent)              # v1 knows no consent field
    v2 = {**make(), "consent": {"given": True, "channel": "display", "notice_version": "n1"},
          "binding": {"kind": "correlation", "sha256": "ab" * 32}}
    V.validate(v2)
    for bad in ({**v2, "consent": {**v2["consent"], "name": "x"}},
                {**v2, "binding": {"kind": "correlation", "sha256": "Zhang San"}},
                {**v2, "consent": {**v2["consent"], "channel": "email"}}):
        with pytest.raises(V.VerdictError):
            V.validate(bad)
