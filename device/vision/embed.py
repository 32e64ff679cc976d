"""MobileFaceNet embedding (192-d), cosine similarity, and the card-photo path.

The model's batch is fixed in the file: 1 for the int8 build the manifest prefers
(mobilefacenet_int8_b1.tflite, scripts/build-models set_batch), 2 for the float model and the batch-2
int8 build (the live face and the card face in one call). Every method takes either: faces go in
`batch` at a time, a part-filled last call repeats a face. Per face the outputs are the same at either
batch (bit-identical, tests/test_vision_match_build.py); batch 1 holds one face's activations instead of
two (docs/performance.md, "Memory"). With `flip_tta=True` each face is fed together with its horizontal
mirror and the two embeddings are summed before normalising (test-time augmentation; see docs/match.md).

Privacy: EmbedResult never shows its vectors in repr(); `wipe()` zero-fills them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from device.vision.align import SIZE, align_face, align_on_mesh
from device.vision.runtime import ModelRuntime


@dataclass(frozen=True)
class EmbedderOptions:
    model_path: str
    threads: int = 1
    flip_tta: bool = False


@dataclass(repr=False)
class EmbedResult:
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((2, 192), np.float32))  # (2, D) L2-normalised

    @property
    def vector(self) -> np.ndarray:
        """The first (for embed_one: the only) embedding."""
        return self.vectors[0]

    def similarity(self) -> float:
        return cosine(self.vectors[0], self.vectors[1])

    def wipe(self) -> None:
        self.vectors.fill(0)

    def __repr__(self) -> str:
        return f"EmbedResult(shape={tuple(self.vectors.shape)})"


def l2n(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    u = np.asarray(u, np.float64).ravel()
    v = np.asarray(v, np.float64).ravel()
    d = np.linalg.norm(u) * np.linalg.norm(v)
    return float(u @ v / d) if d > 0 else 0.0


def mean_embedding(vectors) -> np.ndarray:
    """Average of several L2-normalised embeddings (top-k live frames), renormalised."""
    return l2n(np.mean(np.asarray(vectors, np.float32), axis=0))


def _prep(img: np.ndarray) -> np.ndarray:
    if img.shape != (SIZE, SIZE, 3):
        raise ValueError(f"embedder expects aligned {SIZE}x{SIZE}x3 RGB, got {img.shape}")
    return (img.astype(np.float32) - 127.5) * (1 / 128.0)


class FaceEmbedder:
    def __init__(self, options: EmbedderOptions):
        self.options = options
        self._rt = ModelRuntime.open(options.model_path, options.threads, inputs={"faces": (None, SIZE, SIZE, 3)},
                                     outputs={"embeddings": (None, None)}, what="a 112x112 face embedder")
        shape = self._rt.input_shape("faces")
        self.batch = shape[0]
        self.dim = self._rt.output_shape("embeddings")[-1]
        self._buf = np.zeros(shape, np.float32)
        # one call at a time: the ahead worker (device/vision/ahead.py) and the session's thread share
        # this interpreter, never at once (an interpreter is not safe for concurrent use)
        self._lock = threading.Lock()

    @classmethod
    def create(cls, options: EmbedderOptions) -> "FaceEmbedder":
        return cls(options)

    @property
    def runtimes(self) -> tuple[ModelRuntime, ...]:
        return (self._rt,)

    def wipe(self) -> None:
        with self._lock:
            self._rt.wipe()
            self._buf.fill(0)

    def _run(self, imgs) -> np.ndarray:
        """Raw embeddings of the images, `batch` per call (a part-filled call repeats its last image)."""
        if not len(imgs):
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            buf, out = self._buf, []
            for k in range(0, len(imgs), self.batch):
                part = imgs[k:k + self.batch]
                for i in range(self.batch):
                    buf[i] = _prep(part[min(i, len(part) - 1)])
                self._rt.set("faces", buf)
                self._rt.invoke()
                out.append(np.array(self._rt.get("embeddings")[: len(part)], np.float32))
            buf.fill(0)
            return out[0] if len(out) == 1 else np.concatenate(out)

    def calls_for(self, n: int) -> int:
        """Model calls that n faces take."""
        return -(-n // self.batch)

    def embed_many(self, imgs) -> EmbedResult:
        """Aligned 112x112 RGB faces -> (N, D) L2-normalised vectors (calls_for(N) calls; with flip_tta
        each face with its mirror)."""
        if not self.options.flip_tta:
            return EmbedResult(l2n(self._run(list(imgs))))
        return EmbedResult(l2n(np.stack([self._run([a, a[:, ::-1]]).sum(0) for a in imgs])))

    def embed(self, a: np.ndarray, b: np.ndarray) -> EmbedResult:
        """Embed two aligned 112x112 RGB faces (live, card) -> (2, D) L2-normalised vectors."""
        if not self.options.flip_tta:
            return EmbedResult(l2n(self._run([a, b])))
        ea = self._run([a, a[:, ::-1]]).sum(0)
        eb = self._run([b, b[:, ::-1]]).sum(0)
        return EmbedResult(l2n(np.stack([ea, eb])))

    def embed_card(self, a: np.ndarray) -> EmbedResult:
        """The card face with its mirror image (one call at batch 2, two at batch 1), summed: card-side
        test-time augmentation; the card is embedded once per session (docs/match.md)."""
        return EmbedResult(l2n(self._run([a, a[:, ::-1]]).sum(0))[None])

    def embed_one(self, a: np.ndarray) -> EmbedResult:
        """One face -> EmbedResult with vectors (1, D) L2-normalised (`.vector`); one call (at batch 2
        the face fills both slots), or face + mirror with flip_tta."""
        if self.options.flip_tta:
            return EmbedResult(l2n(self._run([a, a[:, ::-1]]).sum(0))[None])
        return EmbedResult(l2n(self._run([a])[0])[None])


def _largest(faces):
    return max(faces, key=lambda f: f.width * f.height) if faces else None


def align_detected(img: np.ndarray, face, landmarker=None, min_presence: float = 0.5, on_points=None) -> np.ndarray:
    """FaceMesh 5-point alignment when a landmarker is given and finds the face, else BlazeFace's.
    on_points(img, points): called with the points the face was aligned on (5 FaceMesh or 4 BlazeFace)."""
    if landmarker is not None:
        from device.vision.landmarks import roi_from_keypoints
        r = landmarker.detect(img, roi_from_keypoints(face.box, face.keypoints))
        if r.presence >= min_presence:
            if on_points is not None:
                from device.vision.align import mesh_points
                on_points(img, mesh_points(r.landmarks))
            return align_on_mesh(img, r.landmarks)
    if on_points is not None:
        on_points(img, np.asarray(face.keypoints, np.float64)[:4])
    return align_face(img, face.keypoints)


def prepare_card_face(detector, rgb: np.ndarray, pad_scales=(2.0, 3.0), landmarker=None,
                      min_presence: float = 0.5, on_points=None) -> np.ndarray | None:
    """Detect + align the face of a (small) card photo; once per session. None if no face is found.

    BlazeFace short range is trained on faces filling a fair part of the frame; a 102x126 chip photo
    whose face fills almost all of it is sometimes missed, so on a miss the photo is pasted in the
    middle of a larger grey canvas and detection is retried. With `landmarker` (FaceMesh) the face is
    aligned on its 5 landmark points, as the live frames are (docs/match.md). `on_points(img, points)`
    sees the image (the photo or its padded canvas, wiped afterwards) and the alignment points, for the
    second embedder's face chip (device/vision/embed2.py).
    """
    face = _largest(detector.detect(rgb).faces)
    if face is not None:
        return align_detected(rgb, face, landmarker, min_presence, on_points)
    h, w = rgb.shape[:2]
    for s in pad_scales:
        H, W = int(round(h * s)), int(round(w * s))
        top, left = (H - h) // 2, (W - w) // 2
        canvas = np.full((H, W, 3), 127, np.uint8)
        canvas[top:top + h, left:left + w] = rgb
        face = _largest(detector.detect(canvas).faces)
        if face is not None:
            out = align_detected(canvas, face, landmarker, min_presence, on_points)
            canvas.fill(0)
            return out
        canvas.fill(0)
    return None
