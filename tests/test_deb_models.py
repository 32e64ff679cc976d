"""Models from a model bundle tar at install time (README "Install from the package"):
`KYC_EDGE_MODEL_BUNDLE=FILE.tar[.gz]` for the postinst, or `kyc-edge-provision-models FILE.tar`.

Real: the packaged provisioner (packaging/deb/kyc-edge-provision-models, the file scripts/build-deb
installs as /usr/sbin/kyc-edge-provision-models) run by sh with DPKG_ROOT set to a throwaway root, as
the postinst runs it; GNU tar making and unpacking the bundles; `kyc-edge models install` with the
model manifest's sha256s; the real models, taken from the offline mirror. The root's
/opt/kyc-edge/current is the test venv with this tree on PYTHONPATH (the installed slot, in
tests/test_deb.py). Every required model goes in (the provisioner takes no role subset); the
optional full-range detector is left out of the bundles, which must only warn.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device import models
from tests.conftest import SHARED, need

REPO = Path(__file__).resolve().parents[1]
PROVISION = REPO / "packaging" / "deb" / "kyc-edge-provision-models"
REQUIRED = [e for e in models.entries(include_built=False) if not e.optional]


def _mirror_path(e) -> str:
    """Where the offline mirror keeps `e` (its manifest layout: some under alternatives/)."""
    return next(s["path"] for s in e.sources if s["kind"] == "mirror")


@pytest.fixture(scope="module")
def mirror() -> Path:
    m = need(SHARED / "models")
    for e in REQUIRED:
        need(m / _mirror_path(e))
    return m


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "root"
    (r / "opt" / "kyc-edge").mkdir(parents=True)
    (r / "opt" / "kyc-edge" / "current").symlink_to(Path(sys.prefix).resolve())
    return r


def _bundle(tmp: Path, mirror: Path, name: str, *, tamper: str | None = None, top: str | None = None) -> Path:
    """A tar of a mirror directory holding every required model (in the mirror's layout), made with tar.
    `tamper`: one byte of that model file flipped. `top`: the directory itself is archived (members
    `top/...`) instead of its contents."""
    src = tmp / f"src-{name}"
    d = src / top if top else src
    for e in REQUIRED:
        p = d / _mirror_path(e)
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / _mirror_path(e), p)
        if e.file == tamper:
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0x01
            p.write_bytes(bytes(data))
    out = tmp / name
    flags = "-czf" if name.endswith(".gz") else "-cf"
    subprocess.run(["tar", flags, str(out), "-C", str(src), "."], check=True)
    return out


def _provision(root: Path, tmp: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    scratch = tmp / "tmpdir"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("KYC_EDGE_MODEL_MIRROR", "KYC_EDGE_MODEL_BUNDLE", "KYC_EDGE_MODEL_DIR", "VIRTUAL_ENV")}
    env.update(DPKG_ROOT=str(root), PYTHONPATH=str(REPO), TMPDIR=str(scratch), **(env_extra or {}))
    return subprocess.run(["sh", str(PROVISION), *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(tmp))


def _dest(root: Path) -> Path:
    return root / "var" / "lib" / "kyc-edge" / "models"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("how,name,top", [
    ("env", "models.tar.gz", None),          # KYC_EDGE_MODEL_BUNDLE at `apt install` (the postinst)
    ("arg", "models.tar", None),             # sudo kyc-edge-provision-models FILE.tar, later
    ("arg", "usb.tar.gz", "models"),         # `tar czf usb.tar.gz models/`: the directory itself
])
def test_models_are_provisioned_from_a_bundle_tar_each_verified_by_sha256(tmp_path, root, mirror, how, name, top):
    b = _bundle(tmp_path, mirror, name, top=top)
    r = _provision(root, tmp_path, env_extra={"KYC_EDGE_MODEL_BUNDLE": str(b)}) if how == "env" \
        else _provision(root, tmp_path, str(b))
    assert r.returncode == 0, r.stdout + r.stderr
    dest = _dest(root)
    for e in REQUIRED:
        assert f"{e.file}: installed from mirror, sha256 ok" in r.stdout, r.stdout
        assert _sha(dest / e.file) == e.sha256
    assert "warning: detector_full_range" in r.stdout                    # optional, not in the bundle
    assert sorted(p.name for p in dest.iterdir()) == sorted(e.file for e in REQUIRED)
    v = subprocess.run([str(root / "opt/kyc-edge/current/bin/python"), "-m", "device.cli", "models", "verify",
                        "--dir", str(dest)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert v.returncode == 0, v.stdout + v.stderr
    assert os.listdir(tmp_path / "tmpdir") == []                          # the unpacked bundle is gone
    # run again (an upgrade's postinst): nothing is fetched twice
    r2 = _provision(root, tmp_path, str(b))
    assert r2.returncode == 0 and r2.stdout.count("ok (already installed)") == len(REQUIRED), r2.stdout


def test_a_tampered_bundle_member_is_refused_with_a_clear_error_and_nothing_half_installed(tmp_path, root, mirror):
    victim = "face_landmark.tflite"
    role = next(e.role for e in REQUIRED if e.file == victim)
    b = _bundle(tmp_path, mirror, "bad.tar.gz", tamper=victim)
    r = _provision(root, tmp_path, env_extra={"KYC_EDGE_MODEL_BUNDLE": str(b)})
    assert r.returncode != 0, r.stdout + r.stderr
    assert "models install failed" in r.stderr and f"{role}: {victim}: no source worked: mirror: sha256 mismatch" \
        in r.stderr and "refused" in r.stderr, r.stderr
    # only the bundle given was used: no download was tried in its place
    assert "PyPI" not in r.stderr and "http" not in r.stderr, r.stderr
    dest = _dest(root)
    assert not (dest / victim).exists()
    assert not list(dest.glob("*.part"))                                  # no partial file left
    for p in dest.iterdir():                                              # whatever is there verified
        assert _sha(p) == next(e.sha256 for e in REQUIRED if e.file == p.name), p
    assert os.listdir(tmp_path / "tmpdir") == []
    # a good bundle afterwards completes the set; the ones already in place are kept
    good = _bundle(tmp_path, mirror, "good.tar.gz")
    r2 = _provision(root, tmp_path, str(good))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert f"{victim}: installed from mirror, sha256 ok" in r2.stdout
    assert r2.stdout.count("ok (already installed)") == len(REQUIRED) - 1, r2.stdout
    assert all(_sha(dest / e.file) == e.sha256 for e in REQUIRED)


def test_a_bundle_that_is_not_a_tar_is_refused_and_installs_nothing(tmp_path, root, mirror):
    bad = tmp_path / "models.tar.gz"
    bad.write_bytes(b"this is not a tar archive\n" * 100)
    r = _provision(root, tmp_path, str(bad))
    assert r.returncode != 0
    assert "tar" in r.stderr, r.stderr
    assert not _dest(root).exists() or not any(_dest(root).iterdir())
    assert os.listdir(tmp_path / "tmpdir") == []
