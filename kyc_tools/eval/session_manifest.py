"""`kyc-edge eval sessions --manifest CSV`: every clip through the daemon's own Session.

    kyc-edge eval sessions --manifest ../shared/data/sessions-dev/manifest.csv [--draws 1] [--offsets 0,3,6]
                           [--model-dir DIR] [--plot out.png] [--limit N]
    python -m kyc_tools.eval.session_manifest nuaa --out DIR     # NUAA sequences as a manifest
    python -m kyc_tools.eval.session_manifest blink --out DIR    # the blink video as a manifest

Manifest: CSV with columns `path,label[,subject]` (path relative to the CSV's folder: a video file
or a folder of frames with a frames.csv); label `genuine` (also live / bonafide) or an attack type.

Each clip runs through `device.session.Session` -- the object the daemon runs -- with the replay
camera in `fast` pace (every frame, at the clip's own timestamps), the VisionSuite (tracker,
quality gate, matcher), and the LivenessCheck Session drives (challenges with the timing rule,
continuity rules, PAD evidence, decision). Nothing of the session is re-implemented here. It runs
once per challenge sequence the configured draw can produce (x `--draws` random-pause draws,
seeded 0..draws-1, so a run repeats), from each `--offsets` start (seconds into the clip; default 0:
the replay camera's `start_s`, so the session sees the clip from there on). None of these clips was
recorded to our prompts: a start offset stands for a customer who steps up, or an attacker who starts
the replay, at some moment of the recording. The card is fabricated (never real data) and carries a
frame of the clip itself as its photo, so the face match is not what is measured: a run "passes
liveness" when its verdict has no reason other than face_mismatch (the only reason that comes after
the liveness decision; quality_too_low ends the session before it and is a failure); the verdict
result is reported too.

Outcomes: an attack is stopped only if no run passes (the attacker's best case); a genuine clip is
served if at least one run passes (the customer's best case), with the share of runs it passes.
What each layer alone would have done, from the same runs' reasons: active only = ignoring the
passive reasons (spoof_suspected, flat_face); passive only = ignoring the challenge reasons
(challenge_timeout, response_too_early). (A run that failed a challenge ended there: its passive
evidence is what was seen until then.) Reported per clip (with reasons), per label (attack type) and
per subject; JSON on stdout, a progress bar on stderr, `--plot` a PNG of the share per clip.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np

GENUINE = {"genuine", "live", "real", "bonafide", "bona_fide"}
# only face_mismatch comes after the liveness decision; a session that ended before it (quality_too_low:
# no frame passed the quality gate; card problems) has no liveness decision and counts as a failure
MATCH_REASONS = {"face_mismatch"}
ACTIVE_REASONS = {"challenge_timeout", "response_too_early"}
PASSIVE_REASONS = {"spoof_suspected", "flat_face"}
MIN_TAIL_S = 3.0    # --offsets: a start later than this before the clip's end is skipped (reported)


def read_manifest(path: Path, limit: int = 0) -> list[dict]:
    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise SystemExit(f"{path}: expected columns path,label[,subject]")
    out = []
    for r in rows[: limit or None]:
        p = Path(r["path"])
        p = p if p.is_absolute() else path.parent / p
        out.append({"path": str(p), "label": r["label"].strip().lower(),
                    "subject": (r.get("subject") or "").strip() or Path(r["path"]).stem})
    return out


def card_photo(path: str, detector, max_frames: int = 60) -> np.ndarray | None:
    """The first frame of the clip with a detected face (RGB): the fabricated card's photo."""
    import cv2
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})[:max_frames]
        frames = (cv2.imread(str(f)) for f in files)
        rgbs = (None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1]) for bgr in frames)
    else:
        from device.camera.replay import decode_video
        rgbs = (rgb for rgb, _t in decode_video(p, limit=max_frames))
    for rgb in rgbs:
        if rgb is None:
            break
        if detector.detect(rgb).faces:
            return rgb
    return None


def parse_offsets(text: str) -> list[float]:
    """`--offsets 0,3,6` -> [0.0, 3.0, 6.0] (seconds into the clip where a session starts); a part
    `start:stop:step` is a range with stop included (`0:30:3` = 0, 3, ..., 30: later starts than a clip
    holds are skipped per clip)."""
    vals: set[float] = set()
    try:
        for part in (x.strip() for x in str(text).split(",")):
            if not part:
                continue
            if ":" in part:
                lo, hi, step = (float(v) for v in part.split(":"))
                if step <= 0 or hi < lo or (hi - lo) / step > 10_000:
                    raise ValueError(part)
                vals |= {round(lo + i * step, 6) for i in range(int((hi - lo) / step + 1e-9) + 1)}
            else:
                vals.add(float(part))
    except ValueError:
        raise SystemExit(f"--offsets: expected seconds or start:stop:step ranges separated by commas, got {text!r}") from None
    out = sorted(vals)
    if not out or out[0] < 0:
        raise SystemExit(f"--offsets: expected seconds >= 0, got {text!r}")
    return out


def clip_duration(cfg, path: str) -> float:
    """Media time of the clip's last frame (decoded through the replay camera, so folders' frames.csv count)."""
    from device import config as config_mod
    from device.camera.replay import ReplaySource
    ccfg = config_mod.replace(cfg, **{"camera.replay.path": path, "camera.replay.loop": False,
                                      "camera.replay.start_s": 0.0})
    last = 0.0
    for rgb, t in ReplaySource(ccfg.camera).iter_decoded():
        rgb.fill(0)
        last = t
    return last


def run_clip(cfg, vision, clip: dict, sequences, draws: int, bar=None, offsets=(0.0,)) -> dict:
    """Every (offset, sequence, pause draw) run of one clip through the daemon's Session."""
    from device import config as config_mod
    ccfg = config_mod.replace(cfg, **{"camera.backend": "replay", "camera.replay.path": clip["path"],
                                      "camera.replay.pace": "fast", "camera.replay.loop": False,
                                      "camera.stall_s": 30.0, "camera.lost_s": 60.0})
    photo = card_photo(clip["path"], vision.detector)
    offsets = list(offsets)
    skipped: list[float] = []
    if offsets != [0.0]:
        # a session needs the pause, a response and a second challenge: an offset this close to the end is no run
        end = clip_duration(cfg, clip["path"]) - MIN_TAIL_S
        skipped = [o for o in offsets if o > 0 and o > end]
        offsets = [o for o in offsets if o not in skipped]
    runs = {}
    for off in offsets:
        ocfg = config_mod.replace(ccfg, **{"camera.replay.start_s": off}) if off else ccfg
        for seq in sequences:
            for k in range(draws):
                key = "+".join(seq) + (f"#{k}" if draws > 1 else "") + (f"@{off:g}s" if len(offsets) > 1 or off else "")
                runs[key] = _one_run(ocfg, vision, photo, seq, k)
                if bar:
                    bar.update()
    if skipped and bar:
        bar.update(len(skipped) * len(sequences) * draws)
    if photo is not None:
        photo.fill(0)
    return _clip_result(clip, runs, offsets, skipped)


def _one_run(ccfg, vision, photo, seq, k) -> dict:
    from device.camera import open_source
    from device.offline import fabricated_card
    from device.session import Session
    if photo is None:
        return {"result": "fail", "reasons": ["no_face"], "liveness_ok": False,
                "active_only_ok": False, "passive_only_ok": False}
    out: list[dict] = []
    events: list[dict] = []
    card = fabricated_card(photo.copy())
    with open_source(ccfg.camera) as cam:
        Session(ccfg, reader=None, camera=cam, vision=vision, sink=out.append, events=events.append,
                challenges=list(seq), rng=random.Random(k)).run(card=card)
    v = out[0]
    reasons = set(v["reasons"])
    live = reasons - MATCH_REASONS
    return {"result": v["result"], "reasons": v["reasons"], "liveness_ok": not live,
            "active_only_ok": not (live - PASSIVE_REASONS),
            "passive_only_ok": not (live - ACTIVE_REASONS),
            "spoof_score": v["scores"].get("spoof"), "liveness_score": v["scores"].get("liveness"),
            "challenges_passed": sum(1 for e in events if e.get("event") == "challenge_passed")}


def _clip_result(clip: dict, runs: dict, offsets: list[float], skipped: list[float]) -> dict:
    n = len(runs)
    passed = sum(r["liveness_ok"] for r in runs.values())
    genuine = clip["label"] in GENUINE
    reasons: dict[str, int] = {}
    for r in runs.values():
        for x in r["reasons"]:
            reasons[x] = reasons.get(x, 0) + 1
    return {"path": clip["path"], "label": clip["label"], "subject": clip["subject"], "genuine": genuine,
            "offsets": offsets, **({"offsets_past_end": skipped} if skipped else {}),
            "runs": runs, "runs_passing": passed, "share_passing": passed / n if n else 0.0,
            "passes": passed > 0,
            "outcome": ("served" if passed else "turned_away") if genuine else ("passed" if passed else "stopped"),
            "active_only_passes": any(r["active_only_ok"] for r in runs.values()),
            "passive_only_passes": any(r["passive_only_ok"] for r in runs.values()),
            "reason_counts": reasons}


def aggregate(clips: list[dict], key: str) -> dict:
    out: dict = {}
    for c in clips:
        g = out.setdefault(c[key], {"clips": 0, "genuine": 0, "attacks": 0, "served": 0, "passed_attacks": 0,
                                    "active_only_passes": 0, "passive_only_passes": 0, "share_passing_mean": 0.0,
                                    "reason_counts": {}})
        g["clips"] += 1
        if c["genuine"]:
            g["genuine"] += 1
            g["served"] += int(c["passes"])
        else:
            g["attacks"] += 1
            g["passed_attacks"] += int(c["passes"])
        g["active_only_passes"] += int(c["active_only_passes"])
        g["passive_only_passes"] += int(c["passive_only_passes"])
        g["share_passing_mean"] += c["share_passing"]
        for r, n in c["reason_counts"].items():
            g["reason_counts"][r] = g["reason_counts"].get(r, 0) + n
    for g in out.values():
        g["share_passing_mean"] /= g["clips"]
    return out


def plot(path, clips: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(clips) + 1.5))
    names = [f"{c['label']}: {c['subject']}/{Path(c['path']).name}"[:60] for c in clips]
    vals = [c["share_passing"] for c in clips]
    colors = ["tab:green" if c["genuine"] else "tab:red" for c in clips]
    ax.barh(range(len(clips)), vals, color=colors)
    ax.set_yticks(range(len(clips)), names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of challenge runs passing liveness (green genuine, red attack)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_manifest(args) -> int:
    from device import config as config_mod
    from device.vision.suite import VisionSuite
    try:
        from device.liveness.challenges import possible_sequences   # the challenge registry's
    except ImportError:
        from kyc_tools.eval.sessions import possible_sequences as _ps
        def possible_sequences(pool, count):
            return _ps(cfg.liveness)
    from kyc_tools.eval.commands_liveness import resolve_model_dir
    from kyc_tools.eval.common import Progress, emit_json
    offsets = parse_offsets(getattr(args, "offsets", None) or "0")     # before the models load: fail fast
    clips = read_manifest(Path(args.manifest), getattr(args, "limit", 0) or 0)
    md = resolve_model_dir(args.model_dir)
    cfg = config_mod.load(args.config) if getattr(args, "config", None) else config_mod.from_dict({})
    cfg = config_mod.replace(cfg, **{"models.dir": str(md), "models.threads": args.threads})
    vision = VisionSuite.create(cfg, md)
    seqs = possible_sequences(cfg.liveness.challenges, cfg.liveness.count)
    draws = max(1, getattr(args, "draws", 1) or 1)
    bar = Progress(len(clips) * len(seqs) * draws * len(offsets), "eval sessions")
    res = [run_clip(cfg, vision, c, seqs, draws, bar, offsets) for c in clips]
    bar.close()
    att = [c for c in res if not c["genuine"]]
    gen = [c for c in res if c["genuine"]]
    out = {"command": "eval sessions", "manifest": str(args.manifest), "model_dir": str(md),
           "models": vision.versions, "sequences": ["+".join(s) for s in seqs], "draws": draws,
           "offsets": offsets,
           "config": {k: getattr(cfg.liveness, k) for k in (
               "challenges", "count", "challenge_timeout_s", "turn_yaw_deg", "pad_threshold", "pad_fusion",
               "prompt_pause_min_s", "prompt_pause_max_s", "response_window_s")},
           "summary": {"attacks": len(att), "attacks_passed": sum(c["passes"] for c in att),
                       "attacks_passed_active_only": sum(c["active_only_passes"] for c in att),
                       "attacks_passed_passive_only": sum(c["passive_only_passes"] for c in att),
                       "genuine": len(gen), "genuine_served": sum(c["passes"] for c in gen),
                       "genuine_served_active_only": sum(c["active_only_passes"] for c in gen),
                       "genuine_served_passive_only": sum(c["passive_only_passes"] for c in gen),
                       "genuine_share_passing_mean": (sum(c["share_passing"] for c in gen) / len(gen)) if gen else None},
           "by_label": aggregate(res, "label"), "by_subject": aggregate(res, "subject"), "clips": res}
    if args.plot:
        plot(args.plot, res)
        out["plot"] = str(args.plot)
    emit_json(out)
    return 0


# ------------------------------------------------------------------ manifests of the older runs
def make_nuaa(out: Path, src_fps: float = 20.0) -> Path:
    """Every NUAA sequence (print attempts and live) as a folder of symlinks + frames.csv."""
    from kyc_tools.paths import shared_data_dir
    from kyc_tools.eval.sessions import nuaa_sequences
    root = shared_data_dir() / "nuaa-train"
    out = Path(out)
    rows = []
    for label in ("print", "live"):
        for key, items in nuaa_sequences(root, label):
            d = out / key.replace("/", "_")
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "frames.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["file", "t_seconds"])
                for pic, p in items:
                    link = d / Path(p).name
                    if not link.exists():
                        link.symlink_to(Path(p).resolve())
                    w.writerow([link.name, f"{pic / src_fps:.3f}"])
            rows.append((d.name, "genuine" if label == "live" else "print", key.split("/")[1][:4]))
    man = out / "manifest.csv"
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        w.writerows(rows)
    return man


def make_blink(out: Path) -> Path:
    from kyc_tools.paths import shared_data_dir
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    man = out / "manifest.csv"
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        w.writerow([str(shared_data_dir() / "blink" / "demo_old.mp4"), "genuine", "blink"])
    return man


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="session_manifest")
    ap.add_argument("which", choices=("nuaa", "blink"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    print(make_nuaa(Path(a.out)) if a.which == "nuaa" else make_blink(Path(a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
