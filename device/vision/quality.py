"""Quality gate for choosing the live frame(s) that are matched against the card photo.

Gates (each threshold in config [quality]): face size, face not cut off at the frame edge,
|yaw| and |pitch| close to frontal, sharpness (variance of the Laplacian of the aligned face's grey
image), exposure (mean grey level of the aligned face), eyes open (eye aspect ratio).
A gate whose input is None (e.g. no landmarks yet) is not checked and does not add to the score.

`score` (0..1) ranks frames that pass; `BestFrames` keeps the top-k aligned crops of a session.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from device.vision.align import align_face, align_on_mesh
from device.vision.occlusion import lower_face_covered

# failure codes, in the order they are checked
GATES = ("face_too_small", "face_cut_off", "yaw", "pitch", "blur", "too_dark", "too_bright", "eyes_closed",
         "face_covered")


@dataclass(frozen=True)
class QualityResult:
    ok: bool
    score: float
    failed: tuple[str, ...]
    sharpness: float
    brightness: float


# the inner face of the 112x112 ArcFace crop (brows to chin, cheek to cheek): the crop's corners
# hold background, hair or the black border of a warp past the frame edge, whose edges would
# swamp the Laplacian and bias the mean
_INNER = (slice(24, 104), slice(24, 88))


def _inner_grey(aligned: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(aligned[_INNER]), cv2.COLOR_RGB2GRAY)


def sharpness(aligned: np.ndarray, grey: np.ndarray | None = None) -> float:
    """`grey`: _inner_grey(aligned) when the caller has it already (assess makes it once for both gates)."""
    grey = _inner_grey(aligned) if grey is None else grey
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def brightness(aligned: np.ndarray, grey: np.ndarray | None = None) -> float:
    grey = _inner_grey(aligned) if grey is None else grey
    return float(grey.mean())


def _box(face):
    return tuple(getattr(face, "box", face))


def assess(rgb: np.ndarray, face, aligned: np.ndarray, yaw: float | None, pitch: float | None,
           ear: float | None, cfg) -> QualityResult:
    """rgb: the frame; face: detect.Face (or an (x0,y0,x1,y1) box); aligned: its 112x112 crop;
    yaw/pitch in degrees, ear the mean eye aspect ratio (None = unknown); cfg: QualityConfig."""
    failed = []
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _box(face)
    fw = x1 - x0
    if fw < cfg.min_face_px:
        failed.append("face_too_small")
    # a box reaching past the frame edge by more than 5 % of its width means a cut-off face
    m = 0.05 * fw
    if x0 < -m or y0 < -m or x1 > w + m or y1 > h + m:
        failed.append("face_cut_off")
    if yaw is not None and abs(yaw) > cfg.max_yaw_deg:
        failed.append("yaw")
    if pitch is not None and abs(pitch) > cfg.max_pitch_deg:
        failed.append("pitch")
    grey = _inner_grey(aligned)
    sh = sharpness(aligned, grey)
    br = brightness(aligned, grey)
    grey.fill(0)
    if sh < cfg.min_sharpness:
        failed.append("blur")
    if br < cfg.min_brightness:
        failed.append("too_dark")
    if br > cfg.max_brightness:
        failed.append("too_bright")
    if ear is not None and ear < cfg.min_ear:
        failed.append("eyes_closed")
    if getattr(cfg, "max_covered", 1.0) < 1.0 and lower_face_covered(aligned, cfg.max_covered):
        failed.append("face_covered")      # a mask: never a match frame (device/vision/occlusion.py)

    # score: geometric mean of per-gate terms in 0..1
    terms = [min(1.0, fw / (2.0 * cfg.min_face_px)),
             min(1.0, np.log1p(sh) / np.log1p(max(4.0 * cfg.min_sharpness, 1.0))),
             max(0.0, 1.0 - abs(br - 128.0) / 128.0)]
    if yaw is not None:
        terms.append(max(0.0, 1.0 - abs(yaw) / 90.0))
    if pitch is not None:
        terms.append(max(0.0, 1.0 - abs(pitch) / 90.0))
    score = float(np.prod(np.maximum(terms, 1e-6)) ** (1.0 / len(terms)))
    return QualityResult(not failed, score, tuple(failed), sh, br)


def gate(rgb: np.ndarray, obs, cfg) -> tuple[QualityResult | None, np.ndarray | None]:
    """The quality gate on one tracked frame: align the face (obs.keypoints) and assess it.
    -> (result, aligned 112x112 crop) when it passes, (result, None) when not (the crop is wiped),
    (None, None) unless exactly one face is tracked. cfg: QualityConfig. The session (through
    VisionSuite.quality_crop) and the evaluations use this one."""
    if obs.faces != 1 or obs.keypoints is None or obs.box is None:
        return None, None
    # FaceMesh's 5 points where the tracker has landmarks (as the card is aligned), else BlazeFace's
    aligned = align_on_mesh(rgb, obs.landmarks) if obs.landmarks is not None else align_face(rgb, obs.keypoints)
    q = assess(rgb, obs.box, aligned, obs.yaw, obs.pitch, obs.ear, cfg)
    if not q.ok:
        aligned.fill(0)
        return q, None
    return q, aligned


class BestFrames:
    """The k best aligned crops of a session by quality score (copies; wipe() zero-fills them)."""

    def __init__(self, k: int):
        self.k = max(1, int(k))
        self._heap: list = []
        self._n = itertools.count()

    def offer(self, score: float, aligned: np.ndarray, chip: np.ndarray | None = None) -> bool:
        """`chip`: the same face for the second embedder (150x150, embed2.face_chip), kept alongside."""
        item = (float(score), next(self._n), aligned.copy(), None if chip is None else chip.copy())
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
            return True
        if score > self._heap[0][0]:
            old = heapq.heapreplace(self._heap, item)
            self._wipe_item(old)
            return True
        self._wipe_item(item)
        return False

    def would_keep(self, score: float) -> bool:
        """Whether offer(score, ...) would keep the crop (so a caller makes its chip only then)."""
        return len(self._heap) < self.k or float(score) > self._heap[0][0]

    @staticmethod
    def _wipe_item(item) -> None:
        for a in item[2:]:
            if a is not None:
                a.fill(0)

    def _sorted(self):
        return sorted(self._heap, key=lambda t: (-t[0], t[1]))

    def crops(self) -> list[np.ndarray]:
        """Best first."""
        return [t[2] for t in self._sorted()]

    def chips(self) -> list[np.ndarray]:
        """The second embedder's chips of the crops that have one, best first."""
        return [t[3] for t in self._sorted() if t[3] is not None]

    def __len__(self) -> int:
        return len(self._heap)

    def wipe(self) -> None:
        for item in self._heap:
            self._wipe_item(item)
        self._heap.clear()

    def __repr__(self) -> str:
        return f"BestFrames(k={self.k}, held={len(self._heap)})"
