"""Photo decoders: WLT via ctypes against a stand-in C library (same ABI as libwlt2bmp.so,
compiled here with gcc), BMP, JPEG, auto-by-magic, start-up errors, the ≤1,024-byte card JPEG."""
from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from tests.conftest import missing

from device.cardreader.photo import (AutoDecoder, BmpDecoder, JpegDecoder, WltDecoder, card_photo_jpeg,
                                     make_decoder)
from device.config import ReaderConfig
from device.errors import CardError

STANDIN_C = r"""
#include <string.h>
/* Stand-in for the vendor's libwlt2bmp.so with the same ABI:
   int unpack(const unsigned char *wlt, unsigned char *bmp, int save_to_file);
   wlt: 1024 bytes starting "WLf"; bmp: 38862-byte buffer receiving a 102x126 24-bit BMP file.
   Returns 1 on success. Pixel (x, y) from the top: R = 2y, G = 2x, B = wlt[3 + (x + y) % 1000]. */
static void put32(unsigned char *p, unsigned v) { p[0]=v; p[1]=v>>8; p[2]=v>>16; p[3]=v>>24; }
int unpack(const unsigned char *wlt, unsigned char *bmp, int save_to_file) {
    const int w = 102, h = 126, row = 308, size = 54 + 308 * 126;
    if (!wlt || !bmp || save_to_file != 0) return -2;
    if (wlt[0] != 'W' || wlt[1] != 'L' || wlt[2] != 'f') return -1;
    memset(bmp, 0, size);
    bmp[0] = 'B'; bmp[1] = 'M'; put32(bmp + 2, size); put32(bmp + 10, 54); put32(bmp + 14, 40);
    put32(bmp + 18, w); put32(bmp + 22, h); bmp[26] = 1; bmp[28] = 24; put32(bmp + 34, row * h);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *p = bmp + 54 + (h - 1 - y) * row + 3 * x;   /* bottom-up BGR */
            p[0] = wlt[3 + (x + y) % 1000]; p[1] = (unsigned char)(2 * x); p[2] = (unsigned char)(2 * y);
        }
    return 1;
}
"""


@pytest.fixture(scope="session")
def wlt_lib(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        missing("no C compiler")
    d = tmp_path_factory.mktemp("wlt")
    (d / "standin.c").write_text(STANDIN_C)
    so = d / "libwlt2bmp.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(so), str(d / "standin.c")], check=True)
    return str(so)


def expected_standin(wlt: bytes) -> np.ndarray:
    y, x = np.mgrid[0:126, 0:102]
    out = np.zeros((126, 102, 3), np.uint8)
    out[..., 0] = (2 * y) & 0xFF
    out[..., 1] = (2 * x) & 0xFF
    out[..., 2] = np.frombuffer(wlt, np.uint8)[3 + (x + y) % 1000]
    return out


def wlt_photo(seed=0) -> bytes:
    return b"WLf" + np.random.default_rng(seed).integers(0, 256, 1021, dtype=np.uint8).tobytes()


def test_wlt_decoder_through_ctypes(wlt_lib):
    wlt = wlt_photo(1)
    rgb = WltDecoder(wlt_lib).decode(wlt)
    assert rgb.shape == (126, 102, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, expected_standin(wlt))
    assert np.array_equal(make_decoder("auto", wlt_lib).decode(wlt), rgb)


def test_wlt_library_failure_and_wrong_magic_are_card_read_failed(wlt_lib):
    with pytest.raises(CardError) as ei:
        WltDecoder(wlt_lib).decode(b"JUNK" + bytes(1020))
    assert ei.value.reason == "card_read_failed"


@pytest.mark.parametrize("kind,lib", [("wlt", ""), ("wlt", "/nonexistent/libwlt2bmp.so"),
                                      ("auto", "/nonexistent/libwlt2bmp.so")])
def test_missing_wlt_library_fails_at_startup(kind, lib):
    with pytest.raises(CardError) as ei:
        make_decoder(kind, lib)
    assert ei.value.reason == "photo_decoder_unavailable"


def test_library_without_the_abi_symbol_is_unavailable(tmp_path):
    gcc = shutil.which("gcc")
    if not gcc:
        missing("no C compiler")
    (tmp_path / "x.c").write_text("int something_else(void) { return 0; }\n")
    so = tmp_path / "libx.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(so), str(tmp_path / "x.c")], check=True)
    with pytest.raises(CardError) as ei:
        WltDecoder(str(so))
    assert ei.value.reason == "photo_decoder_unavailable"


def test_reader_open_checks_decoder_before_the_port():
    from device.cardreader.reader import CardReader
    r = CardReader(ReaderConfig(port="/nonexistent/ttyUSB9", photo_decoder="wlt", wlt_library=""))
    with pytest.raises(CardError) as ei:
        r.open()
    assert ei.value.reason == "photo_decoder_unavailable"


def test_auto_without_library_rejects_wlt_photo_clearly():
    with pytest.raises(CardError) as ei:
        make_decoder("auto", "").decode(wlt_photo())
    assert ei.value.reason == "photo_decoder_unavailable"


def _synthetic_face() -> np.ndarray:
    from device.cardreader.simulator import synthetic_face_rgb
    return synthetic_face_rgb(300, 360, seed=4)


def test_card_photo_jpeg_fits_and_auto_decodes_synthetic():
    rgb = _synthetic_face()
    j = card_photo_jpeg(rgb)
    assert len(j) <= 1024 and j[:3] == b"\xff\xd8\xff"
    padded = j + b"\x00" * (1024 - len(j))
    out = AutoDecoder().decode(padded)
    assert out.shape == (126, 102, 3)
    ref = cv2.resize(rgb[:, 4:295], (102, 126), interpolation=cv2.INTER_AREA)   # central 291x360 = 102:126
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 8
    assert np.array_equal(JpegDecoder().decode(padded), out)


def test_card_photo_jpeg_from_real_face(shared_data):
    imgs = sorted((shared_data / "lfw-dev" / "images").glob("*.jpg"))[:5]
    assert imgs
    for p in imgs:
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        j = card_photo_jpeg(rgb)
        assert len(j) <= 1024
        out = make_decoder("auto").decode(j)
        assert out.shape == (126, 102, 3) and out.std() > 10       # a picture, not a flat block


def test_card_photo_jpeg_rejects_impossible_budget():
    with pytest.raises(ValueError):
        card_photo_jpeg(_synthetic_face(), max_bytes=100)


def test_bmp_decoder_and_corrupt_photos():
    rgb = _synthetic_face()[:126, :102].copy()
    ok, bmp = cv2.imencode(".bmp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(BmpDecoder().decode(bmp.tobytes()), rgb)
    assert np.array_equal(AutoDecoder().decode(bmp.tobytes()), rgb)
    for bad, dec in ((b"\xff\xd8\xff" + bytes(1021), AutoDecoder()), (b"BM" + bytes(100), AutoDecoder()),
                     (bytes(1024), AutoDecoder()), (b"GIF89a" + bytes(10), JpegDecoder())):
        with pytest.raises(CardError) as ei:
            dec.decode(bad)
        assert ei.value.reason == "card_read_failed"


def test_wlt_card_over_the_pty_with_the_standin_library(wlt_lib):
    from device.cardreader.reader import CardReader
    from device.cardreader.simulator import FakeCard, Simulator
    wlt = wlt_photo(9)
    with Simulator(FakeCard.permit_hmt(photo_bytes=wlt)) as sim:
        r = CardReader(ReaderConfig(port=sim.port, photo_decoder="wlt", wlt_library=wlt_lib)).open()
        try:
            cr = r.read_card()
            assert cr.record.card_type == "permit_hmt"
            assert np.array_equal(cr.photo, expected_standin(wlt))
            sim.insert(FakeCard.resident())            # a JPEG photo where WLT is configured
            with pytest.raises(CardError) as ei:
                r.read_card()
            assert ei.value.reason == "card_read_failed"
        finally:
            r.close()
