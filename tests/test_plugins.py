"""Every hardware edge takes a plugin as one file: a camera backend (tests/plugins/camera_pattern.py)
and a card type (tests/plugins/card_visa.py), each discovered through $KYC_EDGE_PLUGINS by a
fresh interpreter, with nothing else edited."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PLUGINS = REPO / "tests" / "plugins"


def _run(code: str, plugins: str | None, tmp: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KYC_EDGE_PLUGINS", None)
    if plugins:
        env["KYC_EDGE_PLUGINS"] = plugins
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp or REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


CAMERA = r'''
import json
from device import config
from device.camera import open_source, backends
out = {"choices": list(backends.choices())}
try:
    cfg = config.from_dict({"camera": {"backend": "pattern", "width": 80, "height": 64, "fps": 50,
                                       "pattern": {"level": 77}}})
except config.ConfigError as e:
    out["problems"] = e.problems
else:
    with open_source(cfg.camera) as src:
        f = src.read(timeout=3.0)
        out["pixel"] = None if f is None else [int(v) for v in f.rgb[0, 0]]
        out["shape"] = None if f is None else list(f.rgb.shape)
    try:
        config.from_dict({"camera": {"pattern": {"level": 300}}})
    except config.ConfigError as e:
        out["bad_level"] = e.problems
    out["reference"] = [r[0] for r in config.reference() if r[0].startswith("camera.pattern")]
    out["example_has_section"] = "[camera.pattern]" in config.example_toml()
print(json.dumps(out))
'''


def test_a_camera_backend_is_one_file():
    assert (PLUGINS / "camera_pattern.py").is_file()
    without = _run(CAMERA, None)
    assert "pattern" not in without["choices"]
    assert any("camera.backend" in p for p in without["problems"])
    assert any("camera.pattern" in p and "unknown key" in p for p in without["problems"])

    got = _run(CAMERA, "tests.plugins.camera_pattern")
    assert got["choices"][:3] == ["auto", "picamera2", "v4l2"] and "pattern" in got["choices"]
    assert got["pixel"] == [77, 77, 77] and got["shape"] == [64, 80, 3]
    assert got["bad_level"] == ["config: camera.pattern.level = 300: expected an integer in 0..255"]
    assert got["reference"] == ["camera.pattern.level"] and got["example_has_section"]
