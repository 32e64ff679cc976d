"""A SAM reader module twin that speaks the GA 467 byte protocol on a real pty.

    sim = Simulator(FakeCard.resident(photo_bytes=jpeg), faults=[Fault("noise")])
    port = sim.start_pty()        # stable path (a symlink to the current /dev/pts/N)
    sim.remove(); sim.insert(FakeCard.foreign()); sim.unplug(); sim.plug()
    sim.stop()

Everything it serves is fabricated: names are placeholders, numbers use the non-existent region
prefix 99 (residents) / nationality code ZZZ-like test codes, so no real person's data can appear.

Baud: the module has its own rate (`baud`, reset to `power_on_baud` on plug). It checks the rate
the host set on the line (termios of the pty) and, when they differ, answers with line garbage
instead of frames - so the host's baud negotiation is exercised for real.

Pacing: with `pace=True` replies are written at the module's baud (10 bits per byte), because a
pty itself has no baud-rate pacing. Off by default (tests run at memory speed).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from collections import deque
import os
import random
import select
import tempfile
import termios
import threading
import time
import tty
from dataclasses import dataclass

import numpy as np

from device.cardreader import protocol as P
from device.cardreader.records import build_text, gb11643_check_char
from device.cardreader.photo import PHOTO_FIELD_LEN, card_photo_jpeg

FAULT_KINDS = ("noise", "bad_checksum", "truncated", "bad_length", "slow", "no_reply",
               "duplicate", "card_removed", "disconnect")

_TERMIOS_BAUD = {getattr(termios, f"B{b}"): b for b in (9600, 19200, 38400, 57600, 115200)}


@dataclass
class Fault:
    """One injected fault. `cmd`: the command it hits (None = any); `times`: how many replies
    it spoils (None = all); `delay_s`: slow-reply delay, or for `disconnect` the time before the
    reader comes back (None = stays unplugged until `plug()`); `noise`: garbage byte count."""
    kind: str
    cmd: int | None = P.Cmd.READ_BASE
    times: int | None = 1
    delay_s: float | None = 0.0
    noise: int = 64

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.kind == "slow" and not self.delay_s:
            self.delay_s = 2.0
        if self.kind == "disconnect" and self.delay_s == 0.0:
            self.delay_s = 1.0

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        """CLI form: kind[:delay_s][@CMDHEX][xTIMES|x*], e.g. `slow:2.5`, `noise@2001x*`."""
        times: int | None = 1
        cmd: int | None = P.Cmd.READ_BASE
        if "x" in spec:
            spec, t = spec.rsplit("x", 1)
            times = None if t == "*" else int(t)
        if "@" in spec:
            spec, c = spec.split("@", 1)
            cmd = None if c in ("*", "any") else int(c, 16)
        kind, _, d = spec.partition(":")
        f = cls(kind, cmd=cmd, times=times)
        if d:
            f.delay_s = float(d)
        return f


def fabricated_number(seed: int = 1, birth: str = "19900101", prefix: str = "99") -> str:
    """An 18-character GB 11643 number with a correct check digit and a region that does not exist."""
    body = (prefix + f"{seed % 10000:04d}")[:6] + birth + f"{seed % 1000:03d}"
    return body + gb11643_check_char(body)


def synthetic_face_rgb(w: int = 204, h: int = 252, seed: int = 0) -> np.ndarray:
    """A drawn head-and-shoulders placeholder (no real person) for cards built without a photo."""
    import cv2
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 235, np.uint8)
    skin = tuple(int(x) for x in rng.integers(150, 220, 3))
    cv2.ellipse(img, (w // 2, h), (w // 2, h // 4), 0, 180, 360, (60, 60, 90), -1)
    cv2.ellipse(img, (w // 2, int(h * 0.42)), (w // 5, h // 4), 0, 0, 360, skin, -1)
    for dx in (-1, 1):
        cv2.circle(img, (w // 2 + dx * w // 12, int(h * 0.38)), max(2, w // 40), (30, 30, 30), -1)
    cv2.line(img, (w // 2 - w // 14, int(h * 0.52)), (w // 2 + w // 14, int(h * 0.52)), (120, 40, 40), 2)
    return img


@dataclass
class FakeCard:
    """Bytes a card yields: a 256-byte text block, a photo field (<= 1,024 bytes), optional
    fingerprint (0 / 512 / 1,024 bytes) and newest appended address (70 bytes)."""
    card_type: str
    text: bytes
    photo: bytes
    fingerprint: bytes = b""
    new_address: str = ""
    serial: bytes = b"\x01\x02\x03\x04\x05\x06\x07\x08"

    def __post_init__(self):
        if len(self.photo) > PHOTO_FIELD_LEN:
            raise ValueError("photo field holds at most 1,024 bytes")
        if len(self.fingerprint) not in (0, 512, 1024):
            raise ValueError("fingerprint must be 0, 512 or 1,024 bytes")

    def __repr__(self) -> str:
        return f"<FakeCard {self.card_type}>"

    @staticmethod
    def _photo(photo_bytes: bytes | None) -> bytes:
        return photo_bytes if photo_bytes is not None else card_photo_jpeg(synthetic_face_rgb())

    @staticmethod
    def _date(d) -> str:
        if d is None:
            return "长期"
        return d.strftime("%Y%m%d") if isinstance(d, (_dt.date, _dt.datetime)) else str(d)

    @classmethod
    def resident(cls, photo_bytes: bytes | None = None, valid_to="20351231", number: str | None = None,
                 seed: int = 1, fingerprint: bytes = b"", new_address: str = "",
                 birth: str = "19900101") -> "FakeCard":
        fields = dict(name="测试样本", sex="1", nation="01", birth=birth, address="测试省样本市示例路1号",
                      number=number or fabricated_number(seed, birth), authority="样本市公安局测试分局",
                      valid_from="20150101", valid_to=cls._date(valid_to))
        return cls("resident", build_text("resident", fields), cls._photo(photo_bytes), fingerprint, new_address)

    @classmethod
    def permit_hmt(cls, photo_bytes: bytes | None = None, valid_to="20301231", number: str | None = None,
                   seed: int = 2) -> "FakeCard":
        birth = "19850505"
        fields = dict(name="测试港澳", sex="2", birth=birth, address="测试省样本市示例路2号",
                      number=number or fabricated_number(seed, birth, prefix="81"),
                      authority="样本市公安局", valid_from="20200101", valid_to=cls._date(valid_to),
                      pass_number="H99999999", issue_count="01")
        return cls("permit_hmt", build_text("permit_hmt", fields), cls._photo(photo_bytes))

    @classmethod
    def foreign(cls, photo_bytes: bytes | None = None, valid_to="20320101", number: str | None = None,
                seed: int = 3) -> "FakeCard":
        fields = dict(name_en="TEST, SAMPLE PERSON", sex="1", number=number or f"ZZZ{seed % 10**12:012d}",
                      nationality="ZZZ", name="测试外籍", valid_from="20220101",
                      valid_to=cls._date(valid_to), birth="19800303", version="1", authority_code="9999")
        return cls("foreign", build_text("foreign", fields), cls._photo(photo_bytes))

    @classmethod
    def unsupported(cls, letter: str = "Y", photo_bytes: bytes | None = None) -> "FakeCard":
        """A card whose type mark is unknown (e.g. the 2023 foreign card 'Y')."""
        base = cls.resident(photo_bytes=photo_bytes)
        return dataclasses.replace(base, card_type="unsupported", text=_with_letter(base.text, letter))

    def base_payload(self, with_fp: bool = False) -> bytes:
        photo = self.photo + b"\x00" * (PHOTO_FIELD_LEN - len(self.photo))
        head = (256).to_bytes(2, "big") + PHOTO_FIELD_LEN.to_bytes(2, "big")
        if with_fp:
            return head + len(self.fingerprint).to_bytes(2, "big") + self.text + photo + self.fingerprint
        return head + self.text + photo


def _with_letter(text: bytes, letter: str) -> bytes:
    t = bytearray(text)
    t[248:250] = letter.encode("utf-16-le")[:2].ljust(2, b"\x00")
    return bytes(t)


class Simulator:
    def __init__(self, card: FakeCard | None = None, faults=(), baud: int = 115200,
                 pace: bool = False, seed: int = 0):
        self.card = card
        self.faults: list[Fault] = [Fault.parse(f) if isinstance(f, str) else f for f in faults]
        self.power_on_baud = baud
        self.baud = baud
        self.pace = pace
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._selected = False
        self._master = self._slave = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._dir = tempfile.mkdtemp(prefix="kyc-sim-")
        self.port = os.path.join(self._dir, "ttyUSB0")
        self.pts: str | None = None
        self.commands: deque[int] = deque(maxlen=10_000)   # commands received, in order (for tests)
        self.bytes_out = 0
        self.plugged = False
        self._replug_timer: threading.Timer | None = None
        self._late: bytes = b""      # `duplicate` fault: a copy sent before the next answer

    # ------------------------------------------------------------ lifecycle
    def start_pty(self) -> str:
        """Create the pty and serve it from a daemon thread; returns the stable port path."""
        self.plug()
        self._thread = threading.Thread(target=self._serve, name="sam-simulator", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._replug_timer:
            self._replug_timer.cancel()
        if self._thread:
            self._thread.join(2)
        self.unplug()
        try:
            os.rmdir(self._dir)
        except OSError:
            pass

    def __enter__(self):
        self.start_pty()
        return self

    def __exit__(self, *exc):
        self.stop()

    def plug(self) -> None:
        """(Re)attach the reader: a fresh pty behind the same port path; module at power-on baud."""
        with self._lock:
            if self.plugged:
                return
            m, s = os.openpty()
            tty.setraw(s)
            attrs = termios.tcgetattr(s)
            attrs[4] = attrs[5] = getattr(termios, f"B{self.power_on_baud}")
            termios.tcsetattr(s, termios.TCSANOW, attrs)
            self._master, self._slave = m, s
            self.pts = os.ttyname(s)
            tmp = self.port + ".new"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.pts, tmp)
            os.replace(tmp, self.port)
            self.baud = self.power_on_baud
            self._selected = False
            self.plugged = True

    def unplug(self) -> None:
        """The reader vanishes: pty closed (the host sees EIO), port path removed."""
        with self._lock:
            if not self.plugged:
                return
            self.plugged = False
            for fd in (self._master, self._slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._master = self._slave = None
            try:
                os.unlink(self.port)
            except OSError:
                pass

    def insert(self, card: FakeCard) -> None:
        with self._lock:
            self.card = card
            self._selected = False

    def remove(self) -> None:
        with self._lock:
            self.card = None
            self._selected = False

    def add_fault(self, fault: Fault | str) -> None:
        with self._lock:
            self.faults.append(Fault.parse(fault) if isinstance(fault, str) else fault)

    # ------------------------------------------------------------ serving
    def _line_baud(self) -> int | None:
        try:
            return _TERMIOS_BAUD.get(termios.tcgetattr(self._slave)[5])
        except (termios.error, TypeError, OSError):
            return None

    def _serve(self) -> None:
        parser = P.FrameParser(min_len=P.MIN_COMMAND_LEN)
        while not self._stop.is_set():
            m = self._master
            if m is None:
                time.sleep(0.02)
                parser = P.FrameParser(min_len=P.MIN_COMMAND_LEN)
                continue
            try:
                r, _, _ = select.select([m], [], [], 0.05)
                if not r:
                    continue
                data = os.read(m, 4096)
            except (OSError, ValueError, TypeError):
                time.sleep(0.02)
                continue
            if self._line_baud() != self.baud:
                # Wrong line speed: the module sees framing errors and answers with line noise.
                parser.reset()
                self._write(bytes(self._rng.randrange(256) for _ in range(3)) if data else b"")
                continue
            bad_before = parser.bad_checksum
            frames = parser.feed(data)
            if parser.bad_checksum > bad_before:
                self._write(P.encode_reply(P.SW3.CHECKSUM_ERROR))
            for fr in frames:
                cmd = P.decode_command(fr)
                self.commands.append(cmd.cmd)
                self._respond(cmd)

    def _take_fault(self, cmd: int) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.cmd is None or f.cmd == cmd:
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.faults.remove(f)
                    return f
        return None

    def _answer(self, c: P.Command) -> bytes:
        with self._lock:
            card = self.card
            cmd = c.cmd
            if cmd in (P.Cmd.RESET, P.Cmd.STATUS):
                if cmd == P.Cmd.RESET:
                    self._selected = False
                return P.encode_reply(P.SW3.OK)
            if cmd == P.Cmd.MODULE_ID:
                return P.encode_reply(P.SW3.OK, b"SIM-SAM-" + bytes(range(8)))
            if cmd == P.Cmd.FIND_CARD:
                return P.encode_reply(P.SW3.FOUND, b"\x00" * 4) if card else P.encode_reply(P.SW3.FIND_FAILED)
            if cmd == P.Cmd.SELECT_CARD:
                if not card:
                    return P.encode_reply(P.SW3.SELECT_FAILED)
                self._selected = True
                return P.encode_reply(P.SW3.OK, card.serial)
            if cmd in (P.Cmd.READ_BASE, P.Cmd.READ_BASE_FP, P.Cmd.READ_NEW_ADDRESS):
                if not card or not self._selected:
                    return P.encode_reply(P.SW3.READ_FAILED)
                if cmd == P.Cmd.READ_NEW_ADDRESS:
                    addr = card.new_address.encode("utf-16-le")[:70]
                    return P.encode_reply(P.SW3.OK, addr + " ".encode("utf-16-le") * ((70 - len(addr)) // 2))
                return P.encode_reply(P.SW3.OK, card.base_payload(cmd == P.Cmd.READ_BASE_FP))
            if cmd in P.BAUD_OF_COMMAND:
                return P.encode_reply(P.SW3.OK)
            return P.encode_reply(P.SW3.BAD_COMMAND)

    def _respond(self, c: P.Command) -> None:
        reply = self._answer(c)
        if self._late:
            self._write(self._late)
            self._late = b""
        fault = self._take_fault(c.cmd)
        if fault is not None:
            k = fault.kind
            if k == "noise":
                noise = bytes(self._rng.randrange(256) for _ in range(fault.noise)).replace(b"\xAA", b"\x55")
                reply = noise + reply + noise[: fault.noise // 2]
            elif k == "bad_checksum":
                reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
            elif k == "bad_length":
                reply = reply[:5] + b"\xFF\xFF" + reply[7:]
            elif k == "truncated":
                reply = reply[: max(8, len(reply) // 2)]
            elif k == "slow":
                time.sleep(fault.delay_s or 0)
            elif k == "no_reply":
                reply = b""
            elif k == "duplicate":
                self._late = reply
            elif k == "card_removed":
                self._write(reply[: max(8, len(reply) * 2 // 5)])
                self.remove()
                return
            elif k == "disconnect":
                self._write(reply[: max(8, len(reply) // 3)])
                self.unplug()
                if fault.delay_s is not None:
                    self._replug_timer = threading.Timer(fault.delay_s, self.plug)
                    self._replug_timer.daemon = True
                    self._replug_timer.start()
                return
        self._write(reply)
        if c.cmd in P.BAUD_OF_COMMAND and reply and fault is None:
            time.sleep(0.002)
            self.baud = P.BAUD_OF_COMMAND[c.cmd]

    def _write(self, data: bytes) -> None:
        if not data:
            return
        m = self._master
        if m is None:
            return
        try:
            if not self.pace:
                os.write(m, data)
            else:
                t0 = time.perf_counter()
                per_byte = 10.0 / self.baud
                for i in range(0, len(data), 32):
                    os.write(m, data[i:i + 32])
                    due = t0 + (i + 32) * per_byte
                    d = due - time.perf_counter()
                    if d > 0:
                        time.sleep(d)
            self.bytes_out += len(data)
        except OSError:
            pass
