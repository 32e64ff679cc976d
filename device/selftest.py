"""Non-biometric model self-test vectors for fleet bundles.

A vector feeds a model deterministic synthetic tensors (bytes from SHAKE-256 of a seed, the same
on every platform; no faces, no images) and records its outputs: for float outputs a strided
sample of 16 values plus the mean absolute value, compared with a tolerance (runtimes and CPUs
differ in the last bits); for integer outputs the sha256 of the bytes.

This module needs a TFLite runtime (device.vision.runtime) and is therefore kept out of
device/fleet (import rule). The fleet CLI runs it as a subprocess (`python -m device.selftest
compute --models DIR`), and the daemon's `self_test` callable is `bundle_self_test(cfg)`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

SAMPLE = 16
ATOL, RTOL = 2e-3, 2e-3


class SelfTestError(Exception):
    pass


def _inputs(interp, seed: str, model: str) -> list[np.ndarray]:
    out = []
    for i, d in enumerate(interp.get_input_details()):
        shape = [int(x) for x in d["shape"]]
        n = int(np.prod(shape)) if shape else 1
        raw = np.frombuffer(hashlib.shake_256(f"{seed}:{model}:{i}".encode()).digest(n), dtype=np.uint8)
        dt = np.dtype(d["dtype"])
        if dt == np.uint8:
            arr = raw.copy()
        elif dt == np.int8:
            arr = raw.view(np.int8).copy()
        elif dt.kind == "f":
            arr = (raw.astype(np.float32) / 127.5 - 1.0).astype(dt)
        else:
            arr = (raw % 2).astype(dt)
        out.append(arr.reshape(shape))
    return out


def _run(path: Path, seed: str, threads: int = 1) -> tuple[list, list[np.ndarray]]:
    from device.vision.runtime import load_interpreter
    it = load_interpreter(path, threads)
    ins = _inputs(it, seed, path.name)
    for d, arr in zip(it.get_input_details(), ins):
        it.set_tensor(d["index"], arr)
    it.invoke()
    outs = [np.array(it.get_tensor(d["index"])) for d in it.get_output_details()]
    return [[list(a.shape), str(a.dtype)] for a in ins], outs


def _describe(a: np.ndarray) -> dict:
    flat = a.reshape(-1)
    rec = {"shape": list(a.shape), "dtype": str(a.dtype)}
    if a.dtype.kind == "f":
        stride = max(1, flat.size // SAMPLE)
        rec.update(stride=stride, sample=[float(f"{v:.6g}") for v in flat[::stride][:SAMPLE].astype(np.float64)],
                   mean_abs=float(f"{float(np.mean(np.abs(flat.astype(np.float64)))):.6g}"),
                   atol=ATOL, rtol=RTOL)
    else:
        rec["sha256"] = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    return rec


def compute_vectors(model_dir: Path, names: list[str] | None = None, seed: str | None = None,
                    threads: int = 1) -> list[dict]:
    seed = seed or os.urandom(8).hex()
    names = names or sorted(p.name for p in Path(model_dir).glob("*.tflite"))
    vecs = []
    for name in names:
        ins, outs = _run(Path(model_dir) / name, seed, threads)
        vecs.append({"model": name, "seed": seed, "inputs": ins, "outputs": [_describe(o) for o in outs]})
    return vecs


def check_vector(model_dir: Path, v: dict, threads: int = 1) -> None:
    name = v.get("model", "")
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise SelfTestError("vector: bad model name")
    ins, outs = _run(Path(model_dir) / name, str(v.get("seed", "")), threads)
    if v.get("inputs") is not None and ins != v["inputs"]:
        raise SelfTestError(f"{name}: input shapes/dtypes differ from the vector")
    want = v.get("outputs", [])
    if len(want) != len(outs):
        raise SelfTestError(f"{name}: {len(outs)} outputs, vector expects {len(want)}")
    for i, (w, a) in enumerate(zip(want, outs)):
        if list(a.shape) != w.get("shape") or str(a.dtype) != w.get("dtype"):
            raise SelfTestError(f"{name}: output {i} shape/dtype differs")
        if "sha256" in w:
            if hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() != w["sha256"]:
                raise SelfTestError(f"{name}: output {i} hash differs")
            continue
        flat = a.reshape(-1).astype(np.float64)
        got = flat[::int(w["stride"])][:SAMPLE]
        exp = np.asarray(w["sample"], dtype=np.float64)
        atol, rtol = float(w.get("atol", ATOL)), float(w.get("rtol", RTOL))
        if got.shape != exp.shape or not np.all(np.isfinite(got)) or \
                not np.allclose(got, exp, atol=atol, rtol=rtol):
            raise SelfTestError(f"{name}: output {i} outside tolerance")
        ma = float(np.mean(np.abs(flat)))
        if not np.isclose(ma, float(w["mean_abs"]), atol=atol, rtol=rtol):
            raise SelfTestError(f"{name}: output {i} mean outside tolerance")


def run_bundle(bundle_dir: Path, cfg=None, threads: int = 1) -> int:
    """Load every model in bundle_dir/models, run the manifest's vectors, validate the merged
    config (when cfg is given). Returns the number of vectors run; raises on any failure."""
    from device.vision.runtime import load_interpreter
    bundle_dir = Path(bundle_dir)
    mdir = bundle_dir / "models"
    for p in sorted(mdir.glob("*.tflite")):
        load_interpreter(p, threads)
    env = json.loads((bundle_dir / "manifest.json").read_text())
    vectors = (env.get("manifest", env).get("self_test") or {}).get("vectors", [])
    for v in vectors:
        check_vector(mdir, v, threads)
    if cfg is not None:
        from device.fleet.slots import merged_config
        merged_config(cfg, bundle_dir)       # raises ConfigError
    return len(vectors)


def bundle_self_test(cfg, threads: int = 1):
    """The daemon's `self_test` callable for UpdateAgent."""
    return lambda bundle_dir: run_bundle(Path(bundle_dir), cfg, threads)


def canned_verification(vision, cfg) -> float:
    """The daemon's `health_probe` after a switch: one verification through the live pipeline on
    fabricated inputs (SHAKE-256 noise frames and a fabricated aligned face; no real person).
    Every stage must run and return finite values; the fabricated face must match itself at the
    live config's threshold. Returns the similarity; raises SelfTestError (or the model's error)."""
    def noise(shape, tag):
        n = int(np.prod(shape))
        return np.frombuffer(hashlib.shake_256(tag.encode()).digest(n), np.uint8).reshape(shape).copy()
    frame = noise((480, 640, 3), "kyc-edge-probe-frame")
    try:
        for i in range(2):
            vision.observe(frame, float(i) / 15)
        vision.card_face(noise((126, 102, 3), "kyc-edge-probe-card"))
        yy, xx = np.mgrid[0:112, 0:112]
        face = np.stack([(xx * 2) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        m = vision.match(face, [face.copy()], face.copy(), face.copy())
        sim, ident = m.similarity, m.identity
        m.wipe()
    finally:
        vision.reset()
    if not (np.isfinite(sim) and ident is not None and np.isfinite(ident)):
        raise SelfTestError("probe: non-finite similarity")
    if sim < cfg.match.threshold or sim < 0.99:
        raise SelfTestError(f"probe: fabricated face does not match itself ({sim:.3f} < {cfg.match.threshold})")
    return float(sim)


def software_self_test(config_path: str | None, expect_version: str | None) -> dict:
    """A new software slot tests itself (device/fleet/software.py runs this with the slot's own
    interpreter): the code imported is the slot's and has the expected version, the device's config
    validates under the new code, every model of the live model set loads and one synthetic frame
    goes through the whole pipeline (canned_verification)."""
    import device
    from device import config as config_mod
    from device.fleet import slots
    from device.vision.suite import VisionSuite
    here = Path(device.__file__).resolve()
    if not here.is_relative_to(Path(sys.prefix).resolve()):
        raise SelfTestError(f"imported {here}, not the slot's own code under {sys.prefix}")
    if expect_version and device.__version__ != expect_version:
        raise SelfTestError(f"slot runs {device.__version__}, bundle says {expect_version}")
    cfg = config_mod.load(config_path) if config_path else config_mod.Config()
    bundle = slots.active_bundle(cfg.device.state_dir)
    cfg = slots.merged_config(cfg, bundle)
    vision = VisionSuite.create(cfg, slots.model_dir(bundle, config_mod.models_dir(cfg)))
    sim = canned_verification(vision, cfg)
    return {"version": device.__version__, "models": len(vision.versions), "probe_similarity": round(sim, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.selftest")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compute", help="print self-test vectors (JSON) for models")
    c.add_argument("--models", required=True)
    c.add_argument("--only", action="append", help="model file names (default: every *.tflite)")
    c.add_argument("--seed")
    r = sub.add_parser("check", help="self-test a staged bundle directory")
    r.add_argument("bundle_dir")
    w = sub.add_parser("software", help="self-test of this interpreter's kyc-edge (a new software slot)")
    w.add_argument("--config")
    w.add_argument("--expect-version")
    a = p.parse_args(argv)
    if a.cmd == "software":
        try:
            print(json.dumps(software_self_test(a.config, a.expect_version)))
        except Exception as e:  # noqa: BLE001
            print(f"software self-test failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "compute":
        print(json.dumps(compute_vectors(Path(a.models), a.only, a.seed)))
        return 0
    try:
        n = run_bundle(Path(a.bundle_dir))
    except Exception as e:  # noqa: BLE001
        print(f"self-test failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"self-test ok: {n} vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
