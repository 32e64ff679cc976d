"""device/wiring.py, the one composition root: the parts it builds from a Config are the ones the
daemon, `verify` and the benches use (the daemon, e2e and bench tests run them end to end)."""
from __future__ import annotations

from device import config as C
from device import wiring


def test_offline_replay_sets_the_offline_camera_and_keeps_other_changes(tmp_path):
    cfg = wiring.offline_replay(C.Config(), tmp_path / "clip.mp4", **{"models.set": "int8"})
    assert cfg.camera.backend == "replay" and cfg.camera.replay.path == str(tmp_path / "clip.mp4")
    assert cfg.camera.replay.pace == "fast" and cfg.camera.replay.loop is False
    assert (cfg.camera.stall_s, cfg.camera.lost_s) == (30.0, 60.0) and cfg.models.set == "int8"


def test_outbox_link_and_store_from_one_config(tmp_path):
    state = tmp_path / "state"
    cfg = C.replace(C.Config(), **{"device.state_dir": str(state), "outbox.path": str(tmp_path / "ob" / "q.sqlite"),
                                   "outbox.max_rows": 7, "mqtt.url": "mqtt://127.0.0.1:1"})
    signer = wiring.signer(state)
    assert wiring.signer(state).key_id == signer.key_id          # created once, then loaded
    ob, recovery = wiring.outbox(cfg)
    try:
        assert recovery is None and ob.path == tmp_path / "ob" / "q.sqlite" and ob.max_rows == 7
        link = wiring.link(cfg, ob, signer=signer, health=lambda: {"camera": "ok"})
        assert link.outbox is ob and link.status_payload()["camera"] == "ok"
        kicks = []
        store = wiring.verdict_store(signer, ob, state, alarm=lambda n, on: None, kick=lambda: kicks.append(1))
        assert store is not None
    finally:
        ob.close()
