"""Privacy by construction: the verdict schema cannot carry an embedding, an image, a name or free
text, and the scanners in tests/privacy_scan.py find those things when they are there."""
from __future__ import annotations

import base64
import json
import struct

import pytest

from device import verdict as V
from device.link import events
from tests import privacy_scan as ps
from tests.test_verdict import make

NAME = "张伟"
NAME_LATIN = "ZHANG WEI"
ID_NUMBER = "11010119900307123X"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)
EMBEDDING = [round((-1) ** i * (i % 13) / 37.0, 6) for i in range(192)]


def places(value):
    """Every way a careless caller might try to put `value` into a verdict."""
    return {
        "new top-level field": lambda v: v.__setitem__("extra", value),
        "scores.embedding": lambda v: v["scores"].__setitem__("embedding", value),
        "scores.similarity": lambda v: v["scores"].__setitem__("similarity", value),
        "card.photo": lambda v: v["card"].__setitem__("photo", value),
        "card.type": lambda v: v["card"].__setitem__("type", value),
        "models.detector": lambda v: v["models"].__setitem__("detector", value),
        "timings_ms.total": lambda v: v["timings_ms"].__setitem__("total", value),
        "reasons": lambda v: v.__setitem__("reasons", [value]),
        "device": lambda v: v.__setitem__("device", value),
    }


PAYLOADS = {
    "embedding list": EMBEDDING,
    "embedding as string": json.dumps(EMBEDDING),
    "image bytes": JPEG,
    "image base64": base64.b64encode(JPEG).decode(),
    "png data url": "data:image/png;base64," + base64.b64encode(PNG).decode(),
    "name": NAME,
    "latin name": NAME_LATIN,
    "id number": ID_NUMBER,
    "free text": "customer looked nervous, wore glasses",
    "nested object": {"name": NAME, "number": ID_NUMBER},
}


@pytest.mark.parametrize("what", sorted(PAYLOADS))
def test_validate_rejects_biometric_and_pii_everywhere(what):
    rejected = 0
    for where, put in places(PAYLOADS[what]).items():
        v = make()
        put(v)
        try:
            V.validate(v)
        except V.VerdictError as e:
            rejected += 1
            assert NAME not in str(e) and ID_NUMBER not in str(e) and "JFIF" not in str(e)
        else:
            pytest.fail(f"{what} accepted at {where}")
    assert rejected == len(places(None))


@pytest.mark.parametrize("field", ["name", "full_name", "id_number", "photo", "face", "embedding",
                                   "image", "address", "note", "comment"])
def test_named_pii_fields_are_unknown_fields(field):
    v = make()
    v[field] = "x"
    with pytest.raises(V.VerdictError):
        V.validate(v)
    v = make()
    v["card"][field] = "x"
    with pytest.raises(V.VerdictError):
        V.validate(v)


def test_build_rejects_pii_arguments():
    with pytest.raises(V.VerdictError):
        make(card={"type": "resident", "expired": False, "name": NAME})
    with pytest.raises(V.VerdictError):
        make(scores={"liveness": 0.9, "spoof": 0.1, "similarity": 0.5, "threshold": 0.4, "vec": EMBEDDING})
    with pytest.raises(V.VerdictError):
        make(models={"detector": JPEG})


def test_session_events_and_update_status_are_closed_too():
    ok = events.session_event({"event": "challenge", "challenge": "blink", "state": "started", "index": 0, "of": 2})
    assert ok["at"].endswith("Z")
    for bad in ({"event": "challenge", "prompt": "Please blink, Mr Zhang"},
                {"event": "state", "state": "card_read", "name": NAME},
                {"event": "state", "state": "has spaces"},
                {"event": "verdict", "embedding": EMBEDDING},
                {"event": "capture", "frame": base64.b64encode(JPEG).decode()},
                {"event": "state", "t": float("nan")}):
        with pytest.raises(V.VerdictError):
            events.session_event(bad)
    assert events.update_status({"state": "downloading", "bundle": "2026.11.1", "progress": 0.5})
    for bad in ({"state": "failed", "error": "could not open /home/zhang wei"},
                {"state": "ok", "photo": base64.b64encode(JPEG).decode()},
                {"state": "ok", "vec": EMBEDDING}):
        with pytest.raises(V.VerdictError):
            events.update_status(bad)


def test_health_sanitizer_drops_vectors_and_bytes():
    h = events.sanitize_health({"models": {"detector": "1.0"}, "vec": EMBEDDING, "photo": JPEG,
                                "Bad Key": 1, "camera": "ok", "temps": [40.5, 41.0], "last": NAME,
                                "note": "free text here", "card": ID_NUMBER, "reader": None})
    assert h == {"models": {"detector": "1.0"}, "camera": "ok", "temps": [40.5, 41.0], "reader": None}


# ---------------------------------------------------------------- the scanners themselves
def _bmp(w=8, h=8) -> bytes:
    pixels = bytes(w * h * 3)
    return b"BM" + struct.pack("<IIII", 54 + len(pixels), 0, 54, 40) + struct.pack("<ii", w, h) + bytes(28) + pixels


@pytest.mark.parametrize("blob,kind", [
    (JPEG, "JPEG"), (PNG, "PNG"), (_bmp(), "BMP"), (b"xxWLfyyyy" + bytes(100), "WLT"),
    (json.dumps({"p": base64.b64encode(JPEG).decode()}).encode(), "base64 image"),
    (json.dumps({"p": base64.b64encode(PNG).decode()}).encode(), "base64 image"),
])
def test_scanner_finds_images(blob, kind):
    f = ps.scan_bytes(b"prefix " + blob)
    assert any(x.kind == "image" and x.what == kind for x in f), f


def test_scanner_ignores_text_that_merely_contains_bm():
    assert ps.scan_text("BM is a bitmap; LBM; 'BM' + 12 bytes of junk") == []


def test_scanner_finds_float_runs_and_arrays():
    assert ps.scan_bytes(json.dumps({"v": EMBEDDING}).encode())
    assert ps.scan_text("embedding: " + " ".join(f"{x:.4f}" for x in EMBEDDING[:20]))
    assert ps.scan_text("vec=" + ",".join(str(x) for x in EMBEDDING[:16]))
    assert not ps.scan_text("vec=" + ",".join(str(x) for x in EMBEDDING[:10]))
    assert not ps.scan_bytes(json.dumps(make()).encode())       # a verdict is not a vector


def test_scanner_finds_forbidden_strings_in_any_encoding_without_echoing_them():
    for enc in ("utf-8", "utf-16-le", "gb18030"):
        f = ps.scan_bytes(b"..." + NAME.encode(enc) + b"...", [NAME])
        assert f and NAME not in str(f[0])
    assert ps.scan_text("id 11010119900307123X", ["110101-19900307-123X"])   # separators removed
    assert ps.scan_text("card 11010119900307123x", [ID_NUMBER])       # case-insensitive
    assert ps.scan_bytes(json.dumps({"n": NAME}).encode(), [NAME])      # \\u-escaped in JSON
    assert ps.scan_text(f"read {NAME.encode()!r}", [NAME])              # bytes repr in a log
    assert ps.scan_text("Zhang Wei", [NAME_LATIN])
    assert not ps.scan_text("nothing here", [NAME, ID_NUMBER])


def test_scan_dirs_walks_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clean.txt").write_text("ok")
    (tmp_path / "a" / "leak.bin").write_bytes(b"\x00" + JPEG)
    (tmp_path / "log.txt").write_text(f"user {ID_NUMBER}")
    f = ps.scan_dirs([tmp_path], [ID_NUMBER])
    assert {x.kind for x in f} == {"image", "forbidden"}
    with pytest.raises(AssertionError):
        ps.assert_clean(f)
    assert ps.scan_dirs([tmp_path], [ID_NUMBER], skip=("leak.bin", "log.txt")) == []


def test_a_signed_verdict_scans_clean(tmp_path):
    s = V.Signer.load_or_create(tmp_path)
    blob = json.dumps(s.sign(make())).encode()
    ps.assert_clean(ps.scan_bytes(blob, [NAME, NAME_LATIN, ID_NUMBER]), "signed verdict")
