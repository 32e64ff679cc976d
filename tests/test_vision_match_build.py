"""scripts/build-models graph repair on the real MobileFaceNet: PReLU fused, opcodes fixed, same outputs."""
from __future__ import annotations

import importlib.util
from importlib.machinery import SourceFileLoader
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bm():
    loader = SourceFileLoader("build_models", str(REPO / "scripts" / "build-models"))
    spec = importlib.util.spec_from_loader("build_models", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def repaired(bm, model_dir, tmp_path_factory):
    src = model_dir / "mobilefacenet.tflite"
    dst = tmp_path_factory.mktemp("bm") / "mfn_prep.tflite"
    info = bm.prepare(src, dst)
    return src, dst, info


def test_prelu_fused_and_outputs_unchanged(bm, repaired):
    src, dst, info = repaired
    assert info["prelu_fused"] == 33 and info["opcodes_fixed"] > 0
    before, after = bm.op_counts(src), bm.op_counts(dst)
    assert before.get("ABS") == 33 and "PRELU" not in before
    assert after.get("PRELU") == 33 and "ABS" not in after and "SUB" not in after and "MUL" not in after
    x = (np.random.default_rng(0).random((2, 112, 112, 3)) * 2 - 1).astype(np.float32)
    a, b = bm.run(bm.interp(src), x)[0], bm.run(bm.interp(dst), x)[0]
    assert np.allclose(a, b, atol=1e-4 * np.abs(a).max())
    it = bm.interp(dst)
    assert it.get_signature_list().get("serving_default") is not None


def test_detector_fp16_fold_keeps_detections(bm, model_dir, shared_data, tmp_path):
    import cv2
    from device.vision.detect import DetectorOptions, FaceDetector
    dst = tmp_path / "det_prep.tflite"
    info = bm.prepare(model_dir / "face_detection_short_range.tflite", dst)
    assert info["fp16_folded"] > 0 and "DEQUANTIZE" not in bm.op_counts(dst)
    img = cv2.cvtColor(cv2.imread(str(shared_data / "lfw-dev" / "images" / "Aaron_Sorkin_0001.jpg")), cv2.COLOR_BGR2RGB)
    fa = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite"))).detect(img).largest()
    fb = FaceDetector.create(DetectorOptions(str(dst))).detect(img).largest()
    assert np.abs(fa.keypoints - fb.keypoints).max() < 0.01 and abs(fa.score - fb.score) < 1e-4


def test_weight_only_int8_close_to_float(bm, repaired, tmp_path):
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        missing("ai-edge-quantizer not installed (setup.cfg extra `quantize`)")
    src, dst, _ = repaired
    q = tmp_path / "mfn_wo.tflite"
    bm.quantize(dst, q, "weight_only", [], "input")
    assert q.stat().st_size < src.stat().st_size / 3
    x = (np.random.default_rng(1).random((2, 112, 112, 3)) * 2 - 1).astype(np.float32)
    a, b = bm.run(bm.interp(src), x)[0], bm.run(bm.interp(q), x)[0]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert (cos > 0.99).all()
