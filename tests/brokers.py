"""Start a real mosquitto on a free loopback port for tests (plain, or TLS + ACL)."""
from __future__ import annotations

import shutil
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
    raise RuntimeError("mosquitto not installed: run scripts/setup")


class Mosquitto:
    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None):
        self.dir = Path(workdir) / f"mosq-{id(self)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def conf_text(self) -> str:
        base = self.extra_conf or "allow_anonymous true\n"
        return f"listener {self.port} 127.0.0.1\n{base}persistence false\n"

    def start(self) -> "Mosquitto":
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.conf_text())
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
