"""Topic names of one box and the mapping of an inbound topic to a command name. Pure, no paho.

    <prefix>/<site>/<device>/verdict         QoS 1, not retained, signed closed-schema verdict
    <prefix>/<site>/<device>/status          QoS 1, retained: online | offline (LWT) | stopping + health
    <prefix>/<site>/<device>/session         QoS 0, progress events (closed schema, non-biometric)
    <prefix>/<site>/<device>/update/status   QoS 1, retained, fleet update state
    <prefix>/<site>/<device>/cmd/#           inbound commands (subscribed QoS 1)
    <prefix>/_fleet/all/cmd/#, <prefix>/_fleet/group/<g>/cmd/#   fleet-wide / group commands
"""
from __future__ import annotations

from typing import Iterable

CONTENT_TYPE = "application/json"
VERDICT_SCHEMA_ID = "kyc-edge/verdict"
SESSION_EVENT_EXPIRY_S = 60


def topics_for(prefix: str, site: str, device: str) -> dict[str, str]:
    base = f"{prefix.rstrip('/')}/{site}/{device}"
    return {"base": base, "verdict": f"{base}/verdict", "status": f"{base}/status",
            "session": f"{base}/session", "cmd": f"{base}/cmd/#",
            "update_status": f"{base}/update/status"}


def fleet_topics(prefix: str, groups: Iterable[str]) -> list[str]:
    root = prefix.rstrip("/")
    return [f"{root}/_fleet/all/cmd/#"] + [f"{root}/_fleet/group/{g}/cmd/#" for g in groups]


def command_name(topic: str, topics: dict[str, str], prefix: str) -> str | None:
    """'start' for '<base>/cmd/start'; '_fleet/all/cmd/x' or '_fleet/group/g/cmd/x' for a fleet
    command; None for anything else (or an empty name)."""
    own = topics["cmd"][:-1]                     # '<base>/cmd/'
    if topic.startswith(own):
        return topic[len(own):] or None
    root = prefix.rstrip("/") + "/"
    if topic.startswith(root + "_fleet/"):
        return topic[len(root):] or None
    return None
