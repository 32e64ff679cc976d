"""Fleet updates, in-process parts: import rule, manifest signing/verification, slots and the boot
guard, self-test vectors, the manager CLI (real subprocesses)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from device.fleet import manifest as mf
from device.fleet import slots
from device.verdict import canonical

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
FORBIDDEN = ("device.camera", "device.vision", "device.liveness", "device.cardreader", "device.session",
             "device.selftest", "cv2")


def test_fleet_imports_nothing_biometric():
    code = ("import sys, device.fleet.agent, device.fleet.slots, device.fleet.manifest, kyc_tools.fleet.rollout, "
            "kyc_tools.fleet.commands, device.fleet.nonces, argparse; "
            "kyc_tools.fleet.commands.register(argparse.ArgumentParser().add_subparsers()); "
            "print('\\n'.join(sorted(sys.modules)))")
    r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mods = r.stdout.split()
    assert "device.fleet.agent" in mods
    # the camera backends' declarations (stdlib only) build config's [camera]; not the biometric side
    bad = [m for m in mods if m.startswith(FORBIDDEN) and m != "device.camera"
           and not m.startswith("device.camera.backends")]
    assert bad == []


def _keys(tmp_path):
    k1, p1, id1 = mf.keygen(tmp_path / "k1")
    k2, p2, id2 = mf.keygen(tmp_path / "k2")
    return (mf.load_private_key(k1), p1.read_text().strip()), (mf.load_private_key(k2), p2.read_text().strip())


def _m(**kw):
    art = [{"name": "m.tflite", "sha256": "0" * 64, "size": 10, **mf.inline_fields(b"x" * 10)}]
    return mf.make_manifest(bundle_version=kw.pop("v", 2), artifacts=art, **kw)


def test_manifest_signature_key_rotation_and_reasons(tmp_path):
    (k1, p1), (k2, p2) = _keys(tmp_path)
    env = mf.sign(_m(), k1)
    assert mf.verify(env, mf.trusted_keys([p1]))["bundle_version"] == 2
    # rotation: a device trusting both keys accepts either; one trusting only the old refuses the new
    both = mf.trusted_keys([p1, str(tmp_path / "k2" / mf.FLEET_PUB_FILE)])
    assert len(both) == 2
    assert mf.verify(mf.sign(_m(), k2), both)["format"] == 1

    def reason(e, keys):
        with pytest.raises(mf.FleetError) as ei:
            mf.verify(e, keys)
        return ei.value.reason
    assert reason(mf.sign(_m(), k2), mf.trusted_keys([p1])) == "unknown_key"
    t = json.loads(json.dumps(env))
    t["manifest"]["bundle_version"] = 3
    assert reason(t, mf.trusted_keys([p1])) == "bad_signature"
    assert reason(env, []) == "no_trusted_keys"
    assert reason({"manifest": env["manifest"]}, mf.trusted_keys([p1])) == "malformed"
    bad = dict(env["manifest"], extra=1)       # signed, but outside the closed schema
    sig = base64.b64encode(k1.sign(canonical(bad))).decode()
    assert reason({"manifest": bad, "sig": {**env["sig"], "value": sig}}, mf.trusted_keys([p1])) == "malformed"
    with pytest.raises(mf.FleetError) as ei:
        mf.check_window(_m(now=time.time() - 30 * 86400, valid_s=86400), time.time(), 300)
    assert ei.value.reason == "expired"
    with pytest.raises(mf.FleetError) as ei:
        mf.check_window(_m(not_before=int(time.time()) + 3600), time.time(), 300)
    assert ei.value.reason == "not_yet_valid"
    mf.check_window(_m(not_before=int(time.time()) + 100), time.time(), 300)     # within the skew
    m = _m(targets=["group:north", "c9"])
    assert mf.targeted(m, "c9", ()) and mf.targeted(m, "x", ("north",)) and not mf.targeted(m, "x", ("south",))


def _stage(state, slot, version, tmp_path):
    src = tmp_path / f"src{slot}{version}"
    src.mkdir()
    (src / "m.tflite").write_bytes(b"x" * version)
    return slots.stage_slot(state, slot, {"m.tflite": src / "m.tflite"}, None, {"manifest": {"v": version}}, {}, version)


def test_switch_and_boot_guard_crash_loop_and_window(tmp_path):
    state = tmp_path / "state"
    fcfg = SimpleNamespace(crash_loop_restarts=3, crash_loop_window_s=60.0)
    assert slots.active_bundle(state) is None and slots.boot_guard(state, fcfg) is None
    _stage(state, "A", 1, tmp_path)
    slots.switch(state, "A")
    assert os.readlink(state / "bundles" / "current") == "A" and slots.current_version(state) == 1
    _stage(state, "B", 2, tmp_path)
    with pytest.raises(ValueError):
        _stage(state, "A", 3, tmp_path)          # never into the running slot
    slots.write_state(state, {"trial": {"slot": "B", "version": 2, "from_slot": "A", "from_version": 1,
                                        "switched_at": 1000.0, "boots": [], "committed": False}})
    slots.switch(state, "B")
    assert slots.boot_guard(state, fcfg, now=1001) == {"action": "counted", "restarts": 1}
    assert slots.boot_guard(state, fcfg, now=1100) == {"action": "counted", "restarts": 1}   # 1001 fell out of T
    assert slots.boot_guard(state, fcfg, now=1101)["restarts"] == 2
    r = slots.boot_guard(state, fcfg, now=1102)
    assert r["action"] == "rolled_back" and r["reason"] == "crash_loop" and r["bundle_version"] == 1
    assert slots.current_slot(state) == "A" and slots.read_state(state)["report"]["target_version"] == 2
    assert slots.boot_guard(state, fcfg, now=1103) is None
    # a `current` naming an incomplete slot is repaired at boot (to factory when there is no journal)
    (state / "bundles" / "A" / "READY").unlink()
    r = slots.boot_guard(state, fcfg, now=1200)
    assert r["reason"] == "slot_invalid" and slots.active_bundle(state) is None


def test_config_patch_is_validated_and_identity_is_protected():
    from device import config as config_mod
    base = config_mod.Config()
    assert slots.merge_config(base, {"match": {"threshold": 0.5}}).match.threshold == 0.5
    for bad in ({"match": {"threshold": 5}}, {"match": {"nope": 1}}, {"device": {"id": "other"}},
                {"fleet": {"public_keys": ["AAAA"]}}):
        with pytest.raises(config_mod.ConfigError):
            slots.merge_config(base, bad)


def test_selftest_vectors_pass_on_the_model_and_fail_on_another(model_dir, tmp_path):
    from device import selftest
    d = tmp_path / "m"
    d.mkdir()
    shutil.copyfile(model_dir / "face_detection_short_range.tflite", d / "det.tflite")
    vecs = selftest.compute_vectors(d, ["det.tflite"], seed="00")
    selftest.check_vector(d, vecs[0])
    # same name, other weights (the landmark model): different shapes -> refused
    shutil.copyfile(model_dir / "face_landmark.tflite", d / "det.tflite")
    with pytest.raises(selftest.SelfTestError):
        selftest.check_vector(d, vecs[0])


def test_fleet_cli_keygen_bundle_sign(tmp_path, model_dir):
    from device.cli import main

    def cli(*args):     # the real `kyc-edge` entry point, in-process (bundle still runs its selftest subprocess)
        import contextlib
        import io
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["fleet", *args])
        return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
    assert cli("keygen", "--out", str(tmp_path / "k")).returncode == 0
    with pytest.raises(FileExistsError):
        mf.keygen(tmp_path / "k")                  # never overwrites a signing key
    assert oct((tmp_path / "k" / mf.FLEET_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(model_dir / "face_detection_short_range.tflite", models / "face_detection_short_range.tflite")
    from device import config as config_mod
    from kyc_tools.fleet.commands import build_bundle
    with pytest.raises(config_mod.ConfigError):
        build_bundle(models, tmp_path / "bad", 2, {"match": {"threshold": 3}}, vectors=False)
    (tmp_path / "ok.toml").write_text("[match]\nthreshold = 0.45\n")
    r = cli("bundle", "--models", str(models), "--config", str(tmp_path / "ok.toml"), "--out", str(tmp_path / "b"),
            "--version", "2")
    assert r.returncode == 0 and "1 self-test vectors" in r.stdout, r.stderr
    r = cli("sign", str(tmp_path / "b"), "--key", str(tmp_path / "k" / mf.FLEET_KEY_FILE), "--target", "group:canary",
            "--url-base", "https://updates.example/b2")
    assert r.returncode == 0, r.stderr
    env = json.loads((tmp_path / "b" / "manifest.signed.json").read_text())
    m = mf.verify(env, mf.trusted_keys([(tmp_path / "k" / mf.FLEET_PUB_FILE).read_text().strip()]))
    assert m["targets"] == ["group:canary"] and m["config_patch"] == {"match": {"threshold": 0.45}}
    a = m["artifacts"][0]
    assert a["url"] == "https://updates.example/b2/face_detection_short_range.tflite" and a["size"] == 229714
    assert m["self_test"]["vectors"][0]["model"] == "face_detection_short_range.tflite"
    assert len(json.dumps(env)) < 16384          # one MQTT command
    assert "config_complete" not in m                # default: the patch stacks onto the running one
    r = cli("bundle", "--models", str(models), "--config", str(tmp_path / "ok.toml"), "--out", str(tmp_path / "c"),
            "--version", "3", "--no-vectors", "--config-complete")
    assert r.returncode == 0, r.stderr
    r = cli("sign", str(tmp_path / "c"), "--key", str(tmp_path / "k" / mf.FLEET_KEY_FILE))
    env = json.loads((tmp_path / "c" / "manifest.signed.json").read_text())
    m = mf.verify(env, mf.trusted_keys([(tmp_path / "k" / mf.FLEET_PUB_FILE).read_text().strip()]))
    assert m["config_complete"] is True and m["artifacts"][0]["inline"] is True
    assert m["artifacts"][0]["pages"] == mf.inline_fields((models / "face_detection_short_range.tflite").read_bytes())["pages"]


def test_a_bundle_replacing_a_float_model_drops_its_stale_int8_build(tmp_path):
    """Otherwise models.set=int8 would keep running the old weights after the update."""
    from device import models as models_mod
    base = tmp_path / "factory"
    base.mkdir()
    for name in ("mobilefacenet.tflite", "mobilefacenet_int8.tflite", "face_landmark.tflite"):
        (base / name).write_bytes(b"old " + name.encode())
    new = tmp_path / "dl" / "mobilefacenet.tflite"
    new.parent.mkdir()
    new.write_bytes(b"new embedder")
    state = tmp_path / "state"
    slot = slots.stage_slot(state, "A", {"mobilefacenet.tflite": new}, base, {"manifest": {}}, {}, 2)
    names = sorted(p.name for p in (slot / "models").iterdir())
    assert names == ["face_landmark.tflite", "mobilefacenet.tflite"]
    assert models_mod.resolve(slot / "models", "int8")["embedder"].read_bytes() == b"new embedder"


def test_spool_accepts_only_chunks_announced_by_a_pinned_page(tmp_path):
    """In-process edges of the inline spool: nothing unannounced is written, nothing raises."""
    import hashlib
    from device.fleet.agent import _Spool
    data = os.urandom(mf.PAGE_CHUNKS * 1024 + 700)            # two pages at 1 KiB chunks
    art = {"name": "m.tflite", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
           **mf.inline_fields(data, 1024)}
    mf.check_schema(mf.make_manifest(bundle_version=2, artifacts=[art]))
    sp = _Spool(tmp_path / "in", [art])
    pages = mf.paginate(mf.chunk_digests(data, 1024))
    sp.add("m.tflite", 0, data[:1024])                        # before its page
    for bad in ((0, pages[1]), (1, pages[0]), (2, pages[0]), (True, pages[0]), (0, ["zz"]), (0, [1, 2]), (0, "x")):
        sp.add_page("m.tflite", *bad)
    assert sp.files["m.tflite"]["known"] == {} and sp.dropped == 8
    sp.add_page("m.tflite", 0, pages[0])
    sp.add_page("m.tflite", 1, pages[1])
    for off, chunk in ((0, b"x" * 1024), (1, data[1:1025]), (1024, data[1024:2000]), (len(data) + 1024, b"x"),
                       ("0", data[:1024]), (-1024, data[:1024])):
        sp.add("m.tflite", off, chunk)
    assert sp.files["m.tflite"]["got"] == set() and sp.error is None
    for off in range(0, len(data), 1024):
        sp.add("m.tflite", off, data[off:off + 1024])
        sp.add("m.tflite", off, b"y" * 1024)                  # a late forgery for a chunk already written
    assert sp.wait("m.tflite", time.monotonic() + 1).read_bytes() == data
