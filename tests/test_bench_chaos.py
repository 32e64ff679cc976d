"""`kyc-edge bench chaos --short` (issue 20): the CI subset of the scripted faults against a real
daemon on real parts. Asserts outcomes only (no timings): no verdict lost, the daemon kept serving."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.daemon_harness import REPO
from tests.faces import BLINK_VIDEO


def test_bench_chaos_short_loses_nothing_and_never_stops(shared_data, model_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KYC_EDGE_MODEL_DIR": str(model_dir)}
    r = subprocess.run([sys.executable, "-m", "device.cli", "bench", "chaos", "--short",
                        "--frames", str(shared_data / BLINK_VIDEO)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    from kyc_tools.bench.chaos import FAULTS
    want = {fid for fid, _i, _f, short in FAULTS if short}
    rows = {row["fault"]: row for row in out["faults"]}
    assert set(rows) == want
    for fid, row in rows.items():
        assert row["result"] in ("ok", "skipped"), row
        if row["result"] == "skipped":
            assert row["reason"]
    assert out["lost_verdicts"] == 0 and out["stops"] == 0 and out["failed"] == []
    sessions = sum(row.get("verdicts_expected", 0) for row in rows.values())
    assert sessions >= 5 and out["ran"] >= 6
