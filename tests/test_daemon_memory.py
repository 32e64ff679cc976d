"""Issue 17 (memory): the daemon's glibc malloc settings (device/memory.py MALLOC_ENV) are set by the
systemd unit and by the bench's daemon launch, the same values in both, and they do what they say."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.memory import MALLOC_ENV, unit_environment

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "kyc-edge.service"


def _malloc_vars(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("MALLOC_")}


def test_unit_sets_exactly_the_daemon_malloc_env():
    unit = unit_environment(UNIT.read_text())
    assert MALLOC_ENV and all(k.startswith("MALLOC_") for k in MALLOC_ENV)
    # both ways: a MALLOC_ line only in the unit would make the bench measure something else
    assert _malloc_vars(unit) == MALLOC_ENV, (unit, MALLOC_ENV)


def test_bench_daemon_launch_uses_the_units_malloc_env():
    from kyc_tools.bench.frame import daemon_env
    unit = _malloc_vars(unit_environment(UNIT.read_text()))
    env = daemon_env({"MALLOC_ARENA_MAX": "8", "PATH": os.environ.get("PATH", "")})
    assert _malloc_vars(env) == unit          # the unit's value wins over the caller's
    assert env["PATH"] == os.environ.get("PATH", "")


def test_unit_environment_reads_systemd_assignments():
    text = ('[Service]\nEnvironment=A=1 "B=two words"\n# Environment=C=3\nEnvironment=A=4\n'
            'EnvironmentFile=/etc/x\nExecStart=/bin/true\n')
    assert unit_environment(text) == {"A": "4", "B": "two words"}


PROBE = r"""
import ctypes, threading
go = threading.Barrier(7)
def work():
    go.wait()                 # all six alive at once: an exited thread's arena would be reused
    buf = bytearray(1 << 16)  # > 512 bytes: straight to malloc, from this thread's arena
    go2.wait()
go2 = threading.Barrier(7)
ts = [threading.Thread(target=work) for _ in range(6)]
for t in ts: t.start()
go.wait(); go2.wait()
for t in ts: t.join()
ctypes.CDLL(None).malloc_stats()   # glibc: one "Arena N:" block per arena, on stderr
"""


def _arenas(env: dict) -> int:
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return sum(1 for line in r.stderr.splitlines() if line.startswith("Arena "))


def test_arena_max_bounds_the_arenas_of_a_threaded_process():
    try:
        ctypes.CDLL(None).malloc_stats
    except AttributeError:
        pytest.skip("not glibc: MALLOC_ARENA_MAX does not apply")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    without = _arenas(base)
    with_env = _arenas({**base, **MALLOC_ENV})
    assert without > 2                               # the control: the test can fail
    assert with_env <= int(MALLOC_ENV["MALLOC_ARENA_MAX"]), (with_env, without)


def test_the_daemon_drops_its_start_up_file_pages_and_still_serves(tmp_path, broker, shared_data, model_dir):
    """device/memory.py release_file_pages at READY=1: the real daemon's resident file pages fall (its
    log line), and the first session after it passes on the same libraries."""
    import re
    from tests.fault_rig import Rig
    rig = Rig(tmp_path, broker, shared_data, model_dir)
    try:
        rig.start()
        m = re.search(r"ready \(resident file pages ([\d.]+) -> ([\d.]+) MB\)", rig.log_text())
        assert m, rig.log_text()[-2000:]
        before, after = float(m.group(1)), float(m.group(2))
        # the first release (models loaded) took most; the camera's and reader's start-up goes now
        assert before > 5 and after < 0.6 * before, (before, after)
        signed, _ = rig.session()
        assert signed["verdict"]["result"] == "pass", signed["verdict"]
    finally:
        rig.close()
