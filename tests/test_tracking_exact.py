"""The per-frame path's cheaper helpers (issue 17) give the same numbers, bit for bit, as the forms they
replaced: the blink baseline's percentile, EAR, face geometry, keypoints from landmarks, the iris EAR's
segment lengths and the PAD crop made once for both models. Checked on real FaceMesh landmarks of the
head-pose clips and on random ones; the old forms are written out here as the reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from device.vision import landmarks as L
from device.vision import tracking as T
from device.vision.blink import percentile_linear


# ------------------------------------------------------------------ the replaced forms (reference)
def ref_eye_aspect_ratio(lm):
    out = []
    for idx in (L.RIGHT_EYE, L.LEFT_EYE):
        p = lm[list(idx), :2].astype(np.float64)
        v = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
        h = 2.0 * np.linalg.norm(p[0] - p[3])
        out.append(v / max(h, 1e-6))
    return float(np.mean(out))


def ref_keypoints(lm):
    return np.array([
        lm[[33, 133], :2].mean(0), lm[[362, 263], :2].mean(0), lm[1, :2],
        lm[[13, 14], :2].mean(0), lm[234, :2], lm[454, :2]], np.float32)


def ref_face_geometry(lm):
    eyes = lm[[33, 133, 362, 263], :2].mean(0)
    mouth = lm[[13, 14], :2].mean(0)
    io = np.linalg.norm(lm[[362, 263], :2].mean(0) - lm[[33, 133], :2].mean(0))
    return float(np.linalg.norm(mouth - eyes) / max(io, 1e-6))


def ref_contour_ear(e):
    p = e[list(L._CONTOUR_EAR)].astype(np.float64)
    v = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
    return float(v / max(2.0 * np.linalg.norm(p[0] - p[3]), 1e-6))


def ref_roi(lm, scale=L.SCALE):
    re, le = lm[L.R_EYE_OUTER, :2], lm[L.L_EYE_OUTER, :2]
    angle = math.atan2(le[1] - re[1], le[0] - re[0])
    c, s = math.cos(-angle), math.sin(-angle)
    pts = lm[:, :2]
    centre = pts.mean(0)
    d = pts - centre
    rx = d[:, 0] * c - d[:, 1] * s
    ry = d[:, 0] * s + d[:, 1] * c
    w, h = rx.max() - rx.min(), ry.max() - ry.min()
    mx, my = 0.5 * (rx.max() + rx.min()), 0.5 * (ry.max() + ry.min())
    ca, sa = math.cos(angle), math.sin(angle)
    return (float(centre[0] + mx * ca - my * sa), float(centre[1] + mx * sa + my * ca),
            float(max(w, h) * scale), angle)


def ref_head_pose_points(lm, shape):
    h, w = shape[:2]
    f = float(max(w, h))
    return (np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]], np.float64),
            lm[list(L._MODEL_IDX), :2].astype(np.float64))


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).dtype == np.asarray(b).dtype


def _check_landmarks(lm: np.ndarray) -> None:
    assert L.eye_aspect_ratio(lm) == ref_eye_aspect_ratio(lm)
    assert _same(T.keypoints_from_landmarks(lm), ref_keypoints(lm))
    assert T.face_geometry(lm) == ref_face_geometry(lm)
    assert L.roi_from_landmarks(lm) == ref_roi(lm)
    cam, img = ref_head_pose_points(lm, (720, 1280, 3))
    assert _same(L._camera_matrix(1280, 720), cam)
    assert _same(lm[L._MODEL_IDX_A, :2].astype(np.float64), img)


# ------------------------------------------------------------------ tests
def test_helpers_equal_the_replaced_forms_on_random_landmarks():
    rng = np.random.default_rng(17)
    for i in range(400):
        lm = rng.uniform(0, 1280, size=(468, 3)).astype(np.float32)
        if i % 4 == 0:       # a face-sized cloud (small differences, where rounding order shows)
            lm = (rng.normal(640, 60, size=(468, 3))).astype(np.float32)
        _check_landmarks(lm)
        e = rng.normal(32, 10, size=(16, 2)).astype(np.float32)
        assert L._ear3(L._segment_lengths(e[L._CONTOUR_A].astype(np.float64),
                                          e[L._CONTOUR_B].astype(np.float64))) == ref_contour_ear(e)


def test_helpers_equal_the_replaced_forms_on_real_landmarks(model_dir, shared_data):
    """FaceMesh on every frame of the head-pose clips (three clips, turned and rolled heads)."""
    from tests.conftest import need
    from kyc_tools.eval.commands_liveness import make_tracker
    from kyc_tools.eval.liveness import clips
    tr = make_tracker(model_dir, pad=False, iris=False)
    seen = 0
    for _name, frames in clips(need(shared_data / "headpose")):
        tr.reset()
        for t, load in frames:
            obs = tr.observe(load(), t)
            if obs.landmarks is not None:
                _check_landmarks(obs.landmarks)
                seen += 1
    assert seen >= 60


def test_percentile_linear_is_numpys_bit_for_bit():
    rng = np.random.default_rng(3)
    for i in range(3000):
        n = int(rng.integers(1, 100))
        x = list(rng.uniform(0.1, 0.5, size=n)) if i % 2 else list(rng.normal(size=n) * 10 ** rng.uniform(-3, 3))
        for q in (70.0, 0.0, 50.0, 95.0, 100.0, 33.3):
            assert percentile_linear(sorted(x), q) == float(np.percentile(x, q))
    assert math.isnan(percentile_linear(sorted([0.3, float("nan"), 0.2]), 70.0))
    assert percentile_linear([0.25], 70.0) == 0.25


def test_pad_logit4_equals_four_separate_crops(model_dir, shared_data):
    """The scale-1.0 crop is made once for both MiniFASNets: same p_real as cropping it for each."""
    from tests.conftest import need
    from device import models as models_mod
    from device.camera.replay import decode_video
    from device.vision.antispoof import AntiSpoof, AntiSpoofOptions, LOGIT4, _logit
    from device.vision.detect import DetectorOptions, FaceDetector
    video = need(shared_data / "blink" / "demo_old.mp4")
    paths = models_mod.resolve(model_dir, "float")
    pad = AntiSpoof.create(AntiSpoofOptions((str(paths["antispoof_v2"]), str(paths["antispoof_v1se"])),
                                            fusion="logit4"))
    det = FaceDetector.create(DetectorOptions(str(paths["detector"])))
    checked = 0
    for i, (rgb, _t) in enumerate(decode_video(video, limit=40)):
        if i % 8:
            continue
        face = det.detect(rgb).largest()
        assert face is not None
        got = pad.score(rgb, face.box)
        x0, y0, x1, y1 = face.box
        xywh = (x0, y0, x1 - x0, y1 - y0)
        per = [float(pad._run(rt, rgb, xywh, s)[1]) for rt, s in zip(pad._models, pad.options.scales)]
        per += [float(pad._run(rt, rgb, xywh, 1.0)[1]) for rt in pad._models]
        z = LOGIT4[1] + sum(w * _logit(p) for w, p in zip(LOGIT4[0], per))
        assert got.per_model == tuple(per)
        assert got.p_real == pytest.approx(float(1.0 / (1.0 + np.exp(-z))), abs=0.0)
        checked += 1
    assert checked == 5


# ------------------------------------------------------------------ quality gate (align + occlusion cues)
def ref_mesh_points(landmarks):
    from device.vision.align import MESH_R_EYE, MESH_L_EYE, MESH_NOSE_TIP, MESH_MOUTH_R, MESH_MOUTH_L
    lm = np.asarray(landmarks, np.float64)
    return np.stack([lm[list(MESH_R_EYE), :2].mean(0), lm[list(MESH_L_EYE), :2].mean(0),
                     lm[MESH_NOSE_TIP, :2], lm[MESH_MOUTH_R, :2], lm[MESH_MOUTH_L, :2]])


def ref_lower_texture(aligned):
    import cv2
    from device.vision import occlusion as O
    a = np.ascontiguousarray(aligned)
    if (a[O._LOWER].max(axis=2) == 0).mean() > 0.1:
        return None
    grey = cv2.GaussianBlur(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    gx = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3))
    ref = float(gx[O._EYES].mean())
    return None if ref < O.MIN_REF_TEXTURE else float(gx[O._LOWER].mean()) / ref


def ref_covered_fraction(aligned):
    import cv2
    from device.vision import occlusion as O
    ycc = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ref_px = ycc[O._REF].reshape(-1, 3)
    ref_px = ref_px[ref_px[:, 0] > 25]
    if len(ref_px) < 50:
        return None
    ref = np.median(ref_px, axis=0)
    if np.hypot(ref[1] - 128.0, ref[2] - 128.0) < O.MIN_CHROMA:
        return None
    low = ycc[O._LOWER].reshape(-1, 3)
    dcr, dcb = low[:, 1] - ref[1], low[:, 2] - ref[2]
    skin = (dcr >= -O.CR_BELOW) & (dcr <= O.CR_ABOVE) & (np.abs(dcb) <= O.CB_TOL)
    return float((~skin).mean())


def test_quality_helpers_equal_the_replaced_forms():
    """mesh_points (36 points converted, not 468), lower_texture (filters a window around its regions),
    covered_fraction (converts the rows it reads): same values as on the whole crop."""
    import cv2
    from device.vision import align as A
    from device.vision import occlusion as O
    rng = np.random.default_rng(11)
    for i in range(600):
        lm = rng.normal(640, 80, size=(468, 3)).astype(np.float32)
        assert _same(A.mesh_points(lm), ref_mesh_points(lm))
        a = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
        if i % 2:                      # smooth, skin-like crops too (where the thresholds are crossed)
            a = cv2.GaussianBlur(a, (0, 0), 3 + i % 5)
        if i % 7 == 0:
            a[95:, :] = 0              # a warp past the frame edge
        assert O.lower_texture(a) == ref_lower_texture(a)
        assert O.covered_fraction(a) == ref_covered_fraction(a)


def test_glue_tool_dump_is_deterministic_and_overhead_adds_up(model_dir, shared_data):
    """kyc_tools.bench.glue: the per-frame dump docs/performance.md compares trees with is the same on two
    runs and has one row per frame plus a summary; the overhead split is observe = invokes + glue."""
    from tests.conftest import need
    from kyc_tools.bench import glue
    clip = need(shared_data / "headpose" / "head-pose-face-detection-female")
    a = glue.dump([clip], model_dir, "float")
    b = glue.dump([clip], model_dir, "float")
    assert a == b and len(a) == 24 and a[-1][1] == "end"
    assert sum(1 for r in a[:-1] if r[5] is not None) == 23        # landmarks (as a hash) on every frame
    assert all(isinstance(r[5], str) and len(r[5]) == 16 for r in a[:-1])
    o = glue.overhead(clip, model_dir, "float", reps=1)
    assert o["observe"]["n"] == 22 and o["invokes"]["mean_ms"] > 0
    assert o["glue"]["mean_ms"] == pytest.approx(o["observe"]["mean_ms"] - o["invokes"]["mean_ms"], abs=2e-3)
