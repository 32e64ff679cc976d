"""Durable verdict outbox: SQLite, WAL, synchronous=FULL, in the state directory.

Holds only schema-valid signed verdicts. Rows leave in insertion order. When the broker
acknowledges one with a success reason code, Link calls `ack`: the row is marked delivered (it
no longer counts in `depth`) and kept for the replay window (`rows(acked_since=...)` lets Link
send it again after a broker crash); `purge` deletes delivered rows older than that. When full,
the oldest rows are kept and `put` raises OutboxFull (new sessions are refused upstream).
Thread-safe. Two connections: the writer (`put`, synchronous=FULL: a stored verdict survives a
power cut once put() returns) and the drain side (`rows`, `ack`, synchronous=NORMAL: a delete lost
in a power cut only means a re-send, which subscribers deduplicate by verdict_id). In WAL mode the
drain's reads never block puts, and its deletes do not fsync, so a put waits on no fsync but its own.
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
    acked: bool = False

    def signed(self) -> dict:
        return json.loads(self.payload)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    verdict_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    response_topic TEXT,
    correlation BLOB,
    created_at REAL NOT NULL,
    acked_at REAL
);
"""


class Outbox:
    def __init__(self, path: str | os.PathLike, max_rows: int = 10000):
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_rows = int(max_rows)
        self._lock = threading.RLock()          # writer connection
        self._rlock = threading.RLock()         # drain connection
        self._dlock = threading.Lock()          # depth counter
        new = not self.path.exists()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                   timeout=30)
        if new:
            os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if new:
            _verdict._fsync_dir(self.path.parent)
        self._rdb = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                    timeout=30)
        self._rdb.execute("PRAGMA busy_timeout=30000")
        self._rdb.execute("PRAGMA synchronous=NORMAL")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        if "acked_at" not in cols:
            self._db.execute("ALTER TABLE outbox ADD COLUMN acked_at REAL")
        self._depth = self._db.execute("SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0]

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
            with self._dlock:
                if self._depth >= self.max_rows:
                    raise OutboxFull(f"{self._depth} verdicts waiting (max {self.max_rows})")
                self._depth += 1               # reserve the slot
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO outbox (verdict_id, payload, response_topic, correlation, created_at)"
                    " VALUES (?, ?, ?, ?, ?)", (vid, payload, response_topic, correlation, time.time()))
                added = cur.rowcount
            except BaseException:
                added = 0
                raise
            finally:
                if added != 1:
                    with self._dlock:
                        self._depth -= 1
        return vid

    def ack(self, verdict_id: str) -> bool:
        """Mark a row delivered (PUBACK with success). Returns whether it was pending."""
        return self.ack_many([verdict_id]) > 0

    def ack_many(self, verdict_ids: list[str], now: float | None = None) -> int:
        """Mark rows delivered in one transaction (a replayed row gets a fresh time). Returns how
        many were pending before."""
        if not verdict_ids:
            return 0
        now = time.time() if now is None else now
        with self._rlock:
            db = self._rdb
            db.execute("BEGIN IMMEDIATE")
            try:
                n = 0
                for vid in verdict_ids:
                    n += db.execute("UPDATE outbox SET acked_at = ? WHERE verdict_id = ? AND acked_at IS NULL",
                                    (now, vid)).rowcount
                    db.execute("UPDATE outbox SET acked_at = ? WHERE verdict_id = ? AND acked_at < ?",
                               (now, vid, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        with self._dlock:
            self._depth -= n
        return n

    def reopen(self, verdict_id: str) -> bool:
        """A delivered row whose replayed copy was refused or reached nobody is pending again: the
        earlier PUBACK may have come from a broker that lost the message since (the reason for the
        replay). Returns whether it was delivered before."""
        with self._rlock:
            n = self._rdb.execute("UPDATE outbox SET acked_at = NULL WHERE verdict_id = ? AND acked_at IS NOT NULL",
                                  (verdict_id,)).rowcount
        with self._dlock:
            self._depth += n
        return n > 0

    def purge(self, acked_before: float) -> int:
        """Delete delivered rows acknowledged before `acked_before` (Unix seconds)."""
        with self._rlock:
            return self._rdb.execute("DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?",
                                     (acked_before,)).rowcount

    def delivered_count(self) -> int:
        with self._rlock:
            return self._rdb.execute("SELECT COUNT(*) FROM outbox WHERE acked_at IS NOT NULL").fetchone()[0]

    # ------------------------------------------------------------ reads
    def rows(self, limit: int = 100, after_seq: int = 0, acked_since: float | None = None) -> list[Row]:
        """Pending rows after `after_seq`, oldest first; with `acked_since`, also the delivered
        rows acknowledged at or after that time (for replay), in the same seq order."""
        q = ("SELECT seq, verdict_id, payload, response_topic, correlation, created_at, acked_at FROM outbox"
             " WHERE seq > ? AND (acked_at IS NULL OR acked_at >= ?) ORDER BY seq LIMIT ?")
        since = float("inf") if acked_since is None else acked_since
        with self._rlock:
            cur = self._rdb.execute(q, (after_seq, since, int(limit)))
            return [Row(s, v, bytes(p), rt, bytes(c) if c is not None else None, t, a is not None)
                    for s, v, p, rt, c, t, a in cur.fetchall()]

    def pending(self, limit: int = 100) -> list[dict]:
        """Signed payloads waiting for delivery, oldest first."""
        return [r.signed() for r in self.rows(limit)]

    def depth(self) -> int:
        with self._dlock:
            return self._depth

    def full(self) -> bool:
        return self.depth() >= self.max_rows

    def close(self) -> None:
        with self._lock, self._rlock:
            if self._rdb is not None:
                self._rdb.close()
                self._rdb = None  # type: ignore[assignment]
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
