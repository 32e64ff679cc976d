"""`opt()`: one config key with its default, doc and range. Standard library only, so a plugin can
declare its config section without importing device.config (which builds the sections from them)."""
from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
        choices: tuple | None = None, factory: bool = False):
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)
