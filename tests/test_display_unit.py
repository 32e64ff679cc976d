import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "kyc-edge-display.service"


def test_display_unit_lints_clean(tmp_path):
    exe = shutil.which("systemd-analyze")
    if not exe:
        pytest.fail("systemd-analyze missing: scripts/setup installs systemd")
    text = UNIT.read_text().replace("/opt/kyc-edge/.venv/bin/kyc-edge", str(REPO / ".venv" / "bin" / "kyc-edge"))
    p = tmp_path / "kyc-edge-display.service"
    p.write_text(text)
    r = subprocess.run([exe, "verify", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_display_unit_runs_the_display_unprivileged_and_local():
    text = UNIT.read_text()
    for line in ("ExecStart=/opt/kyc-edge/.venv/bin/kyc-edge display serve", "User=kyc-edge-display",
                 "Group=kyc-edge", "RuntimeDirectory=kyc-edge-display", "PrivateDevices=yes",
                 "IPAddressDeny=any", "IPAddressAllow=localhost", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in text, line
    from device import config as C
    d = C.from_dict({}).display
    assert d.listen == "127.0.0.1" and d.socket.startswith("/run/kyc-edge-display/")
