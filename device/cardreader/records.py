"""Typed card records parsed from the 256-byte UTF-16LE text block of a 30 01 / 30 10 reply.

Card types are told apart by the UTF-16 character at byte offset 248:
  ' ' (or NUL)  resident identity card (GB 11643 number)
  'J'           Hong Kong / Macau / Taiwan residents' residence permit
  'I'           foreign permanent resident ID card, 2017 edition
anything else   CardError("unsupported_card_type") - never a best-effort parse.

Privacy: the raw field bytes live in bytearrays that `wipe()` zero-fills. `repr()`/`str()` show
the card type only; no exception message carries a field value.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import re

from device.errors import CardError

TEXT_LEN = 256
TYPE_OFFSET = 248
LONG_TERM = "长期"

# (offset, length) in bytes; UTF-16LE, padded with spaces.
RESIDENT_LAYOUT = {
    "name": (0, 30), "sex": (30, 2), "nation": (32, 4), "birth": (36, 16), "address": (52, 70),
    "number": (122, 36), "authority": (158, 30), "valid_from": (188, 16), "valid_to": (204, 16),
}
PERMIT_LAYOUT = {
    "name": (0, 30), "sex": (30, 2), "birth": (36, 16), "address": (52, 70),
    "number": (122, 36), "authority": (158, 30), "valid_from": (188, 16), "valid_to": (204, 16),
    "pass_number": (220, 18), "issue_count": (238, 4), "type": (248, 2),
}
FOREIGN_LAYOUT = {
    "name_en": (0, 120), "sex": (120, 2), "number": (122, 30), "nationality": (152, 6),
    "name": (158, 30), "valid_from": (188, 16), "valid_to": (204, 16), "birth": (220, 16),
    "version": (236, 4), "authority_code": (240, 8), "type": (248, 2),
}

_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]     # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
_CHECK = "10X98765432"
_DATE = re.compile(r"\d{8}")


def gb11643_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits (GB 11643-1999)."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("need 17 digits")
    return _CHECK[sum(int(c) * w for c, w in zip(first17, _WEIGHTS)) % 11]


def gb11643_valid(number: str) -> bool:
    if len(number) != 18 or not number[:17].isascii() or not number[:17].isdigit():
        return False
    return gb11643_check_char(number[:17]) == number[17].upper()


def _date(s: str, field: str) -> _dt.date:
    if not _DATE.fullmatch(s):
        raise CardError("card_read_failed", f"{field} is not YYYYMMDD")
    try:
        return _dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        raise CardError("card_read_failed", f"{field} is not a calendar date") from None


def _as_date(now) -> _dt.date:
    """now: epoch seconds (the injectable clock's value), a datetime or a date."""
    if isinstance(now, _dt.datetime):
        return now.date()
    if isinstance(now, _dt.date):
        return now
    try:
        return _dt.datetime.fromtimestamp(float(now)).date()   # device local time (CST on site)
    except (OverflowError, OSError, ValueError):
        raise ValueError("clock value out of range") from None


class CardRecord:
    card_type = "unknown"
    LAYOUT: dict[str, tuple[int, int]] = {}
    REQUIRED = ("name", "number", "valid_from", "valid_to", "birth", "sex")

    def __init__(self, text: bytes | bytearray):
        if len(text) != TEXT_LEN:
            raise CardError("card_read_failed", f"text block is {len(text)} bytes, expected {TEXT_LEN}")
        self._raw: dict[str, bytearray] = {k: bytearray(text[o:o + n]) for k, (o, n) in self.LAYOUT.items()}
        self._wiped = False
        try:
            vals = {k: self.field(k) for k in self.LAYOUT}
        except UnicodeDecodeError:
            self.wipe()
            raise CardError("card_read_failed", "text is not valid UTF-16LE") from None
        try:
            self._validate(vals)
        except CardError:
            self.wipe()
            raise

    # ------------------------------------------------------------ access (PII: caller's care)
    def field(self, name: str) -> str:
        raw = self._raw[name]
        return bytes(raw).decode("utf-16-le").rstrip(" \x00")

    @property
    def number(self) -> str:
        return self.field("number")

    @property
    def name(self) -> str:
        return self.field("name")

    @property
    def sex(self) -> str:
        return self.field("sex")

    @property
    def birth(self) -> _dt.date:
        return _date(self.field("birth"), "birth")

    @property
    def valid_from(self) -> _dt.date:
        return _date(self.field("valid_from"), "valid_from")

    @property
    def valid_to(self) -> _dt.date | None:
        """None = long-term card (长期), no expiry."""
        s = self.field("valid_to")
        return None if s == LONG_TERM else _date(s, "valid_to")

    # ------------------------------------------------------------ checks
    def _validate(self, v: dict[str, str]) -> None:
        for k in self.REQUIRED:
            if not v.get(k):
                raise CardError("card_read_failed", f"{self.card_type}: empty {k}")
        if v["sex"] not in ("0", "1", "2", "9"):
            raise CardError("card_read_failed", f"{self.card_type}: bad sex code")
        _date(v["birth"], "birth")
        _date(v["valid_from"], "valid_from")
        if v["valid_to"] != LONG_TERM:
            _date(v["valid_to"], "valid_to")

    def expired(self, now) -> bool:
        """True when `now` (epoch seconds from the injected clock, or a date) is after valid_to."""
        vt = self.valid_to
        return vt is not None and _as_date(now) > vt

    def number_valid(self) -> bool:
        return gb11643_valid(self.number)

    def problem(self, now) -> str | None:
        """The verdict reason code this record earns on its own, if any."""
        if not self.number_valid():
            return "card_invalid_number"
        if self.expired(now):
            return "card_expired"
        return None

    def number_hmac(self, key: bytes) -> str:
        """HMAC-SHA256 (hex) of the card number under the per-deployment key."""
        if not key:
            raise ValueError("empty HMAC key")
        return hmac.new(bytes(key), self.number.encode("ascii", "replace"), hashlib.sha256).hexdigest()

    def wipe(self) -> None:
        for buf in self._raw.values():
            buf[:] = b"\x00" * len(buf)
        self._wiped = True

    @property
    def wiped(self) -> bool:
        return self._wiped

    def __repr__(self) -> str:
        return f"<{type(self).__name__} card_type={self.card_type}{' wiped' if self._wiped else ''}>"

    __str__ = __repr__


class ResidentRecord(CardRecord):
    card_type = "resident"
    LAYOUT = RESIDENT_LAYOUT

    def _validate(self, v):
        super()._validate(v)
        if not re.fullmatch(r"\d{2}", v["nation"]):
            raise CardError("card_read_failed", "resident: bad nation code")
        if not re.fullmatch(r"\d{17}[\dXx]", v["number"]):
            raise CardError("card_read_failed", "resident: number is not 17 digits + check character")


class PermitRecord(CardRecord):
    """Hong Kong / Macau / Taiwan residents' residence permit ('J'); number is GB 11643 (81/82/83...)."""
    card_type = "permit_hmt"
    LAYOUT = PERMIT_LAYOUT

    def _validate(self, v):
        super()._validate(v)
        if not re.fullmatch(r"8[123]\d{15}[\dXx]", v["number"]):
            raise CardError("card_read_failed", "permit: number is not 81/82/83 + 16 digits")
        if not re.fullmatch(r"[0-9A-Z]{1,9}", v["pass_number"]):
            raise CardError("card_read_failed", "permit: bad pass number")
        if not re.fullmatch(r"\d{1,2}", v["issue_count"]):
            raise CardError("card_read_failed", "permit: bad issue count")

    @property
    def pass_number(self) -> str:
        return self.field("pass_number")

    @property
    def issue_count(self) -> int:
        return int(self.field("issue_count"))


class ForeignRecord(CardRecord):
    """Foreign permanent resident ID card, 2017 edition ('I'): 15-character number
    (3-letter nationality code + 12 digits). Its check character scheme is not public in the
    material we have, so number_valid() checks the format and the nationality prefix only."""
    card_type = "foreign"
    LAYOUT = FOREIGN_LAYOUT
    REQUIRED = ("name_en", "number", "valid_from", "valid_to", "birth", "sex", "nationality")

    def _validate(self, v):
        super()._validate(v)
        if not re.fullmatch(r"[A-Z]{3}", v["nationality"]):
            raise CardError("card_read_failed", "foreign: bad nationality code")
        if not re.fullmatch(r"[A-Z]{3}\d{12}", v["number"]):
            raise CardError("card_read_failed", "foreign: number is not 3 letters + 12 digits")

    @property
    def name(self) -> str:
        return self.field("name_en")

    def number_valid(self) -> bool:
        n = self.number
        return bool(re.fullmatch(r"[A-Z]{3}\d{12}", n)) and n[:3] == self.field("nationality")


_TYPES = {" ": ResidentRecord, "\x00": ResidentRecord, "J": PermitRecord, "I": ForeignRecord}


def card_type_letter(text: bytes | bytearray) -> str:
    if len(text) != TEXT_LEN:
        raise CardError("card_read_failed", f"text block is {len(text)} bytes, expected {TEXT_LEN}")
    lo, hi = text[TYPE_OFFSET], text[TYPE_OFFSET + 1]
    if hi != 0:
        raise CardError("unsupported_card_type", "type mark is not a Latin letter")
    return chr(lo)


def parse_text(text: bytes | bytearray) -> CardRecord:
    """256-byte text block -> typed record; CardError(card_read_failed | unsupported_card_type)."""
    letter = card_type_letter(text)
    cls = _TYPES.get(letter)
    if cls is None:
        raise CardError("unsupported_card_type", "unknown type mark")
    return cls(text)


# ---------------------------------------------------------------- fabrication (simulator/tests)
def _put(buf: bytearray, layout, name: str, value: str) -> None:
    o, n = layout[name]
    enc = value.encode("utf-16-le")
    if len(enc) > n:
        raise ValueError(f"{name} longer than {n} bytes")
    buf[o:o + n] = enc + " ".encode("utf-16-le") * ((n - len(enc)) // 2)


def build_text(card_type: str, fields: dict[str, str], type_letter: str | None = None) -> bytes:
    """Fabricate a 256-byte text block (simulator / tests). `type_letter` overrides the mark."""
    layout = {"resident": RESIDENT_LAYOUT, "permit_hmt": PERMIT_LAYOUT, "foreign": FOREIGN_LAYOUT}[card_type]
    buf = bytearray(" ".encode("utf-16-le") * (TEXT_LEN // 2))
    for k, v in fields.items():
        _put(buf, layout, k, v)
    letter = type_letter if type_letter is not None else {"resident": " ", "permit_hmt": "J", "foreign": "I"}[card_type]
    buf[TYPE_OFFSET:TYPE_OFFSET + 2] = letter.encode("utf-16-le")
    return bytes(buf)
