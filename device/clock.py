"""Is the wall clock believable before a session?

A Raspberry Pi has no real-time clock: until NTP has synced, its clock is the time saved at the last
shutdown (fake-hwclock) or 1970. Card expiry, the holder's age (guardian under 14) and every verdict
timestamp read that clock, so with a clock in the past an expired card would pass and the back office
would file the verdict as stale. A session therefore starts only when the clock is

- not before RELEASE_FLOOR (no verdict of this version can be older than its release), and
- not before the last write to the outbox, as the file system recorded it while the clock was still
  right (a clock that went backwards across a reboot), minus BACKWARDS_TOLERANCE_S.

Otherwise the session is refused (`refused` event, reason `clock_unsynced`, the same alarm in status)
until the clock catches up. Only file times and the clock are read; nothing is written.
"""
from __future__ import annotations

from pathlib import Path

RELEASE_FLOOR = 1796083200.0          # 2026-12-01T00:00:00Z
BACKWARDS_TOLERANCE_S = 300.0


def last_write(outbox_file: Path) -> float | None:
    """Newest mtime of the outbox database and its WAL (None if there is none yet). Read it before the
    outbox is opened: opening writes with the clock as it is now."""
    times = []
    for p in (Path(outbox_file), Path(f"{outbox_file}-wal")):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def floor(last_write_t: float | None) -> float:
    """The earliest believable time."""
    return max(RELEASE_FLOOR, (last_write_t or 0.0) - BACKWARDS_TOLERANCE_S)


def problem(now: float, floor_t: float) -> str | None:
    return "clock_unsynced" if now < floor_t else None
