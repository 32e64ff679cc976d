"""device/ed25519.py (Ed25519 through the system libcrypto) against cryptography, byte for byte: keys,
signatures and PEM; verification refuses what cryptography refuses; keys move between the two; PEM forms it
does not parse itself go to cryptography; the daemon's import path does not load cryptography."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature as CInvalid
from cryptography.hazmat.primitives import serialization as cser
from cryptography.hazmat.primitives.asymmetric import ed25519 as c

from device import ed25519 as E
from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[1]
# Debian's libcrypto3 is what scripts/setup's machines have: CI fails rather than skips without it
pytestmark = pytest.mark.skipif(E._LIB is None and not IN_CI,
                                reason="no libcrypto with Ed25519: the module is cryptography's")


def test_rfc8032_vector_1():
    sk = E.Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert sk.public_key().public_bytes_raw().hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert sk.sign(b"").hex() == ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
                                  "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")


def test_same_keys_signatures_and_pem_as_cryptography():
    rng = random.Random(7)
    for n in range(40):
        seed = os.urandom(32)
        ours, ref = E.Ed25519PrivateKey.from_private_bytes(seed), c.Ed25519PrivateKey.from_private_bytes(seed)
        assert ours.public_key().public_bytes_raw() == ref.public_key().public_bytes_raw()
        assert ours.private_bytes(E.Encoding.PEM, E.PrivateFormat.PKCS8, E.NoEncryption()) == \
            ref.private_bytes(cser.Encoding.PEM, cser.PrivateFormat.PKCS8, cser.NoEncryption())
        assert ours.public_key().public_bytes(E.Encoding.PEM, E.PublicFormat.SubjectPublicKeyInfo) == \
            ref.public_key().public_bytes(cser.Encoding.PEM, cser.PublicFormat.SubjectPublicKeyInfo)
        # cryptography's own enum members work too (tools and tests pass them)
        assert ours.public_key().public_bytes(cser.Encoding.Raw, cser.PublicFormat.Raw) == ours.public_key().public_bytes_raw()
        msg = bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 64, 1000, 4096))))
        sig = ours.sign(msg)
        assert sig == ref.sign(msg)
        ref.public_key().verify(sig, msg)
        ours.public_key().verify(ref.sign(msg), msg)
        bad = bytearray(sig)
        bad[n % 64] ^= 1 << (n % 8)
        for s, m in ((bytes(bad), msg), (sig, msg + b"x"), (sig[:63], msg), (sig + b"\0", msg), (b"", msg)):
            with pytest.raises(E.InvalidSignature):
                ours.public_key().verify(s, m)
            with pytest.raises(CInvalid):
                ref.public_key().verify(s, m)


def test_pem_round_trip_and_fallbacks():
    k = E.Ed25519PrivateKey.generate()
    pem = k.private_bytes(E.Encoding.PEM, E.PrivateFormat.PKCS8, E.NoEncryption())
    back = E.load_pem_private_key(pem)
    assert isinstance(back, E.Ed25519PrivateKey) and back.private_bytes_raw() == k.private_bytes_raw()
    pub_pem = k.public_key().public_bytes(E.Encoding.PEM, E.PublicFormat.SubjectPublicKeyInfo)
    assert E.load_pem_public_key(pub_pem) == k.public_key()
    # an encrypted key is cryptography's to read; the key it gives is ours
    enc = c.Ed25519PrivateKey.from_private_bytes(k.private_bytes_raw()).private_bytes(
        cser.Encoding.PEM, cser.PrivateFormat.PKCS8, cser.BestAvailableEncryption(b"pw"))
    got = E.load_pem_private_key(enc, password=b"pw")
    assert isinstance(got, E.Ed25519PrivateKey) and got.private_bytes_raw() == k.private_bytes_raw()
    # another algorithm stays what it is, so the caller's "not an Ed25519 key" check refuses it
    from cryptography.hazmat.primitives.asymmetric import ec
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(cser.Encoding.PEM, cser.PrivateFormat.PKCS8,
                                                                  cser.NoEncryption())
    assert not isinstance(E.load_pem_private_key(other), E.Ed25519PrivateKey)
    with pytest.raises(ValueError):
        E.load_pem_private_key(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError):
        E.Ed25519PublicKey.from_public_bytes(b"\0" * 31)


def test_a_key_file_written_by_cryptography_loads_and_signs_the_same(tmp_path):
    """A box's existing verdict key (written by the old code, through cryptography) signs as before."""
    from device import verdict as V
    ref = c.Ed25519PrivateKey.generate()
    (tmp_path / V.KEY_FILE).write_bytes(ref.private_bytes(cser.Encoding.PEM, cser.PrivateFormat.PKCS8,
                                                          cser.NoEncryption()))
    os.chmod(tmp_path / V.KEY_FILE, 0o600)
    s = V.Signer.load_or_create(tmp_path)
    from tests.test_verdict import make
    signed = s.sign(make())
    ref.public_key().verify(__import__("base64").b64decode(signed["sig"]["value"]), V.canonical(signed["verdict"]))
    assert V.verify(signed, [ref.public_key()]) == signed["verdict"]        # cryptography's key object accepted
    assert s.key_id == V.key_id_of(ref.public_key())
    rogue = V.Signer(c.Ed25519PrivateKey.generate())                          # a tool's cryptography key
    with pytest.raises(V.VerdictError):
        V.verify(rogue.sign(make()), [ref.public_key()])


def _run(code: str, **env) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_daemon_signs_without_importing_cryptography(tmp_path):
    code = ("import sys, device.daemon, device.vision.suite, device.link.mqtt, device.fleet.agent\n"
            "from device import verdict as V\n"
            f"s = V.Signer.load_or_create({str(tmp_path)!r})\n"
            "from tests.test_verdict import make\n"
            "assert V.verify(s.sign(make()), [s.public_key_b64])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))")
    assert _run(code) == "[]"


def test_without_libcrypto_it_is_cryptography(tmp_path):
    code = ("from device import ed25519 as E, verdict as V\n"
            "assert E._LIB is None and E.Ed25519PrivateKey.__module__.startswith('cryptography')\n"
            f"s = V.Signer.load_or_create({str(tmp_path)!r})\n"
            "from tests.test_verdict import make\n"
            "print(V.verify(s.sign(make()), [s.public_key_b64])['schema_version'])")
    assert _run(code, KYC_EDGE_ED25519="cryptography") == "2"
