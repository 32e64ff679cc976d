"""Issue 20 items 2, 9, 10, 16 and "one truth for identifiers": check-config accepts exactly what the
daemon can run with. The name pattern is the verdict schema's (device/ids.py); every number is
finite; and a property test runs the real daemon on whatever check-config accepts."""
from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from device import config as C
from device import ids
from device import verdict as V
from device.link import events as E
from tests.daemon_harness import REPO, daemon_config, start_daemon, stop_daemon, write_config


def cli(*args):
    return subprocess.run([sys.executable, "-m", "device.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def _check(tmp_path: Path, toml: str) -> subprocess.CompletedProcess:
    p = tmp_path / "c.toml"
    p.write_text(toml)
    return cli("check-config", str(p))


def _verdict_for(device="counter-0001", site="site-0001") -> dict:
    t = time.time()
    return V.build(device=device, site=site, result="fail", reasons=["no_face"], scores={}, card={},
                   models={}, timings_ms={}, started_at=t, decided_at=t)


# ---------------------------------------------------------------- item 2: device.id
@pytest.mark.parametrize("value", ["counter-123456789", "counter 1", "c" * 65, "zähler-1", "-lead", ""])
def test_check_config_refuses_ids_the_verdict_schema_refuses(tmp_path, value):
    with pytest.raises(V.VerdictError):
        _verdict_for(device=value)
    r = _check(tmp_path, f'[device]\nid = "{value}"\n')
    assert r.returncode == 2 and "config: device.id = " in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_one_definition_of_the_name_pattern():
    assert ids.NAME_PATTERN == V.SCHEMA["$defs"]["name"]["pattern"]
    assert ids.KEY_PATTERN == V.SCHEMA["$defs"]["key"]["pattern"] == E.SESSION_EVENT_SCHEMA["properties"]["state"]["pattern"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.from_regex(ids.NAME_RE, fullmatch=True), st.text(max_size=70)))
def test_whatever_the_config_accepts_as_a_name_the_verdict_schema_accepts(name):
    try:
        cfg = C.from_dict({"device": {"id": name, "site": name}})
    except C.ConfigError:
        return
    v = _verdict_for(device=cfg.device.id, site=cfg.device.site)
    assert v["device"] == name


# ---------------------------------------------------------------- item 9: finite numbers
def _float_keys() -> list[str]:
    return [k for k, _d, expected, _doc in C.reference() if expected.startswith("a number")]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_every_float_key_refuses_non_finite(bad):
    keys = _float_keys()
    assert "liveness.pad_threshold" in keys and len(keys) > 20
    for key in keys:
        section, _, name = key.rpartition(".")
        data: dict = {}
        d = data
        for part in section.split("."):
            d = d.setdefault(part, {})
        d[name] = bad
        with pytest.raises(C.ConfigError) as e:
            C.from_dict(data)
        assert f"config: {key} = " in e.value.problems[0]


def test_check_config_refuses_nan_pad_threshold(tmp_path):
    r = _check(tmp_path, "[liveness]\npad_threshold = nan\n")
    assert r.returncode == 2 and "liveness.pad_threshold = nan" in r.stderr, r.stderr


# ---------------------------------------------------------------- item 10 and 16
@pytest.mark.parametrize("toml,key", [
    ('[mqtt]\nurl = "mqtt://127.0.0.1:99999"\n', "mqtt.url"),
    ('[mqtt]\nurl = "mqtt://:1883"\n', "mqtt.url"),
    ('[device]\ngroups = ["north#"]\n', "device.groups"),
    ('[device]\ngroups = ["a/b"]\n', "device.groups"),
    ('[mqtt]\nprefix = "kyc/#"\n', "mqtt.prefix"),
    ('[mqtt]\nprefix = "kyc//v1"\n', "mqtt.prefix"),
    ('[mqtt]\nprefix = "$SYS/kyc"\n', "mqtt.prefix"),
    ('[device]\nsite = "_fleet"\n', "device.site"),
    ("device = 5\n", "device"),
])
def test_check_config_refuses_values_the_daemon_cannot_run_with(tmp_path, toml, key):
    r = _check(tmp_path, toml)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"config: {key} = " in r.stderr, r.stderr


def test_device_5_names_the_key():
    with pytest.raises(C.ConfigError) as e:
        C.from_dict({"device": 5})
    assert e.value.problems == ["config: device = 5: expected a table"]


def test_missing_password_file_is_one_line_at_start(tmp_path, broker, model_dir):
    cfg = daemon_config(tmp_path, broker_url=broker.url, reader_port="/dev/null", video="x.mp4",
                        model_dir=model_dir, extra={"mqtt": {"username": "u",
                                                             "password_file": str(tmp_path / "nope")}})
    p = write_config(tmp_path / "c.toml", cfg)
    r = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(p)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "mqtt.password_file" in r.stderr and "start-up refused" in r.stderr


# ---------------------------------------------------------------- the property: accepted => runs
_RAN: list[str] = []
_names = st.one_of(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,70}\Z"), st.sampled_from(
    ["counter-123456789", "a b", "_fleet", "x" * 64, "x" * 65, "é"]))
_floats = st.one_of(st.floats(-2, 2), st.sampled_from([math.nan, math.inf]))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(device=_names, site=_names, group=_names, threshold=_floats, pad=_floats,
       port=st.sampled_from([0, 1, 1883, 65535, 65536, 99999]), prefix=st.sampled_from(
           ["kyc/v1", "kyc/#", "kyc/+/x", "a/b/c", "kyc/", "/kyc"]))
@example(device="c" * 64, site="S.1_x-2", group="g1", threshold=-1.0, pad=1.0, port=65535, prefix="a/b/c")
def test_whatever_check_config_accepts_the_daemon_runs_and_stores_a_verdict(
        tmp_path_factory, shared_data, model_dir, device, site, group, threshold, pad, port, prefix):
    from device.cardreader.simulator import FakeCard, Simulator
    from tests.daemon_harness import NotifySocket
    from tests.faces import BLINK_VIDEO, chip_jpeg, genuine_photo

    tmp = tmp_path_factory.mktemp("prop")
    sections = {"device": {"id": device, "site": site, "groups": [group]},
                "match": {"threshold": threshold}, "liveness": {"pad_threshold": pad},
                "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "prefix": prefix}}
    raw = {k: dict(v) for k, v in sections.items()}
    try:
        C.from_dict(raw)
    except C.ConfigError:
        return                                   # refused: nothing to run (the CLI agrees: tests above)
    _RAN.append(device)
    sim = Simulator(card=None)
    cfg = daemon_config(tmp, broker_url="mqtt://127.0.0.1:1", reader_port=sim.start_pty(),
                        video=str(shared_data / BLINK_VIDEO), model_dir=model_dir, challenges=(),
                        extra={**sections, "mqtt": {**sections["mqtt"], "connect_timeout_s": 0.2}})
    cfg["device"]["state_dir"] = str(tmp / "state")
    path = write_config(tmp / "c.toml", cfg)
    assert cli("check-config", str(path)).returncode == 0
    notify = NotifySocket(tmp / "n.sock")
    proc = start_daemon(path, notify, log_path=tmp / "d.log")
    try:
        assert notify.first("READY=1", 60, alive=lambda: proc.poll() is None) is not None, \
            (tmp / "d.log").read_text()[-2000:]
        sim.insert(FakeCard.resident(photo_bytes=chip_jpeg(genuine_photo(shared_data))))
        db = tmp / "state" / "outbox.sqlite"
        end = time.monotonic() + 40
        rows = []
        while time.monotonic() < end and not rows and proc.poll() is None:
            time.sleep(0.3)
            with sqlite3.connect(db) as c:
                rows = c.execute("SELECT payload FROM outbox").fetchall()
        assert rows, "no verdict stored; log:\n" + (tmp / "d.log").read_text()[-2000:]
        v = V.parse(rows[0][0])["verdict"]
        assert v["device"] == device and v["site"] == site
    finally:
        assert stop_daemon(proc) == 0
        notify.close()
        sim.stop()


def test_the_property_ran_the_daemon():
    """(runs after the property test in file order) at least the explicit example reached the daemon"""
    assert _RAN, "the property test never ran a daemon"
