"""One place that knows which TFLite runtime is installed.

ai-edge-litert (2026 name of the TFLite runtime) is preferred; tflite-runtime is the fallback for
armv7l boards (Pi OS 32-bit), where it is the only runtime with wheels.
"""
from __future__ import annotations

from pathlib import Path

from device.errors import ModelError


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise ModelError("model_unavailable",
                         "no TFLite runtime: pip install ai-edge-litert (or tflite-runtime on armv7l)") from None


def runtime_name() -> str:
    return _interpreter_class()[1]


def load_interpreter(path: str | Path, threads: int = 1):
    """Load and allocate a model; a missing or corrupt file is a ModelError naming the file."""
    cls, _ = _interpreter_class()
    p = Path(path)
    if not p.is_file():
        raise ModelError("model_unavailable", f"model file missing: {p} (run: kyc-edge models install)")
    try:
        it = cls(model_path=str(p), num_threads=int(threads))
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelError("model_unavailable", f"cannot load {p.name}: {e}") from None
    return it
