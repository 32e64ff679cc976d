"""What the challenge timing rule costs genuine clips, and what it does to replays.

    python -m kyc_tools.eval.timing_cost [--draws 10] [--model-dir DIR] [--no-sessions-dev]

Clips: the blink video, the head-pose clips, and every clip of ../shared/data/sessions-dev
(manifest.csv: genuine and replay). Each clip is observed once by the tracker (PAD, iris); the
observations are then fed to a fresh LivenessCheck, as Session does (kyc_tools.eval.sessions
.replay) for every challenge sequence the default draw can produce, once with the timing rule off
(no pause, no response window) and `--draws` times with it on (each time other random pauses, seeded
0..draws-1). Per clip: the share of (sequence, pause draw) runs that pass, and whether at least one
passes ("served" for a genuine clip; "passes" for an attack), with the timing rule off and on.

None of these clips was recorded to prompts, so the "on" figures are the worst case for a genuine
customer (a customer follows the prompts; these people turned or blinked when they happened to) and
what a replayed recording gets (it cannot follow the prompts either).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import random
import sys
from pathlib import Path

NO_TIMING = dict(prompt_pause_min_s=0.0, prompt_pause_max_s=0.0, response_window_s=0.0)


def clip_runs(rec, cfg, seqs, draws: int) -> dict:
    from kyc_tools.eval.sessions import replay
    off = dataclasses.replace(cfg, **NO_TIMING)
    res = {"off": [], "on": []}
    reasons_on: dict[str, int] = {}
    for seq in seqs:
        d, _ = replay(rec, seq, off)
        res["off"].append(d.ok)
        for k in range(draws):
            d, _ = replay(rec, seq, cfg, rng=random.Random(k))
            res["on"].append(d.ok)
            for r in d.reasons:
                reasons_on[r] = reasons_on.get(r, 0) + 1
    return {"share_off": sum(res["off"]) / len(res["off"]), "any_off": any(res["off"]),
            "share_on": sum(res["on"]) / len(res["on"]), "any_on": any(res["on"]),
            "runs_on": len(res["on"]), "reasons_on": reasons_on}


def main(argv=None) -> int:
    from device.config import LivenessConfig
    from kyc_tools.eval.commands_liveness import make_tracker, resolve_model_dir
    from kyc_tools.paths import shared_data_dir
    from kyc_tools.eval.common import Progress, emit_json
    from kyc_tools.eval.liveness import clips, video_frames
    from kyc_tools.eval.sessions import observe_all, possible_sequences
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--model-dir")
    ap.add_argument("--no-sessions-dev", action="store_true")
    a = ap.parse_args(argv)
    data = shared_data_dir()
    tr = make_tracker(resolve_model_dir(a.model_dir), pad=True, iris=True)
    cfg = LivenessConfig()
    seqs = possible_sequences(cfg)
    jobs = [("genuine", "blink/demo_old.mp4", lambda: video_frames(data / "blink" / "demo_old.mp4"))]
    for name, fr in clips(data / "headpose"):
        jobs.append(("genuine", f"headpose/{name}", (lambda f: (lambda: f))(fr)))
    if not a.no_sessions_dev:
        with open(data / "sessions-dev" / "manifest.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                p = data / "sessions-dev" / r["path"]
                jobs.append((r["label"], f"sessions-dev/{r['subject']}/{Path(r['path']).name}",
                             (lambda q: (lambda: video_frames(q)))(p)))
    out = {"command": "timing_cost", "draws": a.draws, "sequences": ["+".join(s) for s in seqs],
           "timing": {k: getattr(cfg, k) for k in ("prompt_pause_min_s", "prompt_pause_max_s",
                                                  "response_window_s", "response_min_latency_s")},
           "clips": {}}
    bar = Progress(len(jobs), "timing cost")
    for label, key, frames in jobs:
        rec = observe_all(tr, frames())
        out["clips"][key] = {"label": label, **clip_runs(rec, cfg, seqs, a.draws)}
        bar.update()
    bar.close()
    summ = {}
    for v in out["clips"].values():
        s = summ.setdefault(v["label"], {"clips": 0, "any_off": 0, "any_on": 0, "share_off": 0.0, "share_on": 0.0})
        s["clips"] += 1
        s["any_off"] += v["any_off"]
        s["any_on"] += v["any_on"]
        s["share_off"] += v["share_off"]
        s["share_on"] += v["share_on"]
    for s in summ.values():
        s["share_off"] /= s["clips"]
        s["share_on"] /= s["clips"]
    out["summary"] = summ
    emit_json(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
