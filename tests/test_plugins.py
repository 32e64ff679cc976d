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


CARD = r'''
import json, time
from device.cardreader import records
from device.cardreader.reader import CardReader
from device.cardreader.simulator import FakeCard, Simulator
from device.cardreader.commands import CARD_TYPES
from device.config import ReaderConfig
from device import verdict
from device.errors import CardError
out = {"types": list(records.CARD_TYPES), "cli_types": list(CARD_TYPES), "schema": list(verdict.card_types())}
good = FakeCard.of("visa_test", valid_to="20991231") if "visa_test" in records.CARD_TYPES else FakeCard.unsupported("V")
sim = Simulator(good)
port = sim.start_pty()
r = CardReader(ReaderConfig(port=port, timeout_s=0.25, retries=2, presence_debounce=1))
r.open()
def read():
    try:
        c = r.read_card()
    except CardError as e:
        return {"reason": e.reason}
    out_ = {"type": c.record.card_type, "problem": records.problem(c.record, time.time())}
    c.wipe()
    return out_
out["good"] = read()
if "visa_test" in records.CARD_TYPES:
    num = records.parse_text(good.text).number        # flip the check digit: a wrong number
    bad = FakeCard.of("visa_test", number=num[:-1] + str((int(num[-1]) + 1) % 10), valid_to="20991231")
    sim.insert(bad); out["bad_number"] = read()
    sim.insert(FakeCard.of("visa_test", valid_to="20200101")); out["expired"] = read()
sim.stop(); r.close()
try:
    verdict.build(device="d1", site="s1", result="fail", reasons=["card_expired"],
                  scores={"liveness": None, "spoof": None, "similarity": None, "threshold": 0.42},
                  card={"type": "visa_test", "expired": True}, models={}, timings_ms={},
                  started_at=1.7e9, decided_at=1.7e9 + 1)
    out["verdict"] = "valid"
except verdict.VerdictError as e:
    out["verdict"] = str(e)[:200]
print(json.dumps(out))
'''


def test_a_card_type_is_one_file():
    assert (PLUGINS / "card_visa.py").is_file()
    without = _run(CARD, None)
    assert "visa_test" not in without["types"] and "visa_test" not in without["schema"]
    assert without["good"] == {"reason": "unsupported_card_type"}       # mark 'V' unknown without it
    assert without["verdict"] != "valid" and "card" in without["verdict"]

    got = _run(CARD, "tests.plugins.card_visa")
    assert got["types"] == ["resident", "permit_hmt", "foreign", "visa_test"]
    assert "visa_test" in got["cli_types"] and got["schema"][-1] == "visa_test"
    assert got["good"] == {"type": "visa_test", "problem": None}
    assert got["bad_number"] == {"type": "visa_test", "problem": "card_invalid_number"}
    assert got["expired"] == {"type": "visa_test", "problem": "card_expired"}
    assert got["verdict"] == "valid"


def test_the_schema_file_lists_exactly_the_built_in_card_types():
    from device import verdict
    from device.cardreader import records
    assert set(records.BUILT_IN) <= set(records.CARD_TYPES)
    if "KYC_EDGE_PLUGINS" not in os.environ:
        assert tuple(records.CARD_TYPES) == records.BUILT_IN
    assert verdict.card_types()[:3] == records.BUILT_IN
    v1 = json.loads((REPO / "device/schema/verdict.v1.schema.json").read_text())
    assert v1["properties"]["card"]["properties"]["type"]["enum"] == [*records.BUILT_IN, "unknown", None]


def test_registries_refuse_incomplete_or_clashing_plugins():
    import types

    import pytest

    from device.camera import backends
    from device.cardreader import records
    half = types.ModuleType("half_backend")
    half.KEY, half.DOC = "half", "no Options, no probe, no create"
    with pytest.raises(TypeError, match="missing Options, probe, create"):
        backends.register(half)
    assert "half" not in backends.backends()

    class Clash(records.CardRecord):           # 'J' is the permit's mark
        card_type, LETTERS, LAYOUT = "clash", ("J",), records.PERMIT_LAYOUT
    with pytest.raises(ValueError, match="already registered"):
        records.register(Clash)

    class Unknown(records.CardRecord):
        card_type, LETTERS, LAYOUT = "unknown", ("Q",), records.PERMIT_LAYOUT
    with pytest.raises(ValueError, match="lower_snake"):
        records.register(Unknown)
    assert "clash" not in records.CARD_TYPES and records.parse_text(
        records.build_text("permit_hmt", records.PermitRecord.sample_fields(seed=2, valid_to="20301231"))
    ).card_type == "permit_hmt"
    assert records.problem(None, 0) == "unsupported_card_type"
