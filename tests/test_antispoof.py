"""MiniFASNet ensemble on real NUAA frames: print frames score as spoofs, live frames as real."""
from __future__ import annotations

import argparse
import csv
import json

import cv2
import numpy as np
import pytest

from kyc_tools.eval.commands_liveness import register_eval
from kyc_tools.eval.pad import FramePad, read_labels, summarise
from device.vision.antispoof import crop_box


@pytest.fixture(scope="module")
def nuaa(shared_data):
    from tests.conftest import need
    return need(shared_data / "nuaa-train" / "labels.csv")


def _sample(rows, per=3):
    """`per` frames of every (label, subject, session, pos) sequence, spread over it."""
    seqs = {}
    for r in rows:
        seqs.setdefault((r["label"], r["subject"], r["glasses"], r["session"], r["pos"]), []).append(r)
    out = []
    for v in seqs.values():
        v = sorted(v, key=lambda r: int(r["pic"]))
        out += [v[int(i)] for i in np.linspace(0, len(v) - 1, per)]
    return out


def test_print_frames_score_as_spoof_and_live_as_real(nuaa, model_dir):
    rows = _sample(read_labels(nuaa))
    fp = FramePad(model_dir)
    scores = []
    for r in rows:
        s = fp.score(cv2.cvtColor(cv2.imread(r["file"]), cv2.COLOR_BGR2RGB))
        scores.append(0.0 if s is None else s)
    scores = np.asarray(scores)
    res = summarise(rows, scores, 0.5)
    prints = scores[[not r["bona_fide"] for r in rows]]
    lives = scores[[r["bona_fide"] for r in rows]]
    assert len(prints) == 45 * 3 and len(lives) == 16 * 3
    assert (prints < 0.5).all(), np.sort(prints)[-5:]          # APCER 0 on the sample
    assert (lives >= 0.5).mean() >= 0.9, np.sort(lives)[:5]    # BPCER <= 10 % on the sample
    assert res["at_threshold"]["apcer"] == {"print": 0.0}
    assert res["at_threshold"]["acer"] <= 0.05
    assert set(res["at_threshold"]["apcer_by_pos"]) == {"pos_00", "pos_01", "pos_02", "pos_03", "pos_04"}


def test_crop_box_clamps_scale_and_stays_inside():
    img = np.zeros((240, 320, 3), np.uint8)
    img[100:140, 150:190] = 255
    patch = crop_box(img, (150, 100, 40, 40), 4.0)
    assert patch.shape == (80, 80, 3)
    # a box at the corner: shifted back inside, never padded
    patch = crop_box(img, (0, 0, 200, 200), 4.0)   # scale clamps to (240-1)/200
    assert patch.shape == (80, 80, 3)


def test_eval_pad_command_prints_iso_figures(tmp_path, nuaa, model_dir, capsys):
    rows = list(csv.DictReader(open(nuaa)))
    sub = tmp_path / "labels.csv"
    with open(sub, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(rows[::40])
    p = argparse.ArgumentParser()
    register_eval(p.add_subparsers(dest="cmd"))
    plot = tmp_path / "det.png"
    args = p.parse_args(["pad", "--labels", str(sub), "--root", str(nuaa.parent), "--model-dir", str(model_dir),
                         "--plot", str(plot)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    t = out["at_threshold"]
    assert {"apcer", "apcer_max", "bpcer", "acer", "threshold"} <= set(t)
    assert out["attack_types"] == {"print": out["attacks"]} and out["eer"] is not None
    assert plot.stat().st_size > 1000
