"""`kyc-edge eval pad` on replay-attack-dev frames: frame- and video-level ISO 30107-3 figures,
the configured threshold and fusion, and the logit4 fusion arithmetic on real frames."""
from __future__ import annotations

import argparse
import csv
import json
import math

import cv2
import numpy as np
import pytest

from device.liveness.decision import fuse_pad
from kyc_tools.eval.commands_liveness import register_eval
from kyc_tools.eval.pad import read_labels, summarise, video_rows


@pytest.fixture(scope="module")
def ra(shared_data):
    from tests.conftest import need
    return need(shared_data / "replay-attack-dev" / "labels.csv")


def test_video_rows_fuse_like_a_session():
    rows = [{"video": v, "label": lab, "bona_fide": lab == "live"} for v, lab in
            (("a", "live"), ("a", "live"), ("a", "live"), ("b", "print"), ("b", "print"), ("c", "print"))]
    scores = np.array([0.9, 0.2, 0.8, 0.6, 0.1, 0.7])
    found = np.array([True, True, True, True, True, False])
    vr, vs = video_rows(rows, scores, found)
    assert [r["video"] for r in vr] == ["a", "b", "c"]
    assert vs[0] == pytest.approx(fuse_pad([0.9, 0.2, 0.8]))      # lower half: mean(0.2, 0.8)
    assert vs[1] == pytest.approx(0.1) and vs[2] == 0.0            # no scored frame: rejected
    res = summarise(vr, vs, 0.5)
    assert res["at_threshold"]["apcer"] == {"print": 0.0} and res["at_threshold"]["bpcer"] == 0.0
    with pytest.raises(ValueError):
        video_rows(rows[:3] + [{"video": "a", "label": "print", "bona_fide": False}], np.zeros(4))


def _subset(ra, tmp_path, per=2):
    """`per` devel videos of every label (4 frames each), paths made absolute."""
    with open(ra, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "devel"]
    picked, out = {}, []
    for r in rows:
        vids = picked.setdefault(r["label"], [])
        if r["video"] not in vids and len(vids) < per:
            vids.append(r["video"])
        if r["video"] in vids:
            out.append({**r, "path": str(ra.parent / r["path"])})
    p = tmp_path / "ra.csv"
    with open(p, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    return p, out


def test_eval_pad_cli_reports_frame_and_video_figures(ra, tmp_path, model_dir, capsys):
    p, rows = _subset(ra, tmp_path)
    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["pad", "--labels", str(p), "--split", "devel", "--model-dir", str(model_dir),
                              "--plot", str(tmp_path / "det.png")])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    from device.config import Config
    assert out["threshold_source"] == "built-in default"
    assert out["at_threshold"]["threshold"] == Config().liveness.pad_threshold
    assert out["fusion"] == Config().liveness.pad_fusion
    types = {"print", "photo_mobile", "photo_highdef", "video_mobile", "video_highdef"}
    assert out["images"] == len(rows) == 48 and set(out["at_threshold"]["apcer"]) == types
    v = out["video"]
    assert v["videos"] == 12 and v["bona_fide"] == 2 and set(v["at_threshold"]["apcer"]) == types
    for k in ("eer", "bpcer_at_apcer_1pct", "bpcer_at_apcer_5pct", "threshold_at_eer"):
        assert k in out and k in v
    for d in (out, v):
        a = d["at_threshold"]
        assert a["acer"] == pytest.approx((max(a["apcer"].values()) + a["bpcer"]) / 2)
    assert (tmp_path / "det.png").stat().st_size > 1000
    # an explicit threshold wins
    args = parser.parse_args(["pad", "--labels", str(p), "--model-dir", str(model_dir), "--threshold", "0.99",
                              "--limit", "8"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold_source"] == "--threshold" and out["at_threshold"]["threshold"] == 0.99


def test_logit4_is_the_calibrated_log_odds_blend(ra, model_dir):
    from device.vision.antispoof import LOGIT4, AntiSpoof, AntiSpoofOptions
    from device.vision.detect import DetectorOptions, FaceDetector
    from kyc_tools.eval.pad import model_paths
    det_p, pads = model_paths(model_dir)
    det = FaceDetector.create(DetectorOptions(str(det_p)))
    m2 = AntiSpoof.create(AntiSpoofOptions(tuple(map(str, pads)), fusion="mean2"))
    m4 = AntiSpoof.create(AntiSpoofOptions(tuple(map(str, pads)), fusion="logit4"))
    rows = read_labels(ra)[:8]
    for r in rows:
        rgb = cv2.cvtColor(cv2.imread(r["file"]), cv2.COLOR_BGR2RGB)
        f = max(det.detect(rgb).faces, key=lambda q: q.width * q.height)
        a, b = m2.score(rgb, f.box), m4.score(rgb, f.box)
        assert b.per_model[:2] == pytest.approx(a.per_model)      # same two crops as upstream
        z = LOGIT4[1] + sum(w * math.log(max(p, 1e-6) / max(1 - p, 1e-6)) for w, p in zip(LOGIT4[0], b.per_model))
        assert b.p_real == pytest.approx(1 / (1 + math.exp(-z)))
        assert len(b.per_model) == 4
    with pytest.raises(ValueError):
        AntiSpoofOptions(tuple(map(str, pads)), fusion="nope") and AntiSpoof.create(
            AntiSpoofOptions(tuple(map(str, pads)), fusion="nope"))
