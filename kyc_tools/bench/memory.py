"""`kyc-edge bench memory`: where the daemon's resident memory goes (issue 17; docs/performance.md "Memory").

    kyc-edge bench memory --model-set int8 --models-dir models/store --frames ../shared/data/blink/demo_old.mp4

Each part runs in a fresh `python` child with the daemon's malloc settings (device.memory.MALLOC_ENV, as
the systemd unit sets them) and reads its own /proc/self/status: VmRSS and its split into RssAnon (heap,
arenas, packed weights: what only RAM holds) and RssFile (mapped libraries and model files: clean pages).

- imports: the daemon's heavy imports one after the other, in the order the daemon makes them (cumulative;
  each row's delta is what that import added on top of the ones before it);
- runtime: the first interpreter of the process (the detector), which also maps LiteRT's code and sets up
  XNNPACK once;
- models: each role of the model set, in a child that first loaded the detector (so the runtime's one-time
  cost is not in it), loaded as the daemon loads it (device.vision.runtime) and invoked once on zeros
  (XNNPACK's packed weights and its activation workspace are allocated by then);
- decoder: the replay camera's video decoder (device.camera.replay.VideoReader) after `--limit` frames
  (default 150), holding none of them: what OpenCV/FFmpeg keep (reference frames, a BGR buffer) and the
  code pages of the codec libraries; plus the size of one decoded frame.
Numbers only; nothing is written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_STATUS = r'''
def _st():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            d[k] = round(int(v.split()[0]) / 1024.0, 2)
    return d
'''

IMPORTS_CHILD = _STATUS + r'''
import importlib, json, sys
rows = [["python", _st()]]
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except ImportError as e:
        rows.append([m, None, str(e)[:80]])
        continue
    rows.append([m, _st()])
print(json.dumps(rows))
'''

MODEL_CHILD = _STATUS + r'''
import json, sys
import numpy as np
from device.vision.runtime import load_interpreter
def run(it):
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
s0 = _st()
warm = load_interpreter(sys.argv[1], 1)
run(warm)
s1 = _st()
out = {"runtime": [s0, s1]}
if len(sys.argv) > 2:
    it = load_interpreter(sys.argv[2], int(sys.argv[3]))
    run(it)
    out["model"] = [s1, _st()]
print(json.dumps(out))
'''

DECODER_CHILD = _STATUS + r'''
import json, sys
import cv2
from device.camera.replay import VideoReader
s0 = _st()
r = VideoReader(sys.argv[1])
n, frame_mb = 0, None
while n < int(sys.argv[2]):
    got = r.read()
    if got is None:
        break
    frame_mb = round(got[0].nbytes / 2**20, 2)
    del got
    n += 1
s1 = _st()
r.release()
print(json.dumps({"frames": n, "frame_mb": frame_mb, "open_and_decode": [s0, s1]}))
'''

# the daemon's heavy imports, in the order `kyc-edge run` makes them (not jsonschema nor cryptography any
# more: device.schemacheck validates, device.ed25519 signs through libcrypto)
IMPORTS = ("numpy", "device.ed25519", "sqlite3",
           "paho.mqtt.client", "cv2", "ai_edge_litert.interpreter", "systemd.daemon", "device.daemon",
           "device.vision.suite", "device.link.mqtt", "device.fleet.agent")


def _child(code: str, *args: str) -> dict | list:
    from kyc_tools.bench.frame import daemon_env
    env = daemon_env(dict(os.environ))
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"memory child failed: {r.stderr[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _delta(a: dict, b: dict) -> dict:
    return {"rss": round(b["VmRSS"] - a["VmRSS"], 1), "anon": round(b["RssAnon"] - a["RssAnon"], 1),
            "file": round(b["RssFile"] - a["RssFile"], 1)}


def imports_table() -> list[dict]:
    rows = _child(IMPORTS_CHILD, *IMPORTS)
    out, prev = [], None
    for row in rows:
        name, st = row[0], row[1]
        if st is None:
            out.append({"import": name, "missing": row[2]})
            continue
        out.append({"import": name, "rss_mb": st["VmRSS"], "anon_mb": st["RssAnon"], "file_mb": st["RssFile"],
                    **({"added_mb": _delta(prev, st)} if prev else {})})
        prev = st
    return out


def models_table(models_dir: Path, model_set: str, threads: int = 1) -> dict:
    from device import models as models_mod
    paths = models_mod.resolve(models_dir, model_set)
    det = str(paths["detector"])
    rt = _child(MODEL_CHILD, det)["runtime"]
    out = {"runtime_first_interpreter_mb": _delta(*rt), "models_mb": {}, "model_files": {}}
    for role, p in paths.items():
        got = _child(MODEL_CHILD, det, str(p), str(threads))
        out["models_mb"][role] = _delta(*got["model"])
        out["model_files"][role] = {"file": p.name, "size_mb": round(p.stat().st_size / 2**20, 2)}
    out["models_total_mb"] = {k: round(sum(m[k] for m in out["models_mb"].values()), 1) for k in ("rss", "anon", "file")}
    return out


def decoder_table(video: Path, frames: int) -> dict:
    got = _child(DECODER_CHILD, str(video), str(frames))
    return {"frames_decoded": got["frames"], "frame_mb": got["frame_mb"],
            "decoder_held_mb": _delta(*got["open_and_decode"])}


def run(args) -> dict:
    from device.memory import MALLOC_ENV
    from kyc_tools.bench.frame import BLINK_VIDEO, default_models_dir
    models_dir = Path(args.models_dir) if getattr(args, "models_dir", None) else default_models_dir()
    model_set = getattr(args, "model_set", None) or "int8"
    video = Path(args.frames) if getattr(args, "frames", None) else BLINK_VIDEO
    out = {"bench": "memory", "malloc_env": dict(MALLOC_ENV), "model_set": model_set, "models_dir": str(models_dir),
           "imports": imports_table(), "models": models_table(models_dir, model_set, int(getattr(args, "threads", 1) or 1))}
    if video.is_file():
        out["decoder"] = decoder_table(video, int(getattr(args, "limit", 0) or 150))
    else:
        out["decoder"] = None
        out["decoder_why"] = f"{video} is not a video file"
    return out
