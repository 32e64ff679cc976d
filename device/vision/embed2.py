"""The second face embedder: dlib's ResNet face descriptor (CC0), 128-d, on a 150x150 face chip.

Built into TFLite by scripts/build-dlib-embedder (no TensorFlow; pinned in models/manifest.json,
role `embedder2`). Optional (`match.second_embedder`); when on, its cosine similarity is fused with
MobileFaceNet's at score level (`fuse`), see docs/match.md.

Face chip: dlib's network was trained on chips made by dlib's own 5-point aligner (get_face_chip_details,
150 px, padding 0.25). We reproduce the geometry with our landmarks: the same 5 FaceMesh points
(or BlazeFace's 4 keypoints when FaceMesh finds no face) as the ArcFace alignment, onto the ArcFace
template scaled by CHIP_SCALE about its centroid and put at CHIP_CENTRE in the 150x150 chip. Both
constants were tuned on LFW folds 1-3 and confirmed on folds 4-5 (docs/match.md). The model takes RGB
0..255: dlib's mean subtraction and /256 are folded into its first convolution.

Privacy: Embed2Result never shows its vectors in repr(); wipe() zero-fills them and the input tensor.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from device.vision.align import TEMPLATE, TEMPLATE5, umeyama
from device.vision.runtime import ModelRuntime

CHIP = 150
# tuned on LFW folds 1-3 (docs/match.md): ArcFace 5-point template x CHIP_SCALE about its centroid
CHIP_SCALE = 1.55
CHIP_CENTRE = (75.0, 75.0)
# score calibration onto MobileFaceNet's cosine scale, calibrated = CAL_A * cosine_dlib + CAL_B. CAL_A and the
# first part of CAL_B map dlib's genuine and impostor means onto MobileFaceNet's (LFW folds 1-3, plain and
# card-style pooled); the rest of CAL_B puts the fused score's card-style FAR=1e-3 point over folds 1-5 (the
# weight-only int8 MobileFaceNet and int8 dlib, fusion weight 0.3: 0.390) onto MobileFaceNet's own (0.412), so
# match.threshold keeps its meaning whether the second embedder is on or off (docs/match.md; with today's
# static-mixed MobileFaceNet the fused point is 0.398, FAR 0 at 0.43)
CAL_A, CAL_B = 6.2743, -5.3259


def chip_template(n_points: int, scale: float = CHIP_SCALE, centre=CHIP_CENTRE) -> np.ndarray:
    """The chip's target points: 5 (FaceMesh: eyes, nose tip, mouth corners) or 4 (BlazeFace)."""
    c = TEMPLATE5.mean(0)
    src = TEMPLATE5 if n_points == 5 else TEMPLATE
    return scale * (src - c) + np.asarray(centre, np.float64)


def face_chip(rgb: np.ndarray, points: np.ndarray, scale: float = CHIP_SCALE, centre=CHIP_CENTRE) -> np.ndarray:
    """150x150x3 uint8 RGB chip from a frame and its 5 FaceMesh points (align.mesh_points) or 4
    BlazeFace keypoints. Outside the frame is black (as dlib's chip extraction)."""
    pts = np.asarray(points, np.float64)[:, :2]
    if len(pts) not in (4, 5):
        raise ValueError(f"face_chip takes 5 FaceMesh points or 4 BlazeFace keypoints, got {len(pts)}")
    m = umeyama(pts, chip_template(len(pts), scale, centre))
    return cv2.warpAffine(rgb, m, (CHIP, CHIP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


@dataclass(frozen=True)
class SecondEmbedderOptions:
    model_path: str
    threads: int = 1


@dataclass(repr=False)
class Embed2Result:
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((1, 128), np.float32))  # (N, 128) L2-normalised

    @property
    def vector(self) -> np.ndarray:
        return self.vectors[0]

    def wipe(self) -> None:
        self.vectors.fill(0)

    def __repr__(self) -> str:
        return f"Embed2Result(shape={tuple(self.vectors.shape)})"


def _l2n(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


class SecondEmbedder:
    """dlib ResNet (TFLite, batch 2). embed(chips) -> (N, 128); embed_card(chip): chip + mirror, one call."""

    def __init__(self, options: SecondEmbedderOptions):
        self.options = options
        self._rt = ModelRuntime.open(options.model_path, options.threads, inputs={"chips": (None, CHIP, CHIP, 3)},
                                     outputs={"descriptors": (None, 128)}, what="dlib ResNet face descriptor (150x150)")
        shape = self._rt.input_shape("chips")
        self.batch = shape[0]
        self._buf = np.zeros(shape, np.float32)
        self._lock = threading.Lock()     # the embed-ahead worker and the decision share this interpreter

    @classmethod
    def create(cls, options: SecondEmbedderOptions) -> "SecondEmbedder":
        return cls(options)

    @property
    def runtimes(self) -> tuple[ModelRuntime, ...]:
        return (self._rt,)

    def wipe(self) -> None:
        with self._lock:
            self._rt.wipe()
            self._buf.fill(0)

    def _run(self, chips) -> np.ndarray:
        with self._lock:
            return self._run_locked(chips)

    def _run_locked(self, chips) -> np.ndarray:
        out = []
        for i in range(0, len(chips), self.batch):
            part = chips[i:i + self.batch]
            for j in range(self.batch):
                c = part[min(j, len(part) - 1)]
                if c.shape != (CHIP, CHIP, 3):
                    raise ValueError(f"second embedder expects {CHIP}x{CHIP}x3 RGB chips, got {c.shape}")
                self._buf[j] = c
            self._rt.set("chips", self._buf)
            self._rt.invoke()
            out.append(np.array(self._rt.get("descriptors")[: len(part)], np.float32))
        self._buf.fill(0)
        return np.concatenate(out)

    def embed(self, chips) -> Embed2Result:
        """Chips -> (N, 128) L2-normalised descriptors, two per call."""
        return Embed2Result(_l2n(self._run(list(chips))))

    def embed_card(self, chip: np.ndarray) -> Embed2Result:
        """The card chip with its mirror image as the batch of 2 (one call), summed (card-side TTA)."""
        return Embed2Result(_l2n(self._run([chip, chip[:, ::-1]]).sum(0))[None])


def calibrated(cos2: float) -> float:
    """dlib cosine on MobileFaceNet's scale (CAL_A, CAL_B: fit on LFW folds 1-3)."""
    return CAL_A * float(cos2) + CAL_B


def fuse(cos1: float, cos2: float, weight: float) -> float:
    """Score-level fusion: (1 - weight) * MobileFaceNet cosine + weight * calibrated dlib cosine."""
    return (1.0 - weight) * float(cos1) + weight * calibrated(cos2)


class AheadAdapter:
    """The second embedder behind FaceEmbedder's pair interface (embed(a, b), embed_one(a)), which
    device.vision.ahead.AheadEmbedder calls from its worker thread."""

    def __init__(self, embedder: SecondEmbedder):
        self.embedder = embedder
        self.batch = embedder.batch

    def embed(self, a: np.ndarray, b: np.ndarray) -> Embed2Result:
        return self.embedder.embed([a, b])

    def embed_one(self, a: np.ndarray) -> Embed2Result:
        return self.embedder.embed([a])
