"""GA 467 "SAM" reader frame codec, resynchronising stream parser, command table, SW3 errors.

Host -> reader:  AA AA AA 96 69 | LEN(2, BE) | CMD PARA | data | CHK
Reader -> host:  AA AA AA 96 69 | LEN(2, BE) | SW1 SW2 SW3 | data | CHK

LEN counts every byte after itself, the checksum included. CHK is the XOR of the length bytes
and every byte after them up to (not including) CHK. Example: find card = AAAAAA96690003200122
(00^03^20^01 = 22). See docs/cardreader.md.

Nothing here logs or formats frame payloads: they may hold card data.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import reduce

PREAMBLE = b"\xAA\xAA\xAA\x96\x69"
HEADER_LEN = len(PREAMBLE) + 2          # preamble + length field
MIN_REPLY_LEN = 4                      # SW1 SW2 SW3 CHK
MIN_COMMAND_LEN = 3                    # CMD PARA CHK
# Largest legitimate reply: 30 10 with 1,024 bytes of fingerprint:
# 3 (SW) + 6 (three length fields) + 256 + 1024 + 1024 + 1 (CHK) = 2314.
MAX_FRAME_LEN = 2400


class Cmd(IntEnum):
    RESET = 0x10FF
    STATUS = 0x11FF
    MODULE_ID = 0x12FF
    FIND_CARD = 0x2001
    SELECT_CARD = 0x2002
    READ_BASE = 0x3001            # text + photo
    READ_NEW_ADDRESS = 0x3003     # newest appended address
    READ_BASE_FP = 0x3010         # text + photo + fingerprint
    BAUD_115200 = 0x6000
    BAUD_57600 = 0x6001
    BAUD_38400 = 0x6002
    BAUD_19200 = 0x6003
    BAUD_9600 = 0x6004


BAUD_COMMANDS = {115200: Cmd.BAUD_115200, 57600: Cmd.BAUD_57600, 38400: Cmd.BAUD_38400,
                 19200: Cmd.BAUD_19200, 9600: Cmd.BAUD_9600}
BAUD_OF_COMMAND = {int(v): k for k, v in BAUD_COMMANDS.items()}


class SW3(IntEnum):
    OK = 0x90
    FOUND = 0x9F
    CHECKSUM_ERROR = 0x10
    LENGTH_ERROR = 0x11
    BAD_COMMAND = 0x21
    AUTH_FAILED = 0x31
    AUTH_FAILED_2 = 0x32
    READ_FAILED = 0x41
    FIND_FAILED = 0x80
    SELECT_FAILED = 0x81


# ---------------------------------------------------------------- errors
class ProtocolError(Exception):
    """Base of every typed protocol failure. Messages never include payload bytes."""


class FrameError(ProtocolError):
    """A byte string that is not one well-formed frame."""


class BadPreamble(FrameError):
    pass


class BadLength(FrameError):
    pass


class TruncatedFrame(FrameError):
    pass


class BadChecksum(FrameError):
    pass


class TrailingBytes(FrameError):
    pass


class StatusError(ProtocolError):
    """The reader answered with a non-success SW3."""
    code = -1

    def __init__(self, sw3: int, cmd: int | None = None):
        self.sw3 = sw3
        self.cmd = cmd
        where = f" to {cmd:04X}" if cmd is not None else ""
        super().__init__(f"reader status SW3={sw3:02X}{where} ({type(self).__name__})")


class ReaderChecksumError(StatusError):      # 10: the reader saw a bad checksum from us
    pass


class ReaderLengthError(StatusError):        # 11
    pass


class BadCommand(StatusError):               # 21
    pass


class AuthFailed(StatusError):               # 31, 32
    pass


class ReadFailed(StatusError):               # 41
    pass


class NoCard(StatusError):                   # 80: find failed
    pass


class SelectFailed(StatusError):             # 81
    pass


class UnknownStatus(StatusError):
    pass


_STATUS_ERRORS: dict[int, type[StatusError]] = {
    0x10: ReaderChecksumError, 0x11: ReaderLengthError, 0x21: BadCommand,
    0x31: AuthFailed, 0x32: AuthFailed, 0x41: ReadFailed, 0x80: NoCard, 0x81: SelectFailed,
}


def status_error(sw3: int, cmd: int | None = None) -> StatusError:
    return _STATUS_ERRORS.get(sw3, UnknownStatus)(sw3, cmd)


# ---------------------------------------------------------------- codec
def checksum(body: bytes | bytearray | memoryview) -> int:
    """XOR of the bytes given (the length field onwards, checksum excluded)."""
    return reduce(lambda a, b: a ^ b, body, 0) if len(body) < 64 else _xor_fast(body)


def _xor_fast(body) -> int:
    # XOR of a long buffer: fold 8 bytes at a time through int.from_bytes.
    mv = memoryview(body)
    n = len(mv) // 8 * 8
    acc = 0
    if n:
        import numpy as np
        acc8 = int(np.bitwise_xor.reduce(np.frombuffer(mv[:n], dtype=np.uint64)))
        for i in range(8):
            acc ^= (acc8 >> (8 * i)) & 0xFF
    for b in mv[n:]:
        acc ^= b
    return acc


def _frame(body: bytes) -> bytes:
    length = len(body) + 1
    head = length.to_bytes(2, "big") + body
    return PREAMBLE + head + bytes([checksum(head)])


def encode_command(cmd: int, data: bytes = b"") -> bytes:
    return _frame(int(cmd).to_bytes(2, "big") + bytes(data))


def encode_reply(sw3: int, data: bytes = b"", sw1: int = 0, sw2: int = 0) -> bytes:
    return _frame(bytes([sw1, sw2, sw3]) + bytes(data))


@dataclass(frozen=True, eq=False)
class Reply:
    sw1: int
    sw2: int
    sw3: int
    data: bytearray          # mutable so that card data can be overwritten (wipe()) after use

    def wipe(self) -> None:
        self.data[:] = b"\x00" * len(self.data)

    def __repr__(self) -> str:   # never show the payload: it may be card data
        return f"Reply(sw={self.sw1:02X}{self.sw2:02X}{self.sw3:02X}, {len(self.data)} data bytes)"


@dataclass(frozen=True)
class Command:
    cmd: int
    data: bytes

    def __repr__(self) -> str:
        return f"Command({self.cmd:04X}, {len(self.data)} data bytes)"


def _split(frame: bytes, min_len: int) -> bytearray:
    """Validate one complete frame; return the bytes between length and checksum."""
    if len(frame) < len(PREAMBLE) or frame[:len(PREAMBLE)] != PREAMBLE:
        raise BadPreamble("frame does not start with AA AA AA 96 69")
    if len(frame) < HEADER_LEN:
        raise TruncatedFrame(f"{len(frame)} bytes, header needs {HEADER_LEN}")
    length = int.from_bytes(frame[5:7], "big")
    if length < min_len or length > MAX_FRAME_LEN:
        raise BadLength(f"length field {length} outside {min_len}..{MAX_FRAME_LEN}")
    total = HEADER_LEN + length
    if len(frame) < total:
        raise TruncatedFrame(f"{len(frame)} of {total} bytes")
    if len(frame) > total:
        raise TrailingBytes(f"{len(frame) - total} bytes after the frame")
    if checksum(frame[5:total - 1]) != frame[total - 1]:
        raise BadChecksum("checksum mismatch")
    return bytearray(frame[7:total - 1])


def decode_reply(frame: bytes) -> Reply:
    """Strict: exactly one reply frame, else a FrameError subclass."""
    body = _split(frame, MIN_REPLY_LEN)
    return Reply(body[0], body[1], body[2], body[3:])


def decode_command(frame: bytes) -> Command:
    body = _split(frame, MIN_COMMAND_LEN)
    return Command(int.from_bytes(body[:2], "big"), bytes(body[2:]))


class FrameParser:
    """Incremental parser: feed bytes, get complete valid frames back.

    Resynchronises after garbage: scans for the preamble, drops frames whose length is out of
    range or whose checksum is wrong (and rescans from the byte after the bad preamble, so a real
    frame hidden behind a fake preamble is still found). A head frame that is still incomplete is
    abandoned when a later preamble already starts a complete, valid frame (a truncated reply
    followed by a good one). Counters say what was dropped; the buffer never exceeds
    MAX_FRAME_LEN + HEADER_LEN + one feed.
    """

    def __init__(self, min_len: int = MIN_REPLY_LEN):
        self.min_len = min_len
        self.buf = bytearray()
        self.dropped_bytes = 0
        self.bad_length = 0
        self.bad_checksum = 0
        self.truncated = 0

    def reset(self) -> None:
        self.buf[:] = b"\x00" * len(self.buf)
        self.buf.clear()

    def pending(self) -> int:
        return len(self.buf)

    def _drop(self, n: int) -> None:
        self.dropped_bytes += n
        self.buf[:n] = b"\x00" * n   # overwrite before release: may be card data
        del self.buf[:n]

    def _complete_at(self, i: int) -> int:
        """Length of a complete valid frame starting at buf[i], 0 if none (yet)."""
        b = self.buf
        if len(b) - i < HEADER_LEN:
            return 0
        length = int.from_bytes(b[i + 5:i + 7], "big")
        if length < self.min_len or length > MAX_FRAME_LEN or len(b) - i < HEADER_LEN + length:
            return 0
        end = i + HEADER_LEN + length
        return HEADER_LEN + length if checksum(memoryview(b)[i + 5:end - 1]) == b[end - 1] else 0

    def feed(self, data: bytes) -> list[bytearray]:
        """Add bytes; return the complete frames (checksum verified) now available. They are
        bytearrays the caller may (and for card data should) zero-fill after decoding."""
        self.buf += data
        out: list[bytearray] = []
        b = self.buf
        while b:
            i = b.find(PREAMBLE)
            if i < 0:
                keep = 0     # keep a tail that may be the start of a preamble
                for k in range(min(len(PREAMBLE) - 1, len(b)), 0, -1):
                    if b.endswith(PREAMBLE[:k]):
                        keep = k
                        break
                self._drop(len(b) - keep)
                break
            if i:
                self._drop(i)
            if len(b) < HEADER_LEN:
                break
            length = int.from_bytes(b[5:7], "big")
            if length < self.min_len or length > MAX_FRAME_LEN:
                self.bad_length += 1
                self._drop(1)
                continue
            total = HEADER_LEN + length
            if len(b) < total:
                # Incomplete. If a later preamble already starts a complete valid frame, the
                # head was a truncated frame (or noise that looked like a preamble): drop it.
                j = b.find(PREAMBLE, 1)
                while j > 0:
                    if self._complete_at(j):
                        self.truncated += 1
                        self._drop(j)
                        break
                    j = b.find(PREAMBLE, j + 1)
                else:
                    break
                continue
            if checksum(memoryview(b)[5:total - 1]) != b[total - 1]:
                self.bad_checksum += 1
                self._drop(1)
                continue
            out.append(bytearray(b[:total]))
            b[:total] = b"\x00" * total
            del b[:total]
        return out

    def abandon_head(self) -> None:
        """Give up on an incomplete head frame (after a timeout) and rescan what follows."""
        if self.buf:
            self.truncated += 1
            self._drop(1)
