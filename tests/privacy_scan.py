"""Reusable privacy scanners: look for images, embeddings and PII in MQTT payloads, log text and
files. Each scanner returns a list of `Finding`s (empty = clean); `assert_clean(...)` fails a test
with a readable list that never prints the matched PII itself.

    scan_bytes(data, forbidden=(), where="mqtt:kyc/v1/.../verdict")
    scan_text(text, forbidden=(), where="log")
    scan_dirs([tmp_path, state_dir], forbidden=("ZHANG WEI", "110101199003071234"))
    scan_mqtt(messages, forbidden)        # iterable of (topic, payload) or objects with .topic/.payload

What counts as a finding:
  image      JPEG (FF D8 FF), PNG (89 50 4E 47 0D 0A 1A 0A), BMP ('BM' whose header's file size
             and pixel offset are sane), WLT ('WLf' chip-photo container), GIF/WebP; also the
             base64 forms of JPEG ('/9j/') and PNG ('iVBORw0KGgo') when followed by a long base64 run
  floats     a JSON array of >= 16 numbers (or an object with >= 16 float values), or a run of
             >= 16 decimal numbers in text (embeddings, landmarks). Raw binary float32 vectors are
             not searched (model files and SQLite pages would drown them in false positives).
  forbidden  each forbidden string (case-insensitive) in UTF-8, UTF-16-LE and GB18030, as JSON
             \\uXXXX escapes and as a bytes repr; ID-number digits also with separators removed
"""
from __future__ import annotations

import base64
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

MIN_FLOATS = 16


@dataclass(frozen=True)
class Finding:
    kind: str        # image | floats | forbidden
    where: str       # 'mqtt:<topic>', 'log', or a file path
    offset: int
    what: str        # e.g. 'JPEG', '20 floats', 'forbidden string #2' (never the PII itself)

    def __str__(self) -> str:
        return f"{self.where}@{self.offset}: {self.kind}: {self.what}"


# ---------------------------------------------------------------- images
_B64_RUN = re.compile(rb"[A-Za-z0-9+/]{64,}={0,2}")


def _bmp_sane(data: bytes, i: int) -> bool:
    if len(data) < i + 26:
        return False
    size, _r, off, hdr = struct.unpack_from("<IIII", data, i + 2)
    if hdr not in (12, 40, 52, 56, 108, 124):
        return False
    if not (26 <= off <= 4096 and off < size):
        return False
    if hdr == 12:
        w, h = struct.unpack_from("<HH", data, i + 18)
    else:
        w, h = struct.unpack_from("<ii", data, i + 18)
    return 0 < abs(w) <= 20000 and 0 < abs(h) <= 20000 and size >= 26


def find_images(data: bytes, where: str = "?") -> list[Finding]:
    out: list[Finding] = []
    for sig, name in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"),
                      (b"GIF87a", "GIF"), (b"GIF89a", "GIF")):
        i = data.find(sig)
        if i >= 0:
            out.append(Finding("image", where, i, name))
    i = data.find(b"RIFF")
    while i >= 0:
        if data[i + 8:i + 12] == b"WEBP":
            out.append(Finding("image", where, i, "WebP"))
            break
        i = data.find(b"RIFF", i + 1)
    i = data.find(b"WLf")
    if i >= 0:
        out.append(Finding("image", where, i, "WLT"))
    i = data.find(b"BM")
    while i >= 0:
        if _bmp_sane(data, i):
            out.append(Finding("image", where, i, "BMP"))
            break
        i = data.find(b"BM", i + 1)
    # base64-encoded images (e.g. inside JSON strings)
    for m in _B64_RUN.finditer(data):
        run = m.group(0)
        if run.startswith(b"/9j/") or run.startswith(b"iVBORw0KGgo") or run.startswith(b"Qk"):
            try:
                raw = base64.b64decode(run[: len(run) - len(run) % 4] or b"", validate=False)
            except ValueError:
                continue
            if raw[:3] == b"\xff\xd8\xff" or raw[:8] == b"\x89PNG\r\n\x1a\n" or \
                    (raw[:2] == b"BM" and _bmp_sane(raw, 0)):
                out.append(Finding("image", where, m.start(), "base64 image"))
    return out


# ---------------------------------------------------------------- float arrays
_NUM = r"-?(?:\d+\.\d+|\d+(?:\.\d+)?[eE][-+]?\d+|\.\d+)"
_RUN = re.compile(rb"(?:" + _NUM.encode() + rb"[\s,;]+){%d,}" % (MIN_FLOATS - 1) + _NUM.encode())


def _json_float_arrays(obj, path="$") -> list[str]:
    hits = []
    if isinstance(obj, list):
        nums = [x for x in obj if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if len(nums) >= MIN_FLOATS:
            hits.append(f"{len(nums)} numbers at {path}")
        for i, x in enumerate(obj):
            hits += _json_float_arrays(x, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            hits += _json_float_arrays(v, f"{path}.{k}")
        nums = [v for v in obj.values() if isinstance(v, float)]
        if len(nums) >= MIN_FLOATS:
            hits.append(f"{len(nums)} float values in one object at {path}")
    return hits


def find_float_arrays(data: bytes, where: str = "?") -> list[Finding]:
    out: list[Finding] = []
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        obj = None
    if obj is not None:
        out += [Finding("floats", where, 0, h) for h in _json_float_arrays(obj)]
    for m in _RUN.finditer(data):
        n = len(re.findall(_NUM.encode(), m.group(0)))
        out.append(Finding("floats", where, m.start(), f"run of {n} decimal numbers"))
        break
    return out


# ---------------------------------------------------------------- forbidden strings
def _variants(s: str) -> list[bytes]:
    forms = {s, s.upper(), s.lower()}
    digits = re.sub(r"[\s\-_.]", "", s)
    if digits != s and len(digits) >= 6:
        forms.add(digits)
    out = []
    for f in forms:
        if not f.isascii():
            out.append(json.dumps(f)[1:-1].encode())               # JSON \uXXXX escapes
            out.append(repr(f.encode("utf-8"))[2:-1].encode())     # repr(bytes) in a log line
        for enc in ("utf-8", "utf-16-le", "gb18030"):
            try:
                b = f.encode(enc)
            except UnicodeEncodeError:
                continue
            if len(b) >= 3:
                out.append(b)
    return list(dict.fromkeys(out))


def find_forbidden(data: bytes, forbidden: Iterable[str], where: str = "?") -> list[Finding]:
    out: list[Finding] = []
    low = data.lower()
    for n, s in enumerate(forbidden):
        if not s:
            continue
        for v in _variants(s):
            i = data.find(v)
            if i < 0 and v.isascii():
                i = low.find(v.lower())
            if i >= 0:
                out.append(Finding("forbidden", where, i, f"forbidden string #{n} ({len(s)} chars)"))
                break
    return out


# ---------------------------------------------------------------- front ends
def scan_bytes(data: bytes, forbidden: Iterable[str] = (), where: str = "?") -> list[Finding]:
    if isinstance(data, str):
        data = data.encode("utf-8")
    data = bytes(data)
    return find_images(data, where) + find_float_arrays(data, where) + \
        find_forbidden(data, list(forbidden), where)


def scan_text(text: str, forbidden: Iterable[str] = (), where: str = "log") -> list[Finding]:
    return scan_bytes(text.encode("utf-8", "replace"), forbidden, where)


def scan_mqtt(messages: Iterable, forbidden: Iterable[str] = ()) -> list[Finding]:
    out: list[Finding] = []
    forbidden = list(forbidden)
    for m in messages:
        topic, payload = (m.topic, m.payload) if hasattr(m, "topic") else (m[0], m[1])
        out += scan_bytes(payload, forbidden, f"mqtt:{topic}")
        props = m.properties if hasattr(m, "properties") else (m[2] if len(m) > 2 else None)
        if props is not None:
            out += scan_bytes(repr(props).encode(), forbidden, f"mqtt-props:{topic}")
    return out


def scan_file(path: Path, forbidden: Iterable[str] = ()) -> list[Finding]:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    return scan_bytes(data, forbidden, str(path))


def scan_dirs(dirs: Iterable[Path], forbidden: Iterable[str] = (), *,
              skip: Iterable[str] = ()) -> list[Finding]:
    """Every regular file under `dirs` (recursively), except paths containing a `skip` part."""
    out: list[Finding] = []
    forbidden = list(forbidden)
    skip = tuple(skip)
    for d in dirs:
        for root, _dirs, files in os.walk(d):
            for f in files:
                p = Path(root) / f
                if any(s in str(p) for s in skip) or not p.is_file() or p.is_symlink():
                    continue
                out += scan_file(p, forbidden)
    return out


def assert_clean(findings: list[Finding], what: str = "") -> None:
    if findings:
        lines = "\n  ".join(str(f) for f in findings[:20])
        raise AssertionError(f"privacy scan {what}: {len(findings)} finding(s):\n  {lines}")
