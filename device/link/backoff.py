"""Reconnect back-off as a pure state machine, beside drain.py: no paho, no clock of its own.

The link calls connected(now) on CONNACK, next_wait(now) when an attempt has ended (whether or not it
connected), and held(now) while connected. Rules:
- the delay doubles from `min_s` up to `max_s` after every attempt (the link adds jitter);
- it starts over only after a connection that lasted `stable_s` (2 x max_s). A connection the broker
  ends soon after CONNACK, again and again, is another client with our client id (a cloned device id:
  each connection takes the other's session over) or a broken path; reconnecting at once made two such
  boxes swap the session ~10 times a second, each time replaying their window of verdicts;
- FLAPPING_AFTER such short connections in a row make `flapping` true (the link's
  `connection_flapping` alarm) until a connection has held `stable_s`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FLAPPING_AFTER = 3      # short-lived connections in a row


@dataclass
class Backoff:
    min_s: float
    max_s: float
    delay: float = field(init=False)
    short: int = field(init=False, default=0)              # short-lived connections in a row
    connected_at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.delay = self.min_s

    @property
    def stable_s(self) -> float:
        return 2.0 * self.max_s

    @property
    def flapping(self) -> bool:
        return self.short >= FLAPPING_AFTER

    def connected(self, now: float) -> None:
        self.connected_at = now

    def held(self, now: float) -> bool:
        """While connected: has this connection lasted stable_s? (Then the short run is over.)"""
        if self.connected_at is not None and now - self.connected_at >= self.stable_s:
            self.short = 0
            return True
        return False

    def next_wait(self, now: float) -> float:
        """The attempt ended at `now`: the delay before the next one."""
        if self.connected_at is not None:
            if now - self.connected_at >= self.stable_s:
                self.delay, self.short = self.min_s, 0
            else:
                self.short += 1
            self.connected_at = None
        wait = self.delay
        self.delay = min(self.delay * 2, self.max_s)
        return wait
