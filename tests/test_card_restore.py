"""kyc_tools/eval/restore.py on a real chip-like photo (issue 18): each method smooths the JPEG's 8x8
block edges, keeps the face findable, and an unknown method is a clear error."""
import numpy as np
import pytest

from kyc_tools.eval.restore import METHODS, restore
from kyc_tools.eval.match import card_style
from tests.faces import genuine_photo


def _block_edges(rgb: np.ndarray) -> float:
    """Mean jump across 8-px block borders over the mean jump inside blocks (1 = no blocking)."""
    g = rgb.astype(np.float32).mean(axis=2)
    d = np.abs(np.diff(g, axis=1))
    cols = np.arange(d.shape[1])
    border = (cols % 8) == 7
    return float(d[:, border].mean() / max(d[:, ~border].mean(), 1e-6))


def test_each_method_smooths_block_edges_and_keeps_the_face(shared_data, model_dir):
    from device.vision.detect import DetectorOptions, FaceDetector
    det = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))
    photo = genuine_photo(shared_data)
    chip = card_style(photo, det.detect(photo).largest())
    before = _block_edges(chip)
    assert before > 1.05, before            # the ~1 KB JPEG is blocky: the check can see it
    for m in METHODS:
        out = restore(chip, m)
        assert out.shape == chip.shape and out.dtype == np.uint8 and out is not chip
        if m == "none":
            assert np.array_equal(out, chip)
            continue
        assert _block_edges(out) < before, m
    with pytest.raises(ValueError, match="unknown restore method"):
        restore(chip, "sharpen")


def test_topk_study_fusion_rules():
    """kyc_tools.eval.topk_study: the k best by quality; mean, quality-weighted mean, best single."""
    from kyc_tools.eval.topk_study import _fuse
    e = np.eye(4, dtype=np.float64)
    live = [(0.9, e[0]), (0.1, e[1]), (0.5, e[2]), (0.3, e[3])]
    assert np.allclose(_fuse(live, 1, "mean"), e[0])
    assert np.allclose(_fuse(live, 3, "best"), e[0])
    m = _fuse(live, 2, "mean")                        # the two best: e0 (0.9) and e2 (0.5)
    assert np.allclose(m, (e[0] + e[2]) / np.sqrt(2))
    w = _fuse(live, 2, "weighted")
    assert w[0] > w[2] > 0 and w[1] == w[3] == 0 and np.isclose(np.linalg.norm(w), 1)
