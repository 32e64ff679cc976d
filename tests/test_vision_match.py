"""Match path on real LFW faces through the real models: detect -> align -> embed -> cosine."""
from __future__ import annotations


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


# ---------------------------------------------------------------- the pipeline at the configured threshold
def _fold_pairs(rows, fold="2", n=10):
    f = [r for r in rows if r["fold"] == fold]
    same = [r for r in f if r["same"] == "1"][:n]
    diff = [r for r in f if r["same"] == "0"][:n]
    return same, diff


@pytest.mark.parametrize("card", [False, True], ids=["plain", "card_style"])
def test_pipeline_same_pass_different_fail_at_configured_threshold(detector, embedder, lfw, card):
    from device.config import MatchConfig
    from kyc_tools.eval.match import PairScorer
    thr = MatchConfig().threshold
    rows, load = lfw
    same, diff = _fold_pairs(rows)
    scorer = PairScorer(detector, embedder, card_style_first=card)
    s_same = [scorer.score(load(r["img1"]), load(r["img2"]))[0] for r in same]
    s_diff = [scorer.score(load(r["img1"]), load(r["img2"]))[0] for r in diff]
    assert None not in s_same + s_diff, "failure to enrol on clean LFW faces"
    assert all(s >= thr for s in s_same), (thr, s_same)
    assert all(s < thr for s in s_diff), (thr, s_diff)
    assert min(s_same) - max(s_diff) > 0.1       # a real margin, not luck at the threshold


def test_card_style_photo_is_chip_like(detector, lfw):
    from kyc_tools.eval.match import CARD_H, CARD_W, card_style
    rows, load = lfw
    img = load(rows[0]["img1"])
    card = card_style(img, detector.detect(img).largest())
    assert card.shape == (CARD_H, CARD_W, 3) and card.dtype == np.uint8
    # re-encoding at the same low quality stays about 1 KB: it really is that compressed
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(card, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 20,
                                                                           cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    assert ok and len(buf) < 1400
    aligned = prepare_card_face(detector, card)
    assert aligned is not None and aligned.shape == (112, 112, 3)


def test_prepare_card_face_pads_when_the_face_fills_the_photo(detector, lfw):
    rows, load = lfw
    img = load(rows[0]["img1"])
    f = detector.detect(img).largest()
    x0, y0, x1, y1 = (int(round(v)) for v in f.box)
    tight = np.ascontiguousarray(img[max(y0, 0):y1, max(x0, 0):x1])   # face fills the whole photo
    tight = cv2.resize(tight, (102, 126))
    assert prepare_card_face(detector, tight) is not None
    assert prepare_card_face(detector, np.full((126, 102, 3), 200, np.uint8)) is None


def test_flip_tta_and_topk_mean(detector, model_dir, lfw):
    from device.vision.embed import mean_embedding
    rows, load = lfw
    a = prepare_card_face(detector, load(rows[0]["img1"]))
    b = prepare_card_face(detector, load(rows[0]["img2"]))
    tta = FaceEmbedder.create(EmbedderOptions(str(model_dir / "mobilefacenet.tflite"), flip_tta=True))
    r = tta.embed(a, b)
    assert np.allclose(np.linalg.norm(r.vectors, axis=1), 1, atol=1e-5)
    # a face and its mirror are the same face to the TTA embedder
    assert cosine(tta.embed_one(a).vector, tta.embed_one(np.ascontiguousarray(a[:, ::-1])).vector) > 0.999
    m = mean_embedding([tta.embed_one(a).vector, tta.embed_one(a).vector])
    assert abs(np.linalg.norm(m) - 1) < 1e-5 and cosine(m, tta.embed_one(a).vector) > 0.999
