"""The Debian package: `scripts/build-deb` builds kyc-edge_<version>_<arch>.deb with dpkg-deb; the
tests inspect it (control, conffiles, contents, wheelhouse against the pins, unit, maintainer
scripts) and install it with the real dpkg into a throwaway root made here
(`dpkg --root=R --force-script-chrootless`: the maintainer scripts run on this machine with
DPKG_ROOT=R, as image builders run them), then remove and purge it.

What runs for real: dpkg-deb, dpkg's unpack/configure/remove/purge with our maintainer scripts,
systemd-sysusers (user kyc-edge, groups video + dialout), the offline venv build from the bundled
wheelhouse (`pip --no-index`), the first software slot, model provisioning from the offline
mirror with sha256 checks, `systemctl --root enable`, and the installed slot's self-test (import,
config check, every model loaded, one synthetic frame through the pipeline).
What could NOT run here: systemd as PID 1 (no `systemctl start`, no ExecStartPre/Restart= from a
real systemd, no sandboxing of the unit), apt's dependency resolution (`--force-depends`: the
throwaway root has no python3/systemd packages; the host's are used), and another architecture
(the package is built for this machine's). The unit itself is linted by tests/test_systemd_unit.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device import __version__
from tests.conftest import IN_CI, SHARED, missing

REPO = Path(__file__).resolve().parents[1]
UNIT = "/lib/systemd/system/kyc-edge.service"
DISPLAY_UNIT = "/lib/systemd/system/kyc-edge-display.service"


def _need_tools() -> None:
    for t in ("dpkg-deb", "dpkg", "systemd-sysusers", "systemctl"):
        if not shutil.which(t):
            missing(f"{t} not installed (scripts/setup installs systemd; dpkg is Debian's)")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the package test needs root (dpkg --root, chown)")
        pytest.skip("needs root (dpkg --root, chown)")


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    _need_tools()
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run([str(REPO / "scripts" / "build-deb"), "--out", str(out)], capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr[-3000:]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    p = out / f"kyc-edge_{__version__}_{arch}.deb"
    assert p.is_file() and r.stdout.strip().endswith(p.name), r.stdout
    return p


@pytest.fixture(scope="module")
def extracted(deb, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("x")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(d)], check=True, timeout=300)
    return d


def _field(control: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", control, re.M)
    assert m, name
    return m.group(1)


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "scripts" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, ver = line.split(";")[0].split("==")
            pins[re.sub(r"[-_.]+", "_", name.strip()).lower()] = ver.strip()
    return pins


def test_control_conffiles_and_contents(deb, extracted):
    control = (extracted / "DEBIAN" / "control").read_text()
    assert _field(control, "Package") == "kyc-edge" and _field(control, "Version") == __version__
    assert _field(control, "Architecture") == subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                                                             text=True).stdout.strip()
    deps = _field(control, "Depends")
    for d in ("python3 (>= 3.11) | python3.11", "python3-venv | python3.11-venv", "systemd"):
        assert d in deps
    assert (extracted / "DEBIAN" / "conffiles").read_text().split() == ["/etc/kyc-edge/config.toml"]
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for p in (UNIT, DISPLAY_UNIT, "/etc/kyc-edge/config.toml", "/usr/lib/sysusers.d/kyc-edge.conf", "/usr/sbin/kyc-edge-provision-models",
              "/opt/kyc-edge/constraints.txt", "/usr/share/doc/kyc-edge/copyright", "/usr/bin/kyc-edge"):
        assert p in paths, p
    assert not any(p.endswith((".tflite", ".onnx")) for p in paths), "model binaries must not ship in the package"
    # everything is root-owned in the archive; the postinst chowns the slots and the state dir
    assert all(" root/root " in line for line in listing.splitlines())
    # the sysusers entry: system user kyc-edge, groups video and dialout
    su = (extracted / "usr/lib/sysusers.d/kyc-edge.conf").read_text()
    assert re.search(r"^u kyc-edge ", su, re.M) and "m kyc-edge video" in su and "m kyc-edge dialout" in su
    # ... and the display unit's user, in no device group
    assert re.search(r"^u kyc-edge-display - .* /var/lib/kyc-edge-display -$", su, re.M), su
    assert not re.search(r"^m kyc-edge-display ", su, re.M)
    # the conffile is a valid config that turns the software slots on
    cfg = extracted / "etc/kyc-edge/config.toml"
    assert 'software_root = "/opt/kyc-edge"' in cfg.read_text()
    r = subprocess.run([sys.executable, "-m", "device.cli", "check-config", str(cfg)], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr


def test_wheelhouse_is_exactly_the_pinned_runtime_set(extracted):
    wheels = sorted((extracted / "opt/kyc-edge/wheels").glob("*.whl"))
    got = {w.name.split("-")[0].lower(): w.name.split("-")[1] for w in wheels}
    assert got.pop("kyc_edge") == __version__
    pins = _pins()
    for name, ver in got.items():
        assert pins.get(name) == ver, f"{name} {ver} is not the pinned {pins.get(name)}"
    for runtime in ("numpy", "opencv_python_headless", "paho_mqtt", "pyserial", "cryptography", "jsonschema",
                    "systemd_python"):
        assert runtime in got, runtime
    assert "pytest" not in got and "matplotlib" not in got      # test/eval extras stay out
    assert (extracted / "opt/kyc-edge/constraints.txt").read_text() == (REPO / "scripts/constraints.txt").read_text()


def test_unit_and_maintainer_scripts(extracted):
    unit = (extracted / UNIT.lstrip("/")).read_text()
    assert unit == (REPO / "systemd" / "kyc-edge.service").read_text()
    for line in ("ExecStart=/opt/kyc-edge/current/bin/kyc-edge run --config /etc/kyc-edge/config.toml",
                 "ExecStartPre=/opt/kyc-edge/base/bin/python -m device.fleet.software guard --config "
                 "/etc/kyc-edge/config.toml",
                 "ReadWritePaths=/opt/kyc-edge/slots", "Restart=on-failure", "User=kyc-edge",
                 "SupplementaryGroups=video dialout", "StateDirectory=kyc-edge", "Type=notify"):
        assert line in unit, line
    # the display unit: the repo's, running the packaged software instead of a checkout's venv
    disp = (extracted / DISPLAY_UNIT.lstrip("/")).read_text()
    assert disp == (REPO / "systemd" / "kyc-edge-display.service").read_text().replace(
        "ExecStart=/opt/kyc-edge/.venv/bin/kyc-edge ", "ExecStart=/opt/kyc-edge/current/bin/kyc-edge ")
    for line in ("ExecStart=/opt/kyc-edge/current/bin/kyc-edge display serve", "User=kyc-edge-display",
                 "Group=kyc-edge"):
        assert line in disp, line
    for s in ("postinst", "prerm", "postrm"):
        p = extracted / "DEBIAN" / s
        assert os.access(p, os.X_OK), s
        r = subprocess.run(["sh", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, (s, r.stderr)
        assert "DPKG_ROOT" in p.read_text(), s
    post = (extracted / "DEBIAN/postinst").read_text()
    assert "--no-index" in post and f"kyc-edge[systemd]=={__version__}" in post and "@VERSION@" not in post
    starts = [line for line in post.splitlines() if "systemctl start" in line and not line.strip().startswith("#")]
    assert starts and all('[ -n "$2" ]' in line for line in starts), starts   # a fresh install only enables


def _root(tmp: Path) -> Path:
    """The smallest root dpkg and systemd-sysusers accept: a dpkg database and the account files."""
    r = tmp / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"):
        (r / d).mkdir(parents=True)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available", "etc/shadow", "etc/gshadow"):
        (r / f).write_text("")
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\nvideo:x:44:\ndialout:x:20:\n")
    return r


def _dpkg(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args],
                       capture_output=True, text=True, timeout=900, env=env or dict(os.environ), cwd=str(root.parent))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_install_into_a_throwaway_root_then_remove_keeps_state_and_purge_removes_it(deb, tmp_path):
    mirror = SHARED / "models"
    if not (mirror / "mobilefacenet.tflite").exists():
        missing(f"offline model mirror missing: {mirror}")
    root = _root(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KYC_EDGE_MODEL_DIR")}
    env["KYC_EDGE_MODEL_MIRROR"] = str(mirror)
    r = _dpkg(root, "-i", str(deb), env=env)
    assert "installed from mirror, sha256 ok" in r.stdout
    opt = root / "opt/kyc-edge"
    # user and groups
    pw = (root / "etc/passwd").read_text()
    m = re.search(r"^kyc-edge:x:(\d+):(\d+):[^:]*:/var/lib/kyc-edge:/usr/sbin/nologin$", pw, re.M)
    assert m, pw
    uid = int(m.group(1))
    grp = (root / "etc/group").read_text()
    assert re.search(r"^video:x:44:kyc-edge$", grp, re.M) and re.search(r"^dialout:x:20:kyc-edge$", grp, re.M)
    # the display unit's user (User=kyc-edge-display): a system user of its own, no login, no device group
    md = re.search(r"^kyc-edge-display:x:(\d+):(\d+):[^:]*:/var/lib/kyc-edge-display:/usr/sbin/nologin$", pw, re.M)
    assert md, pw
    assert int(md.group(1)) < 1000 and int(md.group(1)) != uid
    assert "kyc-edge-display" not in "".join(line for line in grp.splitlines() if line.startswith(("video:", "dialout:")))
    assert (root / "lib/systemd/system/kyc-edge-display.service").is_file()
    assert not (root / "etc/systemd/system/multi-user.target.wants/kyc-edge-display.service").exists()  # not enabled
    # the venv (base) and the first software slot, which `current` names
    assert os.readlink(opt / "current") == "slots/current" and os.readlink(opt / "slots/current") == "a"
    info = json.loads((opt / "slots/a/SOFTWARE.json").read_text())
    assert info["version"] == __version__
    assert (opt / "slots/a").stat().st_uid == uid and (opt / "base").stat().st_uid == 0
    assert (root / "var/lib/kyc-edge").stat().st_uid == uid and oct((root / "var/lib/kyc-edge").stat().st_mode)[-3:] == "700"
    # models: every file the manifest requires, sha256-verified
    py = opt / "current/bin/python"
    v = subprocess.run([str(py), "-m", "device.cli", "models", "verify", "--dir", str(root / "var/lib/kyc-edge/models")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    # the unit is enabled (systemctl --root), not started
    wants = root / "etc/systemd/system/multi-user.target.wants/kyc-edge.service"
    assert os.readlink(wants) == UNIT
    # the installed code runs from its slot: version, config check, self-test with the real models
    ver = subprocess.run([str(opt / "current/bin/kyc-edge"), "--version"], capture_output=True, text=True, env=env)
    assert ver.stdout.strip() == f"kyc-edge {__version__}"
    cfg = tmp_path / "config.toml"
    text = (root / "etc/kyc-edge/config.toml").read_text()
    text = text.replace('state_dir = "/var/lib/kyc-edge"', f'state_dir = "{root}/var/lib/kyc-edge"')
    text = re.sub(r'(\[models\][^\[]*?)\ndir = ""', rf'\1\ndir = "{root}/var/lib/kyc-edge/models"', text, flags=re.S)
    assert f'dir = "{root}/var/lib/kyc-edge/models"' in text
    cfg.write_text(text)
    st = subprocess.run([str(py), "-m", "device.selftest", "software", "--config", str(cfg), "--expect-version",
                         __version__], capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert st.returncode == 0, st.stderr[-2000:]
    res = json.loads(st.stdout)
    assert res["version"] == __version__ and res["models"] >= 4 and res["probe_similarity"] >= 0.99

    # remove: the venvs go, the state (keys, outbox, models) and the edited conffile stay
    (root / "var/lib/kyc-edge/device_signing.key").write_text("k\n")
    with open(root / "etc/kyc-edge/config.toml", "a") as f:
        f.write("# edited on site\n")
    _dpkg(root, "-r", "kyc-edge", env=env)
    assert not opt.exists() and not wants.exists()
    assert (root / "var/lib/kyc-edge/device_signing.key").is_file()
    assert (root / "var/lib/kyc-edge/models/mobilefacenet.tflite").is_file()
    assert (root / "etc/kyc-edge/config.toml").read_text().endswith("# edited on site\n")
    # purge: the state directory and the config go too
    _dpkg(root, "-P", "kyc-edge", env=env)
    assert not (root / "var/lib/kyc-edge").exists() and not (root / "etc/kyc-edge").exists()
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Package: kyc-edge" not in status
