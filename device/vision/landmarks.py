"""FaceMesh (468 3-D landmarks) on a rotated, upright 1.5x face crop, plus head pose and EAR.

Pre/post-processing as verified in ../shared/models/MODELS.md:
- crop: a square 1.5x the face box (or the landmark box when tracking), centred on the box and
  rotated so the line between the eyes is horizontal, resized to 192x192, RGB in [0, 1];
- outputs: 468 x (x, y, z) in crop pixels and a face-presence logit (sigmoid -> presence);
- landmarks are mapped back to frame pixels with the inverse of the crop transform (z is scaled
  with the same factor, so it is in frame pixels too, relative to the face centre).

Head pose (`head_pose`) is cv2.solvePnP of six landmarks against a generic 3-D face. Sign conventions
(subject's own directions, camera not mirrored):
- yaw   > 0: the subject turned to THEIR left (nose moves to the image's right);
- pitch > 0: the subject looks up;
- roll  > 0: the eye line rotates clockwise in the image (see `head_pose`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from device.vision.runtime import ModelRuntime

SIZE = 192
SCALE = 1.5

# EAR points p1..p6 (MODELS.md): subject's right eye, subject's left eye
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (362, 385, 387, 263, 373, 380)
# points used for pose and for the tracking rotation
NOSE_TIP, CHIN, R_EYE_OUTER, L_EYE_OUTER, R_MOUTH, L_MOUTH = 1, 152, 33, 263, 61, 291
FOREHEAD = 10
# generic 3-D face (mm-ish units), image axes: x to the image right, y down, z away from the camera.
_MODEL_IDX = (NOSE_TIP, CHIN, R_EYE_OUTER, L_EYE_OUTER, R_MOUTH, L_MOUTH)
_MODEL_3D = np.array([
    (0.0, 0.0, 0.0),          # nose tip
    (0.0, 330.0, 65.0),       # chin
    (-225.0, -170.0, 135.0),  # subject's right eye, outer corner (image left)
    (225.0, -170.0, 135.0),   # subject's left eye, outer corner
    (-150.0, 150.0, 125.0),   # subject's right mouth corner
    (150.0, 150.0, 125.0),    # subject's left mouth corner
], np.float64)


@dataclass(frozen=True)
class LandmarkerOptions:
    model_path: str
    threads: int = 1
    scale: float = SCALE


@dataclass
class LandmarkResult:
    landmarks: np.ndarray     # (468, 3) frame pixels (z relative, same scale)
    presence: float           # sigmoid of the face-presence logit
    roi: tuple[float, float, float, float]   # cx, cy, side, angle (rad) of the crop used

    def __repr__(self) -> str:
        return f"LandmarkResult(presence={self.presence:.2f})"


def roi_from_keypoints(box, keypoints, scale: float = SCALE):
    """ROI (cx, cy, side, angle) from a detector box and its eye keypoints."""
    x0, y0, x1, y1 = box
    re, le = np.asarray(keypoints[0], float), np.asarray(keypoints[1], float)
    angle = math.atan2(le[1] - re[1], le[0] - re[0])
    side = max(x1 - x0, y1 - y0) * scale
    return (0.5 * (x0 + x1), 0.5 * (y0 + y1), side, angle)


def roi_from_landmarks(lm: np.ndarray, scale: float = SCALE):
    """ROI for the next frame from this frame's landmarks (MediaPipe's tracking path).

    Rotation from the outer eye corners; the box is the landmarks' extent in the rotated frame."""
    re, le = lm[R_EYE_OUTER, :2], lm[L_EYE_OUTER, :2]
    angle = math.atan2(le[1] - re[1], le[0] - re[0])
    c, s = math.cos(-angle), math.sin(-angle)
    pts = lm[:, :2]
    centre = pts.mean(0)
    d = pts - centre
    dx, dy = d[:, 0], d[:, 1]
    rx = dx * c - dy * s
    ry = dx * s + dy * c
    x0, x1, y0, y1 = rx.min(), rx.max(), ry.min(), ry.max()      # each extreme once (was twice)
    w, h = x1 - x0, y1 - y0
    mx, my = 0.5 * (x1 + x0), 0.5 * (y1 + y0)
    ca, sa = math.cos(angle), math.sin(angle)
    cx = centre[0] + mx * ca - my * sa
    cy = centre[1] + mx * sa + my * ca
    return (float(cx), float(cy), float(max(w, h) * scale), angle)


def crop_matrix(roi, size: int = SIZE) -> np.ndarray:
    """2x3 affine mapping frame pixels -> crop pixels."""
    cx, cy, side, angle = roi
    k = size / max(side, 1e-6)
    c, s = math.cos(-angle), math.sin(-angle)
    m = np.array([[k * c, -k * s, 0.0], [k * s, k * c, 0.0]])
    m[:, 2] = np.array([size / 2, size / 2]) - m[:, :2] @ np.array([cx, cy])
    return m


class FaceLandmarker:
    """FaceMesh. `detect(rgb, roi)` -> LandmarkResult; build the roi with roi_from_keypoints/landmarks."""

    def __init__(self, options: LandmarkerOptions):
        self.options = options
        self._rt = ModelRuntime.open(options.model_path, options.threads, inputs={"image": (1, SIZE, SIZE, 3)},
                                     outputs={"landmarks": (1, 1404), "presence": (1, 1)},
                                     what="FaceMesh (468 landmarks)")

    @classmethod
    def create(cls, options: LandmarkerOptions) -> "FaceLandmarker":
        return cls(options)

    @property
    def runtimes(self) -> tuple[ModelRuntime, ...]:
        return (self._rt,)

    def wipe(self) -> None:
        self._rt.wipe()

    def detect(self, rgb: np.ndarray, roi) -> LandmarkResult:
        m = crop_matrix(roi)
        crop = cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        # one pass uint8 -> float32 [0, 1] (the same float32 products as astype() then * (1 / 255))
        self._rt.set("image", np.multiply(crop, _INV255, dtype=np.float32)[None])
        self._rt.invoke()
        raw = self._rt.get("landmarks").reshape(468, 3).astype(np.float64)
        logit = float(self._rt.get("presence").reshape(-1)[0])
        presence = 1.0 / (1.0 + math.exp(-max(-80.0, min(80.0, logit))))
        inv = cv2.invertAffineTransform(m)
        xy = raw[:, :2] @ inv[:, :2].T + inv[:, 2]
        k = roi[2] / SIZE
        lm = np.concatenate([xy, raw[:, 2:3] * k], axis=1).astype(np.float32)
        return LandmarkResult(lm, presence, tuple(float(v) for v in roi))


# EAR segments of both eyes as index pairs into lm: per eye |p2-p6|, |p3-p5|, |p1-p4|
_EAR_A = np.array([e[i] for e in (RIGHT_EYE, LEFT_EYE) for i in (1, 2, 0)])
_EAR_B = np.array([e[i] for e in (RIGHT_EYE, LEFT_EYE) for i in (5, 4, 3)])
_INV255 = np.float32(1.0 / 255.0)


def _segment_lengths(a: np.ndarray, b: np.ndarray) -> list[float]:
    """|a_i - b_i| of (k, 2) float64 rows, as floats: sqrt(dx*dx + dy*dy), which is what
    np.linalg.norm gives for a 2-vector (checked bit for bit in tests/test_landmarks.py)."""
    d = a - b
    return np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]).tolist()


def _ear3(n) -> float:
    """(|p2-p6| + |p3-p5|) / (2 |p1-p4|) from the three segment lengths."""
    return (n[0] + n[1]) / max(2.0 * n[2], 1e-6)


def eye_aspect_ratio(lm: np.ndarray) -> float:
    """Mean EAR of both eyes: (|p2-p6| + |p3-p5|) / (2 |p1-p4|), 2-D frame pixels."""
    n = _segment_lengths(lm[_EAR_A, :2].astype(np.float64), lm[_EAR_B, :2].astype(np.float64))
    return (_ear3(n[:3]) + _ear3(n[3:])) / 2.0


_MODEL_IDX_A = np.array(_MODEL_IDX)
_CAMS: dict[tuple[int, int], np.ndarray] = {}


def _camera_matrix(w: int, h: int) -> np.ndarray:
    """The pinhole camera of head_pose (focal = the longer side, centre = the frame centre), made once
    per frame size (read-only: solvePnP does not write it)."""
    cam = _CAMS.get((w, h))
    if cam is None:
        f = float(max(w, h))
        cam = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]], np.float64)
        cam.setflags(write=False)
        _CAMS[(w, h)] = cam
    return cam


def head_pose(lm: np.ndarray, frame_shape) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from solvePnP (focal = frame width, centre = frame centre).

    yaw > 0: subject turned to their own left; pitch > 0: looking up; roll > 0: the line from the
    subject's right eye to their left eye rotates clockwise in the image (head tilts to the subject's
    left shoulder, as seen unmirrored)."""
    h, w = frame_shape[:2]
    f = float(max(w, h))
    cam = _camera_matrix(w, h)
    img = lm[_MODEL_IDX_A, :2].astype(np.float64)
    # SQPNP finds the global minimum; plain ITERATIVE without a guess flips to a mirrored solution
    # on strongly turned heads (measured on the head-pose clips: yaw -51 reported as +66, roll 177).
    ok, rvec, tvec = False, None, None
    if hasattr(cv2, "SOLVEPNP_SQPNP"):
        ok, rvec, tvec = cv2.solvePnP(_MODEL_3D, img, cam, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        io = float(np.linalg.norm(img[3] - img[2])) or 1.0
        tz = f * 450.0 / io
        t0 = np.array([(img[0, 0] - w / 2) * tz / f, (img[0, 1] - h / 2) * tz / f, tz]).reshape(3, 1)
        ok, rvec, tvec = cv2.solvePnP(_MODEL_3D, img, cam, None, np.zeros((3, 1)), t0, True,
                                      cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return 0.0, 0.0, 0.0
    r, _ = cv2.Rodrigues(rvec)
    # R = Rz(roll) . Rx(pitch') . Ry(yaw'): yaw about the head's own vertical axis first, roll about
    # the camera axis last, so tilting the head (or the camera) changes roll only, not yaw/pitch.
    yaw = math.degrees(math.atan2(r[2, 0], r[2, 2]))                 # nose towards image right -> +
    pitch = -math.degrees(math.asin(max(-1.0, min(1.0, r[2, 1]))))   # nose up -> +
    roll = math.degrees(math.atan2(-r[0, 1], r[1, 1]))               # eye line clockwise -> +
    return yaw, pitch, roll


# ---------------------------------------------------------------- iris / eye-contour refinement
# MediaPipe's IrisLandmarkCpu: square ROI 2.3x the eye-corner distance, rotated by the corners,
# 64x64, RGB in [0, 1]; the eye whose corners are 362/263 (subject's left) is flipped horizontally
# because the model was trained on the other eye only. The first 16 of the 71 contour points map to
# FaceMesh 33, 7, 163, 144, 145, 153, 154, 155, 133 (lower lid) and 246, 161, 160, 159, 158, 157, 173
# (upper lid) (MediaPipe UpdateFaceLandmarksCalculator), so EAR uses contour points 0, 11, 13, 8, 5, 3.
IRIS_SIZE = 64
IRIS_SCALE = 2.3
_EYES = ((33, 133, False), (362, 263, True))   # (corner a, corner b, flip)
_CONTOUR_EAR = (0, 11, 13, 8, 5, 3)
_CONTOUR_A = np.array([_CONTOUR_EAR[i] for i in (1, 2, 0)])
_CONTOUR_B = np.array([_CONTOUR_EAR[i] for i in (5, 4, 3)])


@dataclass(frozen=True)
class EyeRefinerOptions:
    model_path: str
    threads: int = 1
    alternate: bool = False   # refine one eye per frame, in turn; the other keeps its last refined EAR


@dataclass
class EyeResult:
    """Eye aspect ratios from the iris model's refined lids (subject's right and left eye)."""
    right: float
    left: float

    @property
    def mean(self) -> float:
        return 0.5 * (self.right + self.left)


class EyeRefiner:
    """Iris model on both eyes; `ear(rgb, landmarks)` -> EyeResult(right EAR, left EAR) from the refined lids.

    FaceMesh's own eyelid points barely move on long closures (measured on the blink video: EAR
    0.22-0.24 with the eyes shut), the iris model's contour does (0.12-0.25 shut vs 0.33-0.40 open)."""

    def __init__(self, options: EyeRefinerOptions):
        self.options = options
        self.reset()
        self._rt = ModelRuntime.open(options.model_path, options.threads,
                                     inputs={"image": (1, IRIS_SIZE, IRIS_SIZE, 3)},
                                     outputs={"contours": (1, 213), "iris": (1, 15)},
                                     what="MediaPipe iris landmarks")

    @classmethod
    def create(cls, options: EyeRefinerOptions) -> "EyeRefiner":
        return cls(options)

    @property
    def runtimes(self) -> tuple[ModelRuntime, ...]:
        return (self._rt,)

    def wipe(self) -> None:
        self._rt.wipe()

    def reset(self) -> None:
        """Forget the alternating state (new track or new session)."""
        self._turn, self._last = 0, [None, None]

    def ear(self, rgb: np.ndarray, lm: np.ndarray) -> EyeResult:
        if not self.options.alternate:
            return EyeResult(self._eye_ear(rgb, lm, *_EYES[0]), self._eye_ear(rgb, lm, *_EYES[1]))
        # half the iris cost: one eye per frame, in turn; both eyes close together in a blink, so a
        # closure shows on its first frame and the other eye follows one frame later
        i = self._turn % 2
        self._turn += 1
        self._last[i] = self._eye_ear(rgb, lm, *_EYES[i])
        other = self._last[1 - i] if self._last[1 - i] is not None else self._last[i]
        return EyeResult(self._last[0], other) if i == 0 else EyeResult(other, self._last[1])

    def _eye_ear(self, rgb: np.ndarray, lm: np.ndarray, a: int, b: int, flip: bool) -> float:
        pa, pb = lm[a, :2].astype(np.float64), lm[b, :2].astype(np.float64)
        ang = math.atan2(pb[1] - pa[1], pb[0] - pa[0])
        c = (pa + pb) / 2
        side = max(float(np.linalg.norm(pb - pa)) * IRIS_SCALE, 4.0)
        m = crop_matrix((c[0], c[1], side, ang), IRIS_SIZE)
        crop = cv2.warpAffine(rgb, m, (IRIS_SIZE, IRIS_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        if flip:
            crop = crop[:, ::-1]
        self._rt.set("image", np.multiply(crop, _INV255, dtype=np.float32)[None])
        self._rt.invoke()
        e = self._rt.get("contours").reshape(71, 3)[:16, :2]
        # flip does not change distances; |p2-p6|, |p3-p5|, |p1-p4| of the lid points
        return _ear3(_segment_lengths(e[_CONTOUR_A].astype(np.float64), e[_CONTOUR_B].astype(np.float64)))
