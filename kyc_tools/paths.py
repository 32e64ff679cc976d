"""Where the tools find data and models, installed or in a source checkout.

Order, first that exists wins: an explicit argument (each command's --models-dir / --frames / ...),
then the environment, then -- only when this package runs from a source checkout -- the checkout's
conventional places. Nothing here assumes a checkout: installed from a wheel, the environment (or
the arguments) are the only sources.

  KYC_EDGE_MODEL_DIR      installed models (kyc-edge models install)
  KYC_EDGE_MODEL_MIRROR   offline model mirror (may keep some files under alternatives/)
  KYC_EDGE_MODEL_BUILD    int8 builds (scripts/build-models --out); checkout: models/build
  KYC_EDGE_SHARED         the shared research data and models (data/, models/); checkout: ../shared
  KYC_EDGE_MEDIAPIPE_PYTHON  the MediaPipe peer's interpreter; checkout: .venv-mediapipe/bin/python
"""
from __future__ import annotations

import os
from pathlib import Path

DETECTOR_FILE = "face_detection_short_range.tflite"


def checkout() -> Path | None:
    """The source checkout this package runs from, or None when installed (site-packages)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "setup.cfg").is_file() and (root / "device").is_dir() and (root / "tools").is_dir():
        return root
    return None


def _env(name: str) -> Path | None:
    v = os.environ.get(name)
    return Path(v) if v else None


def shared_dir() -> Path | None:
    """$KYC_EDGE_SHARED, else ../shared beside a checkout; None if neither."""
    env = _env("KYC_EDGE_SHARED")
    if env:
        return env
    root = checkout()
    return root.parent / "shared" if root else None


def shared_path(*parts: str) -> Path | None:
    base = shared_dir()
    return base.joinpath(*parts) if base else None


def model_build_dir() -> Path | None:
    env = _env("KYC_EDGE_MODEL_BUILD")
    if env:
        return env
    root = checkout()
    return root / "models" / "build" if root else None


def model_dirs() -> list[Path]:
    """Candidate float model directories (each may be missing), in device.models' one search order,
    with $KYC_EDGE_SHARED/models (or the checkout's ../shared/models) last."""
    from device.models import model_dir_candidates
    shared = shared_path("models")
    return model_dir_candidates(extra=(shared,) if shared else ())


def float_model_dirs() -> list[Path]:
    """The candidates that hold the models (device.models.model_dirs_with_models)."""
    from device.models import model_dirs_with_models
    shared = shared_path("models")
    return model_dirs_with_models(extra=(shared,) if shared else ())


def default_model_dir() -> Path | None:
    found = float_model_dirs()
    return found[0] if found else None


def lookup_dirs(first: Path | None) -> list[Path]:
    """Where a model file is looked up by name: `first`, the int8 build dir, then every candidate."""
    out = [first] if first else []
    build = model_build_dir()
    out += ([build] if build else []) + model_dirs()
    seen, uniq = set(), []
    for d in out:
        if str(d) not in seen:
            seen.add(str(d))
            uniq.append(d)
    return uniq


def mediapipe_python() -> Path | None:
    env = _env("KYC_EDGE_MEDIAPIPE_PYTHON")
    if env:
        return env
    root = checkout()
    return root / ".venv-mediapipe" / "bin" / "python" if root else None


def child_env(env: dict | None = None) -> dict:
    """Environment for a child `python -m device...`/`kyc_tools...`: a checkout's root is put on
    PYTHONPATH (so the child imports this tree); an installed package needs nothing."""
    env = dict(os.environ if env is None else env)
    root = checkout()
    if root:
        env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def shared_data_dir() -> Path:
    """../shared/data (or $KYC_EDGE_SHARED/data): the evaluation data; a clear error when absent."""
    d = shared_path("data")
    if d is None:
        raise FileNotFoundError("no evaluation data: set KYC_EDGE_SHARED to the folder holding data/")
    return d
