"""Two distributions, one repo: the box's wheel (kyc-edge: device/) alone, then with the tools' wheel
(kyc-edge-tools: kyc_tools/), each built from a copy of the sources and installed (not editable) into
a fresh venv, and run from a directory outside any checkout.

Nothing is downloaded: the wheels are built without build isolation (setuptools and wheel from this
venv), installed with --no-deps --no-index, and the fresh venv sees this venv's third-party packages
through a folder of links that leaves out kyc-edge's own (editable) installs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import pytest

from device.demo import write_config
from device.notify import NotifyListener
from tests.conftest import REPO
from tests.faces import BLINK_VIDEO, genuine_photo

OWN = ("kyc_edge", "kyc-edge", "kyc_tools", "device", "__editable__", "_kyc_edge", "__editable___kyc")
BOX_VERBS = {"run", "check-config", "keys", "models", "verify", "demo"}
TOOL_VERBS = {"eval", "bench", "fleet", "verdicts", "fuzz"}


def _copy_sources(dst: Path) -> Path:
    ign = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for d in ("device", "kyc_tools", "tools"):
        shutil.copytree(REPO / d, dst / d, symlinks=True, ignore=ign)
    (dst / "models").mkdir()
    shutil.copy2(REPO / "models" / "manifest.json", dst / "models" / "manifest.json")
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, dst / f)
    return dst


def _pip(*args, cwd=None) -> subprocess.CompletedProcess:
    # never from the checkout: a kyc_edge.egg-info left there by an in-tree build (scripts/build-deb)
    # is on the target interpreter's sys.path via its cwd (or PYTHONPATH) and makes pip skip the install
    r = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                       capture_output=True, text=True, timeout=300, cwd=cwd or tempfile.gettempdir(),
                       env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PIP_NO_INDEX": "1"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    src = _copy_sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheels")
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src))
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src / "tools"))
    got = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(got) == {"kyc_edge", "kyc_edge_tools"}, sorted(got)
    return got


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv (no pip) whose only view of this venv is its third-party packages."""
    v = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True, timeout=120)
    deps = tmp_path_factory.mktemp("deps")
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(OWN) or low.endswith(".pth") or low.startswith("~"):
            continue
        (deps / entry.name).symlink_to(entry)
    vsite = Path(subprocess.run([str(v / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    (vsite / "_kyc_test_deps.pth").write_text(str(deps) + "\n")
    return v


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "VIRTUAL_ENV")}
    env["HOME"] = str(tmp)
    return env


def _kyc(venv: Path, cwd: Path, *args, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "kyc-edge"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or _env(cwd))


def _verbs(venv: Path, cwd: Path) -> set[str]:
    r = _kyc(venv, cwd, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("{"))
    return set(line.strip().strip("{}").split(","))


def test_the_box_wheel_holds_only_device_and_its_data(wheels):
    names = zipfile.ZipFile(wheels["kyc_edge"]).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("kyc_edge-")}
    assert tops == {"device"}, tops
    assert "device/model_manifest.json" in names and "device/schema/verdict.schema.json" in names
    meta = zipfile.ZipFile(wheels["kyc_edge"]).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"kyc_edge.commands" not in meta          # the box registers no tool verbs
    tnames = zipfile.ZipFile(wheels["kyc_edge_tools"]).namelist()
    assert {n.split("/")[0] for n in tnames if not n.startswith("kyc_edge_tools-")} == {"kyc_tools"}
    tmeta = zipfile.ZipFile(wheels["kyc_edge_tools"]).read(next(n for n in tnames if n.endswith("METADATA")))
    assert b"Requires-Dist: kyc-edge==" in tmeta


def test_installed_wheels_run_without_a_checkout(wheels, venv, shared_data, model_dir, tmp_path, broker):
    import cv2
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    py = str(venv / "bin" / "python")
    _pip("--python", py, "install", "--no-deps", "--no-index", "-q", str(wheels["kyc_edge"]))

    # 1. the box alone: device from the venv, no tools, the box's verbs
    r = subprocess.run([py, "-c", "import device, json, importlib.util as u; "
                        "print(json.dumps([device.__file__, u.find_spec('kyc_tools') is None]))"],
                       cwd=outside, capture_output=True, text=True, env=_env(outside), timeout=60)
    assert r.returncode == 0, r.stderr
    dev_file, no_tools = json.loads(r.stdout)
    assert dev_file.startswith(str(venv)) and no_tools, (dev_file, no_tools)
    verbs = _verbs(venv, outside)
    assert BOX_VERBS <= verbs and not (TOOL_VERBS & verbs), verbs

    r = _kyc(venv, outside, "models", "verify", "--dir", str(model_dir))   # the manifest is package data
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    card = outside / "card.jpg"
    cv2.imwrite(str(card), genuine_photo(shared_data)[:, :, ::-1])
    r = _kyc(venv, outside, "verify", "--card-photo", str(card), "--video", str(shared_data / BLINK_VIDEO),
             "--challenges", "blink", "--card-style", "--models-dir", str(model_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["result"] == "pass"

    # `kyc-edge run` until READY=1 against real mosquitto, the reader twin (kycsim://, a real pty
    # served inside the daemon) and the replay camera
    cfg = write_config(outside / "config.toml", {
        "device": {"id": "counter-wheel", "site": "shop-test", "state_dir": str(outside / "state")},
        "camera": {"backend": "replay"},
        "camera.replay": {"path": str(shared_data / BLINK_VIDEO), "pace": "realtime", "loop": True},
        "reader": {"port": "kycsim://none", "poll_s": 0.1},
        "models": {"dir": str(model_dir)},
        "mqtt": {"url": broker.url, "connect_timeout_s": 5.0},
        "log": {"level": "info", "target": "stderr"},
    })
    ns = NotifyListener(outside / "notify.sock")
    env = {**_env(outside), "NOTIFY_SOCKET": ns.path}
    log = open(outside / "daemon.log", "wb")
    proc = subprocess.Popen([str(venv / "bin" / "kyc-edge"), "run", "--config", str(cfg)], cwd=outside, env=env,
                            stdout=log, stderr=log)
    try:
        ready = ns.first("READY=1", 90.0, alive=lambda: proc.poll() is None)
        assert ready is not None, (outside / "daemon.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (outside / "daemon.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        ns.close()

    # 2. with the tools' wheel: the same command gains the workstation verbs
    _pip("--python", py, "install", "--no-deps", "--no-index", "-q", str(wheels["kyc_edge_tools"]))
    verbs = _verbs(venv, outside)
    assert BOX_VERBS | TOOL_VERBS <= verbs, verbs
    lfw = shared_data / "lfw-dev"
    r = _kyc(venv, outside, "eval", "match", "--pairs", str(lfw / "pairs.csv"), "--images", str(lfw / "images"),
             "--limit", "4", "--models-dir", str(model_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["pairs"] == 4 and 0.0 <= out["accuracy"] <= 1.0
    # without --models-dir the tools find the models from the environment alone (no checkout to fall back on)
    r = _kyc(venv, outside, "eval", "match", "--pairs", str(lfw / "pairs.csv"), "--images", str(lfw / "images"),
             "--limit", "4", env={**_env(outside), "KYC_EDGE_MODEL_DIR": str(model_dir)})
    assert r.returncode == 0 and json.loads(r.stdout)["pairs"] == 4, r.stderr[-2000:]
    r = _kyc(venv, outside, "eval", "match", "--pairs", str(lfw / "pairs.csv"), "--images", str(lfw / "images"),
             "--limit", "2", env={k: v for k, v in _env(outside).items() if not k.startswith("KYC_EDGE_")})
    assert r.returncode == 2 and "KYC_EDGE_MODEL_DIR" in r.stderr, r.stderr[-2000:]


def test_no_source_checkout_assumptions_outside_the_fallbacks():
    """Paths into a checkout (parents[N], ../shared, .venv-mediapipe, models/build|store) are decided in
    one place per package: kyc_tools/paths.py and device/models.py (checkout_root, STORE)."""
    import re
    pat = re.compile(r"parents\[\d\]|REPO\.parent|[\"']\.venv-mediapipe[\"']|[\"']build[\"']\s*$")
    bad = []
    for root, allowed in (("kyc_tools", {"paths.py"}), ("device", {"models.py"})):
        for f in sorted((REPO / root).rglob("*.py")):
            if f.name in allowed:
                continue
            for i, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if pat.search(code):
                    bad.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    assert bad == [], "\n".join(bad)
