"""Durable verdict outbox: SQLite, WAL, synchronous=FULL, in the state directory.

Holds only schema-valid signed verdicts. Rows leave in insertion order and are deleted only
when the broker acknowledged them with a success reason code (Link calls `ack`). When full,
the oldest rows are kept and `put` raises OutboxFull (new sessions are refused upstream).
Thread-safe: one connection guarded by a lock.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device import verdict as _verdict
from device.errors import KycError

MAX_CORRELATION = 256
MAX_TOPIC = 256


class OutboxFull(KycError):
    reason = "outbox_full"

    def __init__(self, detail: str = ""):
        super().__init__("outbox_full", detail)


@dataclass(frozen=True)
class Row:
    seq: int
    verdict_id: str
    payload: bytes                 # canonical-ish JSON of the signed payload, as published
    response_topic: str | None
    correlation: bytes | None
    created_at: float

    def signed(self) -> dict:
        return json.loads(self.payload)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    verdict_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    response_topic TEXT,
    correlation BLOB,
    created_at REAL NOT NULL
);
"""


class Outbox:
    def __init__(self, path: str | os.PathLike, max_rows: int = 10000):
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_rows = int(max_rows)
        self._lock = threading.RLock()
        new = not self.path.exists()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                   timeout=30)
        if new:
            os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        if new:
            _verdict._fsync_dir(self.path.parent)
        self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    # ------------------------------------------------------------ writes
    def put(self, signed: dict, *, response_topic: str | None = None,
            correlation: bytes | None = None) -> str:
        """Store one signed verdict durably (fsynced before returning). Returns verdict_id.
        Raises VerdictError if not a schema-valid signed payload, OutboxFull when full.
        A verdict_id already in the outbox is not stored twice (idempotent)."""
        _verdict.check_signed_shape(signed)
        if response_topic is not None and (not isinstance(response_topic, str)
                                           or not 0 < len(response_topic) <= MAX_TOPIC
                                           or any(c in response_topic for c in "+#\0")):
            raise _verdict.VerdictError("response_topic: expected a topic name without wildcards")
        if correlation is not None:
            if isinstance(correlation, str):
                correlation = correlation.encode("utf-8")
            if not isinstance(correlation, (bytes, bytearray)) or len(correlation) > MAX_CORRELATION:
                raise _verdict.VerdictError(f"correlation: expected at most {MAX_CORRELATION} bytes")
            correlation = bytes(correlation)
        vid = signed["verdict"]["verdict_id"]
        payload = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                             allow_nan=False).encode("ascii")
        with self._lock:
            if self._depth >= self.max_rows:
                raise OutboxFull(f"{self._depth} verdicts waiting (max {self.max_rows})")
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (verdict_id, payload, response_topic, correlation, created_at)"
                " VALUES (?, ?, ?, ?, ?)", (vid, payload, response_topic, correlation, time.time()))
            self._depth += cur.rowcount
        return vid

    def ack(self, verdict_id: str) -> bool:
        """Delete a delivered row. Returns whether a row was deleted."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE verdict_id = ?", (verdict_id,))
            self._depth -= cur.rowcount
            return cur.rowcount > 0

    # ------------------------------------------------------------ reads
    def rows(self, limit: int = 100, after_seq: int = 0) -> list[Row]:
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, verdict_id, payload, response_topic, correlation, created_at FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, int(limit)))
            return [Row(s, v, bytes(p), rt, bytes(c) if c is not None else None, t)
                    for s, v, p, rt, c, t in cur.fetchall()]

    def pending(self, limit: int = 100) -> list[dict]:
        """Signed payloads waiting for delivery, oldest first."""
        return [r.signed() for r in self.rows(limit)]

    def depth(self) -> int:
        with self._lock:
            return self._depth

    def full(self) -> bool:
        return self.depth() >= self.max_rows

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
                self._db.close()
                self._db = None  # type: ignore[assignment]

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({self.path.name}, depth={self._depth}, max_rows={self.max_rows})"
