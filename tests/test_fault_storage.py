"""Issue 20 items 3, 4, 16 and "storing a verdict is never skipped silently": a full disk under the
state directory (a real tmpfs filled mid-session), a corrupt outbox, a truncated signing key and a
read-only state directory, each against the daemon subprocess on real parts."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device import verdict as V
from device.link.outbox import Outbox
from tests.daemon_harness import REPO
from tests.fault_rig import Rig
from tests.tmpfs import mount_tmpfs, umount


def _fill(directory: Path) -> Path:
    """Write until ENOSPC."""
    p = directory / "filler.bin"
    with open(p, "wb", buffering=0) as f:
        chunk = b"\xff" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        small = b"\xff" * 512
        try:
            while True:
                f.write(small)
        except OSError:
            pass
    return p


@pytest.fixture
def tmpfs_state(tmp_path):
    state = tmp_path / "state"
    mount_tmpfs(state, "24m")
    yield state
    umount(state)


def test_disk_filled_mid_session_keeps_the_verdict_then_refuses_sessions(tmp_path, tmpfs_state, broker,
                                                                          shared_data, model_dir):
    rig = Rig(tmp_path, broker, shared_data, model_dir, state_dir=tmpfs_state,
              extra={"storage": {"reserve_bytes": 4_000_000, "ballast_bytes": 1_000_000, "check_interval_s": 0.5}})
    try:
        rig.start()
        assert (tmpfs_state / ".ballast").stat().st_size == 1_000_000
        filler = []
        signed, _ = rig.session(during=lambda: filler.append(_fill(tmpfs_state)))
        assert os.statvfs(tmpfs_state).f_bavail * os.statvfs(tmpfs_state).f_frsize < 4_000_000
        assert signed["verdict"]["result"] == "pass"
        assert rig.proc.poll() is None, "the daemon must not crash on a full disk"
        rig.wait(lambda: "storage_low" in rig.status().get("alarms", []) and
                 rig.status().get("storage") == "storage_low", 10, "storage_low in status")
        # the next customer is refused, not lost
        rig.insert()
        rig.wait(lambda: rig.refused("storage_low") >= 1, 10, "a refused event")
        rig.sim.remove()
        time.sleep(0.5)
        assert len(rig.verdicts()) == 1
        # space comes back: the alarm clears and the counter serves again
        filler[0].unlink()
        rig.wait(lambda: "storage_low" not in rig.status().get("alarms", ["storage_low"]), 15, "the alarm to clear")
        signed, _ = rig.session()
        assert signed["verdict"]["result"] == "pass"
        assert "Traceback" not in rig.log_text()
    finally:
        rig.close()


def test_full_disk_at_start_goes_ready_with_storage_low(tmp_path, tmpfs_state, broker, shared_data, model_dir):
    rig = Rig(tmp_path, broker, shared_data, model_dir, state_dir=tmpfs_state,
              extra={"storage": {"reserve_bytes": 4_000_000}})
    try:
        rig.start()          # keys + outbox exist
        assert rig.stop() == 0
        _fill(tmpfs_state)
        rig.start()
        rig.wait(lambda: "storage_low" in rig.status().get("alarms", []) or
                 "storage_unwritable" in rig.status().get("alarms", []), 10, "a storage alarm at start")
        rig.insert()
        rig.wait(lambda: rig.refused("storage_low") + rig.refused("storage_unwritable") >= 1, 10, "a refusal")
        assert rig.proc.poll() is None and "Traceback" not in rig.log_text()
    finally:
        rig.close()


def _signed_rows(state: Path, n: int) -> list[str]:
    signer = V.Signer.load_or_create(state)
    ids = []
    with Outbox(state / "outbox.sqlite", 1000) as ob:
        for i in range(n):
            t = time.time()
            v = V.build(device="counter-e2e", site="shop-test", result="fail", reasons=["no_face"],
                        scores={}, card={}, models={}, timings_ms={}, started_at=t, decided_at=t)
            ob.put(signer.sign(v))
            ids.append(v["verdict_id"])
    return ids


def test_corrupt_outbox_is_moved_aside_and_readable_rows_recovered(tmp_path, broker, shared_data, model_dir):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ids = _signed_rows(state, 120)
    db = state / "outbox.sqlite"
    size = db.stat().st_size
    page = 4096
    with open(db, "r+b") as f:            # smash the last data page: its rows are lost, the rest readable
        f.seek(size - page)
        f.write(b"\xde\xad" * (page // 2))
    with pytest.raises(sqlite3.DatabaseError):
        c = sqlite3.connect(db)
        c.execute("SELECT COUNT(*), sum(length(payload)) FROM outbox").fetchall()
        if c.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("corrupt")
    rig = Rig(tmp_path, broker, shared_data, model_dir)
    try:
        rig.start()
        rig.wait(lambda: "outbox_recovered" in rig.status().get("alarms", []), 10, "the outbox_recovered alarm")
        aside = [p for p in state.iterdir() if p.name.startswith("outbox.sqlite.corrupt-")]
        assert aside, "the corrupt outbox must be kept for forensics"
        got = {s["verdict"]["verdict_id"] for s, _ in rig.verdicts()}
        rig.wait(lambda: len({s["verdict"]["verdict_id"] for s, _ in rig.verdicts()}) >= 60, 20,
                 "recovered verdicts to be published")
        got = {s["verdict"]["verdict_id"] for s, _ in rig.verdicts()}
        assert got <= set(ids) and 60 <= len(got) < 120
        signed, _ = rig.session(exclude=set(ids))    # and it serves (recovered rows may still be draining)
        assert signed["verdict"]["result"] == "pass"
    finally:
        rig.close()


def test_garbage_outbox_gets_a_fresh_one(tmp_path, broker, shared_data, model_dir):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    V.Signer.load_or_create(state)
    (state / "outbox.sqlite").write_bytes(os.urandom(8192))
    rig = Rig(tmp_path, broker, shared_data, model_dir)
    try:
        rig.start()
        rig.wait(lambda: "outbox_recovered" in rig.status().get("alarms", []), 10, "the alarm")
        assert rig.session()[0]["verdict"]["result"] == "pass"
    finally:
        rig.close()


def _run_once(cfg_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM")}
    return subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(cfg_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def _one_clear_line(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if "ERROR" in l or "CRITICAL" in l]
    assert len(lines) == 1 and "start-up refused" in lines[0] and needle in lines[0], r.stderr[-2000:]


def test_truncated_signing_key_is_one_line_and_exit_2(tmp_path, broker, shared_data, model_dir):
    rig = Rig(tmp_path, broker, shared_data, model_dir)
    try:
        state = rig.state
        V.Signer.load_or_create(state)
        key = state / V.KEY_FILE
        key.write_bytes(key.read_bytes()[:40])
        _one_clear_line(_run_once(rig.cfg_path), "signing key")
    finally:
        rig.close()


def test_read_only_state_dir_is_one_line_and_exit_2(tmp_path, broker, shared_data, model_dir):
    """A state directory that was set up, then remounted read-only (an SD card going read-only)."""
    state = tmp_path / "state"
    mount_tmpfs(state, "2m")
    try:
        _signed_rows(state, 3)
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        rig = Rig(tmp_path, broker, shared_data, model_dir, state_dir=state)
        try:
            _one_clear_line(_run_once(rig.cfg_path), "Read-only file system")
        finally:
            rig.close()
    finally:
        umount(state)


def test_unwritable_state_dir_path_is_one_line(tmp_path, broker, shared_data, model_dir):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rig = Rig(tmp_path, broker, shared_data, model_dir, state_dir=blocker / "state")
    try:
        _one_clear_line(_run_once(rig.cfg_path), "state_dir")
    finally:
        rig.close()


def test_no_ballast_the_verdict_waits_in_memory_until_space_returns(tmp_path, tmpfs_state, broker, shared_data,
                                                                     model_dir):
    rig = Rig(tmp_path, broker, shared_data, model_dir, state_dir=tmpfs_state,
              extra={"storage": {"reserve_bytes": 4_000_000, "ballast_bytes": 0, "check_interval_s": 0.5}})
    try:
        rig.start()
        filler = []
        rig.insert()
        rig.wait(lambda: any(e.get("event") == "capturing" for e in rig.events()), 30, "the capture phase")
        filler.append(_fill(tmpfs_state))
        rig.wait(lambda: "verdict_unstored" in rig.status().get("alarms", []), 60, "verdict_unstored in status")
        rig.sim.remove()
        assert rig.verdicts() == [] and rig.proc.poll() is None
        filler[0].unlink()
        rig.wait(lambda: len(rig.verdicts()) == 1, 20, "the kept verdict to be stored and published")
        assert rig.verdicts()[0][0]["verdict"]["result"] == "pass"
        rig.wait(lambda: "verdict_unstored" not in rig.status().get("alarms", ["verdict_unstored"]), 10,
                 "the alarm to clear")
    finally:
        rig.close()
