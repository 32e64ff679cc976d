"""device/clock.py: the floor below which the wall clock is not believed (no RTC, NTP not synced)."""
from __future__ import annotations

import os
import time

from device import clock


def test_a_1970_clock_and_a_clock_behind_the_last_write_are_refused(tmp_path):
    assert clock.problem(0.0, clock.floor(None)) == "clock_unsynced"            # a Pi's clock before NTP
    assert clock.problem(clock.RELEASE_FLOOR + 1, clock.floor(None)) is None
    ob = tmp_path / "outbox.sqlite"
    assert clock.last_write(ob) is None                                          # a new box: the release floor
    ob.write_bytes(b"x")
    (tmp_path / "outbox.sqlite-wal").write_bytes(b"y")
    t = time.time()
    os.utime(ob, (t - 10, t - 10))
    os.utime(tmp_path / "outbox.sqlite-wal", (t + 1000, t + 1000))              # the newest of the two counts
    f = clock.floor(clock.last_write(ob))
    assert f == t + 1000 - clock.BACKWARDS_TOLERANCE_S
    assert clock.problem(t, f) == "clock_unsynced" and clock.problem(t + 1000, f) is None
