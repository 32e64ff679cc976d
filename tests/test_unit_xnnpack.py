"""Issue 20 item 13: the shipped unit's ProcSubset=pid hid /proc/cpuinfo, TFLite's CPU detection
failed and XNNPACK was never created. systemd is not PID 1 here (systemd-run cannot start a
transient unit), so the equivalent: parse the unit, mount /proc in a private mount + PID namespace
exactly as its ProtectProc= / ProcSubset= settings make systemd do (hidepid=, subset=), and run a real
model there. XNNPACK must be created under the unit's settings; the control (subset=pid, the old
unit) shows the test can fail."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "kyc-edge.service"

PROBE = r"""
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
d = it.get_input_details()[0]
x = np.zeros(d["shape"], d["dtype"])
for _ in range(3):
    it.set_tensor(d["index"], x); it.invoke()
t = time.perf_counter(); n = 20
for _ in range(n):
    it.set_tensor(d["index"], x); it.invoke()
print(json.dumps({"ms": (time.perf_counter() - t) * 1000 / n, "cpuinfo": __import__("os").access("/proc/cpuinfo", 4)}))
"""


def unit_settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def proc_mount_options(settings: dict[str, str]) -> str:
    """What systemd passes when it mounts the service's /proc (systemd.exec: ProtectProc=, ProcSubset=)."""
    opts = []
    pp = settings.get("ProtectProc", "default")
    if pp != "default":
        opts.append(f"hidepid={pp}")
    if settings.get("ProcSubset", "all") == "pid":
        opts.append("subset=pid")
    return ",".join(opts)


def _run_under(opts: str, model: Path) -> tuple[str, dict]:
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a private /proc (CI runs as root)")
    mount = f"mount -t proc -o {opts} proc /proc" if opts else "mount -t proc proc /proc"
    script = f"{mount} && exec {sys.executable} -c \"$PROBE\" {model}"
    r = subprocess.run(["unshare", "-m", "-p", "-f", "--mount-proc", "sh", "-c", script], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PROBE": PROBE})
    if r.returncode != 0 and "unshare failed" in r.stderr:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot make a mount namespace in CI: {r.stderr.strip()}")
        pytest.skip(f"no mount namespaces here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr, json.loads(r.stdout.strip().splitlines()[-1])


def test_unit_has_no_procsubset_pid():
    s = unit_settings(UNIT.read_text())
    assert s.get("ProcSubset", "all") != "pid", "ProcSubset=pid hides /proc/cpuinfo from TFLite"
    assert s.get("ProtectProc") == "invisible"           # the hardening that stays
    assert s.get("IPAddressDeny") == "any" and "IPAddressAllow" in s
    assert s.get("RestartPreventExitStatus") == "2"


def test_xnnpack_is_created_under_the_units_proc_settings(model_dir):
    model = model_dir / "mobilefacenet.tflite"
    opts = proc_mount_options(unit_settings(UNIT.read_text()))
    err, res = _run_under(opts, model)
    assert res["cpuinfo"] is True
    assert "XNNPACK delegate" in err and "Error in cpuinfo" not in err, err[-1000:]


def test_control_the_old_procsubset_pid_loses_xnnpack(model_dir):
    """Proves the probe can fail: the old unit's settings, same model."""
    model = model_dir / "mobilefacenet.tflite"
    err, res = _run_under("hidepid=invisible,subset=pid", model)
    assert res["cpuinfo"] is False
    assert "XNNPACK delegate" not in err and "Error in cpuinfo" in err


if __name__ == "__main__":       # figures for the report: python tests/test_unit_xnnpack.py MODEL_DIR
    md = Path(sys.argv[1])
    rows = {}
    for name, opts in (("unit", proc_mount_options(unit_settings(UNIT.read_text()))),
                       ("old_procsubset_pid", "hidepid=invisible,subset=pid")):
        for model in ("mobilefacenet.tflite", "face_detection_short_range.tflite"):
            err, res = _run_under(opts, md / model)
            rows.setdefault(name, {})[model] = {"ms_per_invoke": round(res["ms"], 2),
                                                "xnnpack": "XNNPACK delegate" in err}
    print(json.dumps(rows, indent=1))
