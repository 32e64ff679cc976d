"""Smoke test of `kyc-edge bench frame`: it runs on a few frames and emits its JSON keys.

No timing assertions: figures on a shared CI machine mean nothing. The real figures live in
docs/performance.md, measured on one pinned core.
"""
from __future__ import annotations

import json
import os

import pytest

from device import cli
from kyc_tools.bench import frame as bench
from tests.conftest import need

STAGE_KEYS = {"decode", "detect", "landmarks", "pad", "detect_landmarks", "per_frame_path", "align", "embed",
              "align_embed", "per_frame_total"}


def _run(capsys, *argv) -> dict:
    assert cli.main(["bench", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def blink_video(shared_data):
    return need(shared_data / "blink" / "demo_old.mp4")


def test_bench_frame_video_emits_keys(capsys, blink_video, model_dir, monkeypatch):
    monkeypatch.setenv("KYC_EDGE_MEDIAPIPE_PYTHON", "/nonexistent/python")   # peer absent: reported, not fatal
    out = _run(capsys, "frame", "--frames", str(blink_video), "--models-dir", str(model_dir),
               "--limit", "6", "--threads", "1", "--model-set", "float", "--vs-mediapipe")
    for key in ("frames_source", "conditions_start", "ours", "summary", "daemon", "conditions_end", "mediapipe"):
        assert key in out
    ours = out["ours"]
    assert ours["frames"] == 6 and ours["model_set"] == "float" and ours["threads"] == 1
    assert set(ours["stages_ms"]) >= STAGE_KEYS and set(ours["stages_cpu_ms"]) >= STAGE_KEYS
    for k in ("decode", "landmarks", "per_frame_path", "per_frame_total", "detect_landmarks"):
        assert set(ours["stages_ms"][k]) >= {"median", "p95", "mean", "n"}, k
    assert ours["detect_ran_frames"] >= 1 and ours["frames_with_face"] >= 1
    assert ours["rss_mb"]["peak"] > 0 and ours["rss_mb"]["models_loaded"] > 0
    assert set(out["summary"]) >= {"per_frame_path_median_ms", "per_frame_path_p95_ms", "sustained_fps",
                                   "per_frame_path_cpu_median_ms", "cpu_share",
                                   "peak_rss_mb", "vs_mediapipe_ratio"}
    assert "error" in out["mediapipe"] and out["summary"]["vs_mediapipe_ratio"] is None
    # the optional second embedder (issue 18): timed on this run's chips when setup built it
    from device import models as models_mod
    se = ours["second_embedder"]
    p2 = models_mod.derived(model_dir, "embedder2")
    if p2 is not None and p2.is_file():
        assert se["card_call_ms"]["n"] == 5 and se["card_call_ms"]["median"] > 0, se
        assert se["live_call_ms"]["median"] > 0 and se["live_chips"] == 2 and se["per_session_ms"] > 0
        assert se["rss_added_mb"] >= 0       # reported apart: the frame path's peak is the default model set
    else:
        assert se["per_session_ms"] is None and "embedder2" in se["why"]
    # smoke runs never start the daemon; the figures say so instead of inventing numbers
    assert out["daemon"]["start_to_ready_ms"] is None and out["daemon"]["start_to_ready_why"]


def test_bench_frame_folder_and_int8_fallback(capsys, shared_data, model_dir):
    clip = need(shared_data / "headpose" / "head-pose-face-detection-female")
    out = _run(capsys, "--frames", str(clip), "--models-dir", str(model_dir), "--limit", "3",
               "--model-set", "int8")
    assert out["ours"]["frames"] == 3 and out["ours"]["model_set"] == "int8"
    # every role names the file it really loaded; roles without an int8 build are listed as float fallbacks
    assert set(out["ours"]["models"]) >= {"detector", "landmarks", "embedder"}
    # the fallback list is exactly the roles with no int8 file where the bench looks (model dir, builds)
    from device import models as M
    from kyc_tools import paths
    dirs = [model_dir] + ([paths.model_build_dir()] if paths.model_build_dir() else [])
    int8 = {e.role for e in M.entries() if e.precision == "int8" and any((d / e.file).exists() for d in dirs)}
    expected = sorted(set(out["ours"]["models"]) - int8)
    assert sorted(out["ours"]["int8_fallback_to_float"]) == expected
    floats = {e.role: e.file for e in M.entries(include_built=False)}
    for role in expected:
        assert out["ours"]["models"][role] == floats.get(role, out["ours"]["models"][role])
        assert "int8" not in out["ours"]["models"][role]


def test_stats_empty_is_null():
    assert bench.stats([]) is None
    s = bench.stats([1.0, 2.0, 3.0])
    assert s["median"] == 2.0 and s["n"] == 3


def _need_peer(monkeypatch):
    """The real MediaPipe peer venv: required when KYC_EDGE_BENCH_PEER=1 (CI builds it), else optional."""
    monkeypatch.delenv("KYC_EDGE_MEDIAPIPE_PYTHON", raising=False)
    if bench.mediapipe_python() is None:
        if os.environ.get("KYC_EDGE_BENCH_PEER") == "1":
            pytest.fail("KYC_EDGE_BENCH_PEER=1 but no .venv-mediapipe (scripts/setup builds it)")
        pytest.skip("no .venv-mediapipe (optional: scripts/bench-mediapipe-venv)")


def test_mediapipe_peer_lockstep(tmp_path, blink_video, monkeypatch):
    """The real peer stepped frame by frame."""
    _need_peer(monkeypatch)
    peer = bench.LockstepPeer(blink_video, 3)
    for i in range(3):
        peer.step((1.0, 1.0) if i else None, (2.0, 2.0) if i else None, (3.0, 3.0) if i else None)
    mp = peer.finish()
    assert "error" not in mp, mp.get("error")
    assert mp["frames"] == 3 and mp["process_ms"]["n"] == 2
    r = peer.ratios()
    assert r["wall"]["paired_frames"] == 2 and r["cpu"]["paired_frames"] == 2


def test_bench_vs_mediapipe_through_the_cli(capsys, blink_video, model_dir, monkeypatch):
    """`kyc-edge bench --vs-mediapipe` with the real peer: ratios and the peer's figures are emitted."""
    _need_peer(monkeypatch)
    out = _run(capsys, "--frames", str(blink_video), "--models-dir", str(model_dir), "--limit", "5", "--vs-mediapipe")
    mp = out["mediapipe"]
    assert "error" not in mp, mp.get("error")
    assert mp["frames"] == 5 and mp["process_ms"]["n"] == 4 and mp["mediapipe"] == "0.10.14"
    v = out["vs_mediapipe"]
    assert set(v) >= {"wall", "cpu", "whole_observe_no_pad_cpu", "what"}
    assert set(v["cpu"]) >= {"median_of_medians", "mean_of_means", "per_frame_median", "paired_frames"}
    assert v["cpu"]["paired_frames"] == 4
    assert out["summary"]["vs_mediapipe_ratio"] is not None
    # the attention mesh with iris in the same run, against our detect + FaceMesh + iris refiner
    mi = out["mediapipe_refine"]
    assert "error" not in mi and "refine_landmarks=True" in mi["peer"] and mi["process_ms"]["n"] == 4
    assert "refine_landmarks=False" in mp["peer"]
    vi = out["vs_mediapipe_iris"]
    assert vi["peer_refine_landmarks"] and vi["detect_landmarks_iris_cpu"]["paired_frames"] == 4
    assert out["summary"]["vs_mediapipe_iris_ratio_cpu"] == vi["detect_landmarks_iris_cpu"]["median_of_medians"]


def test_session_latency_reports_the_ahead_worker(blink_video, model_dir):
    """The session figure (one run): the genuine session passes, the worker embedded the session's crops,
    and the decision ran fewer embedder calls than the synchronous path's two (top-3 + last crop). No
    timing assertion."""
    need(bench.BLINK_VIDEO)
    r = bench.session_latency(model_dir, "int8", 1, runs=1)
    assert r["results"] == ["pass"], r["results"]
    ah = r["embed_ahead"]
    assert ah["on"] is True and ah["worker_embed_calls"][0] >= 3     # top 3, first, last: 5 crops, 2 per call
    assert ah["worker_cpu_ms"]["n"] == 1 and ah["session_cpu_ms"]["median"] > 0
    assert r["breakdown_ms"]["embed_calls_per_match"][0] < 2
    assert r["last_challenge_to_outbox_ms"]["n"] == 1


def test_bench_two_thread_block_keys_and_consistency(blink_video, model_dir):
    """Capture thread + models thread with the real models (issue 17): every pace reports its frames, fps,
    drops and CPU shares, and the counts add up. No timing thresholds."""
    from pathlib import Path
    from kyc_tools.bench import pipeline
    out = pipeline.two_thread(Path(blink_video), model_dir, "float", 1, limit=8)
    rows = {r["pace"]: r for r in out["rows"]}
    assert set(rows) == {"fast", "realtime", "fixed_30fps", "fixed_30fps+ahead"}
    for pace, r in rows.items():
        assert r["frames_processed"] == 8, r
        assert r["processed_fps"] > 0 and r["wall_s"] > 0
        assert r["captured"] >= r["frames_processed"] - 1 and r["dropped"] >= 0
        # both threads' CPU over the wall time; the models thread's part of it
        assert 0 < r["models_thread_cpu_share"] <= r["cpu_share"] + 1e-3
        assert r["models_thread_cpu_ms_per_frame"] > 0 and r["capture_thread_cpu_ms_per_frame"] >= 0
        assert r["declared_fps"] == pytest.approx(30.3, abs=0.1)
    assert rows["fast"]["dropped"] == 0                 # lossless: the camera waits for the consumer
    for pace in ("realtime", "fixed_30fps", "fixed_30fps+ahead"):   # released on a clock: age is measured
        assert rows[pace]["frame_age_ms_p50"] is not None and rows[pace]["frame_age_ms_p50"] >= 0
    # a fixed 30 fps release of 8 frames cannot finish faster than 7 frame intervals
    assert rows["fixed_30fps"]["release_fps"] == 30.0 and rows["fixed_30fps"]["wall_s"] >= 7 / 30.0 - 0.02
    # the daemon's default third thread (match.embed_ahead) only on its own row, its work counted
    assert [p for p, r in rows.items() if r["embed_ahead"]] == ["fixed_30fps+ahead"]
    ah = rows["fixed_30fps+ahead"]
    assert ah["ahead_calls"] >= 0 and ah["ahead_cpu_ms"] >= 0 and "ahead_calls" not in rows["fixed_30fps"]
    assert ah["frame_age_ms_p50"] is not None and ah["release_fps"] == 30.0
    assert out["cpu_affinity"] and out["model_set"] == "float"


def test_bench_frame_json_has_the_two_thread_block(capsys, blink_video, model_dir):
    out = _run(capsys, "frame", "--frames", str(blink_video), "--models-dir", str(model_dir),
               "--limit", "4", "--threads", "1", "--model-set", "float")
    assert [r["pace"] for r in out["two_thread"]["rows"]] == ["fast", "realtime", "fixed_30fps", "fixed_30fps+ahead"]
    assert set(out["summary"]["two_thread_fps"]) == {"fast", "realtime", "fixed_30fps", "fixed_30fps+ahead"}
    assert all(v > 0 for v in out["summary"]["two_thread_fps"].values())
    assert out["summary"]["two_thread_dropped"]["fast"] == 0
