"""Manifest nonces already seen, persisted (fsync + rename) so a replay is caught after a restart.

Entries are kept until their manifest's `expires` (+1 day); after that the time window rejects the
manifest anyway. At most MAX entries (oldest expiry dropped first)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from device.fleet.slots import write_atomic

MAX = 4096
KEEP_AFTER_EXPIRY_S = 86400


class NonceStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict[str, int]:
        try:
            d = json.loads(self.path.read_text())
            return {str(k): int(v) for k, v in d.items()} if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def seen(self, nonce: str) -> bool:
        with self._lock:
            return nonce in self._load()

    def add(self, nonce: str, expires: int, now: float) -> bool:
        """Record nonce; False if it was already there (a replay)."""
        with self._lock:
            d = self._load()
            if nonce in d:
                return False
            d = {k: v for k, v in d.items() if v + KEEP_AFTER_EXPIRY_S > now}
            d[nonce] = int(expires)
            if len(d) > MAX:
                d = dict(sorted(d.items(), key=lambda kv: kv[1])[-MAX:])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(d, sort_keys=True).encode())
            return True

    def release(self, nonce: str) -> None:
        """Forget nonce: its update failed in transport (nothing staged), so a re-send of the same
        signed manifest may try again. Replays of anything that was staged, applied or rolled
        back stay refused."""
        with self._lock:
            d = self._load()
            if d.pop(nonce, None) is not None:
                write_atomic(self.path, json.dumps(d, sort_keys=True).encode())
