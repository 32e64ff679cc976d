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
