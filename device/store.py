"""Storage faults: the state directory's space and writability, a corrupt outbox, and storing a
verdict so that it can never be skipped silently.

- `check()` (at start, before every session, and every storage.check_interval_s while idle): free
  space below storage.reserve_bytes -> `storage_low`; a state directory that cannot take a small
  fsynced write -> `storage_unwritable`. Either refuses new sessions (the daemon sends a `refused`
  event) and shows as an alarm in `status`, instead of a crash mid-session.
- A ballast file (<state_dir>/.ballast, storage.ballast_bytes) is released when a verdict cannot be
  stored for lack of space, so the verdict of a session that filled the disk is still written.
- `open_outbox()`: an outbox SQLite cannot read is moved aside (`outbox.sqlite.corrupt-<time>`,
  kept for forensics), a fresh one is created, and every undelivered row SQLite can still read that
  is a valid signed verdict is copied over; alarm `outbox_recovered`.
- `VerdictStore.store()`: sign + put. A verdict that fails its schema (a bug) is replaced by a signed
  `internal_error` verdict with the same verdict_id (alarm `verdict_invalid`); a put that fails for
  lack of space is retried after releasing the ballast, and failing that the signed verdict is kept
  in memory and retried from the main loop (alarm `verdict_unstored`) - never dropped silently.

This module imports nothing from the biometric side.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from device import verdict as verdict_mod
from device.link.outbox import Outbox, OutboxFull

log = logging.getLogger("kyc_edge.store")

BALLAST = ".ballast"
PROBE = ".write-probe"


# ------------------------------------------------------------------ state-directory checks
def free_bytes(path: str | os.PathLike) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def probe(path: str | os.PathLike) -> int | None:
    """A small create + write + unlink in the directory itself (catches read-only mounts,
    wrong owners, and a disk that is completely full). None when it worked, else the errno."""
    p = Path(path) / PROBE
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x" * 512)      # no fsync: this runs before every session, and a write
        finally:                          # already reports EROFS / EACCES / ENOSPC
            os.close(fd)
        p.unlink()
        return None
    except OSError as e:
        try:
            p.unlink()
        except OSError:
            pass
        return e.errno or errno.EIO


def writable(path: str | os.PathLike) -> bool:
    return probe(path) is None


def no_space(err: int | None) -> bool:
    return err in (errno.ENOSPC, errno.EDQUOT)


def check(state_dir: str | os.PathLike, reserve_bytes: int) -> str | None:
    """None when the state directory can take a session's writes, else `storage_unwritable` or
    `storage_low` (also for a disk so full that the probe cannot be written). The ballast file's
    bytes count as free (they are released when needed)."""
    err = probe(state_dir)
    if err is not None:
        return "storage_low" if no_space(err) else "storage_unwritable"
    try:
        free = free_bytes(state_dir) + _ballast_size(state_dir)
    except OSError:
        return "storage_unwritable"
    if free < reserve_bytes:
        return "storage_low"
    return None


def _ballast_size(state_dir) -> int:
    try:
        return (Path(state_dir) / BALLAST).stat().st_size
    except OSError:
        return 0


def ensure_ballast(state_dir: str | os.PathLike, nbytes: int, reserve_bytes: int) -> bool:
    """Create the ballast file if missing and there is room beyond the reserve; True if present."""
    p = Path(state_dir) / BALLAST
    if nbytes <= 0:
        p.unlink(missing_ok=True)
        return False
    try:
        if p.exists() and p.stat().st_size >= nbytes:
            return True
        if free_bytes(state_dir) < nbytes + reserve_bytes:
            return False
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            chunk = b"\0" * 65536
            left = nbytes
            while left > 0:
                left -= os.write(fd, chunk[:min(left, len(chunk))])
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    except OSError:
        p.unlink(missing_ok=True)
        return False


def release_ballast(state_dir: str | os.PathLike) -> int:
    p = Path(state_dir) / BALLAST
    n = _ballast_size(state_dir)
    try:
        p.unlink()
    except OSError:
        return 0
    return n


# ------------------------------------------------------------------ corrupt outbox
def _is_disk_error(e: BaseException) -> bool:
    """Out of space / read-only / I/O errors (not corruption)."""
    if isinstance(e, OSError):
        return True
    msg = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) and any(
        k in msg for k in ("full", "readonly", "read-only", "disk i/o", "unable to open"))


def open_outbox(path: str | os.PathLike, max_rows: int) -> tuple[Outbox, dict | None]:
    """(outbox, recovery report or None). Raises OSError / sqlite3.OperationalError for a state
    directory that cannot be written (not corruption: moving the file aside would not help)."""
    path = Path(path)
    try:
        ob = Outbox(path, max_rows)
        try:
            with ob._lock:
                row = ob._db.execute("PRAGMA quick_check(1)").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
        except BaseException:
            ob.close()
            raise
        return ob, None
    except sqlite3.DatabaseError as e:
        if _is_disk_error(e):
            raise
        reason = type(e).__name__
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    log.error("outbox %s is corrupt (%s): moved aside to %s, starting a fresh one", path.name, reason, aside.name)
    ob = Outbox(path, max_rows)
    recovered, unreadable = _recover_rows(aside, ob)
    if recovered or unreadable:
        log.error("outbox: %d undelivered verdicts recovered from the corrupt file, %d rows unreadable",
                  recovered, unreadable)
    return ob, {"moved_to": aside.name, "recovered": recovered, "unreadable": unreadable}


def _recover_rows(old: Path, new: Outbox) -> tuple[int, int]:
    """Copy every undelivered, valid signed row SQLite can still read from `old` into `new`."""
    try:
        db = sqlite3.connect(f"file:{old}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return 0, 0
    recovered = unreadable = 0
    try:
        try:
            top = db.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        except sqlite3.Error:
            top = 0
        rows: list = []
        try:
            rows = db.execute("SELECT seq, payload, response_topic, correlation, acked_at FROM outbox"
                              " ORDER BY seq").fetchall()
        except sqlite3.Error:
            # a damaged b-tree: read row by row so one bad page does not cost the readable ones
            misses = 0
            seq = 0
            limit = max(top, 1_000_000 if top == 0 else top)
            while seq < limit and misses < 2000:
                seq += 1
                try:
                    r = db.execute("SELECT seq, payload, response_topic, correlation, acked_at FROM outbox"
                                   " WHERE seq = ?", (seq,)).fetchone()
                except sqlite3.Error:
                    unreadable += 1
                    misses += 1
                    continue
                if r is None:
                    misses += 1
                    continue
                misses = 0
                rows.append(r)
        for seq, payload, rt, corr, acked in rows:
            if acked is not None:
                continue
            try:
                signed = verdict_mod.parse(bytes(payload))
                new.put(signed, response_topic=rt, correlation=bytes(corr) if corr is not None else None)
                recovered += 1
            except (verdict_mod.VerdictError, TypeError, ValueError):
                unreadable += 1
            except OutboxFull:
                break
    finally:
        db.close()
    return recovered, unreadable


# ------------------------------------------------------------------ storing verdicts
class VerdictStore:
    """sign + outbox.put that never skips a verdict silently (see module doc)."""

    def __init__(self, signer, outbox: Outbox, state_dir: str | os.PathLike, *,
                 alarm: Callable[[str, bool], None] = lambda name, on: None,
                 kick: Callable[[], None] = lambda: None):
        self.signer, self.outbox = signer, outbox
        self.state_dir = Path(state_dir)
        self.alarm, self.kick = alarm, kick
        self.unstored: list[tuple[dict, str | None, bytes | None]] = []   # signed, rt, corr
        self.stored = 0

    def fallback(self, v: dict | None, *, device: str, site: str, verdict_id: str | None = None,
                 started_at: float | None = None, binding: dict | None = None) -> dict:
        """A schema-valid `internal_error` verdict standing in for one that failed its schema."""
        now = time.time()
        vid = verdict_id
        if vid is None and isinstance(v, dict):
            vid = v.get("verdict_id") if isinstance(v.get("verdict_id"), str) else None
        try:
            return verdict_mod.build(device=device, site=site, result="fail", reasons=["internal_error"],
                                     scores={}, card={}, models={}, timings_ms={},
                                     started_at=started_at if started_at is not None else now,
                                     decided_at=now, verdict_id=vid, binding=binding)
        except verdict_mod.VerdictError:
            return verdict_mod.build(device=device, site=site, result="fail", reasons=["internal_error"],
                                     scores={}, card={}, models={}, timings_ms={}, started_at=now,
                                     decided_at=now, binding=binding)

    def sign_or_fallback(self, v: dict, *, device: str, site: str, binding: dict | None = None) -> dict:
        try:
            return self.signer.sign(v)
        except verdict_mod.VerdictError as e:
            log.error("verdict %s failed its schema (%s): storing a signed internal_error verdict instead",
                      v.get("verdict_id") if isinstance(v, dict) else "?", e.detail)
            self.alarm("verdict_invalid", True)
            return self.signer.sign(self.fallback(v, device=device, site=site, binding=binding))

    def put(self, signed: dict, response_topic: str | None = None, correlation: bytes | None = None) -> bool:
        """Store durably; True when in the outbox. OutboxFull propagates (sessions are refused
        before they start when full, so this only happens in a race)."""
        try:
            self._put(signed, response_topic, correlation)
            return True
        except OutboxFull:
            raise
        except verdict_mod.VerdictError as e:
            # the echo properties were refused by the outbox: keep the verdict without them
            log.error("verdict %s: reply properties not storable (%s); stored without them",
                      signed["verdict"]["verdict_id"], e.detail)
            self._put(signed, None, None)
            return True
        except (sqlite3.Error, OSError) as e:
            freed = release_ballast(self.state_dir)
            log.error("verdict %s could not be stored (%s)%s", signed["verdict"]["verdict_id"], type(e).__name__,
                      f"; released {freed} bytes of ballast and retrying" if freed else "")
            self.alarm("storage_low", True)
            if freed:
                try:
                    self._put(signed, response_topic, correlation)
                    return True
                except (sqlite3.Error, OSError) as e2:
                    log.error("verdict %s still not stored (%s)", signed["verdict"]["verdict_id"], type(e2).__name__)
            self.unstored.append((signed, response_topic, correlation))
            self.alarm("verdict_unstored", True)
            log.error("verdict %s kept in memory until the state directory takes it (%d waiting)",
                      signed["verdict"]["verdict_id"], len(self.unstored))
            return False

    def _put(self, signed, rt, corr) -> None:
        self.outbox.put(signed, response_topic=rt, correlation=corr)
        self.stored += 1
        self.kick()

    def retry(self) -> int:
        """Main loop: store what could not be stored. Returns how many are still waiting."""
        while self.unstored:
            signed, rt, corr = self.unstored[0]
            try:
                self.outbox.put(signed, response_topic=rt, correlation=corr)
            except (sqlite3.Error, OSError, OutboxFull):
                return len(self.unstored)
            self.unstored.pop(0)
            self.stored += 1
            self.kick()
            log.info("verdict %s stored after a storage fault", signed["verdict"]["verdict_id"])
        self.alarm("verdict_unstored", False)
        return 0
