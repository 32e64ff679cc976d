"""`kyc-edge display serve`: the counter page, its Server-Sent Events stream, and the daemon socket.

Transport, and why: the daemon connects to this process's Unix socket and writes session events, one
JSON line each; answers from the page's consent buttons go back on the same connection. A Unix socket
rather than the MQTT broker because the screen is part of the counter, not of the fleet: it keeps
working with the broker down or remote (mqtt.url may well be a central broker), nothing of it leaves
the box, and file permissions (group kyc-edge, mode 0660) decide who may speak to it. The page gets
the events by SSE (EventSource: no third-party JavaScript, automatic reconnect).

Every event is validated here again against the closed schema (device.link.events) before any page
sees it: a field that is not in the schema (an image, a name, a number, free text) never gets through.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from device.config import Config
from device.link.events import session_event
from device.verdict import VerdictError

log = logging.getLogger("kyc_edge.display")
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                 "/style.css": ("style.css", "text/css; charset=utf-8"),
                 "/texts.json": ("texts.json", "application/json; charset=utf-8")}
_VOICE = re.compile(r"^/voice/(zh|en)/([a-z_]{1,32})\.wav$")
MAX_LINE = 4096
_SESSION_START = ("card_detected",)


def voice_dir(cfg: Config) -> Path:
    return Path(cfg.display.voice_dir) if cfg.display.voice_dir else Path("/var/lib/kyc-edge-display/voice")


class Hub:
    """Fan-out of validated events to the page streams; remembers the current session's events so a
    page that (re)connects mid-session shows the right screen."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subs: list[queue.Queue] = []
        self.current: list[dict] = []
        self.session_id: str | None = None
        self.accepted = self.rejected = 0

    def publish_raw(self, obj) -> dict | None:
        try:
            ev = session_event(obj)
        except VerdictError as e:
            self.rejected += 1
            log.warning("display: event rejected: %s", e)
            return None
        self.accepted += 1
        with self._lock:
            if ev["event"] in _SESSION_START or (ev.get("session_id") and ev.get("session_id") != self.session_id):
                self.current = []
            self.session_id = ev.get("session_id", self.session_id)
            self.current = (self.current + [ev])[-32:]
            subs = list(self._subs)
        for q in subs:
            try:
                q.put_nowait(ev)
            except queue.Full:
                pass
        return ev

    def subscribe(self) -> tuple[queue.Queue, list[dict]]:
        q: queue.Queue = queue.Queue(maxsize=256)
        with self._lock:
            self._subs.append(q)
            return q, list(self.current)

    def unsubscribe(self, q) -> None:
        with self._lock:
            if q in self._subs:
                self._subs.remove(q)


class DaemonSocket:
    """The Unix socket the daemon connects to (events in, consent answers out)."""

    def __init__(self, path: str, hub: Hub):
        self.path, self.hub = path, hub
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock: socket.socket | None = None

    def start(self) -> "DaemonSocket":
        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_socket() or p.exists():
            p.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        threading.Thread(target=self._accept, name="display-sock", daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(None)
            with self._lock:
                self._conns.append(c)
            threading.Thread(target=self._read, args=(c,), name="display-conn", daemon=True).start()

    def _read(self, c: socket.socket) -> None:
        try:
            for line in c.makefile("rb"):
                if len(line) > MAX_LINE:
                    self.hub.rejected += 1
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    self.hub.rejected += 1
                    continue
                self.hub.publish_raw(obj)
        except OSError:
            pass
        finally:
            with self._lock:
                if c in self._conns:
                    self._conns.remove(c)
            c.close()

    def answer(self, msg: dict) -> int:
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        n = 0
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.sendall(line)
                n += 1
            except OSError:
                pass
        return n

    @property
    def connected(self) -> bool:
        return bool(self._conns)

    def stop(self) -> None:
        self._stop.set()
        if self.sock is not None:
            self.sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            Path(self.path).unlink()
        except OSError:
            pass


class DisplayServer:
    def __init__(self, cfg: Config, *, port: int | None = None, socket_path: str | None = None):
        self.cfg = cfg
        self.hub = Hub()
        self.daemon_sock = DaemonSocket(socket_path or cfg.display.socket, self.hub)
        self.voice_dir = voice_dir(cfg)
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):   # no request log: nothing to learn from it
                pass

            def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Security-Policy",
                                 "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                                 "style-src 'self'; script-src 'self'; connect-src 'self'")
                self.send_header("X-Content-Type-Options", "nosniff")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path in _STATIC_FILES:
                    name, ctype = _STATIC_FILES[path]
                    return self._send(200, (STATIC / name).read_bytes(), ctype)
                if path == "/settings.json":
                    return self._send(200, json.dumps(server.settings()).encode(), "application/json")
                if path == "/events":
                    return self._events()
                m = _VOICE.match(path)
                if m:
                    f = server.voice_dir / m.group(1) / f"{m.group(2)}.wav"
                    if server.cfg.display.voice and f.is_file():
                        return self._send(200, f.read_bytes(), "audio/wav")
                return self._send(404, b"not found\n", "text/plain")

            def do_POST(self):
                if self.path != "/consent":
                    return self._send(404, b"not found\n", "text/plain")
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(min(n, 1024)) or b"{}")
                    answer = body.get("answer")
                except (ValueError, AttributeError):
                    answer = None
                if answer not in ("agree", "decline", "alternative"):
                    return self._send(400, b'{"ok":false}', "application/json")
                msg = {"answer": answer, "notice_version": server.cfg.consent.notice_version,
                       "session_id": server.hub.session_id}
                sent = server.daemon_sock.answer(msg)
                return self._send(200 if sent else 503, json.dumps({"ok": bool(sent)}).encode(), "application/json")

            def _events(self):
                q, backlog = server.hub.subscribe()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                    self.send_header("Cache-Control", "no-store")
                    self.send_header("Connection", "keep-alive")
                    self.end_headers()
                    self.wfile.write(b"retry: 1000\n\n")
                    for ev in backlog:
                        self._event(ev)
                    self.wfile.flush()
                    while not server._stopping.is_set():
                        try:
                            ev = q.get(timeout=10)
                        except queue.Empty:
                            self.wfile.write(b": keepalive\n\n")
                            self.wfile.flush()
                            continue
                        self._event(ev)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
                finally:
                    server.hub.unsubscribe(q)
                    self.close_connection = True

            def _event(self, ev: dict) -> None:
                self.wfile.write(b"data: " + json.dumps(ev, ensure_ascii=True, separators=(",", ":")).encode()
                                 + b"\n\n")

        self.httpd = ThreadingHTTPServer((cfg.display.listen, cfg.display.port if port is None else port), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def settings(self) -> dict:
        d, c = self.cfg.display, self.cfg.consent
        return {"language": d.language, "voice": d.voice, "result_hold_s": d.result_hold_s,
                "notice_version": c.notice_version, "notice": {"zh": c.notice_zh, "en": c.notice_en}}

    def start(self) -> "DisplayServer":
        self.daemon_sock.start()
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                         name="display-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.daemon_sock.stop()


def serve(cfg: Config, port: int | None = None, socket_path: str | None = None, ready=None) -> int:
    import signal
    srv = DisplayServer(cfg, port=port, socket_path=socket_path).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    print(f"display: serving {srv.url} (daemon socket {srv.daemon_sock.path})", flush=True)
    if ready:
        ready(srv)
    try:
        from device.notify import Notifier
        Notifier(os.environ).ready(f"serving {srv.url}")
    except Exception:  # noqa: BLE001 - not under systemd
        pass
    stop.wait()
    srv.stop()
    return 0
