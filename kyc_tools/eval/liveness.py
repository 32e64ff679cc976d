"""Blinks and head movements found by the tracker in videos or frame folders.

    kyc-edge eval liveness --video ../shared/data/blink/demo_old.mp4
    kyc-edge eval liveness --video ../shared/data/headpose          # every clip in frames.csv
    kyc-edge eval liveness --video DIR_OF_JPGS [--fps 15] [--plot out.png] [--model-dir DIR]

Sources: a video file (timestamps from CAP_PROP_POS_MSEC: the blink video's frame timing is
variable); a folder holding frames.csv (`clip,frame,t_seconds`, as ../shared/data/headpose) = one
clip per sub-folder; any other folder = its images in name order at --fps.

Per clip the JSON lists blinks (start, end, duration: the tracker's BlinkDetector, the same one the
`blink` challenge uses) and head movements from the smoothed pose:
- turns: an excursion of |yaw| >= --turn-deg (default cfg turn_yaw_deg = 18) that is bounded by a
  near-frontal stretch (|yaw| < turn-deg/2) on at least one side (so a head that is merely held at
  an angle for the whole clip is not a turn); direction `left` = the subject's own left (yaw > 0);
- tilts: |roll| >= --tilt-deg (default 20) from upright, no neutral stretch needed (`cw` = the eye
  line turns clockwise in the image); nods: pitch relative to the clip's median pitch beyond
  --nod-deg (default 15), bounded by neutral like turns.
Per clip also `challenges`: for each registered challenge, the outcome of the shipped
device.liveness.check.LivenessCheck asked for that one challenge alone (PAD off: this command runs
the tracker without the PAD models; default liveness and session config, the session's quality gate
per frame), fed frame by frame as Session feeds it: {"ok", "reasons", "passed_at" (s from the clip's
first frame)}. This is what the counter would say, not a second implementation of the rules.
Also per-stage timings (median ms per call) and, with --plot, yaw/EAR traces.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from kyc_tools.eval.common import Progress, emit_json

VIDEO_EXT = {".mp4", ".mkv", ".webm", ".avi", ".mov"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp"}


# ------------------------------------------------------------------ sources
def clips(path: Path, fps: float = 15.0) -> list[tuple[str, list]]:
    """[(name, [(t, loader)])]; loader() -> RGB."""
    path = Path(path)
    if path.is_file():
        return [(path.name, video_frames(path))]
    fcsv = path / "frames.csv"
    if fcsv.exists():
        by: dict[str, list] = {}
        with open(fcsv, newline="") as fh:
            for r in csv.DictReader(fh):
                f = path / r["clip"] / f"{int(r['frame']):04d}.jpg"
                by.setdefault(r["clip"], []).append((float(r["t_seconds"]), _img_loader(f)))
        return [(k, sorted(v, key=lambda x: x[0])) for k, v in sorted(by.items())]
    vids = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXT)
    if vids:
        return [(v.name, video_frames(v)) for v in vids]
    imgs = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXT)
    return [(path.name, [(i / fps, _img_loader(p)) for i, p in enumerate(imgs)])]


def _img_loader(p: Path):
    def load():
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(p)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return load


def video_frames(p: Path) -> list:
    """Decode once (short clips) with the replay camera's decoder (device.camera.replay.decode_video)."""
    from device.camera.replay import decode_video
    from device.errors import CameraError
    try:
        return [(t, (lambda x: (lambda: x))(rgb)) for rgb, t in decode_video(p)]
    except CameraError:
        raise FileNotFoundError(p) from None


# ------------------------------------------------------------------ events
def excursions(ts, values, thr: float, neutral: float, require_neutral: bool = True) -> list[dict]:
    """Segments where |v| >= thr (hysteresis: a segment ends when |v| < neutral or the sign flips).
    With require_neutral, a segment must touch a near-frontal stretch (|v| < neutral) before or after."""
    out, cur = [], None
    prev_neutral = False
    for t, v in zip(ts, values):
        if v is None:
            continue
        s = 1 if v > 0 else -1
        if cur is not None and (abs(v) < neutral or s != cur["sign"]):
            cur["t_end"] = t
            cur["neutral_after"] = abs(v) < neutral
            out.append(cur)
            cur = None
            prev_neutral = abs(v) < neutral
        if cur is None and abs(v) >= thr:
            cur = {"sign": s, "t_start": t, "t_peak": t, "peak": v, "neutral_before": prev_neutral}
        elif cur is not None and abs(v) > abs(cur["peak"]):
            cur["t_peak"], cur["peak"] = t, v
        if cur is None and abs(v) < neutral:
            prev_neutral = True
    if cur is not None:
        cur["t_end"] = None
        cur["neutral_after"] = False
        out.append(cur)
    if require_neutral:
        out = [e for e in out if e["neutral_before"] or e["neutral_after"]]
    return out


def _checks():
    """One LivenessCheck per registered challenge, PAD off (eval liveness loads no PAD model)."""
    import dataclasses

    from device.config import from_dict
    from device.liveness.challenges import ALL
    from device.liveness.check import LivenessCheck
    base = from_dict({})
    # the timing rule off (no random pause, no response window): this command asks when each action
    # happens in the clip, with the prompt at the first face (kyc_tools.eval.timing_cost measures the rule)
    lv = dataclasses.replace(base.liveness, pad_enabled=False, prompt_pause_min_s=0.0, prompt_pause_max_s=0.0,
                             response_window_s=0.0)
    return base.quality, {n: LivenessCheck(lv, face_wait_s=base.session.face_wait_s,
                                           hold_still_s=base.session.hold_still_s, sequence=[n]) for n in ALL}


def _check_outcomes(checks: dict, t0: float) -> dict:
    out = {}
    for name, c in checks.items():
        c.finish()
        d = c.result()
        r = c.runner.results
        out[name] = {"ok": d.ok, "reasons": d.reasons,
                     "passed_at": round(r[0].t_end - t0, 3) if r and r[0].state == "passed" else None}
    return out


def analyse(frames, tracker, turn_deg: float = 18.0, tilt_deg: float = 20.0, nod_deg: float = 15.0,
            bar: Progress | None = None) -> dict:
    from device.vision.quality import gate
    tracker.reset()
    qcfg, checks = _checks()
    ts, yaw, roll, pitch, ear, faces = [], [], [], [], [], []
    for t, load in frames:
        rgb = load()
        o = tracker.observe(rgb, t)
        _, crop = gate(rgb, o, qcfg)
        for c in checks.values():
            if not c.done:
                c.feed(o, good_frame=crop is not None)
        if crop is not None:
            crop.fill(0)
        ts.append(t)
        yaw.append(o.yaw if o.has_face else None)
        roll.append(o.roll if o.has_face else None)
        pitch.append(o.pitch if o.has_face else None)
        ear.append(o.ear)
        faces.append(o.faces)
        if bar:
            bar.update()
    def rel(vals):
        v = [x for x in vals if x is not None]
        m = float(np.median(v)) if v else 0.0
        return [None if x is None else x - m for x in vals]
    turns = [{"direction": "left" if e["sign"] > 0 else "right", "t_start": e["t_start"], "t_peak": e["t_peak"],
              "t_end": e["t_end"], "peak_yaw": e["peak"]}
             for e in excursions(ts, yaw, turn_deg, turn_deg / 2)]
    tilts = [{"direction": "cw" if e["sign"] > 0 else "ccw", "t_start": e["t_start"], "t_peak": e["t_peak"],
              "t_end": e["t_end"], "peak_roll": e["peak"]}
             for e in excursions(ts, roll, tilt_deg, tilt_deg / 2, require_neutral=False)]
    nods = [{"direction": "up" if e["sign"] > 0 else "down", "t_start": e["t_start"], "t_peak": e["t_peak"],
             "t_end": e["t_end"], "peak_pitch_rel": e["peak"]}
            for e in excursions(ts, rel(pitch), nod_deg, nod_deg / 2)]
    seen = [y for y in yaw if y is not None]
    return {
        "frames": len(ts), "frames_with_face": len(seen), "faces_max": max(faces) if faces else 0,
        "duration_s": (ts[-1] - ts[0]) if ts else 0.0,
        "blinks": [{"t_start": b.t_start, "t_end": b.t_end, "duration_s": b.duration, "depth": b.depth}
                   for b in tracker.blinks],
        "blinks_rejected_geometry": tracker.blinker.rejected,
        "turns": turns, "tilts": tilts, "nods": nods,
        "challenges": _check_outcomes(checks, ts[0] if ts else 0.0),
        "yaw_range": [min(seen), max(seen)] if seen else None,
        "timings_ms": tracker.timing_summary(),
        "_trace": {"t": ts, "yaw": yaw, "ear": ear},
    }


def landmark_agreement(frames, model_dir: Path, reference_dir: Path, threads: int = 1) -> dict:
    """FaceMesh of model_dir vs reference_dir on the same detector ROI per frame (e.g. int8 vs float).

    NME = mean point distance / outer-eye-corner distance; also |EAR| and |yaw| differences."""
    from kyc_tools.eval.commands_liveness import model_files
    from device.vision.detect import DetectorOptions, FaceDetector
    from device.vision.landmarks import (FaceLandmarker, LandmarkerOptions, eye_aspect_ratio, head_pose,
                                         roi_from_keypoints)
    fa, fb = model_files(model_dir), model_files(reference_dir)
    det = FaceDetector.create(DetectorOptions(str(fb["detector"]), threads=threads))
    la = FaceLandmarker.create(LandmarkerOptions(str(fa["landmarks"]), threads=threads))
    lb = FaceLandmarker.create(LandmarkerOptions(str(fb["landmarks"]), threads=threads))
    nme, dear, dyaw, dpres = [], [], [], []
    for t, load in frames:
        rgb = load()
        faces = det.detect(rgb).faces
        if not faces:
            continue
        f = max(faces, key=lambda f: f.width)
        roi = roi_from_keypoints(f.box, f.keypoints)
        a, b = la.detect(rgb, roi), lb.detect(rgb, roi)
        io = float(np.linalg.norm(b.landmarks[263, :2] - b.landmarks[33, :2]))
        nme.append(float(np.linalg.norm(a.landmarks[:, :2] - b.landmarks[:, :2], axis=1).mean() / max(io, 1e-6)))
        dear.append(abs(eye_aspect_ratio(a.landmarks) - eye_aspect_ratio(b.landmarks)))
        dyaw.append(abs(head_pose(a.landmarks, rgb.shape)[0] - head_pose(b.landmarks, rgb.shape)[0]))
        dpres.append(abs(a.presence - b.presence))
    if not nme:
        return {"frames": 0}
    return {"frames": len(nme), "landmarks": str(fa["landmarks"].name), "reference": str(fb["landmarks"].name),
            "nme_mean": float(np.mean(nme)), "nme_p95": float(np.percentile(nme, 95)),
            "ear_abs_diff_mean": float(np.mean(dear)), "yaw_abs_diff_mean_deg": float(np.mean(dyaw)),
            "yaw_abs_diff_max_deg": float(np.max(dyaw)), "presence_abs_diff_max": float(np.max(dpres))}


def plot(path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], results.items()):
        tr = r["_trace"]
        ax.plot(tr["t"], [np.nan if v is None else v for v in tr["yaw"]], label="yaw (deg)")
        ax.set_ylabel("yaw")
        ax2 = ax.twinx()
        ax2.plot(tr["t"], [np.nan if v is None else v for v in tr["ear"]], color="tab:orange", label="EAR")
        ax2.set_ylabel("EAR")
        for b in r["blinks"]:
            ax2.axvspan(b["t_start"], b["t_end"], color="tab:red", alpha=0.2)
        for e in r["turns"]:
            ax.axvline(e["t_peak"], color="tab:green", ls="--")
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    from kyc_tools.eval.commands_liveness import make_tracker, resolve_model_dir
    md = resolve_model_dir(args.model_dir)
    tracker = make_tracker(md, pad=False, iris=not args.no_iris, threads=args.threads)
    cl = clips(Path(args.video), args.fps)
    total = sum(len(f) for _, f in cl)
    results = {}
    with Progress(total, "eval liveness") as bar:
        for name, frames in cl:
            results[name] = analyse(frames, tracker, args.turn_deg, args.tilt_deg, args.nod_deg, bar)
    out = {"command": "eval liveness", "video": str(args.video), "model_dir": str(md),
           "iris": not args.no_iris, "clips": {k: {kk: vv for kk, vv in v.items() if kk != "_trace"}
                                               for k, v in results.items()}}
    out["totals"] = {"blinks": sum(len(v["blinks"]) for v in results.values()),
                     "turns": sum(len(v["turns"]) for v in results.values())}
    from kyc_tools.eval.commands_liveness import model_files
    out["models"] = {k: v.name for k, v in model_files(md).items()}
    if args.reference_dir:
        out["landmark_agreement"] = {name: landmark_agreement(frames, md, Path(args.reference_dir), args.threads)
                                     for name, frames in cl}
    if args.plot:
        plot(args.plot, results)
        out["plot"] = str(args.plot)
    emit_json(out, digits=3)
    return 0
