"""Signed update manifests: closed schema, Ed25519 over canonical JSON, replay window.

Wire form (one MQTT command, <= 16 KiB like every command):

    {"manifest": {...}, "sig": {"alg": "Ed25519", "key_id": "<16 hex>", "value": "<base64>"}}

Inline artifacts then follow as pages and chunks (see `inline_fields`): the signed manifest pins
each page's digest, each page lists its chunks' sha256s, so every inline message is verifiable
on arrival and an injected one is dropped.

The signature covers `device.verdict.canonical(manifest)` (sorted keys, no whitespace, ASCII),
the same scheme as verdicts, so one verifier works for both. The device holds one or more fleet
public keys (`fleet.public_keys`), which allows key rotation: sign with the new key once every
device trusts both.

Every rejection is a `FleetError` with a lower_snake reason code from `REASONS`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

from device.ed25519 import Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature, as_ours, serialization
from device.errors import KycError
from device.schemacheck import Validator
from device.verdict import SIG_ALG, VerdictError, canonical, key_id_of, load_public_key

FORMAT = 1

# Reason codes of FAILED(reason) / ROLLED_BACK(reason) on <prefix>/<site>/<device>/update/status.
REASONS = {
    "malformed": "not JSON / violates the closed manifest schema",
    "no_trusted_keys": "the device has no usable fleet.public_keys",
    "unknown_key": "signed by a key the device does not trust",
    "bad_signature": "signature does not verify (forged or tampered)",
    "not_yet_valid": "now < not_before - clock_skew_s",
    "expired": "now > expires + clock_skew_s",
    "replayed_nonce": "this manifest's nonce was seen before",
    "downgrade_refused": "bundle_version <= the running version and allow_downgrade is not set",
    "daemon_too_old": "the daemon's version < min_daemon_version",
    "too_large": "declared artifact sizes exceed fleet.max_bundle_bytes (checked before download)",
    "download_failed": "URL unreachable / HTTP error / scheme not allowed",
    "truncated": "fewer bytes than declared arrived (or the download timed out)",
    "hash_mismatch": "sha256 of an artifact differs from the manifest",
    "disk_full": "not enough space in the state directory (ENOSPC/EDQUOT/EFBIG or fleet.min_free_bytes)",
    "config_invalid": "the config patch merged over the running config fails validation",
    "self_test_failed": "a model does not load or a self-test vector does not match",
    "apply_failed": "hot swap raised; switched back",
    "health_probe_failed": "canned verification failed after the switch; rolled back",
    "crash_loop": "N restarts within T after a switch; rolled back at boot",
    "slot_invalid": "the current slot is incomplete at boot; rolled back",
    "superseded": "a newer manifest arrived before this one was switched in",
    "software_unsupported": "a software bundle reached a device without fleet.software_root (a source checkout)",
    "install_failed": "pip could not install the software bundle's wheels into the inactive slot",
    "internal_error": "unexpected error; nothing was switched",
}

_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"
_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "kyc-edge fleet update manifest",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "bundle_version", "targets", "artifacts", "not_before", "expires", "nonce"],
    "properties": {
        "format": {"const": FORMAT},
        "bundle_version": {"type": "integer", "minimum": 1, "maximum": 2**53},
        "targets": {"type": "array", "minItems": 1, "maxItems": 256,
                    "items": {"type": "string", "pattern": r"^(\*|group:[^/+#\s]{1,64}|device:[^/+#\s]{1,64}|[^/+#\s:]{1,64})$"}},
        "artifacts": {
            "type": "array", "maxItems": 64,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "sha256", "size"],
                "properties": {
                    "name": {"type": "string", "pattern": _NAME},
                    "sha256": _HEX64,
                    "size": {"type": "integer", "minimum": 0},
                    "url": {"type": "string", "pattern": "^(https?|file)://", "maxLength": 1024},
                    "inline": {"const": True},
                    "chunk_bytes": {"type": "integer", "minimum": 1024, "maximum": 12288},
                    "pages": {"type": "array", "maxItems": 4096, "items": _HEX64},
                },
                "oneOf": [{"required": ["url"]}, {"required": ["inline", "chunk_bytes", "pages"]}],
            },
        },
        "config_patch": {"type": "object"},
        "config_complete": {"type": "boolean"},
        "min_daemon_version": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+){0,3}$"},
        "self_test": {
            "type": "object", "additionalProperties": False,
            "properties": {"vectors": {"type": "array", "maxItems": 64, "items": {"type": "object"}}},
        },
        "not_before": {"type": "integer"},
        "expires": {"type": "integer"},
        "nonce": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "allow_downgrade": {"type": "boolean"},
        # software bundles (device/fleet/software.py): the artifacts are wheels, installed into the
        # inactive software slot; `software_version` is the kyc-edge version they carry
        "kind": {"enum": ["models", "software"]},
        "software_version": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+){0,3}$"},
        "created": {"type": "integer"},
    },
}
_VALIDATOR = Validator(SCHEMA)


class FleetError(KycError):
    """An update rejected with one of REASONS; `detail` is for logs (no PII ever reaches here)."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(reason, detail)


# ------------------------------------------------------------------ keys
FLEET_KEY_FILE = "fleet_signing.key"
FLEET_PUB_FILE = "fleet_signing.pub"


def keygen(out_dir: str | os.PathLike) -> tuple[Path, Path, str]:
    """Write an Ed25519 fleet key pair (PKCS#8 PEM 0600 + base64 public key); never overwrites."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = d / FLEET_KEY_FILE, d / FLEET_PUB_FILE
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    pub = key.public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub_path.write_text(base64.b64encode(raw).decode("ascii") + "\n")
    return key_path, pub_path, key_id_of(pub)


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def trusted_keys(specs: Iterable[str]) -> list[Ed25519PublicKey]:
    """fleet.public_keys entries: base64 / PEM text or files. Unusable entries are skipped."""
    out = []
    for s in specs:
        try:
            out.append(load_public_key(Path(s) if os.sep in s and Path(s).is_file() else s))
        except (VerdictError, ValueError, OSError):
            continue
    return out


# ------------------------------------------------------------------ inline chunks
# An inline artifact travels as chunks of `chunk_bytes`. The signed manifest lists, per page of
# PAGE_CHUNKS chunks, page_digest(the chunks' sha256s); each page message carries those sha256s.
# So every page and every chunk is checked against the signature the moment it arrives: an
# injected page or chunk is dropped, and cannot displace or corrupt the genuine one.
CHUNK_BYTES = 8192
PAGE_CHUNKS = 128


def n_chunks(size: int, chunk_bytes: int) -> int:
    return -(-int(size) // int(chunk_bytes))


def n_pages(size: int, chunk_bytes: int) -> int:
    return -(-n_chunks(size, chunk_bytes) // PAGE_CHUNKS)


def chunk_digests(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    return [hashlib.sha256(data[o:o + chunk_bytes]).hexdigest() for o in range(0, len(data), chunk_bytes)]


def page_digest(digests: list[str]) -> str:
    """sha256 over the page's raw 32-byte chunk digests, concatenated in order."""
    return hashlib.sha256(b"".join(bytes.fromhex(d) for d in digests)).hexdigest()


def paginate(digests: list[str]) -> list[list[str]]:
    return [digests[i:i + PAGE_CHUNKS] for i in range(0, len(digests), PAGE_CHUNKS)]


def inline_fields(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """The manifest fields of an inline artifact: chunk_bytes and the page digests."""
    return {"inline": True, "chunk_bytes": chunk_bytes,
            "pages": [page_digest(p) for p in paginate(chunk_digests(data, chunk_bytes))]}


# ------------------------------------------------------------------ build / sign / verify
def new_nonce() -> str:
    return os.urandom(16).hex()


def make_manifest(*, bundle_version: int, artifacts: list[dict], targets: list[str] | None = None,
                  config_patch: dict | None = None, config_complete: bool = False,
                  min_daemon_version: str | None = None,
                  vectors: list[dict] | None = None, valid_s: float = 7 * 86400,
                  not_before: int | None = None, allow_downgrade: bool = False,
                  nonce: str | None = None, now: float | None = None, kind: str | None = None,
                  software_version: str | None = None) -> dict:
    now = time.time() if now is None else now
    m: dict[str, Any] = {
        "format": FORMAT, "bundle_version": int(bundle_version), "targets": list(targets or ["*"]),
        "artifacts": [dict(a) for a in artifacts],
        "not_before": int(now - 60) if not_before is None else int(not_before),
        "expires": int(now + valid_s), "nonce": nonce or new_nonce(), "created": int(now),
    }
    if config_patch:
        m["config_patch"] = config_patch
    if config_complete:
        m["config_complete"] = True
    if min_daemon_version:
        m["min_daemon_version"] = min_daemon_version
    if vectors:
        m["self_test"] = {"vectors": vectors}
    if allow_downgrade:
        m["allow_downgrade"] = True
    if kind:
        m["kind"] = kind
    if software_version:
        m["software_version"] = software_version
    check_schema(m)
    return m


def sign(manifest: dict, key: Ed25519PrivateKey) -> dict:
    check_schema(manifest)
    sig = key.sign(canonical(manifest))
    return {"manifest": manifest, "sig": {"alg": SIG_ALG, "key_id": key_id_of(key.public_key()),
                                          "value": base64.b64encode(sig).decode("ascii")}}


def check_schema(m: Any) -> None:
    errs = sorted(_VALIDATOR.iter_errors(m), key=lambda e: list(e.absolute_path))
    if errs:
        e = errs[0]
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        raise FleetError("malformed", f"manifest {path}: violates schema rule '{e.validator}'")
    names = [a["name"] for a in m["artifacts"]]
    if len(set(names)) != len(names):
        raise FleetError("malformed", "manifest: duplicate artifact names")
    for a in m["artifacts"]:
        if a.get("inline") and len(a["pages"]) != n_pages(a["size"], a["chunk_bytes"]):
            raise FleetError("malformed", f"manifest: {a['name']}: page count does not fit size/chunk_bytes")


def parse(data: bytes | str | dict) -> dict:
    if isinstance(data, dict):
        return data
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FleetError("malformed", "payload: not JSON") from None
    if not isinstance(obj, dict):
        raise FleetError("malformed", "payload: not a JSON object")
    return obj


def verify(envelope: dict, keys: list[Ed25519PublicKey]) -> dict:
    """The manifest if the envelope is well-formed and signed by one of `keys`; FleetError else."""
    if not isinstance(envelope, dict) or set(envelope) != {"manifest", "sig"}:
        raise FleetError("malformed", "envelope: expected exactly manifest, sig")
    sig = envelope["sig"]
    if not isinstance(sig, dict) or set(sig) != {"alg", "key_id", "value"} or sig["alg"] != SIG_ALG \
            or not isinstance(sig["key_id"], str) or not isinstance(sig["value"], str):
        raise FleetError("malformed", "envelope: bad sig fields")
    m = envelope["manifest"]
    if not isinstance(m, dict):
        raise FleetError("malformed", "envelope: manifest is not an object")
    keys = [as_ours(k) for k in keys]           # cryptography's key objects (tools, tests) -> ours
    if not keys:
        raise FleetError("no_trusted_keys", "fleet.public_keys holds no usable key")
    matching = [k for k in keys if key_id_of(k) == sig["key_id"]]
    if not matching:
        kid = sig["key_id"] if re.fullmatch(r"[0-9a-f]{16}", sig["key_id"]) else "(not a key id)"
        raise FleetError("unknown_key", f"key_id {kid} not trusted")   # the log never echoes free text
    try:
        raw = base64.b64decode(sig["value"], validate=True)
        msg = canonical(m)
    except (binascii.Error, ValueError, VerdictError):
        raise FleetError("bad_signature", "signature or manifest not decodable") from None
    for k in matching:
        try:
            k.verify(raw, msg)
            break
        except InvalidSignature:
            continue
    else:
        raise FleetError("bad_signature", "signature does not verify")
    check_schema(m)    # only after the signature: unsigned garbage never reaches the validator's detail
    return m


def targeted(m: dict, device_id: str, groups: Iterable[str]) -> bool:
    gs = set(groups)
    for t in m["targets"]:
        if t == "*" or t == device_id or t == f"device:{device_id}":
            return True
        if t.startswith("group:") and t[6:] in gs:
            return True
    return False


def check_window(m: dict, now: float, skew: float) -> None:
    if now < m["not_before"] - skew:
        raise FleetError("not_yet_valid", f"not_before is {int(m['not_before'] - now)} s ahead")
    if now > m["expires"] + skew:
        raise FleetError("expired", f"expired {int(now - m['expires'])} s ago")


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])


def total_size(m: dict) -> int:
    return sum(int(a["size"]) for a in m["artifacts"])


def short_id(m: dict) -> str:
    return f"v{m['bundle_version']}-{m['nonce'][:8]}"
