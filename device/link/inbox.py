"""Inbound commands: checked on the I/O thread (size, JSON object), queued (bounded), handed to
`on_command` one at a time on their own thread, so a slow handler never stalls the link. No paho."""
from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("kyc_edge.link")

MAX_COMMAND_BYTES = 16384
MAX_QUEUED_COMMANDS = 512        # waiting for the on_command thread (<= 8 MiB of payloads)


class Inbox:
    def __init__(self, on_command: Callable[[str, dict, Any], None], stats: dict | None = None,
                 max_queued: int = MAX_QUEUED_COMMANDS):
        self.on_command = on_command
        self.stats = stats if stats is not None else {}
        for k in ("commands", "bad_commands", "dropped_commands"):
            self.stats.setdefault(k, 0)
        self.max_queued = max_queued
        self._q: "queue.Queue[tuple | None]" = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None

    def accept(self, name: str, raw: bytes, props: Any = None) -> bool:
        """One command as it came off the wire; False when it was refused or dropped."""
        if len(raw) > MAX_COMMAND_BYTES:
            self.stats["bad_commands"] += 1
            log.warning("mqtt: command %s ignored: payload too large", name)
            return False
        try:
            payload = json.loads(raw) if raw else {}
            if not isinstance(payload, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            self.stats["bad_commands"] += 1
            log.warning("mqtt: command %s ignored: not a JSON object", name)
            return False
        self.stats["commands"] += 1
        try:
            self._q.put_nowait((name, payload, props))
        except queue.Full:
            self.stats["dropped_commands"] += 1
            log.warning("mqtt: command %s dropped: command queue full (%d waiting)", name, self.max_queued)
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._dispatch, name="kyc-link-cmd", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        if self._thread:
            try:
                self._q.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self._thread = None

    def _dispatch(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            name, payload, props = item
            try:
                self.on_command(name, payload, props)
            except Exception as e:  # noqa: BLE001
                log.warning("mqtt: command handler for %s failed: %s", name, type(e).__name__)
