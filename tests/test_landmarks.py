"""FaceMesh landmarks, head pose and turns on the real head-pose clips (../shared/data/headpose)."""
from __future__ import annotations


import cv2
import pytest

from kyc_tools.eval.commands_liveness import make_tracker, model_files
from kyc_tools.eval.liveness import analyse, clips
from device.vision.detect import DetectorOptions, FaceDetector
from device.vision.landmarks import (FaceLandmarker, LandmarkerOptions, eye_aspect_ratio, head_pose,
                                     roi_from_keypoints)


@pytest.fixture(scope="module")
def headpose(shared_data):
    from tests.conftest import need
    return dict(clips(need(shared_data / "headpose")))


@pytest.fixture(scope="module")
def tracker(model_dir):
    return make_tracker(model_dir, pad=False, iris=True)


@pytest.fixture(scope="module")
def results(headpose, tracker):
    return {k: analyse(v, tracker) for k, v in headpose.items()}


def test_female_clip_every_turn_found_in_order(results):
    """She starts turned to her right (~-50 deg), turns to her left (~+40), then right again."""
    r = results["head-pose-face-detection-female"]
    assert r["frames_with_face"] == r["frames"] == 23
    turns = [(t["direction"], t["t_peak"]) for t in r["turns"]]
    assert [d for d, _ in turns] == ["right", "left", "right"], turns
    assert turns[0][1] < 0.75 and 0.8 <= turns[1][1] <= 1.5 and turns[2][1] >= 1.6
    assert r["yaw_range"][0] < -40 and r["yaw_range"][1] > 30


def test_male_clip_small_movements_are_not_turns(results):
    r = results["head-pose-face-detection-male"]
    assert r["turns"] == [] and r["faces_max"] == 1
    assert -8 < r["yaw_range"][0] and r["yaw_range"][1] < 8


def test_two_people_rolling_heads(results):
    r = results["head-pose-face-detection-female-and-male"]
    assert r["faces_max"] == 2            # both faces counted (multiple_faces)
    assert r["turns"] == []               # they tilt, they do not turn
    assert any(abs(t["peak_roll"]) >= 35 for t in r["tilts"]), r["tilts"]


def test_rotated_crop_follows_a_rolled_face(model_dir, shared_data):
    """The same face rotated by 50 deg in the image: the crop is rotated upright by the eye
    keypoints, so the landmarks still hold (presence, EAR) and the roll shows the rotation."""
    from tests.conftest import need
    files = model_files(model_dir)
    det = FaceDetector.create(DetectorOptions(str(files["detector"])))
    lmk = FaceLandmarker.create(LandmarkerOptions(str(files["landmarks"])))
    bgr = cv2.imread(str(need(shared_data / "headpose" / "head-pose-face-detection-male" / "0005.jpg")))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    out = []
    for angle in (0, 50):
        h, w = rgb.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        img = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        f = max(det.detect(img).faces, key=lambda f: f.width)
        r = lmk.detect(img, roi_from_keypoints(f.box, f.keypoints))
        assert r.presence > 0.9 and r.landmarks.shape == (468, 3)
        out.append((eye_aspect_ratio(r.landmarks), head_pose(r.landmarks, img.shape)))
    (ear0, (y0, p0, r0)), (ear1, (y1, p1, r1)) = out
    assert abs(ear1 - ear0) < 0.05
    # cv2 angle > 0 rotates the image counter-clockwise: the eye line turns counter-clockwise
    assert r1 - r0 == pytest.approx(-50, abs=8)
    assert abs(y1 - y0) < 10


def test_presence_low_without_a_face(model_dir, shared_data):
    from tests.conftest import need
    files = model_files(model_dir)
    lmk = FaceLandmarker.create(LandmarkerOptions(str(files["landmarks"])))
    bgr = cv2.imread(str(need(shared_data / "headpose" / "head-pose-face-detection-male" / "0005.jpg")))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    wall = lmk.detect(rgb, (40.0, 40.0, 70.0, 0.0))      # top-left corner: plain wall
    assert wall.presence < 0.5
