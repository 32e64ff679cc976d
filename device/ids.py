"""One truth for identifiers: the patterns the config validator, the verdict schema and the event
schemas all use. The verdict schema file (device/schema/verdict.schema.json) is the source; this
module reads its `$defs` so there is exactly one definition, and the config and link/events.py
import it from here.

Imports only the standard library (config.py, link/ and fleet/ depend on it).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "verdict.schema.json"
_DEFS = json.loads(_SCHEMA_FILE.read_text(encoding="utf-8"))["$defs"]

# device / site / group names: ASCII, starts alphanumeric, <= 64 chars, no 9-digit run
NAME_PATTERN: str = _DEFS["name"]["pattern"]
# object keys and short tokens: lower-case identifier, <= 32 chars
KEY_PATTERN: str = _DEFS["key"]["pattern"]

NAME_RE = re.compile(NAME_PATTERN)
KEY_RE = re.compile(KEY_PATTERN)

# An MQTT topic prefix: one or more levels of the name alphabet (no wildcards, no empty level,
# no leading '$' which brokers reserve).
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){0,7}$")
RESERVED_SITES = frozenset({"_fleet"})


def is_name(v: object) -> bool:
    """A valid device / site / group name (re.search honours the schema's ^...$ anchors)."""
    return isinstance(v, str) and v.isascii() and NAME_RE.search(v) is not None and "\n" not in v


def is_prefix(v: object) -> bool:
    return isinstance(v, str) and v.isascii() and PREFIX_RE.fullmatch(v) is not None
