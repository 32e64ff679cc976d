"""`kyc-edge bench cardreader`: N card reads from the simulator over a real pty."""
from __future__ import annotations

import argparse
import statistics
import time

from device.cardreader import protocol as P
from device.cardreader.simulator import FakeCard, Simulator


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", "--count", dest="n", type=int, default=50, help="cards to read")
    p.add_argument("--baud", type=int, default=115200, choices=sorted(P.BAUD_COMMANDS))


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def _summary(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 2), "p95": round(_pct(xs, 0.95), 2), "max": round(max(xs), 2)}


def bench_cardreader(args) -> dict:
    """Read N cards from the simulator over a pty at `baud` (default 115200).

    Wire time is computed analytically: 10 bits per byte (8N1) over all bytes of one read
    (find + select + read commands and their replies). A pty has no baud pacing, so the
    simulator paces its replies at the baud (pace=True); commands from the host are not paced.
    host_beyond_wire = measured read time - paced reply wire time. An unpaced run (pty at memory
    speed) is reported too: its whole time is host + simulator processing, an upper bound.
    """
    from device.cardreader.reader import CardReader
    from device.config import ReaderConfig

    n = int(getattr(args, "n", 0) or getattr(args, "count", 0) or getattr(args, "limit", 0) or 50)
    baud = int(getattr(args, "baud", 115200) or 115200)
    card = FakeCard.resident()
    cmd_bytes = 3 * len(P.encode_command(P.Cmd.FIND_CARD))
    reply_bytes = (len(P.encode_reply(P.SW3.FOUND, b"\0" * 4)) + len(P.encode_reply(P.SW3.OK, card.serial))
                   + len(P.encode_reply(P.SW3.OK, card.base_payload())))
    wire_ms = (cmd_bytes + reply_bytes) * 10 / baud * 1000
    reply_wire_ms = reply_bytes * 10 / baud * 1000

    def run(pace: bool) -> list[float]:
        sim = Simulator(card, baud=baud, pace=pace)
        sim.start_pty()
        r = CardReader(ReaderConfig(port=sim.port, baud=baud))
        try:
            r.open()
            r.read_card().wipe()      # warm-up (imports, decoder)
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                cr = r.read_card()
                out.append((time.perf_counter() - t0) * 1000)
                cr.wipe()
            return out
        finally:
            r.close()
            sim.stop()

    paced = run(True)
    unpaced = run(False)
    beyond = [t - reply_wire_ms for t in paced]
    res = {
        "bench": "cardreader", "n": n, "baud": baud, "transport": "pty + in-process simulator thread",
        "pacing": "simulator paces its replies at the baud (10 bits/byte); host command bytes unpaced",
        "bytes_per_read": cmd_bytes + reply_bytes,
        "wire_ms_per_read": round(wire_ms, 2),
        "paced_reply_wire_ms": round(reply_wire_ms, 2),
        "read_ms_paced": _summary(paced),
        "host_beyond_wire_ms": _summary(beyond),
        "read_ms_unpaced": _summary(unpaced),
        "budget_host_beyond_wire_ms": 250,
    }
    res["pass"] = res["host_beyond_wire_ms"]["p95"] < 250
    return res


