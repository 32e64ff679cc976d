"""The one TFLite model runtime every model class uses.

    rt = ModelRuntime.open(path, threads, inputs={"image": (1, 128, 128, 3)},
                           outputs={"regressors": (1, None, 16), "scores": (1, None, 1)})
    out = rt.run(image=x)        # -> {"regressors": array, "scores": array} (copies)
    rt.wipe()                    # zero-fill the inputs, run once: outputs and intermediates forget the face
    rt.holds_no_face()           # what the privacy test checks

ai-edge-litert (2026 name of the TFLite runtime) is preferred; tflite-runtime is the fallback for
armv7l boards (Pi OS 32-bit), where it is the only runtime with wheels.

Shapes: the caller declares each input and output by a name and a shape; `None` in a shape matches
any size. An output also matches a declared shape of another rank with the same element count
(FaceMesh builds give (1, 1, 1, 1404) or (1, 1404)). Outputs are matched in the declared order,
each to the first unused model output that fits. Anything that does not fit -- a missing or corrupt
file, a wrong number of tensors, a wrong shape -- is one `ModelError("model_unavailable")` whose
message names the file and the mismatch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from device import memory
from device.errors import ModelError

Shape = Sequence["int | None"]


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
    """Load and allocate a model; a missing or corrupt file is a ModelError naming the file.
    Model classes use ModelRuntime; this stays for tools that only need a raw interpreter."""
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


def _fits(want: Shape, got: tuple[int, ...]) -> bool:
    if len(want) == len(got):
        return all(w is None or int(w) == g for w, g in zip(want, got))
    if any(w is None for w in want):
        return False
    return int(np.prod([int(w) for w in want])) == int(np.prod(got))


class ModelRuntime:
    """One TFLite interpreter with named, shape-checked inputs and outputs (see the module doc)."""

    def __init__(self, path: str | Path, threads: int = 1, *, inputs: Mapping[str, Shape],
                 outputs: Mapping[str, Shape], what: str = ""):
        """`what`: what the caller expects, for the error message (e.g. "BlazeFace full_range")."""
        self.path = Path(path)
        self._it = load_interpreter(self.path, threads)
        ins = self._it.get_input_details()
        outs = self._it.get_output_details()
        got_in = [tuple(int(v) for v in d["shape"]) for d in ins]
        got_out = [tuple(int(v) for v in d["shape"]) for d in outs]

        expect = f" (not {what})" if what else ""

        def mismatch(problem: str):
            return ModelError("model_unavailable",
                              f"{self.path.name}: {problem}{expect}; declared inputs {dict(inputs)}, outputs "
                              f"{dict(outputs)}; the file has inputs {got_in}, outputs {got_out}")
        if len(ins) != len(inputs):
            raise mismatch(f"{len(ins)} input tensors, expected {len(inputs)}")
        if len(outs) < len(outputs):
            raise mismatch(f"{len(outs)} output tensors, expected {len(outputs)}")
        self._in: dict[str, dict] = {}
        for (name, want), d, g in zip(inputs.items(), ins, got_in):
            if not _fits(want, g):
                raise mismatch(f"input {name!r} has shape {g}, expected {tuple(want)}")
            self._in[name] = d
        self._out: dict[str, dict] = {}
        used: set[int] = set()
        for name, want in outputs.items():
            k = next((i for i, g in enumerate(got_out) if i not in used and _fits(want, g)), None)
            if k is None:
                raise mismatch(f"no output fits {name!r} {tuple(want)}")
            used.add(k)
            self._out[name] = outs[k]
        self._blank: dict[str, bytes] | None = None   # digests of the outputs of an all-zero input
        self._file_pages_released = False

    @classmethod
    def open(cls, path: str | Path, threads: int = 1, *, inputs: Mapping[str, Shape],
             outputs: Mapping[str, Shape], what: str = "") -> "ModelRuntime":
        return cls(path, threads, inputs=inputs, outputs=outputs, what=what)

    # -- shapes
    def input_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self._in[name]["shape"])

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(v) for v in self._out[name]["shape"])

    # -- calls
    def set(self, name: str, value: np.ndarray) -> None:
        self._it.set_tensor(self._in[name]["index"], value)

    def invoke(self) -> None:
        self._it.invoke()
        if not self._file_pages_released:   # the weights are packed by now: the mapped file need not stay resident
            self._file_pages_released = True
            memory.release_file_pages(self.path)

    def get(self, name: str) -> np.ndarray:
        """The named output (the interpreter's own buffer: copy what must outlive the next call)."""
        return self._it.get_tensor(self._out[name]["index"])

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        for name, value in inputs.items():
            self.set(name, value)
        self.invoke()
        return {name: np.array(self.get(name)) for name in self._out}

    # -- privacy
    def wipe(self) -> None:
        """Zero-fill every input tensor, then run the model once on them. The inputs held the last crop
        this model saw; the outputs (an embedding, landmarks) and the arena's intermediate tensors
        (feature maps of that crop) held what it made of it. The same plan writes the same buffers on
        every invoke, so after this one they hold only what an all-zero input gives."""
        for d in self._in.values():
            self._it.set_tensor(d["index"], np.zeros(tuple(int(v) for v in d["shape"]), d["dtype"]))
        self.invoke()
        if self._blank is None:
            self._blank = {name: self._digest(name) for name in self._out}

    def _digest(self, name: str) -> bytes:
        return hashlib.sha256(np.ascontiguousarray(self.get(name)).tobytes()).digest()

    def inputs_are_zero(self) -> bool:
        return all(not np.any(self._it.get_tensor(d["index"])) for d in self._in.values())

    def holds_no_face(self) -> bool:
        """Inputs zero and every output equal to what an all-zero input gives (the privacy check)."""
        if not self.inputs_are_zero() or self._blank is None:
            return False
        return all(self._digest(name) == blank for name, blank in self._blank.items())

    def __repr__(self) -> str:
        return f"ModelRuntime({self.path.name})"
