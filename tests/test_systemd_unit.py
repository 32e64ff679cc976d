import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "kyc-edge.service"


@pytest.fixture(scope="module")
def analyze():
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.fail("systemd-analyze missing: scripts/setup installs systemd")
    return exe


def _unit_here(tmp_path) -> Path:
    # point ExecStart at this checkout's venv so verify can check the binary exists
    text = UNIT.read_text().replace("/opt/kyc-edge/current/bin/kyc-edge", str(REPO / ".venv" / "bin" / "kyc-edge")) \
        .replace("/opt/kyc-edge/base/bin/python", sys.executable) \
        .replace("ReadWritePaths=/opt/kyc-edge/slots", f"ReadWritePaths={tmp_path}")
    p = tmp_path / "kyc-edge.service"
    p.write_text(text)
    return p


def test_unit_lints_clean(analyze, tmp_path):
    r = subprocess.run([analyze, "verify", str(_unit_here(tmp_path))], capture_output=True, text=True, timeout=60)
    # verify only warns about unknown keys, so any stderr at all is a failure
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_unit_has_required_settings():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=kyc-edge", "StateDirectory=kyc-edge",
                 "ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "DevicePolicy=closed",
                 "DeviceAllow=char-video4linux rw", "DeviceAllow=char-ttyUSB rw", "RestrictAddressFamilies=",
                 "ProtectHome=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
                 "SystemCallFilter=@system-service"):
        assert line in text, line


def test_security_exposure_is_low(analyze, tmp_path):
    r = subprocess.run([analyze, "security", "--offline=true", str(_unit_here(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    line = [l for l in r.stdout.splitlines() if "Overall exposure level" in l][0]
    score = float(line.split(":")[1].split()[0])
    assert score <= 2.5, line   # README records the exact figure
