"""`kyc-edge bench memory` (issue 17): the breakdown behind docs/performance.md "Memory", run for real on
the installed models and the blink video (no timing assertions)."""
from __future__ import annotations

import json

import pytest

from device import models as models_mod
from device import cli
from tests.conftest import need


@pytest.fixture
def blink_video(shared_data):
    return need(shared_data / "blink" / "demo_old.mp4")


def test_bench_memory_breaks_rss_down(capsys, model_dir, blink_video):
    assert cli.main(["bench", "memory", "--models-dir", str(model_dir), "--model-set", "int8",
                     "--frames", str(blink_video), "--limit", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["malloc_env"] == {"MALLOC_ARENA_MAX": "2"}
    rows = [r for r in out["imports"] if "rss_mb" in r]
    assert rows[0]["import"] == "python" and len(rows) >= 8
    # cumulative: every import row holds at least what the one before it held, and numpy adds something
    assert all(b["rss_mb"] >= a["rss_mb"] - 0.5 for a, b in zip(rows, rows[1:]))
    assert next(r for r in rows if r["import"] == "numpy")["added_mb"]["rss"] > 1
    m = out["models"]
    assert set(m["models_mb"]) == set(models_mod.resolve(model_dir, "int8"))
    for role, d in m["models_mb"].items():
        assert d["rss"] > 0 and abs(d["rss"] - d["anon"] - d["file"]) < 0.6, (role, d)
    # the embedder (its fp32 weights twice: dequantised and packed, + its activations) is the largest model in memory
    assert max(m["models_mb"], key=lambda r: m["models_mb"][r]["rss"]) == "embedder"
    dec = out["decoder"]
    assert dec["frames_decoded"] == 20 and dec["frame_mb"] > 2.5 and dec["decoder_held_mb"]["rss"] > 0
