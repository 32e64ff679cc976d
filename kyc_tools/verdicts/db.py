"""The operator database (PostgreSQL, psycopg 3): versioned migrations and the device-key registry.

Migrations are plain SQL files shipped with the package (kyc_tools/verdicts/migrations/NNNN_name.sql),
applied in order, each in its own transaction, under an advisory lock (several ingest workers may
start at once); the applied versions and the file's sha256 are recorded in `schema_migrations`.
A recorded migration whose file changed afterwards is an error (edit by adding a new file).
"""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

MIGRATION_LOCK = 0x6B79_6365_6467_6501        # pg_advisory_xact_lock key ("kycedge" + 1)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class DbError(Exception):
    pass


def _psycopg():
    try:
        import psycopg
    except ImportError as e:           # pragma: no cover - scripts/setup installs it (.[tools])
        raise DbError("psycopg 3 is not installed (pip install 'kyc-edge[tools]')") from e
    return psycopg


def connect(dsn: str, **kw):
    """A psycopg 3 connection (autocommit off). Raises psycopg.OperationalError when unreachable."""
    psycopg = _psycopg()
    kw.setdefault("connect_timeout", 5)
    kw.setdefault("application_name", "kyc-edge")
    return psycopg.connect(dsn, **kw)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every shipped migration, in version order."""
    out = []
    for f in resources.files("kyc_tools.verdicts").joinpath("migrations").iterdir():
        m = _NAME.match(f.name)
        if m:
            out.append((int(m.group(1)), m.group(2), f.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if versions != list(range(1, len(versions) + 1)):
        raise DbError(f"migrations must be numbered 1..N without gaps, got {versions}")
    return out


def _sha(sql: str) -> str:
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


def migrate(conn) -> list[int]:
    """Apply the migrations not yet recorded. Returns the versions applied now."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {v: s for v, s in conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall()}
        for version, name, sql in migrations():
            if version in done:
                if done[version] != _sha(sql):
                    raise DbError(f"migration {version:04d}_{name}.sql changed after it was applied; "
                                  "add a new migration instead")
                continue
            with conn.transaction():          # a savepoint: a failing file leaves nothing behind
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                             (version, name, _sha(sql)))
            applied_now.append(version)
    return applied_now


def schema_version(conn) -> int:
    r = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    conn.commit()
    return int(r[0])


# ---------------------------------------------------------------- device-key registry
@dataclass(frozen=True)
class Enrolled:
    key_id: str
    site: str
    device: str
    public_key: str           # base64, 32 raw bytes
    revoked: bool


def parse_key_record(obj: Any, site: str | None = None, device: str | None = None) -> tuple[str, str, str, str]:
    """(site, device, key_id, public_key_b64) from `kyc-edge keys show --format json` output
    (which names site and device when the box's config was given; else pass them). The key_id is
    recomputed from the key; a record whose key_id, site or device disagrees is refused."""
    from device import verdict as _verdict
    if not isinstance(obj, dict):
        raise DbError("key record: expected a JSON object")
    for name, given in (("site", site), ("device", device)):
        if given is not None and obj.get(name) not in (None, given):
            raise DbError(f"key record: {name} in the record differs from --{name}")
    site = site if site is not None else obj.get("site")
    device = device if device is not None else obj.get("device")
    pub = obj.get("public_key")
    if site is None or device is None or pub is None:
        raise DbError("key record: needs public_key, and site and device (in the record or as options)")
    for name, val in (("site", site), ("device", device)):
        if not isinstance(val, str) or not re.search(_verdict.SCHEMA["$defs"]["name"]["pattern"], val):
            raise DbError(f"key record: {name} is not a valid identifier")
    try:
        key = _verdict.load_public_key(str(pub))
    except (_verdict.VerdictError, ValueError) as e:
        raise DbError(f"key record: public_key: {getattr(e, 'detail', e)}") from None
    kid = _verdict.key_id_of(key)
    if obj.get("key_id") not in (None, kid):
        raise DbError("key record: key_id does not match public_key")
    from cryptography.hazmat.primitives import serialization
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return site, device, kid, base64.b64encode(raw).decode("ascii")


def enrol(conn, site: str, device: str, key_id: str, public_key_b64: str, *, replace: bool = False) -> str:
    """Register a device key. Returns 'enrolled', 'unchanged' or 'replaced'. Another device's key
    id is refused; a second key for the same device is refused unless `replace` (the old one is then
    revoked: verdicts it signed stay in the table, new ones signed with it are quarantined)."""
    with conn.transaction():
        row = conn.execute("SELECT site, device, revoked_at FROM device_keys WHERE key_id = %s",
                           (key_id,)).fetchone()
        if row is not None:
            if (row[0], row[1]) != (site, device):
                raise DbError(f"key {key_id} is already enrolled for another device")
            if row[2] is not None:
                raise DbError(f"key {key_id} was revoked; generate a new key on the box")
            conn.execute("INSERT INTO devices (site, device) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (site, device))
            return "unchanged"
        others = conn.execute("SELECT key_id FROM device_keys WHERE site = %s AND device = %s"
                              " AND revoked_at IS NULL", (site, device)).fetchall()
        if others and not replace:
            raise DbError(f"{site}/{device} already has key {others[0][0]}; use --replace to rotate it")
        if others:
            conn.execute("UPDATE device_keys SET revoked_at = now() WHERE site = %s AND device = %s"
                         " AND revoked_at IS NULL", (site, device))
        conn.execute("INSERT INTO device_keys (key_id, site, device, public_key) VALUES (%s, %s, %s, %s)",
                     (key_id, site, device, public_key_b64))
        conn.execute("INSERT INTO devices (site, device) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (site, device))
    return "replaced" if others else "enrolled"


def revoke(conn, key_id: str) -> bool:
    with conn.transaction():
        return conn.execute("UPDATE device_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL",
                            (key_id,)).rowcount > 0


def lookup_key(conn, key_id: str) -> Enrolled | None:
    row = conn.execute("SELECT key_id, site, device, public_key, revoked_at IS NOT NULL FROM device_keys"
                       " WHERE key_id = %s", (key_id,)).fetchone()
    return Enrolled(*row) if row else None
