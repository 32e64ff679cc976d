"""The outbox drain (device/link/drain.py) as a pure state machine, without a broker: the
in-flight window, the replay window after an unexpected disconnect, a denied row retried with
back-off and never lost, the purge of delivered rows. A real SQLite Outbox holds the rows; the
test plays the transport (message ids, PUBACKs) and the clocks."""
from __future__ import annotations

import itertools

import pytest

from device import verdict as V
from device.link.drain import Delivered, Denied, Drain, Publish, Purge, Read
from device.link.outbox import Outbox
from tests.test_verdict import make


@pytest.fixture
def ob(tmp_path):
    o = Outbox(tmp_path / "outbox.sqlite", 100)
    yield o
    o.close()


@pytest.fixture
def put(ob, tmp_path):
    signer = V.Signer.load_or_create(tmp_path / "keys")

    def _put(n: int) -> list[str]:
        return [ob.put(signer.sign(make(device="counter-1", site="shop-7"))) for _ in range(n)]
    return _put


class Wire:
    """Plays the link's part: reads what the drain asks for, 'publishes' with fresh mids, and
    carries acks and purges into the outbox."""

    def __init__(self, drain: Drain, ob: Outbox):
        self.d, self.ob = drain, ob
        self.mids = itertools.count(1)
        self.sent: list[tuple[int, str]] = []       # (mid, verdict_id) in send order

    def connect(self, now: float) -> None:
        self.d.reset()
        self.d.connected(now)

    def pump(self) -> list[tuple[int, str]]:
        req = self.d.want()
        if req is None:
            return []
        rows = self.ob.rows(limit=req.limit, after_seq=req.after_seq, acked_since=req.acked_since)
        out = []
        for action in self.d.read(req, rows):
            assert isinstance(action, Publish)
            mid = next(self.mids)
            self.d.sent(mid, action.row)
            out.append((mid, action.row.verdict_id))
        self.sent += out
        return out

    def ack(self, mid: int, *, now: float, wall: float, failure: bool = False):
        out = self.d.puback(mid, failure, now)
        ids = self.d.take_acked()
        if ids:
            self.ob.ack_many(ids, now=wall)
        return out

    def tick(self, now: float, wall: float) -> list[Purge]:
        purges = self.d.tick(now, wall)
        for p in purges:
            self.ob.purge(p.acked_before)
        return purges


def test_window_limits_what_is_in_flight_and_order_is_kept(ob, put):
    ids = put(7)
    seqs = [r.seq for r in ob.rows(7)]
    d = Drain(max_inflight=3, replay_window_s=0, retry_s=5)
    w = Wire(d, ob)
    w.connect(0.0)
    first = w.pump()
    assert [v for _, v in first] == ids[:3]
    assert len(d.inflight) == 3 and d.want() is None          # window full: nothing is read
    assert w.pump() == []
    assert isinstance(w.ack(first[0][0], now=1.0, wall=1000.0), Delivered)
    d.kick()
    req = d.want()
    assert req == Read(limit=1, after_seq=seqs[2], acked_since=None)
    nxt = w.pump()
    assert [v for _, v in nxt] == [ids[3]]
    for mid, _ in first[1:] + nxt:
        w.ack(mid, now=1.0, wall=1000.0)
    d.kick()
    rest = w.pump()
    assert [v for _, v in rest] == ids[4:7]
    for mid, _ in rest:
        w.ack(mid, now=2.0, wall=1001.0)
    assert ob.depth() == 0 and d.stats["published"] == 7 and d.stats["acked"] == 7
    assert [v for _, v in w.sent] == ids                        # each once, in outbox order


def test_an_unknown_mid_is_not_a_verdict(ob, put):
    put(1)
    d = Drain(max_inflight=5, replay_window_s=0, retry_s=5)
    w = Wire(d, ob)
    w.connect(0.0)
    w.pump()
    assert d.puback(999, False, 1.0) is None                    # e.g. the status message's PUBACK
    assert len(d.inflight) == 1 and d.take_acked() == []


def test_a_new_connection_starts_again_at_the_oldest_pending_row(ob, put):
    ids = put(4)
    d = Drain(max_inflight=10, replay_window_s=0, retry_s=5)
    w = Wire(d, ob)
    w.connect(0.0)
    sent = w.pump()
    w.ack(sent[0][0], now=1.0, wall=1000.0)                     # only the first one got through
    d.disconnected(1001.0, unexpected=True)                     # no replay window configured
    w.connect(2.0)
    again = w.pump()
    assert [v for _, v in again] == ids[1:]                     # in flight when it dropped: sent again
    assert d.stats["replayed"] == 0


def test_after_an_unexpected_disconnect_rows_acked_within_the_window_are_replayed(ob, put):
    ids = put(3)
    d = Drain(max_inflight=10, replay_window_s=10, retry_s=5)
    w = Wire(d, ob)
    w.connect(0.0)
    old, *recent = w.pump()
    w.ack(old[0], now=1.0, wall=980.0)                          # acked 20 s before the drop: outside
    for mid, _ in recent:
        w.ack(mid, now=2.0, wall=995.0)                         # acked 5 s before the drop: inside
    assert ob.depth() == 0
    d.disconnected(1000.0, unexpected=True)
    assert d.replay_since == 990.0
    w.connect(3.0)
    req = d.want()
    assert req.acked_since == 990.0
    replayed = w.pump()
    assert [v for _, v in replayed] == ids[1:]                  # the broker may have lost these
    assert d.stats["replayed"] == 2
    assert d.replay_since is None                               # pass complete (fewer rows than room)
    assert w.tick(4.0, 1004.0) == []                            # no purge within the window after connect


def test_a_clean_stop_schedules_no_replay(ob, put):
    put(2)
    d = Drain(max_inflight=10, replay_window_s=10, retry_s=5)
    w = Wire(d, ob)
    w.connect(0.0)
    for mid, _ in w.pump():
        w.ack(mid, now=1.0, wall=999.0)
    d.disconnected(1000.0, unexpected=False)
    assert d.replay_since is None
    w.connect(2.0)
    assert w.pump() == []


def test_a_denied_row_is_kept_and_retried_with_back_off_until_delivered(ob, put):
    ids = put(3)
    d = Drain(max_inflight=10, replay_window_s=0, retry_s=5)
    w = Wire(d, ob)
    w.connect(0.0)
    sent = dict((v, m) for m, v in w.pump())
    out = w.ack(sent[ids[1]], now=10.0, wall=1000.0, failure=True)       # PUBACK 0x87 Not authorized
    assert isinstance(out, Denied) and out.row.verdict_id == ids[1] and out.times == 1
    w.ack(sent[ids[0]], now=10.0, wall=1000.0)
    w.ack(sent[ids[2]], now=10.0, wall=1000.0)
    assert ob.depth() == 1 and [r.verdict_id for r in ob.rows(5)] == [ids[1]]     # not lost
    assert d.stats["denied"] == 1

    w.tick(12.0, 1002.0)                                        # before the back-off: not re-sent
    assert w.pump() == []
    w.tick(15.0, 1005.0)                                        # back-off over, nothing in flight
    retry = w.pump()
    assert [v for _, v in retry] == [ids[1]]
    out = w.ack(retry[0][0], now=15.5, wall=1005.5, failure=True)        # refused again
    assert isinstance(out, Denied) and out.times == 2
    w.tick(18.0, 1008.0)
    assert w.pump() == []                                       # back-off restarts from the 2nd denial
    w.tick(20.6, 1010.6)
    retry = w.pump()
    assert [v for _, v in retry] == [ids[1]]
    out = w.ack(retry[0][0], now=21.0, wall=1011.0)             # the ACL was fixed
    assert isinstance(out, Delivered) and out.denied_cleared and d.denied == {}
    assert ob.depth() == 0 and d.stats["acked"] == 3


def test_a_denied_row_is_also_retried_on_the_next_connection(ob, put):
    ids = put(1)
    d = Drain(max_inflight=10, replay_window_s=0, retry_s=60)
    w = Wire(d, ob)
    w.connect(0.0)
    (mid, _), = w.pump()
    w.ack(mid, now=1.0, wall=1000.0, failure=True)
    d.disconnected(1001.0, unexpected=True)
    w.connect(2.0)
    assert [v for _, v in w.pump()] == ids


def test_a_refused_publish_is_read_again_from_where_it_stopped(ob, put):
    ids = put(3)
    d = Drain(max_inflight=10, replay_window_s=0, retry_s=5)
    d.reset()
    d.connected(0.0)
    req = d.want()
    acts = d.read(req, ob.rows(limit=req.limit, after_seq=req.after_seq))
    d.sent(1, acts[0].row)
    d.send_failed()                                             # the client refused the second one
    req = d.want()
    assert req is not None and req.after_seq == acts[0].row.seq
    assert [r.verdict_id for r in ob.rows(limit=req.limit, after_seq=req.after_seq)] == ids[1:]


def test_an_invalid_row_is_skipped(ob, put):
    ids = put(2)
    d = Drain(max_inflight=10, replay_window_s=0, retry_s=5)
    w = Wire(d, ob)
    d.reset()
    req = d.want()
    first, second = d.read(req, ob.rows(limit=req.limit))
    d.skipped(first.row)
    d.sent(7, second.row)
    d.kick()
    assert d.want().after_seq == second.row.seq and w.pump() == []
    assert ids


def test_delivered_rows_are_purged_after_the_replay_window_never_during_a_replay(ob, put):
    put(3)
    d = Drain(max_inflight=10, replay_window_s=30, retry_s=5)
    w = Wire(d, ob)
    w.connect(100.0)
    sent = w.pump()
    w.ack(sent[0][0], now=101.0, wall=1000.0)
    w.ack(sent[1][0], now=101.0, wall=1040.0)
    assert ob.delivered_count() == 2
    assert w.tick(110.0, 1050.0) == []                          # within the window after connecting
    purges = w.tick(131.0, 1050.0)
    assert purges == [Purge(1020.0)]
    assert ob.delivered_count() == 1 and ob.depth() == 1        # the recent one and the pending one stay
    assert w.tick(131.5, 1051.0) == []                          # at most once a second
    d.disconnected(1060.0, unexpected=True)                     # replay pending: no purge until done
    w.connect(140.0)
    assert w.tick(175.0, 1100.0) == []
    w.pump()                                                    # the replay pass runs
    assert d.replay_since is None
    assert w.tick(176.0, 1100.0) == [Purge(1070.0)]
    assert ob.delivered_count() == 0


def test_the_outbox_is_polled_without_a_kick(ob, put):
    d = Drain(max_inflight=10, replay_window_s=0, retry_s=5, poll_s=1.0)
    w = Wire(d, ob)
    w.connect(0.0)
    w.tick(0.0, 1000.0)
    assert w.pump() == []                                       # empty outbox read once
    ids = put(1)                                                # another process adds a row, no kick()
    assert d.want() is None
    w.tick(0.5, 1000.5)
    assert d.want() is None                                     # the poll interval has not passed
    w.tick(1.0, 1001.0)
    assert [v for _, v in w.pump()] == ids


def test_which_puback_reason_codes_count_as_denied():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from device.link.transport import is_failure
    assert is_failure(0x87) and is_failure(0x80) and is_failure(ReasonCode(PacketTypes.PUBACK, "Not authorized"))
    assert not is_failure(0) and not is_failure(0x10) and not is_failure(None)    # 0x10: no matching subscribers
    assert not is_failure(ReasonCode(PacketTypes.PUBACK, "Success"))


def test_backoff_starts_over_only_after_a_stable_connection_and_flags_flapping():
    """device/link/backoff.py, no broker: the delay doubles per attempt; a connection that ended sooner
    than stable_s (2 x max_s) keeps it growing and counts as short; three short ones in a row are
    flapping until a connection holds."""
    from device.link.backoff import Backoff
    b = Backoff(0.5, 4.0)
    assert [b.next_wait(t) for t in range(4)] == [0.5, 1.0, 2.0, 4.0]    # no connection: doubling to max
    for t in (10.0, 20.0):
        b.connected(t)
        assert b.next_wait(t + 1.0) == 4.0 and not b.flapping          # ended after 1 s < 8 s: no reset
    b.connected(30.0)
    assert not b.held(31.0)
    assert b.next_wait(31.0) == 4.0 and b.flapping and b.short == 3
    b.connected(40.0)
    assert b.held(48.0) and not b.flapping                              # it held stable_s: over
    assert b.next_wait(50.0) == 0.5 and b.short == 0                    # a stable connection resets
