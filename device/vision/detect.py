"""BlazeFace face detection (short range 128x128, or full range 192x192).

Letterbox to a square, run the model, decode anchors, weighted NMS (as MediaPipe does: boxes that
overlap the best one are averaged by score, which steadies the box and keypoints frame to frame).
Keypoints: subject's right eye, left eye, nose tip, mouth centre, right ear, left ear.

Edge cases:
- Too small: faces narrower than `DetectorOptions.min_face_px` frame pixels are dropped and counted in
  `DetectionResult.too_small` (the session can say "come closer"). Short range finds faces down to
  about 14 % of the frame's longer side (about 180 px in a 1280x720 frame); `full_range` finds them
  down to about 5 % (about 60 px), for cameras mounted far back.
- Cut off: a face whose box reaches past the frame edge by more than 5 % of its width, or whose eye,
  nose or mouth keypoint lies outside the frame, is kept (tracking needs it) but marked `cut_off=True`;
  the quality gate never picks it for matching.
- A model file that does not fit the variant (e.g. the full-range file with variant short_range) is a
  ModelError at load time, not garbage boxes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from device.vision.runtime import ModelRuntime

# (input size, [(grid, anchors per cell), ...])
_VARIANTS = {
    "short_range": (128, [(16, 2), (8, 6)]),
    "full_range": (192, [(48, 1)]),
}
# file names (models/store and the ../shared/models mirror, where full range is under alternatives/)
MODEL_FILES = {
    "short_range": "face_detection_short_range.tflite",
    "full_range": "face_detection_full_range.tflite",
}


def _anchors(size: int, layers) -> np.ndarray:
    out = []
    for grid, per_cell in layers:
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        centres = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], axis=-1).reshape(-1, 2)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class DetectorOptions:
    model_path: str
    variant: str = "short_range"
    min_score: float = 0.5
    iou_threshold: float = 0.3
    threads: int = 1
    max_faces: int = 4
    min_face_px: float = 0.0      # drop (and count) faces narrower than this in frame pixels
    edge_margin: float = 0.05     # box past the frame edge by more than this fraction of its width = cut off


@dataclass
class Face:
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in frame pixels
    score: float
    keypoints: np.ndarray                    # (6, 2) frame pixels
    cut_off: bool = False                    # reaches past the frame edge (see module doc)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def touches_edge(self, shape, margin: float = 0.0) -> bool:
        h, w = shape[:2]
        x0, y0, x1, y1 = self.box
        return x0 < -margin or y0 < -margin or x1 > w + margin or y1 > h + margin

    def __repr__(self) -> str:  # geometry only; never pixels
        cut = ", cut_off" if self.cut_off else ""
        return f"Face(box={tuple(round(v, 1) for v in self.box)}, score={self.score:.2f}{cut})"


@dataclass
class DetectionResult:
    faces: list[Face] = field(default_factory=list)
    too_small: int = 0                       # faces dropped by min_face_px

    def largest(self) -> Face | None:
        return max(self.faces, key=lambda f: f.width * f.height) if self.faces else None


class FaceDetector:
    def __init__(self, options: DetectorOptions):
        if options.variant not in _VARIANTS:
            raise ValueError(f"unknown detector variant {options.variant!r}")
        self.options = options
        self.size, layers = _VARIANTS[options.variant]
        self.anchors = _anchors(self.size, layers)
        n = len(self.anchors)
        # a file that does not fit the variant (e.g. full range with variant short_range) fails here
        self._rt = ModelRuntime.open(options.model_path, options.threads,
                                     inputs={"image": (1, self.size, self.size, 3)},
                                     outputs={"regressors": (1, n, 16), "scores": (1, n, 1)},
                                     what=f"BlazeFace {options.variant} (check models.detector)")
        self._canvas = np.zeros((self.size, self.size, 3), np.float32)

    @classmethod
    def create(cls, options: DetectorOptions) -> "FaceDetector":
        return cls(options)

    @property
    def runtimes(self) -> tuple[ModelRuntime, ...]:
        return (self._rt,)

    def wipe(self) -> None:
        self._rt.wipe()
        self._canvas.fill(0.0)

    def detect(self, rgb: np.ndarray) -> DetectionResult:
        h, w = rgb.shape[:2]
        side = max(h, w)
        scale = self.size / side
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (self.size - nh) // 2, (self.size - nw) // 2
        small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        canvas = self._canvas
        # letterbox padding is black (-1 after scaling), as in MediaPipe's graph
        canvas[:] = -1.0
        canvas[top:top + nh, left:left + nw] = small.astype(np.float32) * (1 / 127.5) - 1.0
        self._rt.set("image", canvas[None])
        canvas.fill(0.0)   # set_tensor copied it; no scaled copy of the frame outlives the call
        self._rt.invoke()
        reg = self._rt.get("regressors")[0]
        logits = self._rt.get("scores")[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))
        keep = np.nonzero(scores >= self.options.min_score)[0]
        if keep.size == 0:
            return DetectionResult([])
        r = reg[keep] / self.size
        a = self.anchors[keep]
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        bw, bh = r[:, 2], r[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
        # square-input fractions -> frame pixels
        boxes = boxes * self.size
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - left) / scale
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - top) / scale
        kps = kps * self.size
        kps[..., 0] = (kps[..., 0] - left) / scale
        kps[..., 1] = (kps[..., 1] - top) / scale
        faces = _weighted_nms(boxes, kps, scores[keep], self.options.iou_threshold)
        small = [f for f in faces if f.width < self.options.min_face_px]
        faces = [f for f in faces if f.width >= self.options.min_face_px]
        for f in faces:
            f.cut_off = _cut_off(f, h, w, self.options.edge_margin)
        return DetectionResult(faces[: self.options.max_faces], too_small=len(small))


def _cut_off(f: Face, h: int, w: int, margin: float) -> bool:
    m = margin * f.width
    x0, y0, x1, y1 = f.box
    if x0 < -m or y0 < -m or x1 > w + m or y1 > h + m:
        return True
    kp = f.keypoints[:4]
    return bool((kp[:, 0] < 0).any() or (kp[:, 1] < 0).any() or (kp[:, 0] >= w).any() or (kp[:, 1] >= h).any())


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _weighted_nms(boxes, kps, scores, iou_thr) -> list[Face]:
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    alive = np.ones(len(scores), bool)
    faces = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        overlap = (_iou(boxes[i], boxes) >= iou_thr) & alive
        alive &= ~overlap
        wts = scores[overlap][:, None]
        box = (boxes[overlap] * wts).sum(0) / wts.sum()
        kp = (kps[overlap] * wts[:, :, None]).sum(0) / wts.sum()
        faces.append(Face(tuple(float(v) for v in box), float(scores[i]), kp.astype(np.float32)))
    return faces
