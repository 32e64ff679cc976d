"""BlazeFace detection on real faces: short and full range, too-small and cut-off faces, wrong model file."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import missing

from device.errors import ModelError
from device.vision.detect import DetectorOptions, FaceDetector

NAMES = ["Abel_Pacheco_0001.jpg", "Aaron_Sorkin_0001.jpg", "Aaron_Sorkin_0002.jpg"]


def _full_range_path(model_dir, shared):
    for p in (model_dir / "face_detection_full_range.tflite",
              shared / "models" / "alternatives" / "face_detection_full_range.tflite"):
        if p.exists():
            return p
    missing("full-range model missing")


@pytest.fixture(scope="module")
def faces(shared_data):
    d = shared_data / "lfw-dev" / "images"
    return [cv2.cvtColor(cv2.imread(str(d / n)), cv2.COLOR_BGR2RGB) for n in NAMES]


@pytest.fixture(scope="module")
def short(model_dir):
    return FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))


@pytest.fixture(scope="module")
def full(model_dir, shared):
    return FaceDetector.create(DetectorOptions(str(_full_range_path(model_dir, shared)), variant="full_range"))


def _paste(face, side, frame=(720, 1280), at=(200, 500)):
    canvas = np.full(frame + (3,), 90, np.uint8)
    s = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    y, x = at
    canvas[y:y + side, x:x + side] = s
    return canvas


def _check_geometry(f):
    kp = f.keypoints
    # subject's right eye is on the image's left, eyes above nose above mouth, all inside the box
    assert kp[0, 0] < kp[2, 0] < kp[1, 0]
    assert max(kp[0, 1], kp[1, 1]) < kp[2, 1] < kp[3, 1]
    x0, y0, x1, y1 = f.box
    assert (kp[:4, 0] > x0).all() and (kp[:4, 0] < x1).all() and (kp[:4, 1] > y0).all() and (kp[:4, 1] < y1).all()


def test_short_range_on_lfw_faces(short, faces):
    for img in faces:
        res = short.detect(img)
        assert len(res.faces) == 1, res.faces
        f = res.faces[0]
        assert f.score > 0.7 and not f.cut_off
        assert 60 < f.width < 150
        _check_geometry(f)


def test_frame_pixels_in_large_frame(short, faces):
    # the same face pasted at a known place in a 1280x720 frame comes back at that place
    frame = _paste(faces[0], 300, at=(200, 500))
    f = short.detect(frame).largest()
    ref = short.detect(faces[0]).largest()
    want = ref.keypoints[:4] * 2.0 + [500, 200]
    assert np.abs(f.keypoints[:4] - want).max() < 0.08 * f.width
    assert 0.8 < f.width / (2.0 * ref.width) < 1.2
    assert not f.cut_off


def test_full_range_finds_small_faces_short_range_misses(short, full, faces):
    small = _paste(faces[1], 100)             # face about 45 px wide in 1280x720
    assert short.detect(small).faces == []
    res = full.detect(small)
    assert len(res.faces) == 1
    f = res.faces[0]
    _check_geometry(f)
    assert 500 <= f.box[0] and f.box[2] <= 600 and 200 <= f.box[1] and f.box[3] <= 300
    assert len(full.detect(_paste(faces[1], 300)).faces) == 1   # and on a nearer face


def test_too_small_faces_are_dropped_and_counted(model_dir, shared, faces):
    det = FaceDetector.create(DetectorOptions(str(_full_range_path(model_dir, shared)), variant="full_range",
                                              min_face_px=80))
    res = det.detect(_paste(faces[1], 100))
    assert res.faces == [] and res.too_small == 1
    res = det.detect(_paste(faces[1], 300))
    assert len(res.faces) == 1 and res.too_small == 0


def test_cut_off_face_is_marked(short, faces):
    # shift the face so that its left part leaves the frame
    img = faces[0]
    frame = np.full((300, 300, 3), 90, np.uint8)
    frame[75:225, 0:100] = img[:, 50:150]
    res = short.detect(frame)
    assert res.faces, "half a face should still be found"
    assert res.faces[0].cut_off
    assert "cut_off" in repr(res.faces[0])
    whole = np.full((300, 300, 3), 90, np.uint8)
    whole[75:225, 75:225] = img
    assert not short.detect(whole).faces[0].cut_off


def test_no_face_in_blank_or_noise(short, full):
    rng = np.random.default_rng(1)
    for img in (np.zeros((480, 640, 3), np.uint8), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)):
        assert short.detect(img).faces == []
        assert full.detect(img).faces == []


def test_wrong_model_for_variant_is_a_model_error(model_dir, shared):
    with pytest.raises(ModelError, match="full_range"):
        FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite"), variant="full_range"))
    with pytest.raises(ModelError):
        FaceDetector.create(DetectorOptions(str(_full_range_path(model_dir, shared)), variant="short_range"))


def test_every_model_class_raises_one_model_error_naming_the_file(model_dir):
    """A wrong file for any model class is the same ModelError with the file name and the mismatch
    (it used to be ModelError, ValueError or StopIteration depending on the class)."""
    from device.vision.antispoof import AntiSpoof, AntiSpoofOptions
    from device.vision.embed import EmbedderOptions, FaceEmbedder
    from device.vision.landmarks import EyeRefiner, EyeRefinerOptions, FaceLandmarker, LandmarkerOptions
    wrong = str(model_dir / "face_detection_short_range.tflite")
    for make in (lambda: FaceLandmarker.create(LandmarkerOptions(wrong)),
                 lambda: EyeRefiner.create(EyeRefinerOptions(wrong)),
                 lambda: AntiSpoof.create(AntiSpoofOptions((wrong, wrong))),
                 lambda: FaceEmbedder.create(EmbedderOptions(wrong))):
        with pytest.raises(ModelError) as e:
            make()
        assert e.value.reason == "model_unavailable"
        assert "face_detection_short_range.tflite" in str(e.value) and "(1, 128, 128, 3)" in str(e.value)
