"""`kyc-edge eval sessions --manifest`: clips through the daemon's own Session (replay camera),
once per challenge sequence; the genuine blink video is served, a NUAA print attempt is stopped."""
from __future__ import annotations

import argparse
import csv
import json

from kyc_tools.eval.commands_liveness import register_eval
from kyc_tools.eval.session_manifest import make_blink, make_nuaa, read_manifest


def test_manifest_through_session(shared_data, model_dir, tmp_path, capsys):
    from tests.conftest import need
    need(shared_data / "blink" / "demo_old.mp4")
    need(shared_data / "nuaa-train" / "labels.csv")
    nuaa = make_nuaa(tmp_path / "nuaa")
    rows = read_manifest(nuaa)
    assert len(rows) == 45 + 16 and {r["label"] for r in rows} == {"print", "genuine"}
    one_print = next(r for r in csv.DictReader(open(nuaa)) if r["label"] == "print" and r["path"].endswith("p03"))
    blink = read_manifest(make_blink(tmp_path / "blink"))[0]
    man = tmp_path / "m.csv"
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        w.writerow([blink["path"], "genuine", "blink"])
        w.writerow([str(nuaa.parent / one_print["path"]), "print", one_print["subject"]])
    p = argparse.ArgumentParser()
    register_eval(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["sessions", "--manifest", str(man), "--model-dir", str(model_dir),
                         "--plot", str(tmp_path / "s.png")])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sequences"] == ["blink+turn_left", "blink+turn_right", "turn_left+blink", "turn_right+blink"]
    g, a = out["clips"]
    assert g["genuine"] and g["outcome"] == "served" and 0 < g["share_passing"] < 1
    assert set(g["runs"]) == set(out["sequences"])
    assert not a["genuine"] and a["outcome"] == "stopped" and a["runs_passing"] == 0
    assert all("spoof_suspected" in r["reasons"] or "challenge_timeout" in r["reasons"] for r in a["runs"].values())
    assert out["summary"]["attacks_passed"] == 0 and out["summary"]["genuine_served"] == 1
    assert out["by_label"]["print"]["attacks"] == 1 and out["by_subject"]["blink"]["served"] == 1
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_offsets_start_sessions_later_in_the_clip_and_skip_the_end(shared_data, model_dir, tmp_path, capsys):
    """--offsets: each start is a run set of its own (the replay camera's start_s); a start within 3 s of
    the clip's end is reported, not run."""
    from tests.conftest import need
    need(shared_data / "blink" / "demo_old.mp4")
    man = make_blink(tmp_path / "blink")
    p = argparse.ArgumentParser()
    register_eval(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["sessions", "--manifest", str(man), "--model-dir", str(model_dir),
                         "--offsets", "4,0,10"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["offsets"] == [0.0, 4.0, 10.0]
    (c,) = out["clips"]
    assert c["offsets"] == [0.0, 4.0] and c["offsets_past_end"] == [10.0]     # the clip is 11.2 s long
    assert set(c["runs"]) == {f"{s}@{o}s" for s in out["sequences"] for o in (0, 4)}
    # a later start sees other frames: the fused PAD evidence of the same sequence differs
    assert any(c["runs"][f"{s}@0s"]["spoof_score"] != c["runs"][f"{s}@4s"]["spoof_score"] for s in out["sequences"])
    assert c["outcome"] == "served"
    bad = p.parse_args(["sessions", "--manifest", str(man), "--offsets", "-1"])
    import pytest
    with pytest.raises(SystemExit, match="--offsets"):
        bad.func(bad)


def test_parse_offsets_lists_ranges_and_errors():
    import pytest
    from kyc_tools.eval.session_manifest import parse_offsets
    assert parse_offsets("0") == [0.0]
    assert parse_offsets("6, 0,3,3") == [0.0, 3.0, 6.0]
    assert parse_offsets("0:9:3") == [0.0, 3.0, 6.0, 9.0]           # stop included
    assert parse_offsets("0:1:0.1")[-1] == 1.0 and len(parse_offsets("0:1:0.1")) == 11
    assert parse_offsets("0:10:4,5") == [0.0, 4.0, 5.0, 8.0]
    for bad in ("", "x", "-1", "0:9", "0:9:0", "9:0:1", "0:1e9:1e-3"):
        with pytest.raises(SystemExit, match="--offsets"):
            parse_offsets(bad)
