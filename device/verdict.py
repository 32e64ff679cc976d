"""The verdict: the only thing that leaves the device.

`build()` assembles and validates one against the closed JSON Schema in
device/schema/verdict.schema.json; `Signer` signs it with the device's Ed25519 key;
`verify()` is the operator side. Signed payload (what goes into the outbox and onto MQTT):

    {"verdict": {...}, "sig": {"alg": "Ed25519", "key_id": "<16 hex>", "value": "<base64>"}}

The signature covers `canonical(verdict)`: JSON with sorted keys, no whitespace, ASCII only.

This module imports nothing from the biometric side (camera/vision/liveness/cardreader).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from device.ed25519 import Ed25519PrivateKey, Ed25519PublicKey, InvalidSignature, as_ours, serialization
from device.errors import KycError
from device.schemacheck import Validator

SCHEMA_VERSION = "2"
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "verdict.schema.json"
SCHEMA: dict = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
REASONS: frozenset[str] = frozenset(SCHEMA["$defs"]["reason"]["enum"])
# Verdicts already signed stay verifiable: every version the operator may still receive.
# v1 -> v2 (docs/mqtt.md): optional `consent` and `binding` objects, new reason codes.
_SCHEMAS = {"1": json.loads((SCHEMA_PATH.parent / "verdict.v1.schema.json").read_text(encoding="utf-8")),
            SCHEMA_VERSION: SCHEMA}
MAX_VERDICT_BYTES = 4096
KEY_FILE = "verdict_signing.key"
SIG_ALG = "Ed25519"

_VALIDATORS = {ver: Validator(sch) for ver, sch in _SCHEMAS.items()}


def card_types() -> tuple[str, ...]:
    """card.type values the current schema accepts besides "unknown" and null."""
    enum = SCHEMA["properties"]["card"]["properties"]["type"]["enum"]
    return tuple(x for x in enum if x not in ("unknown", None))


def allow_card_type(name: str) -> None:
    """A card type added by a plugin (device.cardreader.records.register) joins the current schema's
    card.type enum in this process. The built-in types are the schema file's own (a test keeps the
    registry and the file equal); v1 stays frozen."""
    enum = SCHEMA["properties"]["card"]["properties"]["type"]["enum"]
    if name not in enum:
        enum.insert(len(card_types()), name)
        _VALIDATORS[SCHEMA_VERSION] = Validator(SCHEMA)


class VerdictError(KycError):
    """A verdict (or signed payload) is malformed, forged or tampered. Messages name the JSON
    path and the rule broken, never the offending value (it could be PII)."""
    reason = "internal_error"

    def __init__(self, detail: str):
        super().__init__("internal_error", detail)


# ---------------------------------------------------------------- helpers
def rfc3339(t: float) -> str:
    """Unix seconds -> '2026-11-29T04:52:33.123Z' (UTC, milliseconds)."""
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        raise VerdictError("timestamp: expected finite Unix seconds")
    dt = datetime.fromtimestamp(t, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def canonical(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, ASCII, no NaN/Infinity."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as e:
        raise VerdictError(f"not JSON-serialisable ({type(e).__name__})") from None


def _check_finite(obj: Any, path: str = "$") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise VerdictError(f"{path}: non-finite number")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{path}.{k}" if isinstance(k, str) and k.isidentifier() else f"{path}[?]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{path}[{i}]")


def _round(x: Any, nd: int) -> Any:
    if isinstance(x, float) and math.isfinite(x):
        return round(x, nd)
    return x


# ---------------------------------------------------------------- schema
_VALID_CACHE: "dict[bytes, None]" = {}     # digests of canonical forms validated recently


def validate(v: dict) -> None:
    """Raise VerdictError unless `v` is a schema-valid verdict (closed schema).

    build -> sign -> outbox.put each validate; the canonical JSON fully determines what is
    signed, stored and published, so a digest of it memoises the schema check (bounded)."""
    if not isinstance(v, dict):
        raise VerdictError("$: expected an object")
    _check_finite(v)
    try:
        digest = hashlib.sha256(canonical(v)).digest()
    except VerdictError:
        digest = None
    if digest is not None and digest in _VALID_CACHE:
        return
    validator = _VALIDATORS.get(v.get("schema_version"), _VALIDATORS[SCHEMA_VERSION])
    errors = sorted(validator.iter_errors(v), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        # e.message may quote the value; name only the rule that failed.
        raise VerdictError(f"{path}: violates schema rule '{e.validator}'"
                           + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    if v["decided_at"] < v["started_at"]:   # same fixed-width format: string order is time order
        raise VerdictError("$.decided_at: earlier than started_at")
    if len(canonical(v)) > MAX_VERDICT_BYTES:
        raise VerdictError(f"$: larger than {MAX_VERDICT_BYTES} bytes")
    if digest is not None:
        if len(_VALID_CACHE) >= 512:
            _VALID_CACHE.pop(next(iter(_VALID_CACHE)), None)
        _VALID_CACHE[digest] = None


def build(*, device: str, site: str, result: str, reasons: list[str], scores: dict, card: dict,
          models: dict, timings_ms: dict, started_at: float, decided_at: float,
          verdict_id: str | None = None, consent: dict | None = None,
          binding: dict | None = None) -> dict:
    """Assemble a verdict and validate it. Floats are rounded (scores to 4 places, timings to
    0.1 ms) so the canonical JSON is stable across languages. Raises VerdictError."""
    if not isinstance(scores, dict) or not isinstance(card, dict) or not isinstance(models, dict) \
            or not isinstance(timings_ms, dict) or not isinstance(reasons, (list, tuple)):
        raise VerdictError("$: scores/card/models/timings_ms must be objects, reasons a list")
    v = {
        "schema_version": SCHEMA_VERSION,
        "verdict_id": verdict_id if verdict_id is not None else str(uuid.uuid4()),
        "device": device,
        "site": site,
        "started_at": rfc3339(started_at),
        "decided_at": rfc3339(decided_at),
        "result": result,
        # de-duplicated, order kept (first reason = primary)
        "reasons": list(dict.fromkeys(reasons)),
        "scores": {k: _round(x, 4) for k, x in scores.items()},
        "card": dict(card),
        "models": dict(models),
        "timings_ms": {k: _round(x, 1) for k, x in timings_ms.items()},
    }
    if consent is not None:
        v["consent"] = dict(consent)
    if binding is not None:
        v["binding"] = dict(binding)
    for k in ("liveness", "spoof", "similarity", "threshold"):
        v["scores"].setdefault(k, None)
    v["card"].setdefault("type", None)
    v["card"].setdefault("expired", None)
    validate(v)
    return v


# ---------------------------------------------------------------- keys and signatures
def key_id_of(pub: Ed25519PublicKey) -> str:
    raw = as_ours(pub).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Signer:
    """The device's Ed25519 verdict-signing key (PKCS#8 PEM, file mode 0600)."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None):
        private_key = as_ours(private_key)      # a tool may pass cryptography's key object
        self._key = private_key
        self.path = path
        self.public_key = private_key.public_key()
        self.public_key_raw = self.public_key.public_bytes(serialization.Encoding.Raw,
                                                           serialization.PublicFormat.Raw)
        self.public_key_b64 = base64.b64encode(self.public_key_raw).decode("ascii")
        self.key_id = key_id_of(self.public_key)

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id})"

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike) -> "Signer":
        d = Path(state_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / KEY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            tmp = d / (KEY_FILE + f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)          # never overwrite a key another process just made
            except FileExistsError:
                pass
            except OSError:                 # no hard links on this filesystem
                if not path.exists():
                    os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(d)
            data = path.read_bytes()
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise VerdictError(f"{path.name}: not an Ed25519 private key")
        return cls(key, path)

    def sign(self, v: dict) -> dict:
        """Validate and sign; returns the signed payload."""
        validate(v)
        sig = self._key.sign(canonical(v))
        return {"verdict": v, "sig": {"alg": SIG_ALG, "key_id": self.key_id,
                                      "value": base64.b64encode(sig).decode("ascii")}}


def load_public_key(item: Any) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, 32 raw bytes, base64 text, PEM text/bytes or
    a file path holding base64 or PEM."""
    item = as_ours(item)                        # cryptography's key object (tools, tests) -> ours
    if isinstance(item, Ed25519PublicKey):
        return item
    if isinstance(item, Signer):
        return item.public_key
    if isinstance(item, Path) or (isinstance(item, str) and os.sep in item and Path(item).is_file()):
        item = Path(item).read_bytes()
    if isinstance(item, str):
        item = item.encode("ascii", "replace")
    if isinstance(item, (bytes, bytearray)):
        b = bytes(item).strip()
        if len(b) == 32:
            return Ed25519PublicKey.from_public_bytes(b)
        if b.startswith(b"-----BEGIN"):
            k = serialization.load_pem_public_key(b)
            if isinstance(k, Ed25519PublicKey):
                return k
            raise VerdictError("public key: PEM is not Ed25519")
        try:
            raw = base64.b64decode(b, validate=True)
        except (binascii.Error, ValueError):
            raise VerdictError("public key: not base64, PEM or 32 raw bytes") from None
        if len(raw) != 32:
            raise VerdictError("public key: base64 does not hold 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    raise VerdictError(f"public key: unsupported type {type(item).__name__}")


def load_public_keys(spec: str | os.PathLike) -> list[Ed25519PublicKey]:
    """KEY (base64/PEM text or a file) or DIR (every *.pub / *.pem / *.b64 file in it)."""
    p = Path(spec)
    if p.is_dir():
        keys = [load_public_key(f) for f in sorted(p.iterdir())
                if f.is_file() and f.suffix in (".pub", ".pem", ".b64", ".key")]
        if not keys:
            raise VerdictError(f"{p}: no *.pub / *.pem / *.b64 public keys")
        return keys
    if p.is_file():
        return [load_public_key(p)]
    return [load_public_key(str(spec))]


def check_signed_shape(payload: Any) -> None:
    """Closed envelope: exactly {'verdict', 'sig'}; sig exactly {'alg', 'key_id', 'value'}."""
    if not isinstance(payload, dict) or set(payload) != {"verdict", "sig"}:
        raise VerdictError("signed payload: expected exactly the fields verdict, sig")
    sig = payload["sig"]
    if not isinstance(sig, dict) or set(sig) != {"alg", "key_id", "value"}:
        raise VerdictError("signed payload: sig must hold exactly alg, key_id, value")
    if sig["alg"] != SIG_ALG or not isinstance(sig["key_id"], str) or len(sig["key_id"]) != 16 \
            or not isinstance(sig["value"], str) or len(sig["value"]) != 88:
        raise VerdictError("signed payload: bad sig fields")
    validate(payload["verdict"])


def verify(payload: dict, public_keys: Iterable[Any]) -> dict:
    """Return the verdict if `payload` is schema-valid and signed by one of `public_keys`;
    raise VerdictError ('forged or tampered', 'unknown key', schema errors) otherwise."""
    check_signed_shape(payload)
    keys = [load_public_key(k) for k in public_keys]
    if not keys:
        raise VerdictError("verify: no trusted public keys")
    try:
        sig = base64.b64decode(payload["sig"]["value"], validate=True)
    except (binascii.Error, ValueError):
        raise VerdictError("signature: not base64") from None
    msg = canonical(payload["verdict"])
    want = payload["sig"]["key_id"]
    matching = [k for k in keys if key_id_of(k) == want]
    for k in matching or keys:
        try:
            k.verify(sig, msg)
            return payload["verdict"]
        except InvalidSignature:
            continue
    if not matching:
        raise VerdictError("signature: key_id not among the trusted keys (forged or unknown device)")
    raise VerdictError("signature: invalid (forged or tampered)")


def parse(data: bytes | str) -> dict:
    """Decode an MQTT payload into a dict (no validation); VerdictError if not a JSON object."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise VerdictError("payload: not JSON") from None
    if not isinstance(obj, dict):
        raise VerdictError("payload: not a JSON object")
    return obj
