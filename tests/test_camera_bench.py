"""kyc_tools/bench/camera.py and device/camera/commands.py on synthesized replay frames."""
from __future__ import annotations

import json

import cv2
import numpy as np

from kyc_tools.bench.camera import replay_cfg, run_bench, simulated_inference
from device.camera.commands import main, probe
from device.config import CameraConfig


def make_folder(tmp_path, n=8, h=240, w=320):
    rng = np.random.default_rng(3)
    for i in range(n):
        assert cv2.imwrite(str(tmp_path / f"{i:03d}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return tmp_path


def test_simulated_inference_takes_the_asked_time():
    import time
    img = np.zeros((240, 320, 3), np.uint8)
    t0 = time.perf_counter()
    simulated_inference(img, 20)
    assert 0.019 < time.perf_counter() - t0 < 0.2


def test_bench_rows_are_bounded_by_the_consumer_and_fast_pace_drops_nothing(tmp_path):
    cfg = replay_cfg(CameraConfig(), make_folder(tmp_path), pace="fast")
    out = run_bench(cfg, seconds=0.4, loads_ms=(0, 25))
    rows = {(r["mode"], r["load_ms"]): r for r in out["rows"]}
    assert set(rows) == {("threaded", 0.0), ("threaded", 25.0),
                         ("serial (no overlap)", 0.0), ("serial (no overlap)", 25.0)}
    for (mode, load), r in rows.items():
        assert r["frames"] > 0 and r["delivered_fps"] > 0
        if load:
            assert r["delivered_fps"] <= 1000 / 25 * 1.1       # the load really ran per frame
        if mode == "threaded":
            assert r["dropped"] == 0 and r["health"] == "ok"
    assert rows[("threaded", 0.0)]["delivered_fps"] > rows[("threaded", 25.0)]["delivered_fps"]


def test_bench_realtime_reports_frame_age_and_no_serial_rows(tmp_path):
    cfg = replay_cfg(CameraConfig(), make_folder(tmp_path), pace="realtime")
    out = run_bench(cfg, seconds=0.4, loads_ms=(0,))
    assert [r["mode"] for r in out["rows"]] == ["threaded"]
    r = out["rows"][0]
    assert 0 <= r["frame_age_ms_p50"] < 50 and 8 < r["delivered_fps"] < 25   # 15 fps default


def test_probe_and_cli(tmp_path, capsys):
    folder = make_folder(tmp_path / "f" if (tmp_path / "f").mkdir() is None else None, n=4)
    cfg = replay_cfg(CameraConfig(), folder, pace="realtime")
    out = probe(cfg, seconds=0.3)
    assert out["ok"] and out["frames"] >= 2 and out["size"] == "320x240" and out["health"] == "ok"
    bad = replay_cfg(CameraConfig(), tmp_path / "missing.mp4")
    out = probe(bad, seconds=0.2)
    assert not out["ok"] and out["reason"] == "camera_unavailable"
    (tmp_path / "c.toml").write_text("[camera]\nbackend = 'replay'\n")
    assert main(["camera", "probe", "-c", str(tmp_path / "c.toml"), "--replay", str(folder), "--seconds", "0.3"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (tmp_path / "bad.toml").write_text("[camera]\nbackend = 'webcam'\n")
    assert main(["camera", "probe", "-c", str(tmp_path / "bad.toml")]) == 2
    assert "camera.backend" in capsys.readouterr().err
