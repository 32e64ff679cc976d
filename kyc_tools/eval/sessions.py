"""Session-level attack and genuine runs through the real liveness flow (tracker + challenges + decide).

    kyc-edge eval sessions [--nuaa ../shared/data/nuaa-train] [--blink ../shared/data/blink/demo_old.mp4]
                           [--src-fps 20] [--model-dir DIR] [--plot out.png]

Attacks: every NUAA print sequence (subject + glasses + session + pos = one attempt, frames in
picNo order, t = picNo / --src-fps: NUAA was captured at 20 fps and the shared copy keeps every 2nd
frame) is replayed through one FaceTracker and then, for every challenge sequence the configured
draw can produce (for the default pool with count 2: blink+turn_left, blink+turn_right, each in both
orders), through a fresh ChallengeRunner and decide() with the default LivenessConfig. The
observations do not depend on the challenges, so one tracker pass per attempt serves every
sequence. An attempt passes only if decide() says ok. Target: 0 passes.

Also reported, to show what each layer contributes: passes with PAD off (active only) and with
the challenges off (passive only, PAD fused score >= threshold).

Genuine: the blink video (one person, live) with challenges = [blink] must pass; it is also run
with every 2-challenge sequence for information (it holds one clear left turn and a right turn
that stays below 18 deg, so `turn_right` is expected to time out there).

The NUAA live sequences are replayed too, with passive PAD only (the subjects were not asked to blink
or turn), as a session-level BPCER of the passive layer.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
from pathlib import Path

import cv2

from device.config import LivenessConfig
from kyc_tools.eval.common import Progress, emit_json
from device.liveness.challenges import TURNS, ChallengeRunner
from device.liveness.decision import decide, fuse_pad


def nuaa_sequences(root: Path, label: str = "print") -> list[tuple[str, list[tuple[int, Path]]]]:
    root = Path(root)
    seqs: dict[str, list] = {}
    with open(root / "labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["label"] != label:
                continue
            key = f"{r['label']}/{r['subject']}_g{r['glasses']}_s{r['session']}_p{r['pos']}"
            seqs.setdefault(key, []).append((int(r["pic"]), root / r["path"]))
    return [(k, sorted(v)) for k, v in sorted(seqs.items())]


def possible_sequences(cfg: LivenessConfig) -> list[list[str]]:
    """Every ordered sequence ChallengeRunner's draw can produce for cfg."""
    pool = list(dict.fromkeys(cfg.challenges))
    n = min(cfg.count, len(pool))
    out = []
    for seq in itertools.permutations(pool, n):
        if n >= 2 and "blink" in pool and any(c in TURNS for c in pool):
            if "blink" not in seq or not any(c in TURNS for c in seq):
                continue
        out.append(list(seq))
    return out


def observe_all(tracker, frames) -> list:
    """frames: [(t, rgb_loader)] -> observations (landmarks kept; nothing else retained)."""
    tracker.reset()
    obs = [tracker.observe(load(), t) for t, load in frames]
    return obs


def replay(obs_list, tracker_stats: dict, seq: list[str], cfg: LivenessConfig, rng=None):
    """Run one challenge sequence over recorded observations -> (decision, runner, pad_scores used).
    rng draws the random pauses before the prompts (default: a fixed seed, so runs repeat)."""
    import random
    runner = ChallengeRunner(cfg, sequence=seq, rng=rng or random.Random(0))
    started = False
    pads = []
    for o in obs_list:
        if o.has_face and o.pad_real is not None:
            pads.append(o.pad_real)
        if not started:
            if o.has_face:
                runner.start(o.t)
                started = True
            else:
                continue
        runner.update(o)
        if runner.done:
            break
    if started and not runner.done and obs_list:
        # the recording ended: give the current challenge its full timeout (no more evidence can come)
        last_t = obs_list[-1].t
        runner.update(dataclasses.replace(obs_list[-1], t=last_t + cfg.challenge_timeout_s + 1e-3,
                                          landmarks=None, blink=None))
    face_lost = tracker_stats["max_gap_s"] > cfg.face_lost_s
    d = decide(runner, pads, tracker_stats["faces_seen_max"], face_lost, None, cfg)
    return d, runner, pads


def _stats(tr) -> dict:
    return {"max_gap_s": tr.max_gap_s, "faces_seen_max": tr.faces_seen_max}


def run_sessions(tracker, nuaa: Path | None, blink: Path | None, cfg: LivenessConfig,
                 src_fps: float = 20.0, progress: bool = True, live: bool = True) -> dict:
    from kyc_tools.eval.liveness import video_frames
    seqs_cfg = possible_sequences(cfg)
    out: dict = {"config": {"challenges": list(cfg.challenges), "count": cfg.count,
                            "challenge_timeout_s": cfg.challenge_timeout_s, "turn_yaw_deg": cfg.turn_yaw_deg,
                            "pad_threshold": cfg.pad_threshold},
                 "challenge_sequences": seqs_cfg}
    attempts = nuaa_sequences(nuaa, "print") if nuaa else []
    lives = nuaa_sequences(nuaa, "live") if (nuaa and live) else []
    total = sum(len(f) for _, f in attempts) + sum(len(f) for _, f in lives)
    bvid = video_frames(Path(blink)) if blink else []
    total += len(bvid)
    bar = Progress(total, "eval sessions") if progress else None
    no_pad = dataclasses.replace(cfg, pad_enabled=False)

    def frames_of(items):
        return [(pic / src_fps, (lambda p: (lambda: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)))(p))
                for pic, p in items]

    def tick(frames):
        for f in frames:
            if bar:
                bar.update()
            yield f

    if attempts:
        per = []
        passes = {"full": 0, "active_only": 0, "passive_only": 0}
        reasons: dict[str, int] = {}
        for key, items in attempts:
            obs = observe_all(tracker, list(tick(frames_of(items))))
            st = _stats(tracker)
            row = {"attempt": key, "frames": len(obs), "frames_with_face": sum(o.has_face for o in obs),
                   "blinks": len(tracker.blinks), "pad_fused": fuse_pad(tracker.pad_scores),
                   "pad_scored_frames": len(tracker.pad_scores), "yaw_range": _range([o.yaw for o in obs if o.has_face]),
                   "sequences": {}}
            any_full = any_active = False
            for seq in seqs_cfg:
                d, runner, _ = replay(obs, st, seq, cfg)
                da, runner_a, _ = replay(obs, st, seq, no_pad)
                row["sequences"]["+".join(seq)] = {"ok": d.ok, "reasons": d.reasons,
                                                   "challenges_passed": d.challenges_passed,
                                                   "active_only_ok": da.ok}
                any_full |= d.ok
                any_active |= da.ok
                for r in d.reasons:
                    reasons[r] = reasons.get(r, 0) + 1
            passive_ok = row["pad_fused"] is not None and row["pad_fused"] >= cfg.pad_threshold
            passes["full"] += int(any_full)
            passes["active_only"] += int(any_active)
            passes["passive_only"] += int(passive_ok)
            per.append(row)
        out["print_attacks"] = {
            "attempts": len(attempts), "attempt_sequence_runs": len(attempts) * len(seqs_cfg),
            "passes": passes["full"],
            "passes_active_only_pad_off": passes["active_only"],
            "passes_passive_only_no_challenges": passes["passive_only"],
            "reason_counts_over_runs": reasons,
            "attempts_with_any_blink": sum(1 for r in per if r["blinks"]),
            "attempts_with_any_challenge_passed": sum(
                1 for r in per if any(v["challenges_passed"] for v in r["sequences"].values())),
            "per_attempt": per}
    if lives:
        ok = 0
        fused = []
        for key, items in lives:
            observe_all(tracker, list(tick(frames_of(items))))
            f = fuse_pad(tracker.pad_scores)
            fused.append(f)
            ok += int(f is not None and f >= cfg.pad_threshold)
        out["nuaa_live_passive"] = {"sequences": len(lives), "passive_pass": ok,
                                    "session_bpcer_passive": 1 - ok / len(lives),
                                    "pad_fused_min": min((x for x in fused if x is not None), default=None)}
    if bvid:
        obs = observe_all(tracker, list(tick(bvid)))
        st = _stats(tracker)
        gen = {}
        for seq in [["blink"]] + seqs_cfg:
            d, runner, _ = replay(obs, st, seq, cfg)
            gen["+".join(seq)] = {"ok": d.ok, "reasons": d.reasons, "liveness_score": d.liveness_score,
                                  "spoof_score": d.spoof_score,
                                  "passed_at": [None if r.t_end is None else round(r.t_end - obs[0].t, 3)
                                                for r in runner.results]}
        out["genuine_blink_video"] = {"blink_only_pass": gen["blink"]["ok"], "runs": gen,
                                      "pad_fused": fuse_pad(tracker.pad_scores),
                                      "blinks_found": len(tracker.blinks)}
    if bar:
        bar.close()
    out["timings_ms"] = tracker.timing_summary()
    return out


def _range(v):
    return [float(min(v)), float(max(v))] if v else None


def plot(path, res: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per = res.get("print_attacks", {}).get("per_attempt", [])
    fig, ax = plt.subplots(figsize=(8, 4))
    vals = [r["pad_fused"] if r["pad_fused"] is not None else 0 for r in per]
    ax.bar(range(len(vals)), vals, color="tab:red", label="print attempts: fused PAD real-score")
    g = res.get("genuine_blink_video", {}).get("pad_fused")
    if g is not None:
        ax.axhline(g, color="tab:green", label=f"genuine blink video ({g:.3f})")
    ax.axhline(res["config"]["pad_threshold"], color="k", ls="--", label="pad_threshold")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("NUAA print attempt")
    ax.set_ylabel("fused p_real")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    from kyc_tools.eval.commands_liveness import make_tracker, resolve_model_dir
    md = resolve_model_dir(args.model_dir)
    tracker = make_tracker(md, pad=True, iris=not args.no_iris, threads=args.threads)
    cfg = LivenessConfig()
    res = run_sessions(tracker, Path(args.nuaa) if args.nuaa else None, Path(args.blink) if args.blink else None,
                       cfg, args.src_fps, live=not args.no_live)
    from kyc_tools.eval.commands_liveness import model_files
    res = {"command": "eval sessions", "model_dir": str(md),
           "models": {k: v.name for k, v in model_files(md).items()}, **res}
    if args.plot:
        plot(args.plot, res)
        res["plot"] = str(args.plot)
    if not args.per_attempt and "print_attacks" in res:
        res["print_attacks"] = {k: v for k, v in res["print_attacks"].items() if k != "per_attempt"}
    emit_json(res, digits=4)
    return 0
