"""Fuzz the frame parser and the record parser: `python -m kyc_tools.fuzz --inputs 100000`.

Inputs are random byte strings and mutations (bit flips, truncation, insertion, tampered length,
tampered type mark) of valid frames and valid card text blocks. Every input must end in a value
or a typed error (FrameError / CardError); anything else is a crash. A stream pass also feeds all
inputs through one FrameParser in random chunks and checks every frame it emits is valid and the
buffer stays bounded. Prints one JSON object; exit status 1 on any crash, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

from device.cardreader import protocol as P
from device.cardreader.reader import split_base_payload
from device.cardreader.records import parse_text
from device.cardreader.simulator import FakeCard
from device.errors import CardError


def _mutate(rng: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    op = rng.randrange(7)
    if op == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        del b[rng.randrange(len(b)):]
    elif op == 2:
        pos = rng.randrange(len(b) + 1)
        b[pos:pos] = rng.randbytes(rng.randint(1, 16))
    elif op == 3 and len(b) >= 7:
        b[5:7] = rng.randrange(65536).to_bytes(2, "big")
    elif op == 4 and len(b) > 250:
        b[248:250] = rng.randbytes(2) if rng.random() < 0.5 else rng.choice("JIY ZA\x00").encode("utf-16-le")
    elif op == 5 and b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    else:
        b += rng.randbytes(rng.randint(0, 8))
    return bytes(b)


def run(n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    cards = [FakeCard.resident(), FakeCard.permit_hmt(), FakeCard.foreign(), FakeCard.resident(valid_to=None)]
    frames = [P.encode_reply(P.SW3.OK, c.base_payload()) for c in cards]
    frames += [P.encode_reply(P.SW3.FOUND, b"\0" * 4), P.encode_reply(P.SW3.OK, b"\1" * 8),
               P.encode_reply(P.SW3.FIND_FAILED), P.encode_command(P.Cmd.READ_BASE)]
    texts = [c.text for c in cards]
    stats = {"inputs": 0, "frame_inputs": 0, "record_inputs": 0, "payload_inputs": 0, "ok": 0,
             "typed_errors": 0, "crashes": 0, "max_input_ms": 0.0}
    crash_examples: list[str] = []
    stream = P.FrameParser()
    stream_frames = 0
    t_start = time.perf_counter()
    for i in range(n):
        kind = i % 3
        t0 = time.perf_counter()
        try:
            if kind == 0:
                stats["frame_inputs"] += 1
                r = rng.random()
                data = rng.randbytes(rng.randint(0, 1400)) if r < 0.2 else _mutate(rng, rng.choice(frames))
                try:
                    P.decode_reply(data)
                    stats["ok"] += 1
                except P.FrameError:
                    stats["typed_errors"] += 1
                pos = 0
                while pos < len(data):
                    step = rng.randint(1, 700)
                    for fr in stream.feed(data[pos:pos + step]):
                        P.decode_reply(fr)          # must be valid, else this raises -> crash
                        stream_frames += 1
                    pos += step
                    if stream.pending() > P.HEADER_LEN + P.MAX_FRAME_LEN + 700:
                        raise AssertionError("parser buffer unbounded")
            elif kind == 1:
                stats["record_inputs"] += 1
                data = rng.randbytes(rng.choice((256, 256, rng.randint(0, 300)))) if rng.random() < 0.3 \
                    else _mutate(rng, rng.choice(texts))
                try:
                    rec = parse_text(data)
                    rec.number_valid(), rec.expired(0), rec.valid_to, repr(rec)
                    stats["ok"] += 1
                except CardError as e:
                    if e.reason not in ("card_read_failed", "unsupported_card_type"):
                        raise AssertionError("unexpected reason") from None
                    stats["typed_errors"] += 1
            else:
                stats["payload_inputs"] += 1
                base = rng.choice(cards).base_payload(with_fp := rng.random() < 0.3)
                data = _mutate(rng, base) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 1400))
                try:
                    text, _, _ = split_base_payload(data, with_fp)
                    parse_text(text)
                    stats["ok"] += 1
                except CardError as e:
                    if e.reason not in ("card_read_failed", "unsupported_card_type"):
                        raise AssertionError("unexpected reason") from None
                    stats["typed_errors"] += 1
        except Exception as e:   # noqa: BLE001 - that is what we are counting
            stats["crashes"] += 1
            if len(crash_examples) < 5:
                crash_examples.append(f"input {i}: {type(e).__name__}")
        stats["inputs"] += 1
        stats["max_input_ms"] = max(stats["max_input_ms"], (time.perf_counter() - t0) * 1000)
    stats["stream_frames_recovered"] = stream_frames
    stats["stream_dropped_bytes"] = stream.dropped_bytes
    stats["seconds"] = round(time.perf_counter() - t_start, 2)
    stats["max_input_ms"] = round(stats["max_input_ms"], 2)
    stats["seed"] = seed
    if crash_examples:
        stats["crash_examples"] = crash_examples
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kyc_tools.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = run(a.inputs, a.seed)
    print(json.dumps(res))
    return 1 if res["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
