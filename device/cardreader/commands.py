"""`kyc-edge cardreader simulate`: the simulated reader on a pty, as a box verb.

device/cli.py calls `register(subparsers)` (its _REGISTRARS list). The card-reader bench
(`kyc-edge bench cardreader`) is a workstation tool and lives in kyc_tools/bench/cardreader.py.

Also runnable alone: `python -m device.cardreader.commands simulate --pty ...`.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from device.cardreader import protocol as P
from device.cardreader import records
from device.cardreader.simulator import FAULT_KINDS, FakeCard, Fault, Simulator

CARD_TYPES = (*records.CARD_TYPES, "unsupported")     # every registered type, and an unknown mark


def _make_card(kind: str, photo_bytes: bytes | None, valid_to: str | None) -> FakeCard:
    if kind == "unsupported":
        return FakeCard.unsupported(photo_bytes=photo_bytes)
    kw = {"photo_bytes": photo_bytes}
    if valid_to is not None:
        kw["valid_to"] = None if valid_to in ("long", "长期") else valid_to
    maker = getattr(FakeCard, kind, None)     # the built-ins keep their own defaults
    return maker(**kw) if maker else FakeCard.of(kind, **kw)


def _photo_from(path: str | None) -> bytes | None:
    if not path:
        return None
    import cv2
    from device.cardreader.photo import card_photo_jpeg
    bgr = cv2.imread(path)
    if bgr is None:
        raise SystemExit(f"cardreader simulate: cannot read image {path}")
    return card_photo_jpeg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cardreader", help="ID-card reader tools (simulator)")
    sp = p.add_subparsers(dest="cardreader_cmd", required=True)
    _add_simulate(sp)
    return p


def _add_simulate(sp) -> None:
    s = sp.add_parser("simulate", help="serve a simulated GA 467 SAM reader on a pty",
                      description="Prints {\"port\": ...} as JSON, then serves until SIGINT/SIGTERM. "
                                  "Reads commands from stdin, one per line: insert [TYPE] | remove | "
                                  "unplug | plug | fault SPEC | quit.")
    s.add_argument("--pty", action="store_true", required=True, help="serve on a new pty (the only transport)")
    s.add_argument("--photo", metavar="IMG", help="face image to fabricate the card photo from (JPEG <= 1,024 B)")
    s.add_argument("--type", choices=CARD_TYPES, default="resident", help="fabricated card type")
    s.add_argument("--valid-to", metavar="YYYYMMDD|long", help="card expiry (default: a future date)")
    s.add_argument("--no-card", action="store_true", help="start with the reader empty")
    s.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help=f"kind[:seconds][@CMDHEX][xTIMES|x*]; kinds: {', '.join(FAULT_KINDS)}")
    s.add_argument("--baud", type=int, default=115200, choices=sorted(P.BAUD_COMMANDS), help="module power-on baud")
    s.add_argument("--pace", action="store_true", help="pace replies at the module baud")
    s.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0 = run until signalled)")
    s.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    photo = _photo_from(args.photo)
    card = None if args.no_card else _make_card(args.type, photo, args.valid_to)
    try:
        faults = [Fault.parse(f) for f in args.fault]
    except ValueError as e:
        print(f"cardreader simulate: {e}", file=sys.stderr)
        return 2
    sim = Simulator(card, faults=faults, baud=args.baud, pace=args.pace)
    port = sim.start_pty()
    print(json.dumps({"port": port, "pts": sim.pts, "card": card.card_type if card else None}), flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, lambda *_: done.set())
        except ValueError:      # not the main thread
            pass

    def control():
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            cmd = words[0]
            try:
                if cmd == "insert":
                    sim.insert(_make_card(words[1] if len(words) > 1 else args.type, photo, args.valid_to))
                elif cmd == "remove":
                    sim.remove()
                elif cmd == "unplug":
                    sim.unplug()
                elif cmd == "plug":
                    sim.plug()
                elif cmd == "fault" and len(words) > 1:
                    sim.add_fault(words[1])
                elif cmd == "quit":
                    done.set()
                    return
                else:
                    print(f"unknown: {cmd}", file=sys.stderr)
                    continue
                print(json.dumps({"ok": cmd, "port": sim.port, "pts": sim.pts}), flush=True)
            except (ValueError, AttributeError, TypeError) as e:
                print(f"error: {e}", file=sys.stderr)
        # stdin closed (e.g. </dev/null): keep serving until signalled or --duration ends

    threading.Thread(target=control, daemon=True).start()
    done.wait(args.duration or None)
    sim.stop()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device.cardreader.commands")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_simulate(sub)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
