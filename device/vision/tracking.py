"""Per-frame face tracking for a liveness session: detector + FaceMesh (+ iris lids) + pose + blink + PAD.

    tr = FaceTracker.create(TrackerOptions(detector_path, landmark_path, pad_paths=(v2, v1se) or None,
                                           iris_path=... or None, threads=1, quality=cfg.quality))
    obs = tr.observe(rgb, t)     # t: monotonic seconds (or media time)
    tr.reset()                   # new session: drops all state

Tracking (as MediaPipe does): while the previous frame's landmarks had presence >= `min_presence`,
the next crop comes from those landmarks and the detector is skipped. The detector runs on the
first frame, after the face is lost (presence drops), and every `redetect_every` frames to count the
faces in view (multiple_faces). A face counts when its box is at least `count_min_rel` x the tracked
face's width and at least `count_min_px` wide, so far-away background faces do not count.

Observation (scores and geometry only; never pixels):
- t, faces (faces in view at the last detection; 0 when the face is lost), box (x0,y0,x1,y1) px,
  keypoints (6,2) px (detector order: subject's right eye, left eye, nose tip, mouth, right ear,
  left ear; from the landmarks on tracked frames, for alignment), landmarks (468,3) px or None,
  presence (FaceMesh presence, 0 when no face);
- yaw, pitch, roll: degrees, exponentially smoothed (time constant `pose_tau_s`); yaw > 0 = the
  subject turned to THEIR left, pitch > 0 = looking up (see device.vision.landmarks.head_pose);
  raw_yaw/raw_pitch/raw_roll unsmoothed;
- ear: eye aspect ratio (mean of both eyes; iris-contour EAR when the iris model is loaded, else
  FaceMesh EAR). Without the iris model blink detection is much weaker (blink video: 7 events of
  which 3 wrong, vs 10/10 with it) - deploy iris_landmark.tflite; ear_mesh: FaceMesh EAR;
  eyes_closed: blink detector's state; blink: a Blink that completed on this frame (t_start, t_end) or None;
- pad_real: MiniFASNet ensemble real-probability, computed only on near-frontal frames
  (|yaw| <= quality.max_yaw_deg, |pitch| <= quality.max_pitch_deg, face >= quality.min_face_px)
  and at most once every `pad_every_s` seconds (default 0.2 s: ~5 Hz); None otherwise;
- frontal: the near-frontal test above; detected: the detector ran on this frame.

Session counters on the tracker: faces_seen_max, max_gap_s (longest stretch without a face since the
first face), pad_scores (all pad_real values), blinks (all completed blinks), frames, timings (ms).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from device.config import QualityConfig
from device.vision.blink import Blink, BlinkDetector
from device.vision.detect import DetectorOptions, FaceDetector
from device.vision.landmarks import (CHIN, FaceLandmarker, LandmarkerOptions, EyeRefiner, EyeRefinerOptions,
                                     eye_aspect_ratio, head_pose, roi_from_keypoints, roi_from_landmarks)


@dataclass(frozen=True)
class TrackerOptions:
    detector_path: str
    landmark_path: str
    pad_paths: tuple[str, str] | None = None
    iris_path: str | None = None     # the manifest's `iris` model (device.models.resolve); None: FaceMesh EAR only
    threads: int = 1
    quality: QualityConfig = field(default_factory=QualityConfig)
    detector_variant: str = "short_range"
    min_detection_score: float = 0.5
    min_presence: float = 0.5
    redetect_every: int = 10
    count_min_rel: float = 0.4
    count_min_px: float = 40.0
    pose_tau_s: float = 0.08
    pad_every_s: float = 0.2
    pad_fusion: str = "mean2"         # device.vision.antispoof fusion ("mean2" | "logit4"); the suite passes the config's
    iris_alternate: bool = True       # iris model on one eye per frame, in turn (half the cost; 10/10 blinks kept)
    blink_min_s: float = 0.04
    blink_max_s: float = 1.5


@dataclass
class Observation:
    t: float
    faces: int = 0
    box: tuple[float, float, float, float] | None = None
    keypoints: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    presence: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    # a face the detector found on this frame but FaceMesh rejected (presence below min_presence), as
    # (box, keypoints): what a mask over the lower face typically does; for the face_covered check
    unmeshed: tuple | None = None
    raw_yaw: float = 0.0
    raw_pitch: float = 0.0
    raw_roll: float = 0.0
    ear: float | None = None
    ear_mesh: float | None = None
    eyes_closed: bool = False
    blink: Blink | None = None
    pad_real: float | None = None
    frontal: bool = False
    detected: bool = False

    @property
    def has_face(self) -> bool:
        return self.landmarks is not None

    def __repr__(self) -> str:   # scores only
        return (f"Observation(t={self.t:.3f}, faces={self.faces}, presence={self.presence:.2f}, "
                f"yaw={self.yaw:.1f}, pitch={self.pitch:.1f}, ear={self.ear}, pad_real={self.pad_real})")


# The means below are written out as sums of rows: for float32 rows, (a + b) / 2 and (((a + b) + c) + d) / 4
# are what ndarray.mean(0) computes for 2 and 4 rows, bit for bit (same additions in the same order, an
# exact division), without its per-call overhead (~5 us each, 9 per frame). tests/test_tracking_exact.py
# checks them against the mean() forms on real and random landmarks.
_TWO, _FOUR = np.float32(2), np.float32(4)


def keypoints_from_landmarks(lm: np.ndarray) -> np.ndarray:
    """BlazeFace-style 6 keypoints from FaceMesh points (eye centres, nose tip, mouth centre, ears)."""
    p = lm[:, :2]
    return np.array([
        (p[33] + p[133]) / _TWO, (p[362] + p[263]) / _TWO, p[1],
        (p[13] + p[14]) / _TWO, p[234], p[454]], np.float32)


def _box_from_landmarks(lm: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = lm[:, 0].min(), lm[:, 1].min()
    x1, y1 = lm[:, 0].max(), lm[:, 1].max()
    return (float(x0), float(y0), float(x1), float(y1))


def face_geometry(lm: np.ndarray) -> float:
    """(eye midpoint -> mouth centre) / inter-ocular distance; constant through a real blink."""
    p = lm[:, :2]
    a, b, c, d = p[33], p[133], p[362], p[263]
    eyes = (((a + b) + c) + d) / _FOUR
    mouth = (p[13] + p[14]) / _TWO
    io = np.linalg.norm((c + d) / _TWO - (a + b) / _TWO)
    return float(np.linalg.norm(mouth - eyes) / max(io, 1e-6))


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


class FaceTracker:
    def __init__(self, options: TrackerOptions):
        self.options = options
        o = options
        self.detector = FaceDetector.create(DetectorOptions(o.detector_path, variant=o.detector_variant,
                                                            min_score=o.min_detection_score, threads=o.threads))
        self.landmarker = FaceLandmarker.create(LandmarkerOptions(o.landmark_path, threads=o.threads))
        self.iris_path = o.iris_path
        self.eyes = (EyeRefiner.create(EyeRefinerOptions(self.iris_path, o.threads, alternate=o.iris_alternate))
                     if self.iris_path else None)
        self.pad = None
        if o.pad_paths:
            from device.vision.antispoof import AntiSpoof, AntiSpoofOptions
            self.pad = AntiSpoof.create(AntiSpoofOptions(tuple(o.pad_paths), threads=o.threads, fusion=o.pad_fusion))
        self.blinker = BlinkDetector(o.blink_min_s, o.blink_max_s, min_open_mesh=o.quality.min_ear)
        self.reset()

    @classmethod
    def create(cls, options: TrackerOptions) -> "FaceTracker":
        return cls(options)

    def reset(self) -> None:
        if getattr(self, "eyes", None) is not None:
            self.eyes.reset()
        self._roi = None
        self._last_box = None
        self._frame = 0
        self._faces = 0
        self._pose = None
        self._t_prev = None
        self._t_last_face = None
        self._t_last_pad = -1e9
        self.blinker.reset()
        self.faces_seen_max = 0
        self.max_gap_s = 0.0
        self.pad_scores: list[float] = []
        self.blinks: list[Blink] = []
        self.frames = 0
        self.timings: dict[str, list[float]] = {"detect": [], "landmarks": [], "iris": [], "pad": [], "frame": []}

    # ------------------------------------------------------------------ helpers
    def _count(self, faces, ref_w: float) -> int:
        o = self.options
        return sum(1 for f in faces if f.width >= max(o.count_min_px, o.count_min_rel * ref_w))

    def _detect(self, rgb):
        t0 = time.perf_counter()
        faces = self.detector.detect(rgb).faces
        self.timings["detect"].append((time.perf_counter() - t0) * 1000)
        return faces

    def _smooth(self, raw, t):
        if self._pose is None or self._t_prev is None:
            self._pose = np.array(raw, float)
        else:
            dt = max(t - self._t_prev, 0.0)
            a = 1.0 - math.exp(-dt / self.options.pose_tau_s) if self.options.pose_tau_s > 0 else 1.0
            self._pose = self._pose + a * (np.array(raw, float) - self._pose)
        return self._pose

    # ------------------------------------------------------------------ main
    def observe(self, rgb: np.ndarray, t: float) -> Observation:
        """One frame -> Observation (see the module docstring). `timings["frame"]` holds the ms per call."""
        t_start = time.perf_counter()
        try:
            return self._observe(rgb, t)
        finally:
            self.timings["frame"].append((time.perf_counter() - t_start) * 1000)

    def _observe(self, rgb: np.ndarray, t: float) -> Observation:
        o = self.options
        obs = Observation(t=t)
        self.frames += 1
        self._frame += 1
        face = None
        dets = []
        ran_detector = False
        if self._roi is None or (o.redetect_every and self._frame % o.redetect_every == 0):
            dets = self._detect(rgb)
            ran_detector = True
            if dets:
                if self._roi is not None and self._last_box is not None:
                    face = max(dets, key=lambda f: _iou(f.box, self._last_box))
                    if _iou(face.box, self._last_box) < 0.1:
                        face = None
                if face is None and self._roi is None:
                    face = max(dets, key=lambda f: f.width * f.height)
                ref = face.width if face is not None else max(f.width for f in dets)
                self._faces = self._count(dets, ref)
            else:
                # a periodic re-detection that misses (motion blur, a turned head) does not end the
                # track: the landmarks' presence decides below
                self._faces = 0
        lm_res = None
        if self._roi is not None:
            lm_res = self._landmarks(rgb, self._roi)
        if (lm_res is None or lm_res.presence < o.min_presence) and face is None and not ran_detector:
            dets = self._detect(rgb)
            ran_detector = True
            self._faces = self._count(dets, max((f.width for f in dets), default=0.0)) if dets else 0
        if (lm_res is None or lm_res.presence < o.min_presence) and face is None and dets:
            face = max(dets, key=lambda f: f.width * f.height)
        if (lm_res is None or lm_res.presence < o.min_presence) and face is not None:
            lm_res = self._landmarks(rgb, roi_from_keypoints(face.box, face.keypoints))
        obs.detected = ran_detector
        if lm_res is None or lm_res.presence < o.min_presence:
            self._roi = None
            self._last_box = None
            obs.presence = 0.0 if lm_res is None else lm_res.presence
            obs.faces = 0 if not ran_detector else self._faces
            if face is not None:
                obs.unmeshed = (face.box, face.keypoints)
            self._gap(t)
            obs.blink = self.blinker.update(t, None)
            self._t_prev = t
            return obs
        lm = lm_res.landmarks
        self._roi = roi_from_landmarks(lm)
        obs.landmarks = lm
        obs.presence = lm_res.presence
        obs.box = face.box if face is not None else _box_from_landmarks(lm)
        self._last_box = obs.box
        obs.keypoints = face.keypoints if face is not None else keypoints_from_landmarks(lm)
        obs.faces = max(self._faces, 1)
        self.faces_seen_max = max(self.faces_seen_max, obs.faces)
        self._gap(t, seen=True)
        raw = head_pose(lm, rgb.shape)
        obs.raw_yaw, obs.raw_pitch, obs.raw_roll = raw
        obs.yaw, obs.pitch, obs.roll = (float(v) for v in self._smooth(raw, t))
        obs.ear_mesh = eye_aspect_ratio(lm)
        ear_iris = None
        if self.eyes is not None:
            t0 = time.perf_counter()
            eyes = self.eyes.ear(rgb, lm)
            self.timings["iris"].append((time.perf_counter() - t0) * 1000)
            ear_iris = eyes.mean
        obs.ear = ear_iris if ear_iris is not None else obs.ear_mesh
        obs.blink = self.blinker.update(t, obs.ear_mesh, ear_iris, face_geometry(lm))
        obs.eyes_closed = self.blinker.closed
        if obs.blink is not None:
            self.blinks.append(obs.blink)
        q = o.quality
        bw = obs.box[2] - obs.box[0]
        obs.frontal = abs(obs.raw_yaw) <= q.max_yaw_deg and abs(obs.raw_pitch) <= q.max_pitch_deg and bw >= q.min_face_px
        if self.pad is not None and obs.frontal and t - self._t_last_pad >= o.pad_every_s:
            t0 = time.perf_counter()
            box = face.box if face is not None else self._pad_box(lm)
            obs.pad_real = self.pad.score(rgb, box).p_real
            self.timings["pad"].append((time.perf_counter() - t0) * 1000)
            self._t_last_pad = t
            self.pad_scores.append(obs.pad_real)
        self._t_prev = t
        return obs

    def _landmarks(self, rgb, roi):
        t0 = time.perf_counter()
        r = self.landmarker.detect(rgb, roi)
        self.timings["landmarks"].append((time.perf_counter() - t0) * 1000)
        return r

    @staticmethod
    def _pad_box(lm):
        """A BlazeFace-like box from landmarks (PAD crops are calibrated on detector boxes):
        square, eyes-to-chin high, centred between eye line and chin."""
        x0, y0, x1, y1 = _box_from_landmarks(lm)
        side = 0.92 * max(x1 - x0, lm[CHIN, 1] - min(lm[33, 1], lm[263, 1]) / 1.0)
        cx = 0.5 * (x0 + x1)
        cy = 0.5 * (y0 + y1) + 0.05 * side
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)

    def _gap(self, t, seen: bool = False):
        if seen:
            self._t_last_face = t
            return
        if self._t_last_face is not None:
            self.max_gap_s = max(self.max_gap_s, t - self._t_last_face)

    @property
    def runtimes(self) -> tuple:
        """Every interpreter the tracker holds (device.vision.runtime.ModelRuntime)."""
        parts = [self.detector, self.landmarker, self.eyes, self.pad]
        return tuple(rt for p in parts if p is not None for rt in p.runtimes)

    def wipe(self) -> None:
        """Zero-fill every model's input tensors and buffers (the last face crop each model saw)."""
        for p in (self.detector, self.landmarker, self.eyes, self.pad):
            if p is not None:
                p.wipe()

    def timing_summary(self) -> dict[str, float]:
        """Median ms per call of each stage (frame = a whole observe() call), plus the mean per frame."""
        out = {k: round(float(np.median(v)), 2) for k, v in self.timings.items() if v}
        if self.timings["frame"]:
            out["frame_mean"] = round(float(np.mean(self.timings["frame"])), 2)
        return out


def build_tracker(paths, *, threads: int = 1, pad: bool = True, iris: bool = True, **options) -> FaceTracker:
    """The one way to assemble a tracker from resolved model files (device.models.resolve: role -> path).
    pad/iris False (or the role missing from `paths` for iris) leave that model out; `options` are
    further TrackerOptions fields (quality, detector_variant, blink_min_s, ...)."""
    return FaceTracker.create(TrackerOptions(
        detector_path=str(paths["detector"]), landmark_path=str(paths["landmarks"]),
        pad_paths=(str(paths["antispoof_v2"]), str(paths["antispoof_v1se"])) if pad else None,
        iris_path=str(paths["iris"]) if (iris and paths.get("iris")) else None, threads=threads, **options))
