import subprocess
import tomllib
import sys
from pathlib import Path

import pytest

from device import config as C

REPO = Path(__file__).resolve().parents[1]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "device.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, **kw)


def test_defaults_are_valid():
    cfg = C.from_dict({})
    assert cfg.reader.baud == 115200 and cfg.mqtt.prefix == "kyc/v1"


@pytest.mark.parametrize("data, key, value_text, expected", [
    ({"camera": {"fps": -3}}, "camera.fps", "-3", "an integer in 1..240"),
    ({"camera": {"fps": "30"}}, "camera.fps", "'30'", "an integer"),
    ({"reader": {"baud": 12345}}, "reader.baud", "12345", "one of"),
    ({"match": {"threshold": 3}}, "match.threshold", "3", "a number in -1..1"),
    ({"liveness": {"pad_enabled": "yes"}}, "liveness.pad_enabled", "'yes'", "true or false"),
    ({"camera": {"replay": {"pace": "slow"}}}, "camera.replay.pace", "'slow'", "one of 'realtime', 'fast'"),
])
def test_each_problem_names_key_value_and_expectation(data, key, value_text, expected):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(data)
    [line] = e.value.problems
    assert line.startswith(f"config: {key} = {value_text}: expected ") and expected in line


def test_unknown_keys_and_cross_checks():
    with pytest.raises(C.ConfigError) as e:
        C.from_dict({"camera": {"fpz": 3}, "bogus": {}})
    assert any("camera.fpz: unknown key" in p for p in e.value.problems)
    assert any("bogus: unknown key" in p for p in e.value.problems)
    with pytest.raises(C.ConfigError) as e:
        C.from_dict({"liveness": {"challenges": ["blink"], "count": 2}})
    assert "liveness.count = 2" in e.value.problems[0]
    with pytest.raises(C.ConfigError) as e:
        C.from_dict({"device": {"id": "a/b"}})
    assert "device.id = 'a/b'" in e.value.problems[0]


def test_check_config_cli_exit_codes(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[camera]\nfps = 0\n[mqtt]\nurl = "http://x"\n')
    r = cli("check-config", str(bad))
    assert r.returncode == 2
    assert "config: camera.fps = 0: expected an integer in 1..240" in r.stderr
    assert "Traceback" not in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[camera\nfps = 3\n")
    r = cli("check-config", str(broken))
    assert r.returncode == 2 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr
    r = cli("check-config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    r = cli("check-config", str(REPO / "systemd" / "config.example.toml"))
    assert r.returncode == 0, r.stderr


def test_example_config_is_complete_and_current():
    text = (REPO / "systemd" / "config.example.toml").read_text()
    assert text == C.example_toml(), "example config is stale: run scripts/sync-readme"
    # every key at its full dotted path (not just its leaf name: camera.fps must not stand in for
    # camera.replay.fps), each at its default, and nothing else
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out
    parsed = flat(tomllib.loads(text))
    assert parsed == flat(C.to_dict(C.Config()))
    assert set(parsed) == {key for key, *_ in C.reference()}


def test_run_with_bad_config_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[reader]\nretries = 99\n")
    r = cli("run", "--config", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == "config: reader.retries = 99: expected an integer in 0..10"


def test_readme_config_reference_is_current():
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- BEGIN CONFIG REFERENCE", 1)[1].split("\n", 1)[1].split("<!-- END CONFIG REFERENCE -->")[0]
    r = cli("check-config", "--reference")
    assert block == r.stdout, "README config reference is stale: run scripts/sync-readme"
