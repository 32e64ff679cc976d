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


def test_every_challenge_has_its_texts_voice_and_pictogram():
    """A challenge is one file on the liveness side; the counter page must still be able to show
    and say it: a text in each language, a spoken prompt and our own pictogram, per challenge name."""
    import json
    import re

    from device.challenge_names import CHALLENGES
    static = REPO / "device" / "display" / "static"
    texts = json.loads((static / "texts.json").read_text("utf-8"))
    app = (static / "app.js").read_text("utf-8")
    block = app[app.index("const P = {"):app.index("};", app.index("const P = {"))]   # the pictogram table
    pictograms = set(re.findall(r"^\s+(\w+):", block, re.M))
    assert {"card", "pass", "fail"} <= pictograms        # the table was found and parsed
    for name in CHALLENGES:
        for lang in ("zh", "en"):
            assert texts[lang].get(name), (lang, name)
        assert name in texts["spoken"], name
        assert name in pictograms, name
