"""Watchdog and notification semantics, with a NOTIFY_SOCKET the test owns (systemd is not PID 1 here)."""
from __future__ import annotations

import logging
import os
import time

from device import config as C
from device import logs
from device.daemon import Daemon
from device.notify import Notifier
from tests.daemon_harness import NotifySocket


def test_watchdog_sent_at_half_interval_only(tmp_path):
    sock = NotifySocket(tmp_path / "n.sock")
    n = Notifier({"NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "1000000"})
    assert n.watchdog_s == 1.0
    sent = [n.watchdog(now=t) for t in (10.0, 10.2, 10.49, 10.5, 10.7, 11.01)]
    assert sent == [True, False, False, True, False, True]
    time.sleep(0.3)
    assert sock.messages.count("WATCHDOG=1") == 3
    sock.close()


def test_watchdog_pid_of_another_process_disables_it(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000000",
                  "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_s is None and n.watchdog() is False


def test_no_notify_socket_is_silent(tmp_path, monkeypatch):
    """The notifier reads only the environment it is given: without NOTIFY_SOCKET there it sends
    nothing, even with a listener named in this process's own environment."""
    sock = NotifySocket(tmp_path / "n.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", sock.path)
    n = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    n.ready("x")
    n.status("y")
    n.watchdog(now=1e9)
    n.stopping()
    time.sleep(0.2)
    assert sock.messages == []
    m = Notifier()                               # the process environment: the listener hears it
    m.ready("x")
    assert sock.wait_for("READY=1", 2.0)
    time.sleep(0.1)
    assert sock.messages == ["READY=1", "STATUS=x", f"MAINPID={os.getpid()}"]
    sock.close()


class _Camera:
    """Stands in for the camera only: its capture thread's progress heartbeat."""
    health = "stalled"

    def __init__(self, progress):
        self.progress = progress


def test_hung_camera_recovery_starves_the_watchdog(tmp_path):
    sock = NotifySocket(tmp_path / "n.sock")
    d = Daemon(None, env={"NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "100000"})
    d.cfg = C.from_dict({})
    d.camera = _Camera(progress=time.monotonic())          # recovering, making progress
    d.tick()
    time.sleep(0.06)
    d.tick()
    d.camera = _Camera(progress=time.monotonic() - 3600)   # recovery hung for an hour
    time.sleep(0.06)
    d.tick()
    time.sleep(0.2)
    assert sock.messages.count("WATCHDOG=1") == 2
    assert d.healthy() is False
    sock.close()


def test_log_target_choice(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert logs.setup("info", "auto") == "stderr"
    monkeypatch.setenv("INVOCATION_ID", "abc")
    assert logs.setup("info", "auto") == "journald"   # systemd-python is a test dependency
    handler = logging.getLogger().handlers[0]
    assert type(handler).__name__ == "JournalHandler"
    assert logs.setup("warning", "stderr") == "stderr"
    assert logging.getLogger().level == logging.WARNING
