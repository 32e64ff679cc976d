"""The challenge names, defined once: one file per challenge in device/liveness/challenges/.

A challenge is the file `device/liveness/challenges/<name>.py` (files starting with `_` are helpers).
This module lists those files without importing them, so the link (session-event schema) and the
config checks can know the names without importing the biometric side (tests/test_import_graph.py).
Standard library only.
"""
from __future__ import annotations

import pkgutil
from pathlib import Path

_DIR = Path(__file__).resolve().parent / "liveness" / "challenges"


def _scan() -> tuple[str, ...]:
    names = sorted(m.name for m in pkgutil.iter_modules([str(_DIR)]) if not m.name.startswith("_"))
    if not names:
        raise RuntimeError(f"no challenge files in {_DIR}")
    return tuple(names)


CHALLENGES: tuple[str, ...] = _scan()     # sorted by name
