"""Import rules (docs/ARCHITECTURE.md):
- device.link and device.fleet (and device.verdict, which they use) import only device.verdict,
  device.config, device.errors, device.models, device.challenge_names, the standard library and
  network / crypto libraries -- never the biometric side, not even transitively;
- one direction in the biometric pipeline: device.vision (models, per-frame geometry, the tracker)
  imports nothing from device.liveness; device.liveness (observations -> decision) imports nothing
  above it; neither imports device.session or device.daemon; device.session is imported only by the
  drivers above it (daemon, offline verify)."""
from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("device.camera", "device.vision", "device.liveness", "device.cardreader", "device.session",
             "device.daemon")
# device.models: the model manifest and sha256 helpers (stdlib only); fleet verifies artifacts with it
# device.localbroker: a loopback mosquitto for the link bench (stdlib only)
# device.challenge_names: the challenge names for the session-event schema and config (stdlib only)
# device.notify / device.logs: sd_notify and log set-up (stdlib; the display process uses them)
ALLOWED_DEVICE = {"device", "device.verdict", "device.config", "device.errors", "device.models",
                  "device.localbroker", "device.challenge_names", "device.options", "device.plugins",
                  "device.notify", "device.logs", "device.ids",   # ids: stdlib-only identifier patterns (issue 20)
                  "device.ed25519", "device.schemacheck"}   # signatures and closed schemas, stdlib only
# The camera backends' declarations (config section, key, probe; device/camera/backends/) build
# config's [camera] section. They are standard library only (test below), so they, and the package
# __init__ that holds them (numpy only on demand), are not the biometric side.
DECLARATIONS = ("device.camera", "device.camera.backends")


def biometric(name: str) -> bool:
    if name in DECLARATIONS or name.startswith("device.camera.backends."):
        return False
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
# device.display: the customer display sees session events only, never a frame (issue 15)
PACKAGES = ("device.link", "device.fleet", "device.display")
# third-party modules that would mean biometric code or image handling got pulled in
FORBIDDEN_THIRD_PARTY = ("cv2", "numpy", "ai_edge_litert", "tflite_runtime", "PIL", "serial", "picamera2")


def modules_of(pkg: str) -> list[str]:
    path = REPO / pkg.replace(".", "/")
    if not path.is_dir():
        return []
    mods = [pkg]
    for m in pkgutil.walk_packages([str(path)], prefix=pkg + "."):
        mods.append(m.name)
    return sorted(mods)


ALL = [m for p in PACKAGES for m in modules_of(p)] + ["device.verdict"]


def test_there_is_something_to_check():
    assert "device.link.mqtt" in ALL and "device.link.outbox" in ALL and "device.link.commands" in ALL
    assert "device.display.server" in ALL and "device.display.client" in ALL


def test_importing_link_and_fleet_loads_no_biometric_module():
    code = (
        "import importlib, json, sys\n"
        f"mods = {ALL!r}\n"
        "failed = {}\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        failed[m] = type(e).__name__ + ': ' + str(e)[:200]\n"
        "print(json.dumps({'loaded': sorted(sys.modules), 'failed': failed}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["failed"] == {}, res["failed"]
    loaded = res["loaded"]
    bad = [m for m in loaded if biometric(m)]
    assert bad == [], f"biometric modules imported transitively: {bad}"
    third = [m for m in loaded if m.split(".")[0] in FORBIDDEN_THIRD_PARTY]
    assert third == [], f"image/ML/serial libraries imported transitively: {sorted(set(third))[:10]}"
    device_mods = {m for m in loaded if m == "device" or m.startswith("device.")}
    unexpected = {m for m in device_mods - ALLOWED_DEVICE
                  if not any(m == p or m.startswith(p + ".") for p in PACKAGES)
                  and m not in DECLARATIONS and not m.startswith("device.camera.backends.")}
    assert unexpected == set(), f"device modules outside the allowed set: {sorted(unexpected)}"


def _imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # relative import: resolve
                parts = module.split(".") if module else path.relative_to(REPO).with_suffix("").parts
                pkg = ".".join(parts[:-node.level])
                base = pkg + ("." + node.module if node.module else "")
            else:
                base = node.module or ""
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value)))
    return out


@pytest.mark.parametrize("pkg", PACKAGES + ("device.verdict", "device.models", "device.localbroker",
                                            "device.challenge_names", "device.options", "device.plugins"))
def test_source_has_no_biometric_imports(pkg):
    root = REPO / pkg.replace(".", "/")
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    assert files
    bad = []
    for f in files:
        for line, name in _imports(f):
            if biometric(name) or name.split(".")[0] in FORBIDDEN_THIRD_PARTY:
                bad.append(f"{f.relative_to(REPO)}:{line}: {name}")
        text = f.read_text(encoding="utf-8")
        for x in FORBIDDEN:          # also `from device import camera`-style, caught by the AST too
            short = x.split(".")[1]
            if f"from device import {short}" in text:
                bad.append(f"{f.relative_to(REPO)}: from device import {short}")
    assert bad == [], "\n".join(bad)


def test_camera_backend_declarations_import_only_the_standard_library_at_top_level():
    """device/config.py imports every backend declaration; the implementation (cv2, numpy,
    device.camera.base) may only be imported inside create() / auto_open()."""
    files = sorted((REPO / "device" / "camera" / "backends").glob("*.py"))
    assert len(files) >= 4
    ok_device = {"device.options", "device.plugins", "device.errors"}
    bad = []
    for f in files + [REPO / "device" / "camera" / "__init__.py"]:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                if n.split(".")[0] in FORBIDDEN_THIRD_PARTY or (
                        n.startswith("device") and not any(n == x or n.startswith(x + ".") for x in ok_device)):
                    bad.append(f"{f.relative_to(REPO)}:{node.lineno}: {n}")
    assert bad == [], "\n".join(bad)


def test_the_checker_itself_catches_a_violation(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("from device import camera\nimport device.vision.detect as d\nfrom ..liveness import x\n"
                 "importlib.import_module('device.cardreader')\n")
    names = [n for _, n in _imports(f, "device.link.probe")]
    assert {"device.camera", "device.vision.detect", "device.liveness.x", "device.cardreader"} <= set(names)


def test_the_box_package_never_imports_the_tools_package():
    """kyc_tools imports device, never the reverse: a counter installs device alone."""
    files = sorted((REPO / "device").rglob("*.py"))
    assert len(files) > 30
    bad = []
    for f in files:
        mod = ".".join(f.relative_to(REPO).with_suffix("").parts)
        for line, name in _imports(f, mod):
            if name == "kyc_tools" or name.startswith("kyc_tools."):
                bad.append(f"{f.relative_to(REPO)}:{line}: {name}")
    assert bad == [], "\n".join(bad)
    assert not list((REPO / "device").rglob("evaluate")), "eval code lives in kyc_tools/eval"


# ---------------------------------------------------------------- one direction in the pipeline
ABOVE_THE_PIPELINE = ("device.session", "device.daemon", "device.offline", "device.demo", "device.cli", "device.wiring",
                      "device.selftest", "device.camera", "device.cardreader", "device.link", "device.fleet")
PIPELINE_RULES = {
    # package: modules it must never import (the package's own modules are always fine)
    "device.vision": ("device.liveness",) + ABOVE_THE_PIPELINE,
    "device.liveness": ("device.vision",) + ABOVE_THE_PIPELINE,
}
SESSION_IMPORTERS = {"device.daemon", "device.offline"}     # the drivers above the session


def _device_files():
    for f in sorted((REPO / "device").rglob("*.py")):
        yield f, ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _violations(pkg: str, forbidden) -> list[str]:
    bad = []
    for f, mod in _device_files():
        if not (mod == pkg or mod.startswith(pkg + ".")):
            continue
        for line, name in _imports(f, mod):
            if any(name == x or name.startswith(x + ".") for x in forbidden):
                bad.append(f"{f.relative_to(REPO)}:{line}: {name}")
        text = f.read_text(encoding="utf-8")
        for x in forbidden:
            short = x.split(".")[1]
            if f"from device import {short}" in text:
                bad.append(f"{f.relative_to(REPO)}: from device import {short}")
    return bad


@pytest.mark.parametrize("pkg", sorted(PIPELINE_RULES))
def test_the_pipeline_imports_run_one_way(pkg):
    files = [f for f, mod in _device_files() if mod.startswith(pkg + ".")]
    assert len(files) >= 4, files
    bad = _violations(pkg, PIPELINE_RULES[pkg])
    assert bad == [], "\n".join(bad)


def test_nothing_below_the_session_imports_it():
    bad = []
    for f, mod in _device_files():
        if mod in SESSION_IMPORTERS or mod == "device.session":
            continue
        for line, name in _imports(f, mod):
            if name == "device.session" or name.startswith("device.session."):
                bad.append(f"{f.relative_to(REPO)}:{line}: {name}")
    assert bad == [], "\n".join(bad)


def test_the_pipeline_checker_catches_a_violation(tmp_path, monkeypatch):
    """A vision module importing liveness (the old tracker -> suite -> liveness zig-zag) is caught."""
    probe = REPO / "device" / "vision" / "_probe_import_graph.py"
    probe.write_text("from device.liveness.check import LivenessCheck\nimport device.session\n")
    try:
        bad = _violations("device.vision", PIPELINE_RULES["device.vision"])
    finally:
        probe.unlink()
    assert any("device.liveness.check" in b for b in bad) and any("device.session" in b for b in bad), bad


def test_the_tracker_lives_in_vision():
    assert (REPO / "device" / "vision" / "tracking.py").is_file()
    assert not (REPO / "device" / "liveness" / "tracking.py").exists()
