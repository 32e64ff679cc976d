"""Frame codec, SW3 mapping, resynchronising parser; record parser; hypothesis properties."""
from __future__ import annotations

import datetime as dt
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from device.cardreader import protocol as P
from device.cardreader.records import (RESIDENT_LAYOUT as L, ForeignRecord, PermitRecord, ResidentRecord,
                                       gb11643_check_char, gb11643_valid, parse_text)
from device.cardreader.simulator import FakeCard, fabricated_number
from device.errors import CardError

# Vectors cross-checked against public reader code (see docs/cardreader.md "Sources").
KNOWN_COMMANDS = {
    P.Cmd.FIND_CARD: "aaaaaa96690003200122",
    P.Cmd.SELECT_CARD: "aaaaaa96690003200221",
    P.Cmd.READ_BASE: "aaaaaa96690003300132",
    P.Cmd.READ_BASE_FP: "aaaaaa96690003301023",
    P.Cmd.READ_NEW_ADDRESS: "aaaaaa96690003300330",
    P.Cmd.MODULE_ID: "aaaaaa9669000312ffee",
    P.Cmd.STATUS: "aaaaaa9669000311ffed",
}


@pytest.mark.parametrize("cmd,hexframe", list(KNOWN_COMMANDS.items()))
def test_command_frames_match_published_bytes(cmd, hexframe):
    assert P.encode_command(cmd).hex() == hexframe
    assert P.decode_command(bytes.fromhex(hexframe)).cmd == cmd


def test_reply_frames_match_published_bytes():
    assert P.encode_reply(P.SW3.FOUND, b"\0" * 4).hex() == "aaaaaa9669000800009f0000000097"
    assert P.encode_reply(P.SW3.OK).hex() == "aaaaaa9669000400009094"
    assert P.encode_reply(P.SW3.FIND_FAILED).hex() == "aaaaaa9669000400008084"
    r = P.decode_reply(bytes.fromhex("aaaaaa9669000800009f0000000097"))
    assert (r.sw1, r.sw2, r.sw3, r.data) == (0, 0, 0x9F, b"\0" * 4)


def test_read_reply_is_1295_bytes():
    frame = P.encode_reply(P.SW3.OK, FakeCard.resident().base_payload())
    assert len(frame) == 1295
    assert frame[:10].hex() == "aaaaaa96690508000090"


@pytest.mark.parametrize("frame,exc", [
    (b"", P.BadPreamble),
    (b"\xAA\xAA\xAA\x96\x68\x00\x04\x00\x00\x90\x94", P.BadPreamble),
    (b"\xAA\xAA\xAA\x96\x69\x00", P.TruncatedFrame),
    (b"\xAA\xAA\xAA\x96\x69\x00\x02\x00\x02", P.BadLength),
    (b"\xAA\xAA\xAA\x96\x69\xFF\xFF\x00\x00\x90\x94", P.BadLength),
    (b"\xAA\xAA\xAA\x96\x69\x00\x04\x00\x00\x90", P.TruncatedFrame),
    (b"\xAA\xAA\xAA\x96\x69\x00\x04\x00\x00\x90\x95", P.BadChecksum),
    (b"\xAA\xAA\xAA\x96\x69\x00\x04\x00\x00\x90\x94\x00", P.TrailingBytes),
])
def test_bad_frames_raise_typed_errors(frame, exc):
    with pytest.raises(exc):
        P.decode_reply(frame)


@pytest.mark.parametrize("sw3,exc", [(0x10, P.ReaderChecksumError), (0x11, P.ReaderLengthError),
                                     (0x21, P.BadCommand), (0x31, P.AuthFailed), (0x32, P.AuthFailed),
                                     (0x41, P.ReadFailed), (0x80, P.NoCard), (0x81, P.SelectFailed),
                                     (0x77, P.UnknownStatus)])
def test_sw3_maps_to_typed_errors(sw3, exc):
    e = P.status_error(sw3, P.Cmd.READ_BASE)
    assert type(e) is exc and e.sw3 == sw3 and isinstance(e, P.ProtocolError)


def test_parser_resyncs_after_noise_bad_checksum_bad_length_and_truncation():
    good = P.encode_reply(P.SW3.OK, b"abc")
    bad_ck = good[:-1] + bytes([good[-1] ^ 1])
    bad_len = good[:5] + b"\xFF\xFF" + good[7:]
    truncated = P.encode_reply(P.SW3.OK, os.urandom(300))[:150]
    stream = b"\x01\x02garbage" + bad_ck + bad_len + good + truncated + good + b"\xAA\xAA"
    p = P.FrameParser()
    frames = []
    for i in range(0, len(stream), 7):                  # awkward chunking
        frames += p.feed(stream[i:i + 7])
    assert frames == [good, good]
    assert p.bad_checksum >= 1 and p.bad_length >= 1 and p.truncated >= 1
    assert p.pending() <= 2                              # only the possible preamble start kept


# ---------------------------------------------------------------- properties (fuzz, in-suite size)
FRAMES = st.builds(lambda sw3, d: P.encode_reply(sw3, d), st.integers(0, 255), st.binary(max_size=300))
NOISE = st.binary(max_size=64).map(lambda b: b.replace(b"\xAA", b"\x55"))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_decode_reply_never_crashes(data):
    try:
        r = P.decode_reply(data)
    except P.FrameError:
        return
    assert P.encode_reply(r.sw3, r.data, r.sw1, r.sw2) == data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NOISE, FRAMES), max_size=6), st.integers(1, 97))
def test_parser_recovers_every_frame_behind_noise(pairs, chunk):
    stream = b"".join(n + f for n, f in pairs)
    p = P.FrameParser()
    out = []
    for i in range(0, len(stream), chunk):
        out += p.feed(stream[i:i + chunk])
    assert out == [f for _, f in pairs]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), FRAMES,
                          FRAMES.map(lambda f: f[:len(f) // 2]),
                          FRAMES.map(lambda f: f[:-1] + bytes([f[-1] ^ 0xFF]))), max_size=12))
def test_parser_arbitrary_stream_bounded_and_only_valid_frames(parts):
    p = P.FrameParser()
    for part in parts:
        for fr in p.feed(part):
            P.decode_reply(fr)                  # every emitted frame is a valid frame
        assert p.pending() <= P.HEADER_LEN + P.MAX_FRAME_LEN + 200


# ---------------------------------------------------------------- records
def test_gb11643_check_digit():
    assert gb11643_check_char("11010519491231002") == "X"     # the standard's own example
    n = fabricated_number(7)
    assert gb11643_valid(n)
    for i in range(17):
        d = str((int(n[i]) + 1) % 10)
        assert not gb11643_valid(n[:i] + d + n[i + 1:])      # any single-digit error is caught
    assert not gb11643_valid(n[:17]) and not gb11643_valid("ABCDEFGHIJKLMNOPQR")


def test_every_card_type_parses_to_its_record():
    for card, cls, typ in ((FakeCard.resident(), ResidentRecord, "resident"),
                           (FakeCard.permit_hmt(), PermitRecord, "permit_hmt"),
                           (FakeCard.foreign(), ForeignRecord, "foreign")):
        r = parse_text(card.text)
        assert type(r) is cls and r.card_type == typ
        assert r.number_valid()
        assert r.valid_from < r.valid_to
    p = parse_text(FakeCard.permit_hmt().text)
    assert p.pass_number == "H99999999" and p.issue_count == 1 and p.number.startswith("81")
    f = parse_text(FakeCard.foreign().text)
    assert f.number.startswith("ZZZ") and f.name.startswith("TEST")


@pytest.mark.parametrize("letter", ["Y", "A", "j", "\u4e00"])
def test_unknown_type_letter_is_unsupported_never_parsed(letter):
    with pytest.raises(CardError) as ei:
        parse_text(FakeCard.unsupported(letter).text)
    assert ei.value.reason == "unsupported_card_type"


def test_expiry_against_injected_clock_and_long_term():
    r = parse_text(FakeCard.resident(valid_to="20300630").text)
    assert r.valid_to == dt.date(2030, 6, 30)
    assert not r.expired(dt.date(2030, 6, 30)) and r.expired(dt.date(2030, 7, 1))
    assert r.expired(dt.datetime(2031, 1, 1, 12).timestamp())
    assert r.problem(dt.date(2031, 1, 1)) == "card_expired" and r.problem(dt.date(2029, 1, 1)) is None
    lt = parse_text(FakeCard.resident(valid_to=None).text)
    assert lt.valid_to is None and not lt.expired(dt.date(2999, 1, 1))


def test_invalid_number_gets_its_own_reason():
    n = fabricated_number(5)
    wrong = n[:17] + ("0" if n[17] != "0" else "1")
    r = parse_text(FakeCard.resident(number=wrong).text)
    assert not r.number_valid() and r.problem(dt.date(2020, 1, 1)) == "card_invalid_number"


def test_malformed_fields_are_card_read_failed():
    base = FakeCard.resident().text
    for field_, value in (("birth", "1990AB01"), ("valid_to", "20301340"), ("sex", "7"), ("number", "12")):
        t = bytearray(base)
        o, n = L[field_]
        enc = value.encode("utf-16-le")
        t[o:o + n] = enc + " ".encode("utf-16-le") * ((n - len(enc)) // 2)
        with pytest.raises(CardError) as ei:
            parse_text(bytes(t))
        assert ei.value.reason == "card_read_failed"
    with pytest.raises(CardError) as ei:
        parse_text(base[:255])
    assert ei.value.reason == "card_read_failed"


def test_repr_hmac_and_wipe_keep_pii_out():
    card = FakeCard.resident()
    r = parse_text(card.text)
    number, name = r.number, r.name
    text = repr(r) + str(r)
    for secret in (number, name, r.field("address"), number[-6:]):
        assert secret not in text
    h = r.number_hmac(b"k" * 32)
    assert len(h) == 64 and number not in h and h != r.number_hmac(b"j" * 32)
    r.wipe()
    assert r.wiped and r.number == "" and all(not any(b) for b in r._raw.values())


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=256, max_size=256))
def test_record_parser_random_text_only_typed_errors(text):
    try:
        r = parse_text(text)
    except CardError as e:
        assert e.reason in ("card_read_failed", "unsupported_card_type")
        return
    assert r.card_type in ("resident", "permit_hmt", "foreign")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["resident", "permit_hmt", "foreign"]), st.integers(0, 255),
       st.integers(0, 255), st.data())
def test_record_parser_mutated_cards_only_typed_errors(kind, pos, val, data):
    text = bytearray(getattr(FakeCard, kind)().text)
    text[pos] = val
    cut = data.draw(st.sampled_from([256, 256, 255, 0, 100]))
    try:
        r = parse_text(bytes(text[:cut]))
    except CardError as e:
        assert e.reason in ("card_read_failed", "unsupported_card_type")
        return
    assert r.card_type in ("resident", "permit_hmt", "foreign")
    r.number_valid(), r.expired(dt.date(2026, 1, 1))


def test_parser_adversarial_fake_preambles_are_bounded_and_recover():
    import time
    fake = P.PREAMBLE + (P.MAX_FRAME_LEN).to_bytes(2, "big")          # claims a maximal frame
    good = P.encode_reply(P.SW3.OK, b"xyz")
    stream = fake * 2000 + good
    p = P.FrameParser()
    t = time.perf_counter()
    out = []
    for i in range(0, len(stream), 512):
        out += p.feed(stream[i:i + 512])
        assert p.pending() <= P.HEADER_LEN + P.MAX_FRAME_LEN + 512
    assert time.perf_counter() - t < 5.0
    assert out == [good]
