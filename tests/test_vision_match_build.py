"""scripts/build-models graph repair on the real MobileFaceNet: PReLU fused, opcodes fixed, same outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[1]


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


def test_batch1_embedder_reproduces_and_matches_batch2_per_face(bm, model_dir, tmp_path):
    """The manifest's batch-1 MobileFaceNet (set_batch of the int8 build): the reproduce path gives its
    pinned sha256, one face per call gives the batch-2 file's outputs bit for bit, and FaceEmbedder on
    either file gives the same vectors for every method (the card with its mirror too)."""
    import json
    from device.vision.embed import EmbedderOptions, FaceEmbedder
    man = json.loads((REPO / "models" / "manifest.json").read_text())
    e = next(x for x in man["built"] if x["file"] == "mobilefacenet_int8_b1.tflite")
    src = e["sources"][0]
    base = model_dir / src["batch_of"]
    if not base.is_file():
        missing(f"{base.name} not built (scripts/build-models --reproduce)")
    assert bm.sha256(base) == src["batch_of_sha256"]
    out = tmp_path / e["file"]
    assert bm.derive_batch(base, out, 1) > 90
    assert bm.sha256(out) == e["sha256"] and out.stat().st_size == e["size"]
    it = bm.interp(out)
    assert list(it.get_input_details()[0]["shape"]) == [1, 112, 112, 3]
    assert list(it.get_output_details()[0]["shape"]) == [1, 192]
    rng = np.random.default_rng(3)
    xs = [(rng.random((2, 112, 112, 3)) * 2 - 1).astype(np.float32) for _ in range(4)]
    agree = bm.batch_agreement(base, out, xs)
    assert agree["bit_identical"] and agree["max_abs_diff"] == 0.0

    e1, e2 = FaceEmbedder.create(EmbedderOptions(str(out))), FaceEmbedder.create(EmbedderOptions(str(base)))
    assert (e1.batch, e2.batch) == (1, 2) and e1.calls_for(3) == 3 and e2.calls_for(3) == 2
    a, b, c = (rng.integers(0, 255, (112, 112, 3), np.uint8) for _ in range(3))
    assert np.array_equal(e1.embed(a, b).vectors, e2.embed(a, b).vectors)
    assert np.array_equal(e1.embed_card(a).vectors, e2.embed_card(a).vectors)
    assert np.array_equal(e1.embed_one(c).vectors, e2.embed_one(c).vectors)
    many1, many2 = e1.embed_many([a, b, c]).vectors, e2.embed_many([a, b, c]).vectors
    assert many1.shape == (3, 192) and np.array_equal(many1, many2)
    assert np.array_equal(many1[2], e1.embed_one(c).vector)
    assert e1.embed_many([]).vectors.shape == (0, 192)


def test_set_batch_refuses_a_graph_without_one_batch(bm, tmp_path):
    """set_batch changes only graphs whose activations all lead with one batch (else it would make a
    model that computes something else)."""
    from ai_edge_litert import schema_py_generated as fb
    m = fb.ModelT()
    sg = fb.SubGraphT()
    t0, t1 = fb.TensorT(), fb.TensorT()
    t0.shape, t1.shape = np.array([2, 4], np.int32), np.array([3, 4], np.int32)
    t0.buffer = t1.buffer = 0
    sg.tensors, sg.inputs, sg.outputs = [t0, t1], np.array([0], np.int32), np.array([1], np.int32)
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0], np.int32), np.array([1], np.int32)
    sg.operators = [op]
    oc = fb.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = fb.BuiltinOperator.RELU
    m.operatorCodes, m.subgraphs, m.buffers = [oc], [sg], [fb.BufferT()]
    with pytest.raises(SystemExit, match="not one batch"):
        bm.set_batch(m, 1)
