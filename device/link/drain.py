"""The outbox drain as a pure state machine: no paho, no SQLite, no clock of its own.

The link feeds it events (a new connection attempt, connected, disconnected, kick, the rows it
read, a publish handed to the client, a PUBACK, a tick with the current times) and carries out
the actions it returns (read the outbox, publish a row, mark rows delivered, purge).

Rules (the link's contract, docs/mqtt.md):
- at most `max_inflight` verdicts unacknowledged; rows leave in outbox order; every connection
  attempt starts again at the oldest row (paho never re-sends on its own);
- a row is delivered only when its PUBACK carries a success reason code (< 0x80); a failure
  code keeps it (`Denied`); denied rows are sent again `retry_s` after the denial (once nothing
  is in flight) or on the next connection;
- after an unexpected disconnect the rows acknowledged within `replay_window_s` before it are
  sent again on the next connection (a crashed broker can lose what it acknowledged);
- delivered rows older than the replay window are purged, but never during a replay pass nor
  within the replay window after a (re)connect;
- the outbox is re-read at least every `poll_s` (rows put by another process, without kick()).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_DENIED_TRACKED = 1000


@dataclass(frozen=True)
class Read:
    """Read up to `limit` rows after seq `after_seq` (and delivered ones acked since `acked_since`)."""
    limit: int
    after_seq: int
    acked_since: float | None


@dataclass(frozen=True)
class Publish:
    row: Any


@dataclass(frozen=True)
class Delivered:
    row: Any
    denied_cleared: bool          # the last denied row went through: the `publish_denied` alarm can clear


@dataclass(frozen=True)
class Denied:
    row: Any
    times: int                    # how often this row was refused so far


@dataclass(frozen=True)
class Purge:
    acked_before: float           # wall time


@dataclass
class Drain:
    max_inflight: int
    replay_window_s: float
    retry_s: float                # denied rows are retried after this (the link uses mqtt.reconnect_max_s)
    poll_s: float = 1.0
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in ("published", "acked", "denied", "replayed"):
            self.stats.setdefault(k, 0)
        self.inflight: dict[int, Any] = {}      # mid -> row
        self.denied: dict[str, int] = {}        # verdict_id -> times refused
        self._acked: list[str] = []
        self._kicks = 1                          # bumped by kick(); a read happens when it changed
        self._seen_kicks = 0
        self._reading_kicks = 0
        self._last_seq = 0
        self.replay_since: float | None = None   # wall time; replay the rows acked since then
        self._connected_at = 0.0
        self._next_purge = 0.0
        self._next_poll = 0.0
        self._retry_denied_at = 0.0

    # ------------------------------------------------------------ connection events
    def reset(self) -> None:
        """A new connection attempt: nothing is in flight, the drain starts at the oldest row."""
        self.inflight.clear()
        self._last_seq = 0
        self._seen_kicks = 0

    def connected(self, now: float) -> None:
        self._connected_at = now

    def disconnected(self, wall: float, *, unexpected: bool) -> None:
        """The connection ended; after an unexpected end the replay window is scheduled."""
        if unexpected and self.replay_window_s > 0:
            since = wall - self.replay_window_s
            self.replay_since = since if self.replay_since is None else min(since, self.replay_since)

    def kick(self) -> None:
        """Rows were put (any thread): read again."""
        self._kicks += 1

    # ------------------------------------------------------------ reading and publishing
    def want(self) -> Read | None:
        """What to read now, or None (window full, or nothing new since the last read)."""
        room = self.max_inflight - len(self.inflight)
        kicks = self._kicks
        if room <= 0 or kicks == self._seen_kicks:
            return None
        self._reading_kicks = kicks
        return Read(room, self._last_seq, self.replay_since)

    def read(self, req: Read, rows: list) -> list[Publish]:
        """The rows `req` returned, oldest first: publish them in this order."""
        if len(rows) < req.limit:
            self._seen_kicks = self._reading_kicks   # drained up to that kick
            self.replay_since = None                 # replay pass (if any) complete
        return [Publish(r) for r in rows]

    def sent(self, mid: int, row) -> None:
        """The client took `row` as message `mid`."""
        self.inflight[mid] = row
        self._last_seq = row.seq
        self.stats["published"] += 1
        if getattr(row, "acked", False):
            self.stats["replayed"] += 1

    def skipped(self, row) -> None:
        """`row` is never to be published (not a valid signed verdict); go past it."""
        self._last_seq = row.seq

    def send_failed(self) -> None:
        """The client refused a publish: the rest of that read is not sent; read again."""
        self._seen_kicks = 0

    # ------------------------------------------------------------ acknowledgements
    def puback(self, mid: int, failure: bool, now: float) -> Delivered | Denied | None:
        """A PUBACK for `mid` (failure: reason code >= 0x80). None if `mid` is not a verdict."""
        row = self.inflight.pop(mid, None)
        if row is None:
            return None
        vid = row.verdict_id
        if failure:
            self.stats["denied"] += 1
            self.denied[vid] = self.denied.get(vid, 0) + 1
            if len(self.denied) > MAX_DENIED_TRACKED:
                self.denied.pop(next(iter(self.denied)))
            if not self._retry_denied_at or self._retry_denied_at < now:
                self._retry_denied_at = now + self.retry_s
            return Denied(row, self.denied.get(vid, 0))
        self._acked.append(vid)
        self.stats["acked"] += 1
        cleared = self.denied.pop(vid, None) is not None and not self.denied
        return Delivered(row, cleared)

    def take_acked(self) -> list[str]:
        """Verdict ids acknowledged since the last call: mark them delivered in one transaction."""
        ids, self._acked = self._acked, []
        return ids

    # ------------------------------------------------------------ time
    def tick(self, now: float, wall: float) -> list[Purge]:
        """Once per loop round while connected (`now` monotonic, `wall` Unix time)."""
        out: list[Purge] = []
        if self.denied and not self.inflight and now >= self._retry_denied_at:
            self._retry_denied_at = now + self.retry_s
            self._last_seq = 0                   # resend from the oldest row (the denied ones)
            self._seen_kicks = 0
        if (now >= self._next_purge and self.replay_since is None
                and now - self._connected_at >= self.replay_window_s):
            self._next_purge = now + 1.0
            out.append(Purge(wall - self.replay_window_s))
        if now >= self._next_poll:               # rows put by another process / without kick()
            self._next_poll = now + self.poll_s
            self._seen_kicks = 0
        return out
