"""`kyc-edge bench fleet` smoke run (small counts; no timing assertions): real mosquitto, private
PostgreSQL, ingest worker processes, one SIGKILLed and the broker restarted; then the staged rollout
with a self-test failure that must abort it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pg

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_fleet_smoke(tmp_path):
    if not pg.available():
        from tests.conftest import missing
        missing("PostgreSQL server binaries not installed (scripts/setup installs postgresql)")
    r = subprocess.run([sys.executable, "-m", "device.cli", "bench", "fleet", "--devices", "6", "--count", "3",
                        "--duration", "5", "--workers", "2", "--box-procs", "1", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    v = out["verdicts"]
    assert v["sent"] == 18 and v["rows"] == 18 and v["lost"] == 0 and v["extra_rows"] == 0
    assert v["duplicate_rows"] == 0
    assert v["quarantined"] == v["forged_published"] >= 1
    assert out["faults"]["worker_sigkill_at_s"] > 0 and out["faults"]["broker_restarted_at_s"] > 0
    ro = out["rollout"]
    assert ro["made_to_fail"] == 1 and ro["result"] == "aborted"
    assert ro["left_on_old_bundle"] >= 1 and ro["failed"] >= 1
    assert ro["left_on_old_bundle"] == ro["left_on_old_bundle_in_db"]
    assert out["outbox_depth_at_end"] == 0
