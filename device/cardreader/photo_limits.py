"""Dimension and pixel caps for chip photos, checked from the image header before any decoder
allocates memory (issue 20: a 1,022-byte JPEG claiming 16000x16000 made the decoder take ~10 GB and
70 s). Parsers for JPEG (SOFn), JPEG 2000 (codestream SIZ, and the JP2 `ihdr` box), BMP (DIB header);
WLT needs none: the vendor ABI writes a fixed 102x126 BMP into a fixed buffer.

`check(data, max_side, max_pixels)` returns (width, height) or raises CardError("card_read_failed").
A header that cannot be read, names no size, or whose sizes disagree is refused too: what is not
bounded is not decoded. Pure Python over at most the given bytes; no allocation proportional to the
claimed size.
"""
from __future__ import annotations

import struct

from device.errors import CardError

JPEG_MAGIC = b"\xff\xd8\xff"
BMP_MAGIC = b"BM"
J2K_MAGIC = b"\xff\x4f\xff\x51"                        # SOC + SIZ: a raw JPEG 2000 codestream
JP2_MAGIC = b"\x00\x00\x00\x0cjP  \r\n\x87\n"          # the JP2 signature box
DEFAULT_MAX_SIDE = 2048
DEFAULT_MAX_PIXELS = 2_000_000

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _refuse(why: str) -> CardError:
    return CardError("card_read_failed", f"photo refused before decoding: {why}")


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(w, h) of the largest frame header before the first scan."""
    i, n = 2, len(data)
    best = None
    while i < n:
        if data[i] != 0xFF:
            raise _refuse("JPEG marker expected")
        while i < n and data[i] == 0xFF:          # fill bytes
            i += 1
        if i >= n:
            break
        m = data[i]
        i += 1
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            continue                              # standalone markers
        if m == 0xD9:
            break
        if i + 2 > n:
            break
        seg = struct.unpack(">H", data[i:i + 2])[0]
        if seg < 2:
            raise _refuse("JPEG segment length")
        if m in _SOF:
            if i + 7 > n:
                raise _refuse("JPEG frame header truncated")
            h, w = struct.unpack(">HH", data[i + 3:i + 7])
            if h == 0 or w == 0:
                raise _refuse("JPEG frame header without a size (DNL)")
            best = (max(w, best[0]), max(h, best[1])) if best else (w, h)
        if m == 0xDA:                             # start of scan: the frame size is known by now
            break
        i += seg
    if best is None:
        raise _refuse("JPEG without a frame header")
    return best


def _j2k_siz(data: bytes, at: int = 0) -> tuple[int, int]:
    if data[at:at + 4] != J2K_MAGIC or len(data) < at + 4 + 2 + 2 + 16:
        raise _refuse("JPEG 2000 codestream without SIZ")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[at + 8:at + 24])
    w, h = xsiz - xo, ysiz - yo
    if xsiz <= xo or ysiz <= yo:
        raise _refuse("JPEG 2000 SIZ offsets")
    return w, h


def jp2_size(data: bytes) -> tuple[int, int]:
    """JP2 file: the codestream's SIZ (what the decoder allocates), cross-checked with `ihdr`."""
    i, n = 0, len(data)
    ihdr = siz = None
    while i + 8 <= n:
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        hdr = 8
        if length == 1:
            if i + 16 > n:
                break
            length = struct.unpack(">Q", data[i + 8:i + 16])[0]
            hdr = 16
        elif length == 0:
            length = n - i
        if length < hdr:
            raise _refuse("JP2 box length")
        body = data[i + hdr:i + length]
        if kind == b"jp2h":
            j = 0
            while j + 8 <= len(body):
                bl, bk = struct.unpack(">I4s", body[j:j + 8])
                if bk == b"ihdr" and j + 16 <= len(body):
                    h, w = struct.unpack(">II", body[j + 8:j + 16])
                    ihdr = (w, h)
                if bl < 8:
                    break
                j += bl
        elif kind == b"jp2c":
            siz = _j2k_siz(data, i + hdr)
            break
        i += length
    if siz is None:
        raise _refuse("JP2 without a codestream header")
    if ihdr is not None and ihdr != siz:
        w, h = max(ihdr[0], siz[0]), max(ihdr[1], siz[1])
        return w, h
    return siz


def bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise _refuse("BMP header truncated")
    dib = struct.unpack("<I", data[14:18])[0]
    if dib == 12:
        w, h = struct.unpack("<HH", data[18:22])
    else:
        w, h = struct.unpack("<ii", data[18:26])
    w, h = abs(w), abs(h)
    if w == 0 or h == 0:
        raise _refuse("BMP without a size")
    return w, h


def size_of(data: bytes) -> tuple[int, int]:
    head = bytes(data[:12])
    if head[:3] == JPEG_MAGIC:
        return jpeg_size(bytes(data))
    if head[:2] == BMP_MAGIC:
        return bmp_size(bytes(data))
    if head[:4] == J2K_MAGIC:
        return _j2k_siz(bytes(data))
    if head == JP2_MAGIC:
        return jp2_size(bytes(data))
    raise _refuse("format not recognised")


def check(data, max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    try:
        w, h = size_of(data)
    except (struct.error, IndexError):
        raise _refuse("header truncated") from None
    if w > max_side or h > max_side or w * h > max_pixels:
        raise _refuse(f"header claims {w}x{h}, above the cap ({max_side} px side, {max_pixels} pixels)")
    return w, h
