"""`outbox.path` is honoured by `kyc-edge run` (it used to be hard-coded to <state_dir>/outbox.sqlite)."""
from __future__ import annotations

from tests.conftest import need
from tests.daemon_harness import NotifySocket, daemon_config, start_daemon, stop_daemon, write_config
from tests.faces import BLINK_VIDEO


def test_the_configured_outbox_file_is_the_one_used(tmp_path, broker, shared_data, model_dir):
    video = need(shared_data / BLINK_VIDEO)
    custom = tmp_path / "elsewhere" / "queue.db"
    cfg = daemon_config(tmp_path, broker_url=broker.url, reader_port="kycsim://none", video=str(video),
                        model_dir=model_dir, extra={"outbox": {"path": str(custom)}})
    path = write_config(tmp_path / "config.toml", cfg)
    ns = NotifySocket(tmp_path / "notify.sock")
    proc = start_daemon(path, ns, log_path=tmp_path / "daemon.log")
    try:
        assert ns.first("READY=1", 90.0, alive=lambda: proc.poll() is None) is not None, \
            (tmp_path / "daemon.log").read_text()[-3000:]
        assert custom.is_file()
        assert not (tmp_path / "state" / "outbox.sqlite").exists()
    finally:
        assert stop_daemon(proc) == 0
        ns.close()
