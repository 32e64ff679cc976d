"""What the box reports on its retained status topic. No paho.

The link owns the status: its alarms, the extra fields the daemon pushes (`publish_status`), the
fleet update status, and the one CPU temperature reading (`cpu_temp_c`, read here from
/sys/class/thermal and nowhere else; a `cpu_temp_c` in the health callback is ignored).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from device.link import events as _events
from device.verdict import SCHEMA_VERSION, rfc3339

log = logging.getLogger("kyc_edge.link")

THERMAL_ROOT = Path("/sys/class/thermal")
OWN_KEYS = ("state", "device", "site", "at", "cpu_temp_c")   # the health callback cannot set these


def cpu_temperature_c(root: str | Path | None = None) -> float | None:
    """Highest readable thermal zone (Pi: zone0 = SoC; Jetson: several zones), else None."""
    best = None
    for p in Path(root or THERMAL_ROOT).glob("thermal_zone*/temp"):
        try:
            v = int(p.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -40 < v < 150:
            best = v if best is None else max(best, v)
    return round(best, 1) if best is not None else None


def offline_payload(device: str, site: str) -> str:
    """The LWT and the 3.1.1 explicit `offline`."""
    return json.dumps({"state": "offline", "device": device, "site": site,
                       "schema_version": SCHEMA_VERSION}, separators=(",", ":"))


class Status:
    def __init__(self, device: str, site: str, outbox, *, protocol: str,
                 health: Callable[[], dict] = lambda: {}, signer: Any = None,
                 thermal_root: str | Path | None = None):
        self.device, self.site = device, site
        self.outbox = outbox
        self.protocol = protocol
        self.health = health
        self.signer = signer
        self.thermal_root = thermal_root
        self.alarms: set[str] = set()
        self.update: dict | None = None         # last fleet update status (re-sent on connect)
        self._extra: dict = {}
        self._lock = threading.Lock()
        self._started_wall = time.time()
        self._started_mono = time.monotonic()

    def add_extra(self, extra: dict) -> None:
        with self._lock:
            self._extra.update(extra)

    def outbox_full_changed(self) -> bool:
        """Follow the outbox's fullness in the `outbox_full` alarm; True when it changed."""
        full = self.outbox.full()
        if full == ("outbox_full" in self.alarms):
            return False
        (self.alarms.add if full else self.alarms.discard)("outbox_full")
        return True

    def payload(self, state: str = "online") -> dict:
        ob_depth = self.outbox.depth()
        full = ob_depth >= self.outbox.max_rows
        with self._lock:
            alarms = set(self.alarms)
            extra = dict(self._extra)
        alarms.discard("outbox_full")
        if full:
            alarms.add("outbox_full")
        st = {
            "state": state, "device": self.device, "site": self.site,
            "at": rfc3339(time.time()), "since": rfc3339(self._started_wall),
            "uptime_s": int(time.monotonic() - self._started_mono),
            "schema_version": SCHEMA_VERSION,
            "outbox": {"depth": ob_depth, "max": self.outbox.max_rows, "full": full},
            "alarms": sorted(alarms),
            "cpu_temp_c": cpu_temperature_c(self.thermal_root),
            "protocol": self.protocol,
        }
        if self.signer is not None:
            st["key_id"] = self.signer.key_id
            st["public_key"] = self.signer.public_key_b64
        try:
            h = self.health() or {}
        except Exception as e:  # noqa: BLE001 - health must never kill the link
            log.warning("health callback failed: %s", type(e).__name__)
            h = {}
        for k, v in _events.sanitize_health({**h, **extra}).items():
            if k not in OWN_KEYS and not (v is None and st.get(k) is not None):
                st[k] = v
        return st
