"""Metrics helpers (kyc_tools/eval/common.py) against hand-computed and analytic values."""
from __future__ import annotations

import io
import json
from statistics import NormalDist

import numpy as np
import pytest

from kyc_tools.eval import common as c


def test_threshold_and_tar_at_far_by_hand():
    neg = np.linspace(0, 0.999, 1000)          # 1000 impostors, top one 0.999, next 0.998
    pos = np.array([0.9985, 0.9995, 0.5, 1.5])
    s, y = np.r_[pos, neg], np.r_[np.ones(4), np.zeros(1000)]
    t = c.threshold_at_far(s, y, 1e-3)         # one impostor may pass: threshold just above 0.998
    assert 0.998 < t < 0.9981
    tar, t2 = c.tar_at_far(s, y, 1e-3)
    assert t2 == t and tar == 0.75
    assert ((s[y == 0] >= t).mean()) <= 1e-3
    tar0, t0 = c.tar_at_far(s, y, 0.0)         # no impostor at all
    assert t0 > 0.999 and tar0 == 0.5


def test_gaussian_scores_match_theory():
    rng = np.random.default_rng(0)
    n = 20000
    s = np.r_[rng.normal(2, 1, n), rng.normal(0, 1, n)]
    y = np.r_[np.ones(n), np.zeros(n)]
    nd = NormalDist()
    assert abs(c.auc(s, y) - nd.cdf(2 / 2 ** 0.5)) < 0.01
    e, t = c.eer(s, y)
    assert abs(e - nd.cdf(-1)) < 0.01 and abs(t - 1.0) < 0.05
    folds = np.tile(np.repeat(np.arange(1, 6), n // 5), 2)
    kf = c.kfold_accuracy(s, y, folds)
    assert abs(kf["accuracy"] - nd.cdf(1)) < 0.01
    assert all(abs(t - 1.0) < 0.1 for t in kf["fold_thresholds"])
    tar, _ = c.tar_at_far(s, y, 1e-2)
    assert abs(tar - (1 - nd.cdf(nd.inv_cdf(0.99) - 2))) < 0.02


def test_inputs_checked_and_json_and_folds():
    with pytest.raises(ValueError):
        c.eer([0.1, 0.2], [1, 1])
    buf = io.StringIO()
    c.emit_json({"a": 0.123456789, "b": float("nan"), "c": np.float32(1.5), "d": [np.int64(3)]}, buf)
    assert json.loads(buf.getvalue()) == {"a": 0.12346, "b": None, "c": 1.5, "d": [3]}
    assert c.parse_folds("1-5") == [1, 2, 3, 4, 5] and c.parse_folds("2,4") == [2, 4]


def test_progress_and_det_plot(tmp_path):
    buf = io.StringIO()
    with c.Progress(20, "x", stream=buf) as p:
        for _ in range(20):
            p.update()
    lines = buf.getvalue().splitlines()
    assert 2 <= len(lines) <= 12 and lines[-1].startswith("x [") and "20/20" in lines[-1]
    rng = np.random.default_rng(1)
    s = np.r_[rng.normal(3, 1, 500), rng.normal(0, 1, 500)]
    y = np.r_[np.ones(500), np.zeros(500)]
    out = tmp_path / "det.png"
    c.plot_det(out, [("g", s, y)], [("op", 1e-3, 0.4)])
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"
