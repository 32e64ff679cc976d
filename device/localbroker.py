"""A mosquitto on a free loopback port: for `kyc-edge demo`, the link bench and the tests.

Stdlib only (device/link may use it). Never a production broker: it listens on 127.0.0.1 only.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_bin() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("mosquitto is not installed (scripts/setup installs it)")


class LocalBroker:
    """extra_conf replaces the default `allow_anonymous true`; persistence keeps sessions and
    queued messages across kill/start on the same port."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None, *,
                 tls: bool = False, persistence: bool = False):
        self.dir = Path(workdir) / f"mosq-{id(self)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.tls = tls
        self.persistence = persistence
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def conf_text(self) -> str:
        base = self.extra_conf or "allow_anonymous true\n"
        if self.persistence:
            tail = (f"persistence true\npersistence_location {self.dir}/\n"
                    "autosave_interval 1\nautosave_on_changes true\n")
        else:
            tail = "persistence false\n"
        if hasattr(os, "geteuid") and os.geteuid() == 0 and "\nuser " not in "\n" + base:
            # as root mosquitto drops to user `mosquitto`, which cannot read 0600 files in a tmp dir
            tail += "user root\n"
        return f"listener {self.port} 127.0.0.1\n{base}{tail}"

    def log_text(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> "LocalBroker":
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.conf_text())
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Default SIGKILL: no clean shutdown, no persistence save, no will suppression."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
