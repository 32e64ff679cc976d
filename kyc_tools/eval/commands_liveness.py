"""`kyc-edge eval pad | liveness | sessions` (wired into cli.py by register_eval).

Model directory: --model-dir, else the first of kyc_tools.paths.model_dirs() that holds the models
($KYC_EDGE_MODEL_DIR, a checkout's models/store, $KYC_EDGE_MODEL_MIRROR, $KYC_EDGE_SHARED/models).
Files are looked up by their float names; for an int8 build directory (scripts/build-models --out
models/build) each role takes the int8 file when the manifest names one that exists there and
falls back to the float file of the next directory otherwise (as device.models.resolve does).
The iris model (the manifest's `iris` role) is resolved the same way.
"""
from __future__ import annotations

from pathlib import Path

REQUIRED = ("detector", "landmarks", "antispoof_v2", "antispoof_v1se")
DETECTOR_FILE = "face_detection_short_range.tflite"


def _float_dirs() -> list[Path]:
    from kyc_tools import paths
    return paths.float_model_dirs()


def resolve_model_dir(arg: str | None) -> Path:
    if arg:
        p = Path(arg)
        if not p.is_dir():
            raise SystemExit(f"model dir not found: {p}")
        return p
    dirs = _float_dirs()
    if not dirs:
        raise SystemExit("no model directory: pass --model-dir or run `kyc-edge models install`")
    return dirs[0]


def model_files(model_dir: Path) -> dict[str, Path]:
    """role -> file, resolved like the daemon (device.models.resolve, int8 where built): first in
    model_dir, then role by role in the float dirs (so an int8-only build dir works); the offline
    mirror keeps some files under alternatives/."""
    from device import models as models_mod
    out: dict[str, Path] = {}
    for d in [Path(model_dir)] + _float_dirs():
        for role, p in models_mod.resolve(d, "int8").items():
            for cand in (p, p.parent / "alternatives" / p.name):
                if role not in out and cand.is_file():
                    out[role] = cand
    for role in REQUIRED:
        if role not in out:
            raise SystemExit(f"model for {role} not found in {model_dir}")
    return out


def make_tracker(model_dir: Path, pad: bool = True, iris: bool = True, threads: int = 1, **kw):
    from device.config import Config
    from device.vision.tracking import build_tracker
    kw.setdefault("pad_fusion", Config().liveness.pad_fusion)
    return build_tracker(model_files(model_dir), threads=threads, pad=pad, iris=iris, **kw)


def _common(p) -> None:
    p.add_argument("--model-dir", help="model directory (float store, or models/build for int8)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", help="write a PNG here")


def _lazy(module: str):
    """The eval modules pull in OpenCV and the models: import them only when the command runs."""
    def run(args):
        import importlib
        return importlib.import_module(module).run(args)
    return run


def _sessions(args):
    import importlib
    if getattr(args, "manifest", None):
        return importlib.import_module("kyc_tools.eval.session_manifest").run_manifest(args)
    return importlib.import_module("kyc_tools.eval.sessions").run(args)


def register_eval(sub) -> None:
    p = sub.add_parser("pad", help="frame-level PAD (ISO/IEC 30107-3: APCER per attack type, BPCER, ACER, EER)")
    p.add_argument("--labels", required=True, help="CSV with path,label[,video] (nuaa: live/print; celeba: live/spoof; replay-attack: live/5 attack types, video)")
    p.add_argument("--root", help="image root (default: the CSV's folder)")
    p.add_argument("--threshold", type=float, default=None,
                   help="accept as bona fide when p_real >= this (default: the configured liveness.pad_threshold)")
    p.add_argument("--config", "-c", help="config file whose liveness.pad_threshold is the default threshold")
    p.add_argument("--fusion", choices=("mean2", "logit4"), help="PAD score fusion (default: the configured liveness.pad_fusion)")
    p.add_argument("--split", help="only rows whose `split` column is this (replay-attack-dev: train, devel)")
    p.add_argument("--box-expand", type=float, default=1.0, help="widen the detector box before the crop")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--stride", type=int, default=1, help="use every k-th row")
    _common(p)
    p.set_defaults(func=_lazy("kyc_tools.eval.pad"))

    p = sub.add_parser("liveness", help="blinks and head turns found in a video or frame folder")
    p.add_argument("--video", required=True, help="video file, folder with frames.csv, or image folder")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate for plain image folders")
    p.add_argument("--turn-deg", type=float, default=18.0)
    p.add_argument("--tilt-deg", type=float, default=20.0)
    p.add_argument("--nod-deg", type=float, default=15.0)
    p.add_argument("--no-iris", action="store_true", help="FaceMesh EAR only (no iris model)")
    p.add_argument("--reference-dir", help="also compare FaceMesh landmarks with this model dir's (e.g. int8 vs float)")
    _common(p)
    p.set_defaults(func=_lazy("kyc_tools.eval.liveness"))

    p = sub.add_parser("sessions", help="session-level: --manifest CSV through the daemon's Session; else NUAA print attempts and the blink video")
    p.add_argument("--manifest", help="CSV path,label[,subject]: every clip through device.session.Session, once per challenge sequence")
    p.add_argument("--draws", type=int, default=1, help="--manifest: random-pause draws per sequence (seeded 0..draws-1)")
    p.add_argument("--offsets", default="0", help="--manifest: seconds into each clip where a session starts, comma-separated, or start:stop:step (e.g. 0,3,6,9 or 0:30:3: the customer steps up, or the attacker starts the replay, at any time); offsets within 3 s of a clip's end are skipped")
    p.add_argument("--config", "-c", help="--manifest: config file (default: built-in defaults)")
    p.add_argument("--limit", type=int, default=0, help="--manifest: first N clips only")
    from kyc_tools import paths
    shared_data = paths.shared_path("data") or Path("$KYC_EDGE_SHARED/data")
    p.add_argument("--nuaa", default=str(shared_data / "nuaa-train"), help="NUAA folder with labels.csv ('' to skip)")
    p.add_argument("--blink", default=str(shared_data / "blink" / "demo_old.mp4"), help="genuine video ('' to skip)")
    p.add_argument("--src-fps", type=float, default=20.0, help="NUAA capture rate: t = picNo / this")
    p.add_argument("--no-live", action="store_true", help="skip the NUAA live sequences")
    p.add_argument("--no-iris", action="store_true")
    p.add_argument("--per-attempt", action="store_true", help="include every attempt's details")
    _common(p)
    p.set_defaults(func=_sessions)
