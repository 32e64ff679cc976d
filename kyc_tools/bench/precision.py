"""`kyc-edge bench --precisions float,weight_only,full_int8`: every model stage at every precision, one run.

What it does, in one process:
  1. runs the float suite (the daemon's own classes) over the frames and records every input tensor each
     model gets there (ModelRuntime.set), spread over the video: the detector's letterboxed frames,
     FaceMesh crops, iris eye crops, both PAD crops, and the embedder's aligned best crops;
  2. for each stage, opens the float file and each precision's build of it (weight-only and full-int8
     candidate files scripts/build-models leaves in OUT/work/) and invokes them on the same recorded
     inputs, interleaved round-robin (float, weight-only, full-int8, float, ...), so a busy machine
     slows all of them alike;
  3. reports per stage and precision the median / p95 thread CPU time (1 thread: XNNPACK runs in the
     calling thread, so other processes' time slices are not in it) and wall time, the speed-up against
     float, the file's sha256 prefix, and how many XNNPACK partitions the delegate made (1 = the whole
     graph runs in XNNPACK; more = ops XNNPACK does not take run in the TFLite reference kernels between).

Only the recorded tensors are held in memory, only for the run; nothing is written.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import numpy as np

PRECISIONS = ("float", "weight_only", "full_int8")
# stage -> (manifest role, float file)
STAGES = {
    "detect": ("detector", "face_detection_short_range.tflite"),
    "landmarks": ("landmarks", "face_landmark.tflite"),
    "iris": ("iris", "iris_landmark.tflite"),
    "pad_v2": ("antispoof_v2", "minifasnet_v2_2.7_80x80.tflite"),
    "pad_v1se": ("antispoof_v1se", "minifasnet_v1se_4.0_80x80.tflite"),
    "embed": ("embedder", "mobilefacenet.tflite"),
}
# precision -> the recipe scripts/build-models names its candidate files after ("mixed": static a8w8 with
# the sensitive ops float, scripts/build-models MIXED; built for the roles listed there only)
RECIPE = {"weight_only": "weight_only", "full_int8": "static", "mixed": "static_mixed"}


def variant_path(variants_dir: Path, float_file: str, precision: str) -> Path:
    return Path(variants_dir) / f"{Path(float_file).stem}_{RECIPE[precision]}.tflite"


def _sha8(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()[:12]


def partitions(path: Path) -> dict:
    """Ops of the graph after the XNNPACK delegate was applied: DELEGATE = XNNPACK partitions."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ops = it._get_ops_details()
    c = Counter(o["op_name"] for o in ops)
    dtype = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    compute = [o for o in ops if o["op_name"] not in ("DELEGATE", "QUANTIZE", "DEQUANTIZE")]
    # what runs in float: a compute op whose first input is a float32 tensor (int8 ops take int8)
    flt = Counter(o["op_name"] for o in compute if len(o["inputs"]) and dtype.get(int(o["inputs"][0])) == np.float32)
    return {"xnnpack_partitions": c.get("DELEGATE", 0), "ops": dict(c),
            "float_compute_ops": dict(flt), "int8_compute_ops": len(compute) - sum(flt.values())}


def record_inputs(frames: Path, limit: int, models_dir: Path, per_stage: int = 24) -> dict[str, list[np.ndarray]]:
    """The float suite over the frames; the input tensors each model got, by float file name."""
    from kyc_tools.bench.frame import build_suite, iter_frames
    from device.vision import runtime as rt_mod
    seen: dict[str, list[np.ndarray]] = {}
    orig = rt_mod.ModelRuntime.set

    def rec(self, name, value):
        seen.setdefault(self.path.name, []).append(np.array(value, copy=True))
        return orig(self, name, value)
    rt_mod.ModelRuntime.set = rec
    try:
        _, suite = build_suite(models_dir, "float", 1)
        tr = suite.tracker
        best = suite.best_frames()
        crops = []
        for rgb, t, _, _ in iter_frames(frames, limit):
            obs = tr.observe(rgb, t)
            c = suite.quality_crop(rgb, obs, best)
            if c is not None and len(crops) < per_stage:
                crops.append(c)
        for i in range(0, len(crops) - 1, 2):
            suite.embedder.embed(crops[i], crops[i + 1])
        suite.reset()          # zero-fills every interpreter input (privacy), as after a session
        for c in crops:
            c.fill(0)
    finally:
        rt_mod.ModelRuntime.set = orig
    out = {}
    for name, xs in seen.items():
        xs = [x for x in xs if np.any(x)]          # the privacy wipe sets zeros; not a real input
        if len(xs) > per_stage:
            xs = [xs[i] for i in np.linspace(0, len(xs) - 1, per_stage).round().astype(int)]
        out[name] = xs
    return out


def compare(frames: Path, limit: int, models_dir: Path, variants_dir: Path, rounds: int = 5,
            precisions=PRECISIONS, per_stage: int = 24) -> dict:
    from ai_edge_litert.interpreter import Interpreter
    inputs = record_inputs(frames, limit, models_dir, per_stage)
    res: dict = {"what": ("per stage and precision: ms per invoke on the inputs the float suite gave that model "
                          "on these frames; 1 thread; cpu = thread CPU time, wall = perf_counter; interleaved "
                          "round-robin across precisions"),
                 "variants_dir": str(variants_dir), "rounds": rounds, "stages": {}}
    for stage, (role, ffile) in STAGES.items():
        xs = inputs.get(ffile)
        if not xs:
            res["stages"][stage] = {"error": "no inputs recorded (model not in the suite?)"}
            continue
        paths = {}
        for pr in precisions:
            p = (Path(models_dir) / ffile) if pr == "float" else variant_path(variants_dir, ffile, pr)
            if p.is_file():
                paths[pr] = p
        its = {}
        for pr, p in paths.items():
            it = Interpreter(model_path=str(p), num_threads=1)
            it.allocate_tensors()
            its[pr] = it
        cpu = {pr: [] for pr in its}
        wall = {pr: [] for pr in its}
        outs = {pr: [] for pr in its}
        for r in range(rounds + 1):
            for x in xs:
                for pr, it in its.items():
                    d = it.get_input_details()[0]
                    it.set_tensor(d["index"], x)
                    w0, c0 = time.perf_counter(), time.thread_time()
                    it.invoke()
                    c1, w1 = time.thread_time(), time.perf_counter()
                    if r == 0:              # warm-up round; keep its outputs for the agreement figure
                        o = max(it.get_output_details(), key=lambda d: int(np.prod(d["shape"])))
                        outs[pr].append(np.array(it.get_tensor(o["index"]), np.float64).ravel())
                        continue
                    cpu[pr].append((c1 - c0) * 1000.0)
                    wall[pr].append((w1 - w0) * 1000.0)
        row = {"inputs": len(xs)}
        f_cpu = float(np.median(cpu["float"])) if "float" in cpu else None
        for pr in its:
            e = {"file": paths[pr].name, "sha256_12": _sha8(paths[pr]),
                 "cpu_ms_median": round(float(np.median(cpu[pr])), 3),
                 "cpu_ms_p95": round(float(np.percentile(cpu[pr], 95)), 3),
                 "wall_ms_median": round(float(np.median(wall[pr])), 3),
                 **partitions(paths[pr])}
            if f_cpu and pr != "float":
                e["speedup_vs_float_cpu"] = round(f_cpu / e["cpu_ms_median"], 3)
                diff = [float(np.abs(a - b).max()) for a, b in zip(outs["float"], outs[pr])]
                e["largest_output_max_abs_diff_vs_float"] = round(float(np.max(diff)), 5)
            row[pr] = e
        for pr in precisions:
            if pr not in its:
                row[pr] = {"missing": str(variant_path(variants_dir, ffile, pr)) if pr != "float" else ffile}
        res["stages"][stage] = row
    return res
