"""`eval match` end to end on a few real LFW pairs: the JSON carries every figure, the plot is drawn."""
from __future__ import annotations

import argparse
import json

import pytest

from kyc_tools.eval.commands_match import register_eval

KEYS = {"pairs", "accuracy", "tar_at_far_1e-2", "tar_at_far_1e-3", "eer", "auc", "threshold_at_far_1e-3",
        "failure_to_enrol", "ms_per_pair"}


def _parse(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    register_eval(sub)
    return p.parse_args(argv)


@pytest.mark.parametrize("card", [False, True], ids=["plain", "card_style"])
def test_eval_match_json_and_plot(shared_data, model_dir, tmp_path, capsys, card):
    lfw = shared_data / "lfw-dev"
    plot = tmp_path / "det.png"
    argv = ["match", "--pairs", str(lfw / "pairs.csv"), "--images", str(lfw / "images"), "--folds", "1-5",
            "--limit", "20", "--plot", str(plot), "--models-dir", str(model_dir), "--threshold", "0.41"]
    if card:
        argv.append("--card-style")
    args = _parse(argv)
    assert args.func(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert KEYS <= out.keys()
    assert out["pairs"] == 20 and out["card_style"] is card
    assert out["same_pairs"] == 10 and out["different_pairs"] == 10     # spread keeps both classes
    assert out["accuracy"] >= 0.9 and out["auc"] >= 0.97
    assert out["failure_to_enrol"]["pairs"] == 0
    assert 0 < out["ms_per_pair"] < 2000
    assert out["at_threshold"]["far"] <= 0.1 and out["at_threshold"]["tar"] >= 0.8
    assert "eval match [" in captured.err                   # progress on stderr, not stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_match_bad_input_exit_2(tmp_path, capsys):
    args = _parse(["match", "--pairs", str(tmp_path / "missing.csv"), "--images", str(tmp_path)])
    assert args.func(args) == 2
    assert "eval match:" in capsys.readouterr().err
