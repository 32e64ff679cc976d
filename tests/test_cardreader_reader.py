"""The real serial code (pyserial) over a real pty against the simulator: every command, every
card type, every fault with its exact reason code, baud negotiation, debounce, hot-plug."""
from __future__ import annotations

import datetime as dt
import logging
import os
import time

import numpy as np
import pytest

from device.cardreader import protocol as P
from device.cardreader.photo import card_photo_jpeg
from device.cardreader.reader import CardRead, CardReader
from device.cardreader.simulator import FakeCard, Fault, Simulator, synthetic_face_rgb
from device.config import ReaderConfig
from device.errors import CardError

FAST = dict(timeout_s=0.25, retries=2, presence_debounce=2, reconnect_backoff_max_s=0.2)


@pytest.fixture
def sim():
    s = Simulator(FakeCard.resident())
    s.start_pty()
    yield s
    s.stop()


@pytest.fixture
def reader(sim):
    r = CardReader(ReaderConfig(port=sim.port, **FAST))
    r.open()
    yield r
    r.close()


def reason(fn) -> str:
    with pytest.raises(CardError) as ei:
        fn()
    return ei.value.reason


# ---------------------------------------------------------------- every command
def test_every_command_over_the_pty(sim, reader):
    sim.insert(FakeCard.resident(new_address="测试省样本市新址路9号"))
    reader.reset()
    assert reader.status() is True
    assert reader.module_id().startswith(b"SIM-SAM-")
    assert reader.find_card() is True
    assert reader.select_card() == sim.card.serial
    text, photo, fp = reader.read_base()
    assert bytes(text) == sim.card.text and bytes(photo[:len(sim.card.photo)]) == sim.card.photo and fp == b""
    addr = reader.read_new_address()
    assert bytes(addr).decode("utf-16-le").strip() == "测试省样本市新址路9号"
    sim.remove()
    assert reader.find_card() is False
    with pytest.raises(P.SelectFailed):
        reader.select_card()
    with pytest.raises(P.ReadFailed):
        reader.read_base()
    with pytest.raises(P.BadCommand):
        reader.transact(0x7777)
    for b in (57600, 38400, 19200, 9600, 115200):
        reader.set_baud(b)
        assert sim.baud == b and reader.status()
    seen = set(sim.commands)
    assert {int(c) for c in P.Cmd} - {P.Cmd.READ_BASE_FP} <= seen


@pytest.mark.parametrize("fp_len", [0, 512, 1024])
def test_read_with_fingerprint_3010(sim, reader, fp_len):
    fp = bytes((i * 7) & 0xFF for i in range(fp_len))
    sim.insert(FakeCard.resident(fingerprint=fp))
    cr = reader.read_card(fingerprint=True)
    assert bytes(cr.fingerprint) == fp and cr.record.card_type == "resident"
    assert P.Cmd.READ_BASE_FP in sim.commands


# ---------------------------------------------------------------- every card type
@pytest.mark.parametrize("make,typ", [(FakeCard.resident, "resident"), (FakeCard.permit_hmt, "permit_hmt"),
                                      (FakeCard.foreign, "foreign")])
def test_every_card_type_end_to_end(sim, reader, make, typ):
    face = synthetic_face_rgb(seed=3)
    card = make(photo_bytes=card_photo_jpeg(face))
    sim.insert(card)
    cr = reader.read_card()
    assert isinstance(cr, CardRead) and cr.record.card_type == typ
    assert cr.record.number_valid() and not cr.record.expired(dt.date(2026, 1, 1))
    assert cr.photo.shape == (126, 102, 3) and cr.photo.dtype == np.uint8 and cr.photo.std() > 10
    assert repr(cr).startswith("<CardRead " + typ)
    cr.wipe()
    assert not cr.photo.any() and not any(cr.raw_photo) and cr.record.number == ""


def test_unsupported_card_type_reason(sim, reader):
    sim.insert(FakeCard.unsupported("Y"))
    assert reason(reader.read_card) == "unsupported_card_type"


def test_expired_and_invalid_number_against_injected_clock(sim):
    now = [dt.datetime(2031, 3, 1, 9).timestamp()]
    r = CardReader(ReaderConfig(port=sim.port, **FAST), clock=lambda: now[0]).open()
    try:
        sim.insert(FakeCard.resident(valid_to="20301231"))
        cr = r.read_card()
        assert cr.t == now[0] and cr.record.expired(r.clock()) and cr.record.problem(r.clock()) == "card_expired"
        now[0] = dt.datetime(2030, 12, 31, 23).timestamp()
        assert not cr.record.expired(r.clock())
        sim.insert(FakeCard.resident(number="990001199001010010"))   # wrong check digit (3 is right)
        assert r.read_card().record.problem(now[0]) == "card_invalid_number"
    finally:
        r.close()


# ---------------------------------------------------------------- faults, exact outcomes
@pytest.mark.parametrize("fault", ["noise", "bad_checksum", "truncated", "bad_length", "no_reply"])
def test_transient_fault_is_retried_and_read_succeeds(sim, reader, fault):
    sim.add_fault(Fault(fault))
    cr = reader.read_card()
    assert cr.record.card_type == "resident"
    assert sim.commands.count(P.Cmd.READ_BASE) == (1 if fault == "noise" else 2)


def test_noise_is_dropped_by_the_parser(sim, reader):
    sim.add_fault(Fault("noise", cmd=None, times=None, noise=40))
    assert reader.read_card().record.card_type == "resident"
    assert reader._parser.dropped_bytes > 0
    # through the same noise the debounced presence poll still settles on the inserted card
    assert [reader.card_present() for _ in range(FAST["presence_debounce"] + 1)][-1] is True
    sim.remove()
    assert [reader.card_present() for _ in range(FAST["presence_debounce"] + 1)][-1] is False


@pytest.mark.parametrize("fault", ["bad_checksum", "truncated", "no_reply"])
def test_persistent_fault_gives_card_read_failed(sim, reader, fault):
    sim.add_fault(Fault(fault, times=None))
    assert reason(reader.read_card) == "card_read_failed"
    assert sim.commands.count(P.Cmd.READ_BASE) == FAST["retries"] + 1      # bounded


def test_slow_reply_within_timeout_succeeds(sim, reader):
    sim.add_fault(Fault("slow", delay_s=0.12))
    t = time.monotonic()
    assert reader.read_card().record.card_type == "resident"
    assert time.monotonic() - t >= 0.12 and sim.commands.count(P.Cmd.READ_BASE) == 1


def test_slow_reply_beyond_timeout_gives_card_read_failed(sim, reader):
    sim.add_fault(Fault("slow", delay_s=0.45, times=None))
    assert reason(reader.read_card) == "card_read_failed"


def test_late_reply_to_an_earlier_command_is_not_taken_for_the_next(sim, reader):
    # find answers after the host gave up on it; that late 9F reply and the retry's reply must
    # not be mistaken for the answers to select / read.
    sim.add_fault(Fault("slow", cmd=P.Cmd.FIND_CARD, delay_s=0.4))
    cr = reader.read_card()
    assert cr.record.card_type == "resident" and bytes(cr.record._raw["number"]) == \
        bytes(sim.card.text[122:158])
    assert reader.stats["timeouts"] >= 1


@pytest.mark.parametrize("cmd", [P.Cmd.FIND_CARD, P.Cmd.SELECT_CARD])
def test_duplicate_late_reply_is_discarded_as_stale(sim, reader, cmd):
    sim.add_fault(Fault("duplicate", cmd=cmd))
    cr = reader.read_card()
    assert cr.record.card_type == "resident" and cr.record.number_valid()
    assert reader.stats["stale"] == 1 and reader.stats["retries"] == 0


def test_card_removed_mid_read(sim, reader):
    sim.add_fault(Fault("card_removed"))
    assert reason(reader.read_card) == "card_removed"
    assert sim.card is None and sim.commands[-1] == P.Cmd.FIND_CARD


def test_no_card_at_read_time_is_card_removed(sim, reader):
    sim.remove()
    assert reason(reader.read_card) == "card_removed"


def test_reader_disconnected_mid_read_then_resumes(sim, reader):
    sim.add_fault(Fault("disconnect", delay_s=0.3))
    assert reason(reader.read_card) == "reader_unavailable"
    assert reader.health == "unavailable" and not os.path.exists(sim.port)
    got = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            got = reader.read_card()
            break
        except CardError as e:
            assert e.reason == "reader_unavailable"
            time.sleep(0.05)
    assert got is not None and got.record.card_type == "resident"
    assert reader.health == "ok" and reader.stats["reconnects"] >= 1


def test_unplugged_and_replugged_mid_service(sim, reader):
    """Presence polling keeps running across an unplug; sessions resume on the new pty."""
    polls = [reader.card_present() for _ in range(3)]
    assert polls[-1] is True
    sim.unplug()
    assert reader.card_present() is False and reader.health == "unavailable"
    assert reason(reader.read_card) == "reader_unavailable"
    sim.insert(FakeCard.foreign())
    sim.plug()
    deadline = time.monotonic() + 5
    while not reader.card_present() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader.health == "ok" and reader.stats["reconnects"] == 1
    assert reader.read_card().record.card_type == "foreign"


def test_every_unplug_is_reader_unavailable_never_a_raw_termios_error(sim, reader):
    """After the pty goes, tcflush/tcsetattr fail with EIO as termios.error (not an OSError);
    each unplug must still read as 'unavailable', whichever port call meets it first."""
    for _ in range(5):
        deadline = time.monotonic() + 5
        while not reader.card_present() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.health == "ok"
        sim.unplug()
        time.sleep(0.12)    # past the simulator's 50 ms select(): the pty master is really closed now
        assert reason(reader.status) == "reader_unavailable"
        assert reader.health == "unavailable" and reader.card_present() is False
        sim.plug()
        reader._next_attempt = 0.0      # skip the back-off wait; the reopen itself is real
    assert reader.stats["reconnects"] >= 4


def test_reader_absent_at_open_then_appears(tmp_path):
    s = Simulator(FakeCard.permit_hmt())
    s.start_pty()
    s.unplug()
    r = CardReader(ReaderConfig(port=s.port, **FAST))
    try:
        assert reason(r.open) == "reader_unavailable"
        s.plug()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                assert r.read_card().record.card_type == "permit_hmt"
                break
            except CardError as e:
                assert e.reason == "reader_unavailable"
                time.sleep(0.05)
        else:
            pytest.fail("reader never came back")
    finally:
        r.close()
        s.stop()


# ---------------------------------------------------------------- baud, debounce
@pytest.mark.parametrize("module_baud", [9600, 57600])
def test_baud_negotiation_switches_module_to_configured_rate(module_baud):
    s = Simulator(FakeCard.resident(), baud=module_baud)
    s.start_pty()
    r = CardReader(ReaderConfig(port=s.port, baud=115200, **FAST))
    try:
        r.open()
        assert s.baud == 115200 and r.line_baud == 115200
        assert P.BAUD_COMMANDS[115200] in s.commands
        assert r.read_card().record.card_type == "resident"
    finally:
        r.close()
        s.stop()


def test_module_that_never_answers_is_reader_unavailable(tmp_path):
    m, sl = os.openpty()           # a tty with nobody behind it
    try:
        r = CardReader(ReaderConfig(port=os.ttyname(sl), **FAST))
        assert reason(r.open) == "reader_unavailable"
    finally:
        os.close(m)
        os.close(sl)


def test_presence_debounce(sim):
    r = CardReader(ReaderConfig(port=sim.port, **dict(FAST, presence_debounce=3))).open()
    try:
        assert [r.card_present() for _ in range(3)] == [False, False, True]
        sim.remove()
        assert [r.card_present() for _ in range(3)] == [True, True, False]
        sim.insert(FakeCard.resident())
        assert r.card_present() is False              # one blip does not count ...
        sim.remove()
        assert [r.card_present() for _ in range(3)] == [False, False, False]   # ... nor its end
    finally:
        r.close()


# ---------------------------------------------------------------- privacy
def test_no_pii_in_logs_reprs_or_errors(sim, reader, caplog):
    caplog.set_level(logging.DEBUG)
    card = FakeCard.resident()
    sim.insert(card)
    sim.add_fault(Fault("bad_checksum"))
    cr = reader.read_card()
    rec = cr.record
    secrets = [rec.number, rec.name, rec.field("address"), rec.number[6:14]]
    sim.add_fault(Fault("card_removed"))
    try:
        reader.read_card()
    except CardError as e:
        err = str(e) + repr(e)
    text = caplog.text + repr(cr) + str(cr) + repr(rec) + err + repr(card) + repr(reader.stats)
    for s in secrets:
        assert s and s not in text
