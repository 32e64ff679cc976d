"""Issue 20 item 5: chip photos are refused above a dimension and pixel cap, checked from the
JPEG / JPEG 2000 / BMP header before decoding; memory stays bounded. Fuzzed with crafted headers;
and on the real parts: the daemon given such a card answers `card_read_failed` and keeps serving."""
from __future__ import annotations

import struct
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.cardreader import photo_limits as L
from device.cardreader.photo import AutoDecoder, make_decoder
from device.errors import CardError
from tests.daemon_harness import REPO


def _chip_jpeg() -> bytes:
    rgb = np.random.default_rng(1).integers(0, 255, (126, 102, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 40])
    return buf.tobytes()


def _claim(jpeg: bytes, w: int, h: int) -> bytes:
    """The same JPEG with its SOF0 frame header rewritten to claim w x h."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9:]


def bomb_1022() -> bytes:
    """The issue's photo: a 1,022-byte JPEG whose header claims 16000x16000."""
    j = _claim(_chip_jpeg(), 16000, 16000)
    return (j + b"\x00" * 1022)[:1022] if len(j) < 1022 else j[:1022]


def test_header_sizes_are_read_for_each_format():
    j = _chip_jpeg()
    assert L.size_of(j) == (102, 126)
    assert L.size_of(_claim(j, 16000, 16000)) == (16000, 16000)
    ok, bmp = cv2.imencode(".bmp", np.zeros((126, 102, 3), np.uint8))
    assert L.size_of(bmp.tobytes()) == (102, 126)
    siz = L.J2K_MAGIC + struct.pack(">HHIIIIIIII", 41, 0, 40000, 30000, 0, 0, 40000, 30000, 0, 0)
    assert L.size_of(siz) == (40000, 30000)
    jp2 = (L.JP2_MAGIC + struct.pack(">I4s", 20, b"ftyp") + b"jp2 " + b"\0" * 8
           + struct.pack(">I4s", 8 + 22, b"jp2h") + struct.pack(">I4sIIHBBBB", 22, b"ihdr", 126, 102, 3, 7, 7, 0, 0)
           + struct.pack(">I4s", 8 + len(siz), b"jp2c") + siz)
    assert L.size_of(jp2) == (40000, 30000)        # the codestream decides, not a small ihdr


def test_the_issue_bomb_is_refused_fast_and_small():
    """In a fresh process: refused in well under a second, peak RSS far from the 10 GB it took."""
    code = ("import resource, time, sys\n"
            "sys.path.insert(0, '.')\n"
            "from tests.test_photo_limits import bomb_1022\n"
            "from device.cardreader.photo import make_decoder\n"
            "from device.errors import CardError\n"
            "data = bomb_1022(); assert len(data) == 1022\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t = time.monotonic()\n"
            "try:\n"
            "    make_decoder('auto').decode(data); print('DECODED')\n"
            "except CardError as e:\n"
            "    print(e.reason)\n"
            "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    reason, stats = r.stdout.strip().splitlines()[-2:]
    secs, rss_kb = stats.split()
    assert reason == "card_read_failed"
    assert float(secs) < 1.0 and int(rss_kb) < 50_000


@pytest.mark.parametrize("w,h", [(16000, 16000), (2049, 100), (100, 2049), (2000, 1001)])
def test_caps_refuse_before_decoding(w, h):
    with pytest.raises(CardError) as e:
        AutoDecoder().decode(_claim(_chip_jpeg(), w, h))
    assert e.value.reason == "card_read_failed" and "above the cap" in e.value.detail


def test_configured_caps_apply():
    j = _chip_jpeg()
    assert make_decoder("auto").limit(2048, 2_000_000).decode(j).shape == (126, 102, 3)
    with pytest.raises(CardError):
        make_decoder("jpeg").limit(100, 2_000_000).decode(j)
    with pytest.raises(CardError):
        make_decoder("auto").limit(2048, 10_000).decode(j)


_marker = st.sampled_from([0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDA, 0xE0, 0xFE, 0xD9, 0xDD, 0xCF, 0xC8])


@st.composite
def crafted(draw):
    """JPEG / J2K / JP2 / BMP headers with hostile sizes, lengths and truncations."""
    kind = draw(st.sampled_from(["jpeg", "j2k", "jp2", "bmp", "mutate"]))
    big = st.integers(0, 70000)
    if kind == "jpeg":
        out = b"\xff\xd8"
        for _ in range(draw(st.integers(0, 6))):
            m = draw(_marker)
            if m == 0xC0 or m in L._SOF:
                body = struct.pack(">BHHB", 8, draw(st.integers(0, 65535)), draw(st.integers(0, 65535)), 3) + b"\x11\x00\x11\x01\x11\x01"[:draw(st.integers(0, 6))]
            else:
                body = draw(st.binary(max_size=40))
            ln = draw(st.one_of(st.just(len(body) + 2), st.integers(0, 65535)))
            out += bytes([0xFF, m]) + struct.pack(">H", ln) + body
        return out + draw(st.binary(max_size=64))
    if kind == "j2k":
        return L.J2K_MAGIC + struct.pack(">HHIIII", 41, 0, draw(big), draw(big), draw(big), draw(big))[:draw(st.integers(0, 20))]
    if kind == "jp2":
        siz = L.J2K_MAGIC + struct.pack(">HHIIII", 41, 0, draw(big), draw(big), 0, 0)
        return L.JP2_MAGIC + struct.pack(">I4s", draw(st.sampled_from([0, 1, 8, len(siz) + 8, 2**31])), b"jp2c") + siz
    if kind == "bmp":
        return b"BM" + struct.pack("<IHHIIii", 0, 0, 0, 54, draw(st.sampled_from([12, 40, 124])),
                                   draw(st.integers(-70000, 70000)), draw(st.integers(-70000, 70000))) + draw(st.binary(max_size=32))
    j = bytearray(_chip_jpeg())
    for _ in range(draw(st.integers(1, 8))):
        j[draw(st.integers(0, len(j) - 1))] = draw(st.integers(0, 255))
    return bytes(j[:draw(st.integers(3, len(j)))])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted())
def test_fuzz_crafted_headers_never_escape_the_caps(data):
    dec = AutoDecoder()
    t = time.monotonic()
    try:
        img = dec.decode(data)
    except CardError as e:
        assert e.reason in ("card_read_failed", "photo_decoder_unavailable")
        return
    finally:
        assert time.monotonic() - t < 2.0
    h, w = img.shape[:2]
    assert w <= L.DEFAULT_MAX_SIDE and h <= L.DEFAULT_MAX_SIDE and w * h <= L.DEFAULT_MAX_PIXELS


def test_daemon_answers_the_bomb_with_card_read_failed_and_keeps_serving(tmp_path, broker, shared_data, model_dir):
    from device.cardreader.simulator import FakeCard
    from tests.fault_rig import Rig
    rig = Rig(tmp_path, broker, shared_data, model_dir)
    try:
        rig.start()
        rig.sim.insert(FakeCard.resident(photo_bytes=bomb_1022()))
        rig.wait(lambda: len(rig.verdicts()) >= 1, 20, "the bomb's verdict")
        v = rig.verdicts()[0][0]["verdict"]
        assert v["result"] == "fail" and v["reasons"] == ["card_read_failed"]
        rig.sim.remove()
        time.sleep(0.5)
        assert rig.session()[0]["verdict"]["result"] == "pass"
    finally:
        rig.close()
