"""pyserial URL handler `kycsim://`: the in-process card-reader twin behind `reader.port`.

    reader.port = "kycsim://resident"                       # a fabricated resident card on the reader
    reader.port = "kycsim://permit_hmt?valid_to=20200101"   # any registered type (records.CARD_TYPES)
    reader.port = "kycsim://none"                           # the reader, no card yet
    reader.port = "kycsim://unsupported?faults=slow:2.5"    # an unknown type mark; Fault.parse specs

Query keys: `photo` (an image file, made a chip photo), `valid_to` (YYYYMMDD or `long`), `seed`,
`faults` (comma-separated Fault.parse specs), `pace=1` (replies at the module's baud).

Like `loop://`, the URL is all the configuration: pyserial imports this module by the scheme
(device/cardreader/reader.py adds this package to serial.protocol_handler_packages), the twin
(device/cardreader/simulator.py, serving a real pty) starts at the first open of that URL and the
same twin answers every later open (the reader's reconnects), so `twin(url)` lets a test or the demo
insert and remove cards. Everything it serves is fabricated.
"""
from __future__ import annotations

import atexit
import threading
from urllib.parse import parse_qs, urlsplit

import serial

_TWINS: dict[str, object] = {}
_LOCK = threading.Lock()


def _card(kind: str, q: dict):
    from device.cardreader import records
    from device.cardreader.simulator import FakeCard
    photo = None
    if q.get("photo"):
        from device.cardreader.commands import _photo_from
        photo = _photo_from(q["photo"])
    if kind in ("", "none"):
        return None
    if kind == "unsupported":
        return FakeCard.unsupported(photo_bytes=photo)
    if kind not in records.CARD_TYPES:
        raise ValueError(f"kycsim: unknown card type {kind!r}; known: none, unsupported, "
                         + ", ".join(records.CARD_TYPES))
    kw = {"photo_bytes": photo}
    if "valid_to" in q:
        kw["valid_to"] = None if q["valid_to"] in ("long", "长期") else q["valid_to"]
    if "seed" in q:
        kw["seed"] = int(q["seed"])
    maker = getattr(FakeCard, kind, None)
    return maker(**kw) if maker else FakeCard.of(kind, **kw)


def parse(url: str):
    """kycsim URL -> (card or None, faults, pace). ValueError on anything unknown."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kycsim":
        raise ValueError("expected a kycsim:// URL")
    q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(q) - {"photo", "valid_to", "seed", "faults", "pace"}
    if unknown:
        raise ValueError(f"kycsim: unknown option(s) {', '.join(sorted(unknown))}")
    kind = (parts.netloc + parts.path).strip("/")
    faults = [f for f in q.get("faults", "").split(",") if f]
    return _card(kind, q), faults, q.get("pace", "") in ("1", "true", "yes")


def twin(url: str):
    """The running twin for this URL (started at the first call)."""
    with _LOCK:
        sim = _TWINS.get(url)
        if sim is None:
            from device.cardreader.simulator import Fault, Simulator
            card, faults, pace = parse(url)
            sim = Simulator(card, faults=[Fault.parse(f) for f in faults], pace=pace)
            sim.start_pty()
            _TWINS[url] = sim
        return sim


def shutdown() -> None:
    with _LOCK:
        sims = list(_TWINS.values())
        _TWINS.clear()
    for s in sims:
        s.stop()


atexit.register(shutdown)


def serial_class_for_url(url: str):
    """pyserial's hook: open the twin's pty with the ordinary POSIX serial class."""
    try:
        return twin(url).port, serial.Serial
    except ValueError as e:
        raise serial.SerialException(str(e)) from None
