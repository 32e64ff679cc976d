"""Closed schemas for the non-verdict topics: session progress events, fleet update status and
the health status. Like the verdict, they cannot carry images, embeddings, names, ID numbers or
free text: strings are enums or short identifier-like tokens without spaces."""
from __future__ import annotations

import math
import re
import time
from typing import Any

from device import ids
from device.challenge_names import CHALLENGES
from device.schemacheck import Validator
from device.verdict import REASONS, VerdictError, rfc3339

EVENTS = ("state", "liveness", "ready", "card_detected", "card_read", "face_wait", "face_found", "challenge",
          "challenge_passed", "challenge_failed", "capturing", "deciding", "verdict", "aborted",
          "idle", "refused", "consent", "consent_given", "hint")
# a challenge's prompt is its name (device/challenge_names.py: one file per challenge)
PROMPTS = ("insert_card", "hold_card", "remove_card", "look_at_camera", "move_closer", "move_back",
           "hold_still", "more_light", "one_face_only", "wait", "done", "take_off_mask", "consent") + CHALLENGES

_TOKEN = {"type": "string", "pattern": ids.KEY_PATTERN}
# `refused` events may name why a command or a session was refused; these are not verdict reasons
# (no verdict is made), so they live here, not in the verdict schema (docs/mqtt.md).
REFUSAL_REASONS = ("bad_command", "session_running", "storage_unwritable", "clock_unsynced")
_TS = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?Z$"}
_UUID = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}

SESSION_EVENT_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "kyc-edge session progress event (non-biometric)",
    "type": "object",
    "additionalProperties": False,
    "required": ["event", "at"],
    "properties": {
        "event": {"enum": list(EVENTS)},
        "at": _TS,
        "session_id": _UUID,
        "state": _TOKEN,
        "prompt": {"enum": list(PROMPTS)},
        "challenge": {"enum": list(CHALLENGES)},
        "step": {"type": "integer", "minimum": 0, "maximum": 16},
        "index": {"type": "integer", "minimum": 0, "maximum": 16},
        "t": {"type": "number", "minimum": 0, "maximum": 3600},
        "of": {"type": "integer", "minimum": 0, "maximum": 16},
        "deadline_s": {"type": "number", "minimum": 0, "maximum": 3600},
        "result": {"enum": ["pass", "fail"]},
        "reason": {"enum": sorted(REASONS) + list(REFUSAL_REASONS)},
        "verdict_id": _UUID,
        # consent step (issue 15): the notice's version (a config token) and the guardian flag
        "notice_version": {"type": "string", "pattern": "^(?!.*[0-9]{9})[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "guardian_required": {"type": "boolean"},
        "channel": {"enum": ["display", "operator"]},
    },
}

# Fleet update status: a flat object of short tokens (no spaces, so no free text).
UPDATE_STATUS_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "maxProperties": 16,
    "propertyNames": _TOKEN,
    "required": ["state"],
    "properties": {"state": _TOKEN, "at": _TS},
    "additionalProperties": {
        "oneOf": [
            {"type": "null"}, {"type": "boolean"}, {"type": "number"},
            {"type": "string", "pattern": "^[A-Za-z0-9._+:@/=-]{0,128}$"},
        ]
    },
}

_SESSION_V = Validator(SESSION_EVENT_SCHEMA)
_UPDATE_V = Validator(UPDATE_STATUS_SCHEMA)
_TOKEN_V = Validator(_TOKEN)


def _first_error(validator, obj: Any, what: str) -> None:
    errs = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errs:
        e = errs[0]
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        raise VerdictError(f"{what} {path}: violates schema rule '{e.validator}'")


def _finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return True


def session_event(event: dict, now: float | None = None) -> dict:
    """Validated copy of a session event, `at` filled in. Raises VerdictError."""
    if not isinstance(event, dict):
        raise VerdictError("session event: expected an object")
    ev = dict(event)
    ev.setdefault("at", rfc3339(time.time() if now is None else now))
    if not _finite(ev):
        raise VerdictError("session event: non-finite number")
    _first_error(_SESSION_V, ev, "session event")
    return ev


def update_status(status: dict, now: float | None = None) -> dict:
    if not isinstance(status, dict):
        raise VerdictError("update status: expected an object")
    st = dict(status)
    st.setdefault("at", rfc3339(time.time() if now is None else now))
    if not _finite(st):
        raise VerdictError("update status: non-finite number")
    _first_error(_UPDATE_V, st, "update status")
    return st


_SAFE_TOKEN = re.compile(r"[A-Za-z0-9._:@/+=-]{0,64}")
_DIGIT_RUN = re.compile(r"[0-9]{9}")


def sanitize_health(obj: Any, depth: int = 0) -> Any:
    """Health dicts from the daemon go into the retained status. Keep only JSON scalars, short
    ASCII identifier-like strings (no spaces, no 9-digit runs), and small nested objects/lists of
    them; everything else is dropped."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return round(obj, 3) if math.isfinite(obj) else None
    if isinstance(obj, str):
        # identifier-like tokens only: no spaces (free text), no non-ASCII (names), no long digit runs
        return obj if _SAFE_TOKEN.fullmatch(obj) and not _DIGIT_RUN.search(obj) else None
    if depth >= 3:
        return None
    if isinstance(obj, dict):
        out = {}
        for k, v in list(obj.items())[:32]:
            if isinstance(k, str) and _TOKEN_V.is_valid(k):
                s = sanitize_health(v, depth + 1)
                if s is not None or v is None:
                    out[k] = s
        return out
    if isinstance(obj, (list, tuple)):
        items = [sanitize_health(v, depth + 1) for v in list(obj)[:8]]
        if sum(isinstance(v, float) for v in items) > 4:   # no float vectors in status
            return None
        return items
    return None
