"""device/vision/restore.py on a real chip-like photo (issue 18): each method smooths the JPEG's 8x8
block edges, keeps the face findable, and an unknown method is a clear error."""
import numpy as np
import pytest

from device.vision.restore import METHODS, restore
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
