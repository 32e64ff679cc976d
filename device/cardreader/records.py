"""Typed card records parsed from the 256-byte UTF-16LE text block of a 30 01 / 30 10 reply.

Card types are told apart by the UTF-16 character at byte offset 248:
  ' ' (or NUL)  resident identity card (GB 11643 number)
  'J'           Hong Kong / Macau / Taiwan residents' residence permit
  'I'           foreign permanent resident ID card, 2017 edition
anything else   CardError("unsupported_card_type") - never a best-effort parse.

One registry (`CARD_TYPES`, filled by `@register`) drives everything that depends on the type: the
parser (type mark -> record class), the simulator's fabricated cards (`sample_fields()`), the
verdict schema's card.type enum and the card policy, `problem()`, the only place that decides
card_expired / card_invalid_number / unsupported_card_type. A new card type is one module with one
`@register`ed CardRecord subclass (LETTERS, LAYOUT, checks, sample_fields), found through the entry
point group kyc_edge.card_types or $KYC_EDGE_PLUGINS (device/plugins.py).

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
    LETTERS: tuple[str, ...] = ()          # type marks at byte 248 that select this type; [0] is written
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
        """The verdict reason code this record earns on its own, if any (see `problem()`)."""
        return problem(self, now)

    @classmethod
    def sample_fields(cls, *, seed: int, valid_to: str, number: str | None = None) -> dict[str, str]:
        """Fabricated fields for the simulator's card of this type (never a real person's data)."""
        raise NotImplementedError

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


def fabricated_number(seed: int = 1, birth: str = "19900101", prefix: str = "99") -> str:
    """An 18-character GB 11643 number with a correct check digit and a region that does not exist."""
    body = (prefix + f"{seed % 10000:04d}")[:6] + birth + f"{seed % 1000:03d}"
    return body + gb11643_check_char(body)


# ---------------------------------------------------------------- the registry
CARD_TYPES: dict[str, type[CardRecord]] = {}
BUILT_IN = ("resident", "permit_hmt", "foreign")     # = device/schema/verdict.schema.json card.type
_BY_LETTER: dict[str, type[CardRecord]] = {}


def register(cls: type[CardRecord]) -> type[CardRecord]:
    """Class decorator: add a card type (its card_type name and LETTERS must be new)."""
    if not (isinstance(cls, type) and issubclass(cls, CardRecord)) or not cls.LETTERS or not cls.LAYOUT:
        raise TypeError(f"{cls!r}: a CardRecord subclass with LETTERS and LAYOUT")
    taken = [x for x in cls.LETTERS if x in _BY_LETTER and _BY_LETTER[x] is not cls]
    if taken or (cls.card_type in CARD_TYPES and CARD_TYPES[cls.card_type] is not cls):
        raise ValueError(f"card type {cls.card_type!r} / marks {taken} already registered")
    if cls.card_type in ("unknown", "unsupported") or not re.fullmatch(r"[a-z][a-z0-9_]*", cls.card_type):
        raise ValueError(f"card type name {cls.card_type!r}: lower_snake, not unknown/unsupported")
    CARD_TYPES[cls.card_type] = cls
    for x in cls.LETTERS:
        _BY_LETTER[x] = cls
    if cls.card_type not in BUILT_IN:       # the schema file lists the built-ins already
        from device import verdict
        verdict.allow_card_type(cls.card_type)
    return cls


def problem(record: CardRecord | None, now) -> str | None:
    """THE card policy: the verdict reason a card earns on its own, or None.

    unsupported_card_type  no registered type (record None: its type mark is not in the registry)
    card_invalid_number    the number fails its type's check (GB 11643 check digit for resident and
                           permit cards; format and nationality prefix for foreign cards)
    card_expired           `now` (epoch seconds or a date) is after valid_to
    """
    if record is None or CARD_TYPES.get(type(record).card_type) is not type(record):
        return "unsupported_card_type"
    if not record.number_valid():
        return "card_invalid_number"
    if record.expired(now):
        return "card_expired"
    return None


@register
class ResidentRecord(CardRecord):
    card_type = "resident"
    LETTERS = (" ", "\x00")
    LAYOUT = RESIDENT_LAYOUT

    @classmethod
    def sample_fields(cls, *, seed, valid_to, number=None):
        birth = "19900101"
        return dict(name="测试样本", sex="1", nation="01", birth=birth, address="测试省样本市示例路1号",
                    number=number or fabricated_number(seed, birth), authority="样本市公安局测试分局",
                    valid_from="20150101", valid_to=valid_to)

    def _validate(self, v):
        super()._validate(v)
        if not re.fullmatch(r"\d{2}", v["nation"]):
            raise CardError("card_read_failed", "resident: bad nation code")
        if not re.fullmatch(r"\d{17}[\dXx]", v["number"]):
            raise CardError("card_read_failed", "resident: number is not 17 digits + check character")


@register
class PermitRecord(CardRecord):
    """Hong Kong / Macau / Taiwan residents' residence permit ('J'); number is GB 11643 (81/82/83...)."""
    card_type = "permit_hmt"
    LETTERS = ("J",)
    LAYOUT = PERMIT_LAYOUT

    @classmethod
    def sample_fields(cls, *, seed, valid_to, number=None):
        birth = "19850505"
        return dict(name="测试港澳", sex="2", birth=birth, address="测试省样本市示例路2号",
                    number=number or fabricated_number(seed, birth, prefix="81"),
                    authority="样本市公安局", valid_from="20200101", valid_to=valid_to,
                    pass_number="H99999999", issue_count="01")

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


@register
class ForeignRecord(CardRecord):
    """Foreign permanent resident ID card, 2017 edition ('I'): 15-character number
    (3-letter nationality code + 12 digits). Its check character scheme is not public in the
    material we have, so number_valid() checks the format and the nationality prefix only."""
    card_type = "foreign"
    LETTERS = ("I",)
    LAYOUT = FOREIGN_LAYOUT

    @classmethod
    def sample_fields(cls, *, seed, valid_to, number=None):
        return dict(name_en="TEST, SAMPLE PERSON", sex="1", number=number or f"ZZZ{seed % 10**12:012d}",
                    nationality="ZZZ", name="测试外籍", valid_from="20220101",
                    valid_to=valid_to, birth="19800303", version="1", authority_code="9999")
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


def card_type_letter(text: bytes | bytearray) -> str:
    if len(text) != TEXT_LEN:
        raise CardError("card_read_failed", f"text block is {len(text)} bytes, expected {TEXT_LEN}")
    lo, hi = text[TYPE_OFFSET], text[TYPE_OFFSET + 1]
    if hi != 0:
        raise CardError("unsupported_card_type", "type mark is not a Latin letter")
    return chr(lo)


def parse_text(text: bytes | bytearray) -> CardRecord:
    """256-byte text block -> typed record; CardError(card_read_failed | unsupported_card_type)."""
    cls = _BY_LETTER.get(card_type_letter(text))
    if cls is None:
        raise CardError(problem(None, None), "unknown type mark")
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
    cls = CARD_TYPES[card_type]
    buf = bytearray(" ".encode("utf-16-le") * (TEXT_LEN // 2))
    for k, v in fields.items():
        _put(buf, cls.LAYOUT, k, v)
    letter = type_letter if type_letter is not None else cls.LETTERS[0]
    buf[TYPE_OFFSET:TYPE_OFFSET + 2] = letter.encode("utf-16-le")
    return bytes(buf)


def _load_plugins() -> None:
    """Card types from other modules (entry point group kyc_edge.card_types, $KYC_EDGE_PLUGINS): each
    registers itself with @register when imported."""
    from device import plugins
    plugins.entry_point_modules("kyc_edge.card_types")
    plugins.named_modules()


_load_plugins()
