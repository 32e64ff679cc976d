"""Logging: journald with structured fields under systemd, else stderr.

Log lines carry reason codes, states and timings only. Nothing biometric or personal is ever
passed to a logger; tests/test_privacy.py scans captured logs to prove it.
"""
from __future__ import annotations

import logging
import os
import sys


class _Fields(logging.Filter):
    """Adds KYC_* journald fields (session id, reason) when a record carries them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for attr in ("session_id", "reason", "state"):
            if hasattr(record, attr):
                setattr(record, "KYC_" + attr.upper(), getattr(record, attr))
        return True


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def setup(level: str = "info", target: str = "auto") -> str:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    chosen = target
    if target == "auto":
        chosen = "journald" if under_systemd() else "stderr"
    handler = None
    if chosen == "journald":
        try:
            from systemd.journal import JournalHandler
            handler = JournalHandler(SYSLOG_IDENTIFIER="kyc-edge")
            handler.addFilter(_Fields())
        except ImportError:
            chosen = "stderr"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    logging.getLogger("kyc_edge").debug("logging to %s", chosen)
    return chosen
