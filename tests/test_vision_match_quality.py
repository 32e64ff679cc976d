"""Quality gate on real faces: each gate fires on the defect it is for and not on a good face."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from device.config import QualityConfig
from device.vision.align import align_face
from device.vision.detect import DetectorOptions, FaceDetector
from device.vision.quality import BestFrames, assess


@pytest.fixture(scope="module")
def face_frame(model_dir, shared_data):
    det = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))
    img = cv2.cvtColor(cv2.imread(str(shared_data / "lfw-dev" / "images" / "Aaron_Sorkin_0001.jpg")), cv2.COLOR_BGR2RGB)
    frame = cv2.resize(img, (300, 300), interpolation=cv2.INTER_CUBIC)
    f = det.detect(frame).largest()
    return det, frame, f


def test_good_face_passes(face_frame):
    _, frame, f = face_frame
    r = assess(frame, f, align_face(frame, f.keypoints), 3.0, -2.0, 0.3, QualityConfig())
    assert r.ok and r.failed == () and 0 < r.score <= 1
    assert 40 < r.brightness < 220 and r.sharpness > QualityConfig().min_sharpness


def test_each_gate_fires(face_frame):
    det, frame, f = face_frame
    cfg = QualityConfig()
    al = align_face(frame, f.keypoints)
    assert "yaw" in assess(frame, f, al, 35.0, 0, 0.3, cfg).failed
    assert "pitch" in assess(frame, f, al, 0, -30.0, 0.3, cfg).failed
    assert "eyes_closed" in assess(frame, f, al, 0, 0, 0.08, cfg).failed
    blurred = cv2.GaussianBlur(frame, (0, 0), 6)
    rb = assess(blurred, f, align_face(blurred, f.keypoints), 0, 0, 0.3, cfg)
    assert rb.failed == ("blur",)
    dark = (frame * 0.15).astype(np.uint8)
    assert "too_dark" in assess(dark, f, align_face(dark, f.keypoints), 0, 0, 0.3, cfg).failed
    bright = np.clip(frame.astype(int) + 170, 0, 255).astype(np.uint8)
    assert "too_bright" in assess(bright, f, align_face(bright, f.keypoints), 0, 0, 0.3, cfg).failed
    from dataclasses import replace
    big_min = replace(cfg, min_face_px=int(f.width) + 20)     # this face is then too small
    assert assess(frame, f, al, 0, 0, 0.3, big_min).failed == ("face_too_small",)
    cut = np.ascontiguousarray(frame[:, 110:])
    fc = det.detect(cut).largest()
    assert fc is not None and fc.cut_off
    assert "face_cut_off" in assess(cut, fc, align_face(cut, fc.keypoints), 0, 0, 0.3, cfg).failed
    # unknown pose / eyes are not checked
    assert assess(frame, f, al, None, None, None, cfg).ok


def test_sharper_frontal_frame_scores_higher(face_frame):
    _, frame, f = face_frame
    cfg = QualityConfig()
    good = assess(frame, f, align_face(frame, f.keypoints), 0, 0, 0.3, cfg).score
    soft = cv2.GaussianBlur(frame, (0, 0), 1.5)
    worse = assess(soft, f, align_face(soft, f.keypoints), 15, 10, 0.3, cfg).score
    assert good > worse


def test_best_frames_keeps_top_k_and_wipes():
    bf = BestFrames(2)
    crops = [np.full((112, 112, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    for s, c in zip((0.2, 0.9, 0.5, 0.1), crops):
        bf.offer(s, c)
    best = bf.crops()
    assert len(bf) == 2 and [int(c[0, 0, 0]) for c in best] == [20, 30]
    assert "112" not in repr(bf)
    bf.wipe()
    assert len(bf) == 0 and not best[0].any()
