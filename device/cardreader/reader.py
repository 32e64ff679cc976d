"""CardReader: the host side of the GA 467 SAM reader over a serial port (pyserial).

    r = CardReader(cfg.reader, clock=time.time); r.open()
    r.card_present() -> bool           # debounced (reader.presence_debounce agreeing polls)
    cr = r.read_card() -> CardRead     # raises CardError(reason)

Robustness: every command has a timeout (reader.timeout_s + the reply's wire time) and bounded
retries (reader.retries) after a timeout, a corrupt / truncated reply, or an SW3 10/11 (the module
saw our frame corrupted). The FrameParser resynchronises after garbage. Baud negotiation at open:
probe the configured rate, else find the module's rate and switch it (60 0x). Hot-plug: an I/O
error on the port marks the reader `unavailable`, closes it, and every later call retries the
open (exponential back-off up to reader.reconnect_backoff_max_s) - no daemon restart needed.

Logs carry events and counters only; never frame payloads, card fields or photos.
"""
from __future__ import annotations

import logging
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import serial

from device.cardreader import protocol as P
from device.cardreader.photo import PhotoDecoder, make_decoder
from device.cardreader.records import CardRecord, parse_text
from device.errors import CardError

# What a port that vanished raises: pyserial wraps most calls, but not tcflush/tcsetattr
# (termios.error, EIO once the pty or USB device is gone), and termios.error is no OSError.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)

# `kycsim://CARD` (protocol_kycsim.py): the in-process simulator twin behind the same reader.port
if "device.cardreader" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("device.cardreader")

log = logging.getLogger("kyc_edge.cardreader")

TEXT_LEN, PHOTO_LEN = 256, 1024
_PROBE_TIMEOUT_S = 0.25


class ReaderGone(Exception):
    """The port failed (unplugged / vanished). Internal; surfaces as reader_unavailable."""


class ReplyTimeout(P.ProtocolError):
    pass


class CorruptReply(P.ProtocolError):
    pass


@dataclass(repr=False, eq=False)
class CardRead:
    record: CardRecord
    photo: np.ndarray                       # RGB uint8, decoded chip photo
    raw_photo: bytearray = field(default_factory=bytearray)
    fingerprint: bytearray = field(default_factory=bytearray)
    t: float = 0.0                          # clock() when read

    def wipe(self) -> None:
        self.record.wipe()
        self.photo.fill(0)
        for b in (self.raw_photo, self.fingerprint):
            b[:] = b"\x00" * len(b)

    def __repr__(self) -> str:
        return f"<CardRead {self.record.card_type} photo={self.photo.shape[1]}x{self.photo.shape[0]}>"

    __str__ = __repr__


# expected data length of a successful reply, per command (None = any); used to reject stale replies
_OK_LEN = {P.Cmd.RESET: 0, P.Cmd.STATUS: 0, P.Cmd.MODULE_ID: None, P.Cmd.FIND_CARD: 4,
           P.Cmd.SELECT_CARD: 8, P.Cmd.READ_BASE: 4 + TEXT_LEN + PHOTO_LEN,
           P.Cmd.READ_NEW_ADDRESS: 70, P.Cmd.READ_BASE_FP: None}
_SUCCESS = (P.SW3.OK, P.SW3.FOUND)
_OK_SW3 = {P.Cmd.FIND_CARD: P.SW3.FOUND}
_REPLY_BYTES = {P.Cmd.READ_BASE: 1295, P.Cmd.READ_BASE_FP: 1295 + 2 + 1024}


def split_base_payload(data: bytes, with_fp: bool) -> tuple[bytearray, bytearray, bytearray]:
    """Data of a 30 01 / 30 10 reply -> (text 256, photo 1024, fingerprint 0/512/1024)."""
    n = 6 if with_fp else 4
    if len(data) < n:
        raise CardError("card_read_failed", "read reply too short")
    tl = int.from_bytes(data[0:2], "big")
    pl = int.from_bytes(data[2:4], "big")
    fl = int.from_bytes(data[4:6], "big") if with_fp else 0
    if tl != TEXT_LEN or pl != PHOTO_LEN or fl not in (0, 512, 1024):
        raise CardError("card_read_failed", "read reply has unexpected field lengths")
    if len(data) != n + tl + pl + fl:
        raise CardError("card_read_failed", "read reply length disagrees with its fields")
    text = bytearray(data[n:n + tl])
    photo = bytearray(data[n + tl:n + tl + pl])
    fp = bytearray(data[n + tl + pl:])
    return text, photo, fp


class CardReader:
    def __init__(self, cfg, clock=time.time, *, monotonic=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self._mono = monotonic
        self._ser: serial.Serial | None = None
        self._parser = P.FrameParser()
        self._decoder: PhotoDecoder | None = None
        self.health = "closed"              # closed | ok | unavailable
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._samples: deque[bool] = deque(maxlen=max(1, cfg.presence_debounce))
        self._present = False
        self.stats = {"commands": 0, "retries": 0, "timeouts": 0, "corrupt": 0, "reconnects": 0,
                      "stale": 0}
        self.line_baud: int | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ lifecycle
    def open(self) -> "CardReader":
        """Build the photo decoder (photo_decoder_unavailable here, at start-up) and open the port.
        A reader that is not there yet raises reader_unavailable; later calls keep trying."""
        self._decoder = make_decoder(self.cfg.photo_decoder, self.cfg.wlt_library).limit(
            self.cfg.photo_max_side, self.cfg.photo_max_pixels)
        self.health = "unavailable"
        try:
            self._connect()
        except ReaderGone as e:
            self._schedule_retry()
            raise CardError("reader_unavailable", str(e)) from None
        return self

    def close(self) -> None:
        self._drop_port()
        self.health = "closed"

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _drop_port(self) -> None:
        if self._ser is not None:
            try:
                self._ser.close()
            except Exception:   # noqa: BLE001 - the port is already gone
                pass
        self._ser = None
        self._parser.reset()

    def _schedule_retry(self) -> None:
        self._backoff = min(self.cfg.reconnect_backoff_max_s, max(0.1, self._backoff * 2))
        self._next_attempt = self._mono() + self._backoff

    def _lost(self, why: str) -> ReaderGone:
        if self.health == "ok":
            log.warning("card reader lost (%s); will reopen", why)
        self._drop_port()
        self.health = "unavailable"
        self._samples.clear()
        self._present = False
        self._backoff = 0.0
        self._schedule_retry()
        return ReaderGone(why)

    def _connect(self) -> None:
        try:
            ser = serial.serial_for_url(self.cfg.port, baudrate=self.cfg.baud, bytesize=8, parity="N",
                                        stopbits=1, timeout=0.05, write_timeout=1.0)
        except (*_PORT_ERRORS, ValueError) as e:
            raise ReaderGone(f"cannot open port ({type(e).__name__})") from None
        self._ser = ser
        try:
            self._negotiate_baud()
        except ReaderGone:
            self._drop_port()
            raise
        except _PORT_ERRORS as e:     # the port went away while the line speed was being set
            self._drop_port()
            raise ReaderGone(f"port lost while negotiating baud ({type(e).__name__})") from None
        self.health = "ok"
        self._backoff = 0.0
        self._samples.clear()
        log.info("card reader ready at %d baud", self.line_baud)

    def _ensure(self) -> None:
        if self.health == "closed":
            raise CardError("reader_unavailable", "reader not opened")
        if self._ser is not None and self.health == "ok":
            return
        if self._mono() < self._next_attempt:
            raise CardError("reader_unavailable", "reader unplugged; waiting to reopen")
        try:
            self._connect()
            self.stats["reconnects"] += 1
        except ReaderGone as e:
            self._schedule_retry()
            raise CardError("reader_unavailable", str(e)) from None

    # ------------------------------------------------------------ baud
    def _probe(self) -> bool:
        try:
            self.transact(P.Cmd.STATUS, timeout=_PROBE_TIMEOUT_S, retries=0)
            return True
        except P.ProtocolError:
            return False

    def _negotiate_baud(self) -> None:
        want = self.cfg.baud
        self._ser.baudrate = want
        self.line_baud = want
        if self._probe():
            return
        for b in sorted(P.BAUD_COMMANDS, reverse=True):
            if b == want:
                continue
            self._ser.baudrate = b
            self.line_baud = b
            if not self._probe():
                continue
            log.info("card reader answered at %d baud; switching it to %d", b, want)
            try:
                self.transact(P.BAUD_COMMANDS[want], timeout=_PROBE_TIMEOUT_S, retries=1)
            except P.ProtocolError:
                break
            time.sleep(0.01)
            self._ser.baudrate = want
            self.line_baud = want
            if self._probe():
                return
            break
        raise ReaderGone("reader does not answer at any baud rate")

    # ------------------------------------------------------------ transport
    def _wire_s(self, nbytes: int) -> float:
        return nbytes * 10.0 / (self.line_baud or self.cfg.baud)

    def transact(self, cmd: int, data: bytes = b"", *, timeout: float | None = None,
                 retries: int | None = None) -> P.Reply:
        """Send one command, return its reply. Retries timeouts, corrupt replies and SW3 10/11.
        Raises ReplyTimeout / CorruptReply / StatusError (ProtocolError) or ReaderGone."""
        if self._ser is None:
            raise ReaderGone("port not open")
        frame = P.encode_command(cmd, data)
        tmo = (self.cfg.timeout_s if timeout is None else timeout) + self._wire_s(
            _REPLY_BYTES.get(cmd, 32) + len(frame))
        tries = (self.cfg.retries if retries is None else retries) + 1
        last: P.ProtocolError | None = None
        for attempt in range(tries):
            if attempt:
                self.stats["retries"] += 1
            self.stats["commands"] += 1
            try:
                self._ser.reset_input_buffer()
                self._parser.reset()
                self._ser.write(frame)
                reply = self._await(cmd, self._mono() + tmo)
            except _PORT_ERRORS as e:
                raise self._lost(type(e).__name__) from None
            except (ReplyTimeout, CorruptReply) as e:
                last = e
                continue
            if reply.sw3 in (P.SW3.CHECKSUM_ERROR, P.SW3.LENGTH_ERROR):
                last = P.status_error(reply.sw3, cmd)
                continue
            if reply.sw3 not in (P.SW3.OK, _OK_SW3.get(cmd, P.SW3.OK)):
                raise P.status_error(reply.sw3, cmd)
            return reply
        assert last is not None
        raise last

    def _await(self, cmd: int, deadline: float) -> P.Reply:
        ser = self._ser
        want_len = _OK_LEN.get(cmd)
        ok_sw3 = _OK_SW3.get(cmd, P.SW3.OK)
        corrupt_before = self._parser.bad_checksum + self._parser.bad_length
        while True:
            left = deadline - self._mono()
            if left <= 0:
                partial = self._parser.pending() > 0
                bad = self._parser.bad_checksum + self._parser.bad_length > corrupt_before
                if partial or bad:
                    self.stats["corrupt"] += 1
                    raise CorruptReply("truncated or corrupt reply")
                self.stats["timeouts"] += 1
                raise ReplyTimeout(f"no reply to {cmd:04X}")
            ser.timeout = min(left, 0.05)
            chunk = ser.read(max(1, ser.in_waiting))
            if not chunk:
                continue
            for fr in self._parser.feed(chunk):
                reply = P.decode_reply(fr)
                fr[:] = b"\x00" * len(fr)
                if reply.sw3 in _SUCCESS and (reply.sw3 != ok_sw3 or (
                        want_len is not None and len(reply.data) != want_len)):
                    self.stats["stale"] += 1     # a late success reply to an earlier command
                    reply.wipe()
                    continue
                return reply

    # ------------------------------------------------------------ typed command API
    def _call(self, fn, *a, **kw):
        with self._lock:      # one command on the wire at a time, whichever thread asks
            self._ensure()
            try:
                return fn(*a, **kw)
            except ReaderGone as e:
                raise CardError("reader_unavailable", str(e)) from None

    def reset(self) -> None:
        self._call(self.transact, P.Cmd.RESET)

    def status(self) -> bool:
        self._call(self.transact, P.Cmd.STATUS)
        return True

    def module_id(self) -> bytes:
        return self._call(self.transact, P.Cmd.MODULE_ID).data

    def find_card(self) -> bool:
        """One raw presence probe (20 01): True on SW3 9F, False on 80."""
        try:
            self._call(self.transact, P.Cmd.FIND_CARD)
            return True
        except P.NoCard:
            return False

    def select_card(self) -> bytes:
        """20 02: the card's 8-byte serial (SelectFailed if there is none)."""
        return self._call(self.transact, P.Cmd.SELECT_CARD).data

    def read_base(self, fingerprint: bool = False, retries: int = 0):
        """30 01 / 30 10 -> (text, photo, fingerprint) bytearrays."""
        cmd = P.Cmd.READ_BASE_FP if fingerprint else P.Cmd.READ_BASE
        reply = self._call(self.transact, cmd, retries=retries)
        try:
            return split_base_payload(reply.data, fingerprint)
        finally:
            reply.wipe()

    def read_new_address(self) -> bytearray:
        """30 03: the newest appended address as raw UTF-16LE bytes (blank = none)."""
        return bytearray(self._call(self.transact, P.Cmd.READ_NEW_ADDRESS).data)

    def set_baud(self, baud: int) -> None:
        """60 0x, then follow the module to the new rate."""
        self._call(self.transact, P.BAUD_COMMANDS[baud])
        time.sleep(0.01)
        with self._lock:
            try:
                self._ser.baudrate = baud
            except _PORT_ERRORS as e:
                raise CardError("reader_unavailable", str(self._lost(type(e).__name__))) from None
            self.line_baud = baud

    # ------------------------------------------------------------ session API
    def card_present(self) -> bool:
        """Debounced presence: one find-card poll per call; the answer changes only after
        `presence_debounce` consecutive agreeing polls. False while the reader is unavailable
        (see `health`); reopening is attempted here with back-off."""
        try:
            raw = self.find_card()
        except CardError:
            self._samples.clear()
            self._present = False
            return False
        except P.ProtocolError:
            raw = False
        self._samples.append(raw)
        if len(self._samples) == self._samples.maxlen and len(set(self._samples)) == 1:
            self._present = raw
        return self._present

    def _still_there(self) -> bool:
        try:
            return self.find_card()
        except P.ProtocolError:
            return True     # cannot tell; assume present and let the retry budget decide

    def read_card(self, fingerprint: bool = False) -> CardRead:
        """find + select + read + parse + decode, with bounded retries.
        CardError reasons: card_read_failed, card_removed, unsupported_card_type,
        photo_decoder_unavailable, reader_unavailable."""
        if self._decoder is None:
            raise CardError("reader_unavailable", "reader not opened")
        with self._lock:      # find/select/read is one uninterrupted sequence
            return self._read_card(fingerprint)

    def _read_card(self, fingerprint: bool) -> CardRead:
        tries = self.cfg.retries + 1
        for attempt in range(tries):
            try:
                if not self.find_card():
                    raise CardError("card_removed", "no card on the reader")
                self.select_card()
                text, photo, fp = self.read_base(fingerprint)
            except (P.SelectFailed, P.ReadFailed, ReplyTimeout, CorruptReply, P.ReaderChecksumError,
                    P.ReaderLengthError, P.AuthFailed, P.UnknownStatus) as e:
                if not self._still_there():
                    raise CardError("card_removed", "card left the reader during the read") from None
                log.info("card read attempt %d failed (%s)", attempt + 1, type(e).__name__)
                continue
            except P.BadCommand:
                raise CardError("card_read_failed", "reader rejected the read command") from None
            except P.NoCard:
                raise CardError("card_removed", "no card on the reader") from None
            return self._build(text, photo, fp)
        raise CardError("card_read_failed", f"no good read in {tries} attempts")

    def _build(self, text: bytearray, photo: bytearray, fp: bytearray) -> CardRead:
        try:
            record = parse_text(text)
            try:
                rgb = self._decoder.decode(photo)
            except CardError:
                record.wipe()
                raise
        except CardError:
            for b in (text, photo, fp):
                b[:] = b"\x00" * len(b)
            raise
        text[:] = b"\x00" * len(text)
        return CardRead(record=record, photo=rgb, raw_photo=photo, fingerprint=fp, t=self.clock())
