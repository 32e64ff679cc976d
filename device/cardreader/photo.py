"""Chip-photo decoders behind one interface: `decoder.decode(photo_field) -> RGB uint8 ndarray`.

- WLT  (magic b"WLf"): the reader's raw chip photo, a licensed wavelet format. Only the vendor's
  libwlt2bmp.so decodes it; we load it with ctypes from `reader.wlt_library`. ABI (docs/cardreader.md):
      int unpack(const unsigned char *wlt /* 1024 bytes in */,
                 unsigned char *bmp      /* 38862 bytes out: a 102x126 24-bit BMP file */,
                 int save_to_file        /* always 0 here: nothing may touch the disk */);
  returns 1 on success, anything else on failure.
- BMP  (magic b"BM"), JPEG (magic FF D8 FF) and JPEG 2000 (JP2 / codestream): readers that deliver
  decoded photos. Their header's size is checked against reader.photo_max_side / photo_max_pixels
  before decoding (photo_limits.py), so a crafted header cannot make the decoder allocate gigabytes.
- auto: picks by magic bytes.

Errors: CardError("photo_decoder_unavailable") when a WLT photo needs a library that is not
configured / not loadable (`make_decoder` raises it at start-up when the config demands WLT);
CardError("card_read_failed") for a corrupt photo.
"""
from __future__ import annotations

import ctypes
import os
import threading

import cv2
import numpy as np

from device.cardreader import photo_limits
from device.errors import CardError

WLT_MAGIC = b"WLf"
BMP_MAGIC = b"BM"
JPEG_MAGIC = b"\xff\xd8\xff"
PHOTO_W, PHOTO_H = 102, 126
BMP_ROW = (PHOTO_W * 3 + 3) // 4 * 4                      # 308: rows padded to 4 bytes
WLT_OUT_LEN = 54 + BMP_ROW * PHOTO_H                     # 38862
PHOTO_FIELD_LEN = 1024


class PhotoDecoder:
    name = "base"
    max_side: int = photo_limits.DEFAULT_MAX_SIDE
    max_pixels: int = photo_limits.DEFAULT_MAX_PIXELS

    def limit(self, max_side: int, max_pixels: int) -> "PhotoDecoder":
        """Set the header caps (reader.photo_max_side / reader.photo_max_pixels)."""
        self.max_side, self.max_pixels = int(max_side), int(max_pixels)
        for sub in ("_jpeg", "_bmp", "_j2k"):
            if getattr(self, sub, None) is not None:
                getattr(self, sub).limit(max_side, max_pixels)
        return self

    def decode(self, data: bytes | bytearray) -> np.ndarray:
        raise NotImplementedError


def _imdecode(data, what: str, limits: "PhotoDecoder | None" = None) -> np.ndarray:
    lim = limits or PhotoDecoder()
    photo_limits.check(data, lim.max_side, lim.max_pixels)     # raises before any allocation
    arr = np.frombuffer(bytes(data), dtype=np.uint8)
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR) if arr.size else None
    if img is None or img.ndim != 3 or img.shape[0] < 8 or img.shape[1] < 8:
        raise CardError("card_read_failed", f"{what} photo does not decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class JpegDecoder(PhotoDecoder):
    name = "jpeg"

    def decode(self, data):
        if bytes(data[:3]) != JPEG_MAGIC:
            raise CardError("card_read_failed", "photo is not JPEG")
        return _imdecode(data, "JPEG", self)


class BmpDecoder(PhotoDecoder):
    name = "bmp"

    def decode(self, data):
        if bytes(data[:2]) != BMP_MAGIC:
            raise CardError("card_read_failed", "photo is not BMP")
        return _imdecode(data, "BMP", self)


class Jpeg2000Decoder(PhotoDecoder):
    """JPEG 2000 (JP2 file or raw codestream), for readers of e-passport-style chips; OpenCV's
    OpenJPEG does the decoding, after the SIZ header passed the caps."""
    name = "jpeg2000"

    def decode(self, data):
        head = bytes(data[:12])
        if head[:4] != photo_limits.J2K_MAGIC and head != photo_limits.JP2_MAGIC:
            raise CardError("card_read_failed", "photo is not JPEG 2000")
        return _imdecode(data, "JPEG 2000", self)


class WltDecoder(PhotoDecoder):
    """The vendor library through ctypes. One call at a time (vendor libraries are rarely re-entrant)."""
    name = "wlt"

    def __init__(self, library: str):
        if not library:
            raise CardError("photo_decoder_unavailable", "reader.wlt_library is not set")
        if not os.path.exists(library):
            raise CardError("photo_decoder_unavailable", "reader.wlt_library does not exist")
        try:
            lib = ctypes.CDLL(os.path.abspath(library))
            fn = lib.unpack
        except (OSError, AttributeError) as e:
            raise CardError("photo_decoder_unavailable", f"cannot load WLT library ({type(e).__name__})") from None
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn
        self._lib = lib
        self._lock = threading.Lock()
        self._out = ctypes.create_string_buffer(WLT_OUT_LEN)
        self._in = ctypes.create_string_buffer(PHOTO_FIELD_LEN)

    def decode(self, data):
        if bytes(data[:3]) != WLT_MAGIC:
            raise CardError("card_read_failed", "photo is not WLT")
        with self._lock:
            n = min(len(data), PHOTO_FIELD_LEN)
            ctypes.memset(self._in, 0, PHOTO_FIELD_LEN)
            ctypes.memmove(self._in, bytes(data[:n]), n)
            ctypes.memset(self._out, 0, WLT_OUT_LEN)
            try:
                rc = self._fn(self._in, self._out, 0)
                if rc != 1:
                    raise CardError("card_read_failed", f"WLT library returned {rc}")
                return BmpDecoder().decode(self._out.raw)
            finally:
                ctypes.memset(self._in, 0, PHOTO_FIELD_LEN)   # wipe the copies we made
                ctypes.memset(self._out, 0, WLT_OUT_LEN)


class AutoDecoder(PhotoDecoder):
    name = "auto"

    def __init__(self, wlt: WltDecoder | None = None):
        self.wlt = wlt
        self._jpeg, self._bmp, self._j2k = JpegDecoder(), BmpDecoder(), Jpeg2000Decoder()

    def decode(self, data):
        head = bytes(data[:3])
        if head == WLT_MAGIC:
            if self.wlt is None:
                raise CardError("photo_decoder_unavailable", "WLT photo but reader.wlt_library is not set")
            return self.wlt.decode(data)
        if head == JPEG_MAGIC:
            return self._jpeg.decode(data)
        if head[:2] == BMP_MAGIC:
            return self._bmp.decode(data)
        if bytes(data[:4]) == photo_limits.J2K_MAGIC or bytes(data[:12]) == photo_limits.JP2_MAGIC:
            return self._j2k.decode(data)
        raise CardError("card_read_failed", "photo format not recognised")


def make_decoder(photo_decoder: str, wlt_library: str = "") -> PhotoDecoder:
    """Build the configured decoder; raises CardError("photo_decoder_unavailable") at start-up
    when WLT is required (`wlt`) or a configured library cannot be loaded."""
    if photo_decoder == "wlt":
        return WltDecoder(wlt_library)
    if photo_decoder == "jpeg":
        return JpegDecoder()
    if photo_decoder == "bmp":
        return BmpDecoder()
    if photo_decoder == "auto":
        return AutoDecoder(WltDecoder(wlt_library) if wlt_library else None)
    raise CardError("photo_decoder_unavailable", "unknown photo_decoder")


def card_photo_jpeg(rgb: np.ndarray, max_bytes: int = PHOTO_FIELD_LEN) -> bytes:
    """A 102x126 head-and-shoulders JPEG of at most `max_bytes` (highest quality that fits).

    Crops the central 102:126 portrait region of `rgb` (a face image, RGB uint8), resizes it and
    binary-searches the JPEG quality. Raises ValueError if even quality 1 does not fit.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("need an RGB uint8 image")
    h, w = rgb.shape[:2]
    target = PHOTO_W / PHOTO_H
    if w / h > target:
        cw, ch = int(round(h * target)), h
    else:
        cw, ch = w, int(round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = rgb[y0:y0 + ch, x0:x0 + cw]
    small = cv2.resize(crop, (PHOTO_W, PHOTO_H), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)

    def enc(q: int) -> bytes:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return buf.tobytes()

    lo, hi, best = 1, 95, None
    while lo <= hi:
        mid = (lo + hi) // 2
        b = enc(mid)
        if len(b) <= max_bytes:
            best, lo = b, mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise ValueError(f"cannot fit a JPEG into {max_bytes} bytes")
    return best
