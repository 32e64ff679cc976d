"""A TCP relay on loopback that a test can cut and restore: the network cable between two brokers.

    r = Relay(target_port).start(); r.port ... r.cut() (drops every connection, refuses new ones) ... r.restore()
"""
from __future__ import annotations

import selectors
import socket
import threading

from device.localbroker import free_port


class Relay:
    def __init__(self, target_port: int, port: int | None = None):
        self.target = ("127.0.0.1", target_port)
        self.port = port or free_port()
        self._lsock: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0

    def start(self) -> "Relay":
        self._listen()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        s.setblocking(False)
        self._lsock = s

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        registered: set = set()
        while not self._stop.is_set():
            with self._lock:
                socks = ([self._lsock] if self._lsock else []) + [x for p in self._pairs for x in p]
            for s in list(registered):
                if s not in socks:
                    try:
                        sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
                    registered.discard(s)
            for s in socks:
                if s not in registered:
                    try:
                        sel.register(s, selectors.EVENT_READ)
                        registered.add(s)
                    except (ValueError, OSError):
                        pass
            for key, _ in sel.select(0.05):
                s = key.fileobj
                if s is self._lsock:
                    try:
                        a, _ = s.accept()
                        b = socket.create_connection(self.target, 2)
                    except OSError:
                        continue
                    with self._lock:
                        self._pairs.append((a, b))
                        self.connections += 1
                    continue
                with self._lock:
                    pair = next((p for p in self._pairs if s in p), None)
                if pair is None:
                    continue
                other = pair[1] if s is pair[0] else pair[0]
                try:
                    data = s.recv(65536)
                    if not data:
                        raise OSError
                    other.sendall(data)
                except OSError:
                    self._close(pair)

    def _close(self, pair) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
        for x in pair:
            try:
                x.close()
            except OSError:
                pass

    def cut(self) -> None:
        """The cable is pulled: every relayed connection dropped, new ones refused."""
        with self._lock:
            ls, self._lsock = self._lsock, None
            pairs, self._pairs = self._pairs, []
        if ls is not None:
            ls.close()
        for p in pairs:
            for x in p:
                try:
                    x.close()
                except OSError:
                    pass

    def restore(self) -> None:
        with self._lock:
            if self._lsock is None:
                self._listen()

    def stop(self) -> None:
        self._stop.set()
        self.cut()
        if self._thread:
            self._thread.join(2)
