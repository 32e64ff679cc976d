"""cmd/start: validate and bound what an operator's command asks the device to keep.

A cmd/start's MQTT 5 Response Topic and Correlation Data are echoed on the session's verdict, and
its binding (sha256 of the Correlation Data, or of a `nonce` field in the payload) is signed into
the verdict. Everything is checked here, when the command arrives, never later when the verdict is
stored: a bad command is refused (`refused` session event, reason `bad_command`) and nothing of it
is kept, so it can never cost a verdict. Limits are those of the outbox columns.

Pure functions, no paho import: the link and the daemon both use them.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from device.link.outbox import MAX_CORRELATION, MAX_TOPIC   # the outbox columns' limits: one truth
NONCE_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,128}")


class BadStart(ValueError):
    """A cmd/start that is refused; `detail` names the field and the rule, never the value."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class StartRequest:
    response_topic: str | None
    correlation: bytes | None
    binding: dict | None          # {"kind": "correlation"|"nonce", "sha256": hex} or None
    t: float                      # monotonic time it arrived


def check_response_topic(rt: Any) -> str | None:
    if rt is None or rt == "":
        return None
    if not isinstance(rt, str):
        raise BadStart("response_topic: not a string")
    if len(rt) > MAX_TOPIC or len(rt.encode("utf-8", "surrogatepass")) > 4 * MAX_TOPIC:
        raise BadStart(f"response_topic: longer than {MAX_TOPIC} characters")
    if any(c in rt for c in "+#\0"):
        raise BadStart("response_topic: wildcards or NUL are not allowed in a topic name")
    if rt.startswith("$"):
        raise BadStart("response_topic: '$' topics are reserved by the broker")
    try:
        rt.encode("utf-8")
    except UnicodeEncodeError:
        raise BadStart("response_topic: not valid UTF-8") from None
    return rt


def check_correlation(cd: Any) -> bytes | None:
    if cd is None:
        return None
    if isinstance(cd, str):
        cd = cd.encode("utf-8", "surrogatepass")
    if not isinstance(cd, (bytes, bytearray, memoryview)):
        raise BadStart("correlation_data: not bytes")
    cd = bytes(cd)
    if len(cd) > MAX_CORRELATION:
        raise BadStart(f"correlation_data: longer than {MAX_CORRELATION} bytes")
    return cd or None


def parse_start(payload: Any, props: Any, now: float | None = None) -> StartRequest:
    """A validated StartRequest from a cmd/start payload and its MQTT properties; BadStart if
    any of it cannot be kept. Binding: the payload's `nonce` (kind `nonce`) wins over the
    Correlation Data (kind `correlation`); with neither, the verdict carries no binding."""
    rt = check_response_topic(getattr(props, "ResponseTopic", None) if props is not None else None)
    cd = check_correlation(getattr(props, "CorrelationData", None) if props is not None else None)
    binding = None
    nonce = payload.get("nonce") if isinstance(payload, dict) else None
    if nonce is not None:
        if not isinstance(nonce, str) or not NONCE_RE.fullmatch(nonce):
            raise BadStart("nonce: expected 16-128 characters of A-Z a-z 0-9 . _ ~ + / = -")
        binding = {"kind": "nonce", "sha256": hashlib.sha256(nonce.encode("ascii")).hexdigest()}
    elif cd is not None:
        binding = {"kind": "correlation", "sha256": hashlib.sha256(cd).hexdigest()}
    return StartRequest(rt, cd, binding, time.monotonic() if now is None else now)
