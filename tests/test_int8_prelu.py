"""scripts/build-models PReLU rewrite on the real FaceMesh: x + (1-a)*relu(-x) in MUL/ADD only, same float
outputs, and after static a8w8 quantization the whole graph is one XNNPACK partition (PReLU would stay float)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mesh_crops(bm, model_dir, shared_data):
    """Real FaceMesh input crops: NUAA train faces (a calibration set, not an evaluation split)."""
    from device.vision.detect import DetectorOptions, FaceDetector
    det = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))
    files = bm.images_under(shared_data / "nuaa-train", 12)
    xs = bm.calibration_inputs("landmarks", files, det)
    assert len(xs) >= 8
    return xs


def test_prelu_rewrite_same_float_function(bm, model_dir, mesh_crops, tmp_path):
    src = model_dir / "face_landmark.tflite"
    plain, rw = tmp_path / "prep.tflite", tmp_path / "rw.tflite"
    bm.prepare(src, plain)
    info = bm.prepare(src, rw, prelu_rewrite=True)
    assert info["prelu_rewritten"] == 23
    ops = bm.op_counts(rw)
    assert "PRELU" not in ops and ops.get("MUL") == 2 * 23 and ops.get("ADD") == 20 + 23
    a, b = bm.interp(plain), bm.interp(rw)
    for x in mesh_crops:
        ra, rb = bm.run(a, x), bm.run(b, x)
        for u, v in zip(ra, rb):
            assert np.allclose(u, v, atol=1e-3 * (np.abs(u).max() + 1e-6))


def test_static_int8_facemesh_runs_in_one_xnnpack_partition(bm, model_dir, mesh_crops, tmp_path):
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        missing("ai-edge-quantizer not installed (setup.cfg extra `quantize`)")
    from kyc_tools.bench.precision import partitions
    src = model_dir / "face_landmark.tflite"
    calib, check = mesh_crops[:-3], mesh_crops[-3:]
    rw, q, qp = tmp_path / "rw.tflite", tmp_path / "static.tflite", tmp_path / "static_prelu.tflite"
    bm.prepare(src, rw, prelu_rewrite=True)
    bm.quantize(rw, q, "static", calib, "input_1")
    p = partitions(q)
    # all compute is int8 in one delegate partition; only the float input QUANTIZE / output DEQUANTIZE
    # are outside the int8 graph
    assert p["xnnpack_partitions"] == 1, p
    assert p["ops"].get("QUANTIZE") == 1 and p["ops"].get("DEQUANTIZE") == 2, p
    assert p["float_compute_ops"] == {} and p["int8_compute_ops"] == 25 + 20 + 46 + 43 + 6 + 3, p
    # without the rewrite the quantizer leaves the 23 PReLUs float, between QUANTIZE / DEQUANTIZE pairs
    plain = tmp_path / "prep.tflite"
    bm.prepare(src, plain)
    bm.quantize(plain, qp, "static", calib, "input_1")
    pp = partitions(qp)
    assert pp["float_compute_ops"].get("PRELU") == 23 and pp["ops"]["QUANTIZE"] > 20, pp
    # and the int8 landmarks stay within 1 px (of 192) of float on held-out crops
    g = bm.agreement("landmarks", src, q, check)
    assert g["mean_landmark_px_diff"] < 1.0, g


def test_equalised_mobilefacenet_same_function_and_mixed_build_keeps_its_stem_float(bm, model_dir, shared_data,
                                                                                      tmp_path):
    """static_mixed (scripts/build-models MIXED["embedder"]): cross-layer equalisation through the 17
    conv -> PReLU -> depthwise -> PReLU -> conv chains is the same float function; quantized with the
    stem and first block float it is closer to float than plain static a8w8, and the build is deterministic (what
    `--reproduce` relies on to match the manifest's sha256)."""
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        missing("ai-edge-quantizer not installed (setup.cfg extra `quantize`)")
    from device.vision.detect import DetectorOptions, FaceDetector
    from kyc_tools.bench.precision import partitions
    det = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))
    xs = bm.calibration_inputs("embedder", bm.images_under(shared_data / "nuaa-train", 24), det)
    assert len(xs) >= 8
    calib, check = xs[:-3], xs[-3:]
    src = model_dir / "mobilefacenet.tflite"
    rw, mx = tmp_path / "rw.tflite", tmp_path / "mixed_prep.tflite"
    bm.prepare(src, rw, prelu_rewrite=True)
    info = bm.prepare(src, mx, prelu_rewrite=True, cle_calib=calib)
    assert info["prelu_chains_equalised"] == 17 and info["prelu_rewritten"] == 33, info
    g = bm.agreement("embedder", src, mx, check)
    assert g["cosine_to_float_min"] > 0.99999, g
    name = bm.interp(mx).get_input_details()[0]["name"]
    q, q2, qs = tmp_path / "mixed.tflite", tmp_path / "mixed2.tflite", tmp_path / "static.tflite"
    scopes = bm.MIXED["embedder"]["float_scopes"]
    bm.quantize(mx, q, "static_mixed", calib, name, scopes)
    bm.quantize(mx, q2, "static_mixed", calib, name, scopes)
    assert bm.sha256(q) == bm.sha256(q2)
    p = partitions(q)
    # the stem (conv, PReLU = MUL, MUL, ADD, depthwise, PReLU, 1x1 conv) and the first inverted residual
    # block (1x1 conv, PReLU, depthwise, PReLU, 1x1 conv) float; the rest int8, one partition
    assert p["float_compute_ops"] == {"CONV_2D": 4, "MUL": 8, "ADD": 4, "DEPTHWISE_CONV_2D": 2}, p
    assert p["xnnpack_partitions"] == 1, p
    bm.quantize(rw, qs, "static", calib, name)
    cm, cs = bm.agreement("embedder", src, q, check), bm.agreement("embedder", src, qs, check)
    assert cm["cosine_to_float_mean"] > cs["cosine_to_float_mean"] + 0.02, (cm, cs)
    assert cm["cosine_to_float_mean"] > 0.98, cm


def test_relu_fusion_keeps_blazeface_and_puts_its_static_build_in_one_xnnpack_partition(bm, model_dir, shared_data,
                                                                                        tmp_path):
    """BlazeFace exports each RELU as its own op; at int8 XNNPACK leaves a standalone RELU out (18 partitions).
    Fused into the conv / add before it: the same float detector, and the static build is one partition."""
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        missing("ai-edge-quantizer not installed (setup.cfg extra `quantize`)")
    from device.vision.detect import DetectorOptions, FaceDetector
    from kyc_tools.bench.precision import partitions
    src = model_dir / "face_detection_short_range.tflite"
    det = FaceDetector.create(DetectorOptions(str(src)))
    xs = bm.calibration_inputs("detector", bm.images_under(shared_data / "nuaa-train", 12), det)
    assert len(xs) >= 8
    plain, fused = tmp_path / "prep.tflite", tmp_path / "fused.tflite"
    bm.prepare(src, plain)
    assert bm.prepare(src, fused, relu_fuse=True)["relu_fused"] == 17
    assert "RELU" not in bm.op_counts(fused) and bm.op_counts(plain).get("RELU") == 17
    a, b = bm.interp(plain), bm.interp(fused)
    for x in xs:
        for u, v in zip(bm.run(a, x), bm.run(b, x)):
            assert np.allclose(u, v, atol=1e-4 * (np.abs(u).max() + 1e-6))
    in_name = bm.interp(fused).get_input_details()[0]["name"]
    q_plain, q_fused = tmp_path / "static_plain.tflite", tmp_path / "static_fused.tflite"
    bm.quantize(plain, q_plain, "static", xs[:-2], in_name)
    bm.quantize(fused, q_fused, "static", xs[:-2], in_name)
    p_plain, p_fused = partitions(q_plain), partitions(q_fused)
    assert p_plain["xnnpack_partitions"] > 10, p_plain
    assert p_fused["xnnpack_partitions"] == 1 and p_fused["float_compute_ops"] == {}, p_fused
