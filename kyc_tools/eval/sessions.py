"""Session-level attack and genuine runs through the shipped liveness check (device.liveness.check).

    kyc-edge eval sessions [--nuaa ../shared/data/nuaa-train] [--blink ../shared/data/blink/demo_old.mp4]
                           [--src-fps 20] [--model-dir DIR] [--plot out.png]

Attacks: every NUAA print sequence (subject + glasses + session + pos = one attempt, frames in
picNo order, t = picNo / --src-fps: NUAA was captured at 20 fps and the shared copy keeps every 2nd
frame) is observed once by one FaceTracker (plus the session's quality gate, device.vision.quality.gate,
which says whether a frame could be matched), and the recorded observations are then fed, for every
challenge sequence the configured draw can produce (for the default pool with count 2:
blink+turn_left, blink+turn_right, each in both orders), to a fresh `LivenessCheck` -- the object
Session drives at the counter, with the default LivenessConfig and SessionConfig -- exactly as
Session does: frame by frame until the check is done or a continuity rule (one face, face lost, no
face, see device/liveness/rules.py) ends it, then `finish()` and `result()`. Nothing here
re-implements a rule. The observations do not depend on the challenges, so one tracker pass per
attempt serves every sequence. An attempt passes only if the check says ok. Target: 0 passes.
(Matching is not part of this evaluation: there is no card; the start/end identity rule is not
checked, and `quality_too_low`, the matching stage's "no frame to match", is counted separately.)

Also reported, to show what each layer contributes: passes with PAD off (active only) and with
the challenges off (passive only: the fused PAD score of all frames >= threshold).

Genuine: the blink video (one person, live) with challenges = [blink] must pass; it is also run
with every 2-challenge sequence for information (it holds one clear left turn and a right turn
that stays below 18 deg, so `turn_right` is expected to time out there).

The NUAA live sequences are replayed too, with passive PAD only (the subjects were not asked to blink
or turn), as a session-level BPCER of the passive layer.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import cv2

from device.config import LivenessConfig, SessionConfig
from device.liveness.challenges import possible_sequences as _possible
from device.liveness.check import LivenessCheck
from device.liveness.decision import fuse_pad
from device.vision.quality import gate
from kyc_tools.eval.common import Progress, emit_json


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
    return _possible(cfg.challenges, cfg.count)


def observe_all(tracker, frames, quality_cfg=None) -> list[tuple]:
    """frames: [(t, rgb_loader)] -> [(observation, passed the quality gate)] (no pixels retained)."""
    if quality_cfg is None:
        from device.config import QualityConfig
        quality_cfg = QualityConfig()
    tracker.reset()
    out = []
    for t, load in frames:
        rgb = load()
        o = tracker.observe(rgb, t)
        _, crop = gate(rgb, o, quality_cfg)
        if crop is not None:
            crop.fill(0)
        out.append((o, crop is not None))
    return out


def replay(recorded, seq: list[str], cfg: LivenessConfig, scfg: SessionConfig | None = None, rng=None):
    """Feed recorded observations to a fresh LivenessCheck as Session does -> (decision, check).
    rng draws the random pauses before the prompts (default: a fixed seed, so runs repeat)."""
    import random
    scfg = scfg or SessionConfig()
    check = LivenessCheck(cfg, face_wait_s=scfg.face_wait_s, hold_still_s=scfg.hold_still_s, sequence=seq,
                          rng=rng or random.Random(0))
    for o, good in recorded:
        if check.feed(o, good_frame=good).done:
            break
    check.finish()
    return check.result(None), check


def run_sessions(tracker, nuaa: Path | None, blink: Path | None, cfg: LivenessConfig,
                 src_fps: float = 20.0, progress: bool = True, live: bool = True,
                 scfg: SessionConfig | None = None, quality_cfg=None) -> dict:
    from kyc_tools.eval.liveness import video_frames
    from device.config import QualityConfig
    scfg = scfg or SessionConfig()
    quality_cfg = quality_cfg or QualityConfig()
    seqs_cfg = possible_sequences(cfg)
    out: dict = {"config": {"challenges": list(cfg.challenges), "count": cfg.count,
                            "challenge_timeout_s": cfg.challenge_timeout_s, "turn_yaw_deg": cfg.turn_yaw_deg,
                            "pad_threshold": cfg.pad_threshold, "face_lost_s": cfg.face_lost_s,
                            "face_wait_s": scfg.face_wait_s, "hold_still_s": scfg.hold_still_s},
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
        no_match_frame = 0
        for key, items in attempts:
            rec = observe_all(tracker, list(tick(frames_of(items))), quality_cfg)
            obs = [o for o, _ in rec]
            row = {"attempt": key, "frames": len(obs), "frames_with_face": sum(o.has_face for o in obs),
                   "frames_quality_ok": sum(g for _, g in rec),
                   "blinks": len(tracker.blinks), "pad_fused": fuse_pad(tracker.pad_scores),
                   "pad_scored_frames": len(tracker.pad_scores), "yaw_range": _range([o.yaw for o in obs if o.has_face]),
                   "sequences": {}}
            any_full = any_active = False
            for seq in seqs_cfg:
                d, check = replay(rec, seq, cfg, scfg)
                da, _ = replay(rec, seq, no_pad, scfg)
                row["sequences"]["+".join(seq)] = {"ok": d.ok, "reasons": d.reasons,
                                                   "challenges_passed": d.challenges_passed,
                                                   "frames_fed": check.frames,
                                                   "active_only_ok": da.ok}
                no_match_frame += int(d.ok and check.good_frames == 0)
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
            "passing_runs_without_a_frame_to_match": no_match_frame,
            "attempts_with_any_blink": sum(1 for r in per if r["blinks"]),
            "attempts_with_any_challenge_passed": sum(
                1 for r in per if any(v["challenges_passed"] for v in r["sequences"].values())),
            "per_attempt": per}
    if lives:
        ok = 0
        fused = []
        for key, items in lives:
            observe_all(tracker, list(tick(frames_of(items))), quality_cfg)
            f = fuse_pad(tracker.pad_scores)
            fused.append(f)
            ok += int(f is not None and f >= cfg.pad_threshold)
        out["nuaa_live_passive"] = {"sequences": len(lives), "passive_pass": ok,
                                    "session_bpcer_passive": 1 - ok / len(lives),
                                    "pad_fused_min": min((x for x in fused if x is not None), default=None)}
    if bvid:
        rec = observe_all(tracker, list(tick(bvid)), quality_cfg)
        t_first = rec[0][0].t if rec else 0.0
        gen = {}
        for seq in [["blink"]] + seqs_cfg:
            d, check = replay(rec, seq, cfg, scfg)
            gen["+".join(seq)] = {"ok": d.ok, "reasons": d.reasons, "liveness_score": d.liveness_score,
                                  "spoof_score": d.spoof_score, "frames_quality_ok": check.good_frames,
                                  "passed_at": [None if r.t_end is None else round(r.t_end - t_first, 3)
                                                for r in check.runner.results]}
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
    from device.config import from_dict
    base = from_dict({})
    cfg = base.liveness
    res = run_sessions(tracker, Path(args.nuaa) if args.nuaa else None, Path(args.blink) if args.blink else None,
                       cfg, args.src_fps, live=not args.no_live, scfg=base.session, quality_cfg=base.quality)
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
