"""Operator-side verdict checks, in one place: `kyc-edge verdicts listen` and the PostgreSQL ingest
call `check()` with the same policy, so a verdict one of them accepts the other accepts too.

A verdict is accepted (`ok`) only if, in this order:
  1. it is a closed-schema signed verdict                                      else `invalid`
  2. its signature verifies against a trusted device key                       else `forged`
  3. the device/site it names are those of the topic it arrived on             else `forged`
  4. the signing key is the one registered for that device (KeyRing bindings)  else `forged`
  5. `decided_at` lies within the freshness window (max_age_s + skew_s)        else `stale`
  6. its signed `binding` (schema v2) matches the message / the nonce we sent  else `replayed`;
     a message claiming a ticket link (Correlation Data) that the verdict does
     not sign, one without the Correlation Data its verdict signs, or a nonce
     binding to no nonce we issued                                             `unbound`
  7. its verdict_id was not accepted before (persistent when a SeenStore)      else `duplicate`
Only an `ok` verdict is recorded as seen (a stale or replayed copy never poisons the store).

Key bindings: a key loaded from a file `<device>.pub|.pem|.b64` (alone or in a key directory) is
bound to `<device>`; a registry file maps devices to keys explicitly. A key bound to device D signs
only D's verdicts, and a device with bound keys is accepted only with one of them. Keys given as
bare base64/PEM text are unbound: trusted for any device that has no bound key.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from device import verdict as _verdict

KEY_SUFFIXES = (".pub", ".pem", ".b64", ".key")
DEFAULT_MAX_AGE_S = 600.0
DEFAULT_SKEW_S = 60.0
STATUSES = ("ok", "duplicate", "forged", "invalid", "stale", "replayed", "unbound")
REJECTED = ("forged", "invalid", "stale", "replayed", "unbound")


class KeyFileError(_verdict.VerdictError):
    """A key file or registry that cannot be used; one line, names the file, never its content."""


# ------------------------------------------------------------------ keys
def _load_key_file(f: Path):
    try:
        data = f.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{f}: cannot read ({e.strerror})") from None
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{f}: is a private key; give the device's public key "
                        f"(`kyc-edge keys show` on the box), never its signing key")
    try:
        return _verdict.load_public_key(data)
    except (_verdict.VerdictError, ValueError) as e:
        detail = e.detail if isinstance(e, _verdict.VerdictError) else "not a public key"
        raise KeyFileError(f"{f}: {detail}") from None


def _load_key_text(s: str):
    if "PRIVATE KEY" in s:
        raise KeyFileError("a --verify-key value is a private key; give the device's public key")
    try:
        return _verdict.load_public_key(s)
    except (_verdict.VerdictError, ValueError) as e:
        detail = e.detail if isinstance(e, _verdict.VerdictError) else "not a public key"
        raise KeyFileError(f"--verify-key: {detail}") from None


@dataclass
class KeyRing:
    """Trusted device keys and which device each one is bound to."""
    keys: list = field(default_factory=list)
    by_device: dict[str, set[str]] = field(default_factory=dict)     # device -> key_ids
    device_of: dict[str, str] = field(default_factory=dict)          # key_id -> device

    def add(self, key, device: str | None = None) -> None:
        kid = _verdict.key_id_of(key)
        if all(_verdict.key_id_of(k) != kid for k in self.keys):
            self.keys.append(key)
        if device:
            other = self.device_of.get(kid)
            if other is not None and other != device:
                raise KeyFileError(f"key {kid} is registered for both {other} and {device}")
            self.device_of[kid] = device
            self.by_device.setdefault(device, set()).add(kid)

    def add_spec(self, spec: str) -> None:
        """KEY text, a key file (<device>.pub binds it), or a directory of key files."""
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in KEY_SUFFIXES)
            if not files:
                raise KeyFileError(f"{p}: no *.pub / *.pem / *.b64 public keys")
            for f in files:
                self.add(_load_key_file(f), f.stem)
        elif p.is_file():
            self.add(_load_key_file(p), p.stem if p.suffix in KEY_SUFFIXES else None)
        elif os.sep in spec or p.suffix in KEY_SUFFIXES:
            raise KeyFileError(f"{spec}: no such key file or directory")
        else:
            self.add(_load_key_text(spec))

    def add_registry(self, path: str | os.PathLike) -> None:
        """JSON or TOML: {"<device>": "<base64|PEM|file>" or [...]}; file paths relative to it."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise KeyFileError(f"{p}: not a readable JSON/TOML key registry ({type(e).__name__})") from None
        if not isinstance(data, dict) or not data:
            raise KeyFileError(f"{p}: expected a table of device = key")
        for dev, items in data.items():
            for item in items if isinstance(items, list) else [items]:
                if not isinstance(item, str):
                    raise KeyFileError(f"{p}: {dev}: a key must be a string")
                f = (p.parent / item) if not item.strip().startswith("-----") else None
                if f is not None and len(item) < 4096 and f.is_file():
                    self.add(_load_key_file(f), str(dev))
                else:
                    try:
                        self.add(_load_key_text(item), str(dev))
                    except KeyFileError:
                        raise KeyFileError(f"{p}: {dev}: not a public key or key file") from None

    @classmethod
    def from_bound(cls, keys: Iterable[Any], bound: dict[str, str] | None) -> "KeyRing":
        """Compatibility: a key list plus the old device -> key_id dict."""
        ring = cls()
        for k in keys:
            ring.add(_verdict.load_public_key(k))
        for dev, kid in (bound or {}).items():
            ring.by_device.setdefault(dev, set()).add(kid)
            ring.device_of.setdefault(kid, dev)
        return ring

    def check_binding(self, device: str, key_id: str) -> str:
        """'' if key_id may sign for device, else why not."""
        owner = self.device_of.get(key_id)
        if owner is not None and owner != device:
            return "signed with another device's key"
        if owner is None and device in self.by_device:
            return "signed with a key not registered for this device"
        return ""


# ------------------------------------------------------------------ persistent state
def default_state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "kyc-edge" / "verdicts.sqlite"


class SeenStore:
    """verdict_ids accepted, and nonces this operator issued, in one small SQLite file (WAL, fsync).
    Rows older than the freshness window are pruned: a verdict that old is `stale` anyway, so
    window + store together reject every replay. Also usable as the listener's `dedup`."""

    def __init__(self, path: str | os.PathLike, keep_s: float = 7 * 86400):
        self.path = str(path)
        self.keep_s = float(keep_s)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.duplicates = 0
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("CREATE TABLE IF NOT EXISTS seen (verdict_id TEXT PRIMARY KEY, decided REAL, seen REAL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS nonces (sha256 TEXT PRIMARY KEY, issued REAL, "
                            "verdict_id TEXT)")
        except sqlite3.Error as e:
            raise _verdict.VerdictError(f"{self.path}: cannot open the listener state ({e})") from None
        self._last_prune = 0.0

    def close(self) -> None:
        self.db.close()

    def _prune(self, now: float) -> None:
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        self.db.execute("DELETE FROM seen WHERE seen < ?", (now - self.keep_s,))
        self.db.execute("DELETE FROM nonces WHERE issued < ?", (now - self.keep_s,))

    def first_time(self, verdict_id: str, decided: float | None = None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            self._prune(now)
            cur = self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", (verdict_id, decided, now))
            if cur.rowcount == 1:
                return True
            self.duplicates += 1
            return False

    def __len__(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]

    # nonces sent in cmd/start (kind "nonce" bindings)
    def issue_nonce(self, nonce: str, now: float | None = None) -> str:
        h = hashlib.sha256(nonce.encode("ascii")).hexdigest()
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO nonces VALUES (?, ?, NULL)", (h, time.time() if now is None else now))
        return h

    def nonce_use(self, sha256: str, verdict_id: str) -> str:
        """'ok' (first use, or the same verdict again), 'replayed' (used by another verdict),
        'unknown' (not a nonce we issued)."""
        with self._lock:
            row = self.db.execute("SELECT verdict_id FROM nonces WHERE sha256 = ?", (sha256,)).fetchone()
            if row is None:
                return "unknown"
            if row[0] is None:
                self.db.execute("UPDATE nonces SET verdict_id = ? WHERE sha256 = ? AND verdict_id IS NULL",
                                (verdict_id, sha256))
                return "ok"
            return "ok" if row[0] == verdict_id else "replayed"


# ------------------------------------------------------------------ the check
@dataclass
class Policy:
    max_age_s: float | None = DEFAULT_MAX_AGE_S      # None: no freshness check
    skew_s: float = DEFAULT_SKEW_S
    require_binding: bool = True      # False: Correlation Data on an unbound verdict is accepted
                                      # (devices from before the signed binding; the link is unauthenticated)


@dataclass
class Outcome:
    status: str
    verdict: dict | None = None
    key_id: str | None = None
    error: str = ""


def parse_ts(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def check(payload: bytes | str, *, topic: str | None, ring: KeyRing, policy: Policy | None = None,
          correlation: bytes | None = None, seen: Any = None, nonces: SeenStore | None = None,
          now: float | None = None) -> Outcome:
    """Every operator-side check of one verdict message (see the module doc). `topic` None skips
    the topic agreement (verdicts fetched from elsewhere); `seen` is a SeenStore, a Dedup or None
    (the caller dedups, e.g. a UNIQUE constraint; then call check() first and store only `ok`);
    `nonces` anything with `nonce_use(sha256, verdict_id) -> 'ok'|'replayed'|'unknown'` (None:
    every nonce binding is `unbound`). Pure apart from `seen`/`nonces`; never raises on input."""
    policy = policy or Policy()
    now = time.time() if now is None else now
    try:
        obj = _verdict.parse(payload)
        _verdict.check_signed_shape(obj)
    except _verdict.VerdictError as e:
        return Outcome("invalid", error=e.detail)
    out = Outcome("forged", obj["verdict"], obj["sig"]["key_id"])
    try:
        v = _verdict.verify(obj, ring.keys)
    except _verdict.VerdictError as e:
        out.error = e.detail
        return out
    if topic is not None:
        parts = topic.split("/")
        if len(parts) < 3 or parts[-2] != v["device"] or parts[-3] != v["site"]:
            out.error = "verdict device/site differ from the topic"
            return out
    why = ring.check_binding(v["device"], obj["sig"]["key_id"])
    if why:
        out.error = why
        return out
    decided = parse_ts(v["decided_at"])
    if policy.max_age_s is not None:
        if now - decided > policy.max_age_s + policy.skew_s:
            out.status, out.error = "stale", f"decided {int(now - decided)} s ago (window {int(policy.max_age_s)} s)"
            return out
        if decided - now > policy.skew_s:
            out.status, out.error = "stale", f"decided {int(decided - now)} s in the future (skew {int(policy.skew_s)} s)"
            return out
    b = v.get("binding")
    if b is None:
        if correlation and policy.require_binding:
            out.status, out.error = "unbound", "Correlation Data on a verdict that does not sign it"
            return out
    elif b["kind"] == "correlation":
        if correlation is None:      # stripped in transit, or an MQTT 3.1.1 hop: never recorded as seen,
            out.status, out.error = "unbound", "arrived without the Correlation Data the verdict signs"
            return out               # so the genuine copy with its ticket link is still `ok`
        if hashlib.sha256(correlation).hexdigest() != b["sha256"]:
            out.status, out.error = "replayed", "Correlation Data differs from the one the verdict signs"
            return out
    elif b["kind"] == "nonce":
        use = nonces.nonce_use(b["sha256"], v["verdict_id"]) if nonces is not None else "unknown"
        if use == "replayed":
            out.status, out.error = "replayed", "nonce already used by another verdict"
            return out
        if use == "unknown":
            out.status, out.error = "unbound", "bound to a nonce this operator did not issue"
            return out
    if seen is not None:
        first = seen.first_time(v["verdict_id"], decided, now) if isinstance(seen, SeenStore) \
            else seen.first_time(v["verdict_id"])
        if not first:
            out.status = "duplicate"
            return out
    out.status = "ok"
    return out
