"""The daemon's end of the display socket: session events out, consent answers back.

Best effort by design: a display that is down, slow or restarting never blocks or fails a session.
Events go through the closed session-event schema before they are queued (a bad one is dropped).
"""
from __future__ import annotations

import json
import logging
import queue
import socket
import threading

from device.link.events import session_event
from device.verdict import VerdictError

log = logging.getLogger("kyc_edge.display")
MAX_LINE = 4096


class DisplayClient:
    def __init__(self, path: str, on_answer=lambda answer, channel, version, session_id: None,
                 reconnect_s: float = 0.5):
        self.path = path
        self.on_answer = on_answer
        self.reconnect_s = reconnect_s
        self._q: queue.Queue = queue.Queue(maxsize=256)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.sent = self.dropped = 0

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def start(self) -> "DisplayClient":
        t = threading.Thread(target=self._run, name="display-link", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._q.put_nowait(None) if not self._q.full() else None
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(2)

    def send(self, event: dict) -> None:
        try:
            ev = session_event(event)
        except VerdictError as e:
            log.warning("display event dropped: %s", e)
            self.dropped += 1
            return
        if self._sock is None:
            self.dropped += 1
            return
        try:
            self._q.put_nowait(ev)
        except queue.Full:
            self.dropped += 1

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self._stop.is_set():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
            except OSError:
                s.close()
                self._stop.wait(self.reconnect_s)
                continue
            log.info("display connected at %s", self.path)
            with self._lock:
                self._sock = s
            reader = threading.Thread(target=self._read, args=(s,), name="display-read", daemon=True)
            reader.start()
            try:
                while not self._stop.is_set() and reader.is_alive():
                    try:
                        ev = self._q.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    if ev is None:
                        break
                    s.sendall(json.dumps(ev, separators=(",", ":")).encode() + b"\n")
                    self.sent += 1
            except OSError:
                pass
            finally:
                with self._lock:
                    self._sock = None
                s.close()
                reader.join(1)
            while not self._q.empty():      # stale events of a lost connection are not replayed
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break
            self._stop.wait(self.reconnect_s)

    def _read(self, s: socket.socket) -> None:
        f = s.makefile("rb")
        try:
            for line in f:
                if len(line) > MAX_LINE:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and isinstance(msg.get("answer"), str):
                    self.on_answer(msg["answer"], "display", msg.get("notice_version"), msg.get("session_id"))
        except (OSError, ValueError):
            pass
