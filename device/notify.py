"""sd_notify without depending on systemd being PID 1: write datagrams to $NOTIFY_SOCKET.

systemd-python's notify() is used when importable; the raw socket path is the same protocol and
lets tests own the socket.
"""
from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, env=os.environ):
        self.addr = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        ok_pid = pid is None or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() and ok_pid else None
        self._last_wd = 0.0
        self._sock = None
        if self.addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if not self._sock:
            return
        addr = self.addr
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            self._sock.sendto("\n".join(fields).encode(), addr)
        except OSError:
            pass   # the manager went away; never let notification break the daemon

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ready(self, text: str) -> None:
        self.send("READY=1", f"STATUS={text}", f"MAINPID={os.getpid()}")

    def watchdog(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 if half the interval has passed. Call only while healthy."""
        if not self.watchdog_s:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_wd >= self.watchdog_s / 2:
            self._last_wd = now
            self.send("WATCHDOG=1")
            return True
        return False

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")


class NotifyListener:
    """The service manager's side of sd_notify, for tests, the demo and the bench (systemd is not
    PID 1 there): binds the socket and records every field with its arrival time."""

    def __init__(self, path):
        import threading
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.timed: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._t.start()

    @property
    def messages(self) -> list[str]:
        return [m for _, m in list(self.timed)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.timed += [(now, m) for m in data.decode(errors="replace").split("\n") if m]

    def first(self, field: str, timeout: float, alive=lambda: True) -> float | None:
        """Arrival time of the first message starting with `field`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, m in list(self.timed):
                if m.startswith(field):
                    return t
            if time.monotonic() >= deadline or not alive():
                return None
            time.sleep(0.02)

    def wait_for(self, field: str, timeout: float) -> bool:
        return self.first(field, timeout) is not None

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
