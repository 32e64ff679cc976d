"""Match path on real LFW faces through the real models: detect -> align -> embed -> cosine."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from device.vision.align import TEMPLATE, align_face, align_matrix
from device.vision.detect import DetectorOptions, FaceDetector
from device.vision.embed import EmbedderOptions, FaceEmbedder, cosine, prepare_card_face


@pytest.fixture(scope="module")
def detector(model_dir):
    return FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))


@pytest.fixture(scope="module")
def embedder(model_dir):
    return FaceEmbedder.create(EmbedderOptions(str(model_dir / "mobilefacenet.tflite")))


@pytest.fixture(scope="module")
def lfw(shared_data):
    root = shared_data / "lfw-dev"
    rows = list(csv.DictReader(open(root / "pairs.csv")))

    def load(name):
        return cv2.cvtColor(cv2.imread(str(root / "images" / name)), cv2.COLOR_BGR2RGB)
    return rows, load


def test_align_maps_keypoints_onto_template():
    rng = np.random.default_rng(0)
    # a similarity-transformed template must come back exactly
    ang, s, t = 0.3, 2.5, np.array([40.0, 70.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    kp = (TEMPLATE @ r.T) * s + t
    m = align_matrix(np.vstack([kp, rng.uniform(0, 100, (2, 2))]))
    back = kp @ m[:, :2].T + m[:, 2]
    assert np.allclose(back, TEMPLATE, atol=1e-6)
    img = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    out = align_face(img, kp)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8


def test_embed_shapes_and_norm(detector, embedder, lfw):
    rows, load = lfw
    a = prepare_card_face(detector, load(rows[0]["img1"]))
    b = prepare_card_face(detector, load(rows[0]["img2"]))
    res = embedder.embed(a, b)
    assert res.vectors.shape == (2, 192) and res.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    assert "vectors=" not in repr(res) and "[" not in repr(res)
    # same image against itself is ~1, and embedding is deterministic
    same = embedder.embed(a, a).vectors
    assert cosine(same[0], same[1]) > 0.999
    assert cosine(res.vectors[0], res.vectors[1]) > 0.4  # same person (fold 1 pair 1)
    res.wipe()
    assert not res.vectors.any()
