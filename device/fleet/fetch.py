"""Getting an update's artifacts onto the box: inline pages and chunks from the update topic
(`Spool`), URL downloads (`download`), and the size and sha256 check of every artifact against the
signed manifest (`verify`). Shared by the bundle agent and the software updater.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from device.fleet import manifest as mf
from device.fleet import slots
from device.fleet.manifest import FleetError
from device.models import sha256_file

log = logging.getLogger("kyc_edge.fleet")


class Stopping(Exception):
    """The agent is closing: abandon the job silently (it is re-sent or re-signed later)."""


class Spool:
    """Inline artifacts arriving as pages and chunks on the update topic:
    {"page": {"nonce", "name", "index", "sha256": [hex, ...]}} announces the sha256 of up to
    PAGE_CHUNKS chunks and must match the signed manifest's `pages[index]`;
    {"chunk": {"nonce", "name", "offset", "data"}} is written only if its sha256 is the one its
    page announced. Anything else (unknown name, early chunk, bad offset/length/hash, bad
    base64) is dropped and counted in `dropped`, never fatal: the genuine message still lands."""

    def __init__(self, d: Path, artifacts: list[dict], stop: threading.Event | None = None):
        self.stop = stop or threading.Event()
        self.dir = d
        self.cond = threading.Condition()
        self.error: FleetError | None = None
        self.files: dict[str, dict] = {}
        self.dropped = 0
        d.mkdir(parents=True, exist_ok=True)
        for a in artifacts:
            if a.get("inline"):
                p = d / a["name"]
                p.touch()
                self.files[a["name"]] = {"path": p, "size": int(a["size"]), "cb": int(a["chunk_bytes"]),
                                         "pages": list(a["pages"]), "pages_ok": set(), "known": {}, "got": set(),
                                         "bytes": 0}

    def drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            log.warning("fleet: inline message dropped (%s); %d dropped so far", why, self.dropped)

    def add_page(self, name: str, index: Any, digests: Any) -> None:
        with self.cond:
            f = self.files.get(name)
            if f is None or not isinstance(index, int) or isinstance(index, bool) \
                    or not 0 <= index < len(f["pages"]) or not isinstance(digests, list):
                return self.drop("page for no announced page")
            if index in f["pages_ok"]:
                return
            try:
                ok = mf.page_digest(digests) == f["pages"][index]
            except (TypeError, ValueError):
                ok = False
            if not ok:
                return self.drop("page digest differs from the signed manifest")
            f["pages_ok"].add(index)
            for k, dg in enumerate(digests):
                f["known"][index * mf.PAGE_CHUNKS + k] = dg

    def add(self, name: str, offset: Any, data: bytes) -> None:
        with self.cond:
            f = self.files.get(name)
            if f is None or self.error is not None:
                return
            cb = f["cb"]
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 or offset % cb:
                return self.drop("chunk offset not on a chunk boundary")
            k = offset // cb
            if k in f["got"]:
                return
            want = f["known"].get(k)
            if want is None:
                return self.drop("chunk before its page / beyond the declared size")
            if len(data) != min(cb, f["size"] - offset) or hashlib.sha256(data).hexdigest() != want:
                return self.drop("chunk sha256 differs from its page")
            try:
                fd = os.open(f["path"], os.O_WRONLY)
                try:
                    os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            except OSError as e:
                self.error = FleetError("disk_full" if slots.disk_error(e) else "download_failed",
                                        f"{name}: writing chunk: {e.strerror}")
                self.cond.notify_all()
                return
            f["got"].add(k)
            f["bytes"] += len(data)
            self.cond.notify_all()

    def wait(self, name: str, deadline: float) -> Path:
        with self.cond:
            f = self.files[name]
            while self.error is None and f["bytes"] < f["size"]:
                if self.stop.is_set():
                    raise Stopping()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetError("truncated", f"{name}: {f['bytes']} of {f['size']} bytes arrived in time")
                self.cond.wait(min(left, 0.5))
            if self.error is not None:
                raise self.error
            return f["path"]


def fetch(m: dict, spool: Spool, d: Path, deadline: float, stop: threading.Event) -> dict[str, Path]:
    """Every artifact of `m`: inline ones as they land in the spool, the others downloaded."""
    return {a["name"]: spool.wait(a["name"], deadline) if a.get("inline") else download(a, d, deadline, stop)
            for a in m["artifacts"]}


def verify(m: dict, files: dict[str, Path]) -> None:
    """Each artifact has exactly its declared size and sha256 (FleetError truncated / hash_mismatch)."""
    for a in m["artifacts"]:
        p = files[a["name"]]
        size = p.stat().st_size
        if size < a["size"]:
            raise FleetError("truncated", f"{a['name']}: {size} of {a['size']} bytes")
        if size > a["size"] or sha256_file(p) != a["sha256"]:
            raise FleetError("hash_mismatch", f"{a['name']}: sha256 differs from the manifest")


def download(a: dict, d: Path, deadline: float, stop: threading.Event) -> Path:
    """One URL artifact into `d`, bounded by its declared size and `deadline` (monotonic)."""
    url, size = a["url"], int(a["size"])
    d.mkdir(parents=True, exist_ok=True)
    p = d / a["name"]
    got = 0
    try:
        timeout = max(1.0, min(30.0, deadline - time.monotonic()))
        with urllib.request.urlopen(url, timeout=timeout) as r, open(p, "wb") as out:
            n = r.headers.get("Content-Length")
            if n is not None and n.isdigit() and int(n) > size:
                raise FleetError("hash_mismatch", f"{a['name']}: server offers {n} bytes, manifest {size}")
            while True:
                if stop.is_set():
                    raise Stopping()
                if time.monotonic() > deadline:
                    raise FleetError("truncated", f"{a['name']}: download timed out at {got} of {size} bytes")
                buf = r.read(65536)
                if not buf:
                    break
                got += len(buf)
                if got > size:
                    raise FleetError("hash_mismatch", f"{a['name']}: more bytes than declared")
                out.write(buf)
            out.flush()
            os.fsync(out.fileno())
    except http.client.IncompleteRead:
        raise FleetError("truncated", f"{a['name']}: connection closed early") from None
    except urllib.error.HTTPError as e:
        raise FleetError("download_failed", f"{a['name']}: HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise FleetError("download_failed", f"{a['name']}: {e.reason}") from None
    except OSError as e:
        if slots.disk_error(e):
            raise FleetError("disk_full", f"{a['name']}: {e.strerror}") from None
        if isinstance(e, (TimeoutError, ConnectionError)):
            raise FleetError("truncated", f"{a['name']}: {type(e).__name__} at {got} of {size} bytes") from None
        raise FleetError("download_failed", f"{a['name']}: {type(e).__name__}") from None
    return p
