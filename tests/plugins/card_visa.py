"""A whole card type in one file: a fabricated 'visa' card, type mark 'V'.

Nothing else is edited to add it: the parser reads it, the simulator fabricates it, the verdict
schema accepts "visa_test" as card.type and `records.problem()` applies its number check, once this
module is discovered (here through $KYC_EDGE_PLUGINS; in a package, through the entry point group
kyc_edge.card_types). Every value is fabricated.
"""
from __future__ import annotations

import re

from device.cardreader.records import CardRecord, register
from device.errors import CardError


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def luhn_complete(body: str) -> str:
    return next(body + str(c) for c in range(10) if luhn_ok(body + str(c)))


@register
class VisaRecord(CardRecord):
    card_type = "visa_test"
    LETTERS = ("V",)
    LAYOUT = {"name": (0, 60), "sex": (60, 2), "number": (62, 20), "birth": (82, 16),
              "valid_from": (188, 16), "valid_to": (204, 16), "type": (248, 2)}

    def _validate(self, v):
        super()._validate(v)
        if not re.fullmatch(r"V\d{9}", v["number"]):
            raise CardError("card_read_failed", "visa: number is not V + 9 digits")

    def number_valid(self) -> bool:
        return luhn_ok(self.number[1:])

    @classmethod
    def sample_fields(cls, *, seed, valid_to, number=None):
        return dict(name="TEST VISA HOLDER", sex="2", number=number or "V" + luhn_complete(f"{seed % 10**8:08d}"),
                    birth="19770707", valid_from="20240101", valid_to=valid_to)
