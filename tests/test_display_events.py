"""The display's event stream: one closed schema (device.link.events.SESSION_EVENT_SCHEMA), enforced
by the display server itself, so no image, name, number or free text can reach the page; the consent
box takes only a current, versioned answer; the session's consent step analyses nothing before it."""
from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest

from device import config as C
from device.display.consent import ConsentBox
from device.display.server import DisplayServer
from device.link.events import SESSION_EVENT_SCHEMA

SID = "0b5e6a3c-1d2e-4f00-8a9b-0123456789ab"


def _strings(schema: dict):
    for name, prop in schema["properties"].items():
        yield name, prop


def test_schema_is_closed_and_has_no_free_text_field():
    assert SESSION_EVENT_SCHEMA["additionalProperties"] is False
    for name, prop in _strings(SESSION_EVENT_SCHEMA):
        assert prop.get("type") != "object" and prop.get("type") != "array", name
        if prop.get("type") == "string":
            pat = prop.get("pattern", "")
            assert pat, f"{name}: a string without a pattern would be free text"
            assert " " not in pat and "\\s" not in pat and ".*" not in pat.replace("(?!.*", ""), name
        elif "enum" not in prop:
            assert prop.get("type") in ("integer", "number", "boolean"), name


@pytest.fixture
def display(tmp_path):
    cfg = C.replace(C.from_dict({}), **{"display.socket": str(tmp_path / "d.sock"), "display.port": 0,
                                        "device.state_dir": str(tmp_path)})
    srv = DisplayServer(cfg).start()
    yield srv
    srv.stop()


def _daemon_side(srv) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.daemon_sock.path)
    deadline = time.monotonic() + 5
    while not srv.daemon_sock.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    return s


class SSE:
    def __init__(self, url: str):
        host, port = url.split("//")[1].rstrip("/").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.conn.request("GET", "/events")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        assert self.resp.getheader("Content-Type").startswith("text/event-stream")
        self.got: list[dict] = []
        self.raw: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for line in self.resp:
                self.raw.append(line)
                if line.startswith(b"data: "):
                    self.got.append(json.loads(line[6:]))
        except Exception:  # noqa: BLE001 - closed at the end
            pass

    def wait(self, n: int, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.got


def test_only_schema_events_pass_through_the_display(display):
    sse = SSE(display.url)
    time.sleep(0.2)
    d = _daemon_side(display)
    photo = base64.b64encode(np.random.default_rng(0).integers(0, 255, 2000, np.uint8).tobytes()).decode()
    bad = [
        {"event": "challenge", "prompt": "blink", "image": photo},                 # an image field
        {"event": "challenge", "prompt": "blink", "frame": [[1, 2, 3]]},
        {"event": "card_read", "name": "张三"},                                    # a name
        {"event": "card_read", "state": "110101199003077777"},                    # an ID number
        {"event": "hint", "prompt": "please look at me, Mr Zhang"},                # free text
        {"event": "consent", "notice_version": "v 1 with spaces"},
        {"event": "consent", "notice_version": "110101199003077777"},
        {"event": "verdict", "result": "pass", "reason": "face_mismatch", "scores": {"similarity": 0.9}},
        {"event": "no_such_event"},
        "just a string",
    ]
    good = [
        {"event": "card_detected", "session_id": SID},
        {"event": "consent", "prompt": "consent", "notice_version": "notice-2025-06", "deadline_s": 60,
         "guardian_required": False, "session_id": SID},
        {"event": "challenge", "prompt": "blink", "challenge": "blink", "step": 1, "of": 1, "deadline_s": 8.0,
         "session_id": SID},
        {"event": "hint", "prompt": "take_off_mask", "session_id": SID},
        {"event": "hint", "prompt": "one_face_only", "state": "cleared", "session_id": SID},   # the other face left
        {"event": "verdict", "result": "fail", "reason": "face_covered", "verdict_id": SID, "session_id": SID},
    ]
    lines = [json.dumps(x, ensure_ascii=False).encode() for x in bad] + [b"{not json", b"x" * 5000]
    for g, b in zip(good, lines[: len(good)]):
        d.sendall(b + b"\n" + json.dumps(g).encode() + b"\n")
    for b in lines[len(good):]:
        d.sendall(b + b"\n")
    got = sse.wait(len(good))
    time.sleep(0.3)
    got = sse.got
    assert [e["event"] for e in got] == [g["event"] for g in good]
    for e, g in zip(got, good):
        assert {k: v for k, v in e.items() if k != "at"} == g
    blob = b"".join(sse.raw)
    for needle in (photo[:40].encode(), "张三".encode(), b"\\u5f20", b"110101199003077777", b"Mr Zhang",
                   b"scores", b"image", b"frame"):
        assert needle not in blob, needle
    assert display.hub.rejected == len(lines)
    d.close()


def test_a_page_that_connects_mid_session_gets_the_current_screen(display):
    d = _daemon_side(display)
    d.sendall(json.dumps({"event": "card_detected", "session_id": SID}).encode() + b"\n" +
              json.dumps({"event": "challenge", "prompt": "turn_left", "step": 1, "of": 2, "deadline_s": 8,
                          "session_id": SID}).encode() + b"\n")
    deadline = time.monotonic() + 5
    while display.hub.accepted < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    sse = SSE(display.url)
    assert [e["event"] for e in sse.wait(2)] == ["card_detected", "challenge"]
    d.close()


def test_consent_post_goes_to_the_daemon_with_the_notice_version(display):
    d = _daemon_side(display)
    d.sendall(json.dumps({"event": "card_detected", "session_id": SID}).encode() + b"\n")
    time.sleep(0.2)
    host, port = display.url.split("//")[1].rstrip("/").split(":")
    for answer, code in (("agree", 200), ("because I say so", 400)):
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        c.request("POST", "/consent", json.dumps({"answer": answer}), {"Content-Type": "application/json"})
        assert c.getresponse().status == code
    d.settimeout(5)
    msg = json.loads(d.makefile("rb").readline())
    assert msg == {"answer": "agree", "notice_version": "notice-2025-06", "session_id": SID}
    d.close()


def test_consent_box_takes_only_a_current_versioned_answer():
    box = ConsentBox()
    assert not box.offer("agree", "operator", "v1")            # nobody waits: a stale answer is dropped
    out = {}
    th = threading.Thread(target=lambda: out.update(r=box.wait("s1", "v1", 5.0)))
    th.start()
    time.sleep(0.1)
    assert not box.offer("agree", "operator", "v0")            # another notice version
    assert not box.offer("agree", "display", "v1", session_id="s2")   # another session
    assert not box.offer("maybe", "display", "v1")
    assert box.offer("decline", "display", "v1")
    th.join(5)
    assert out["r"] == ("decline", "display")
    assert not box.offer("agree", "display", "v1")             # the session stopped waiting
    t0 = time.monotonic()
    assert box.wait("s3", "v1", 0.3) == (None, None)
    assert 0.25 < time.monotonic() - t0 < 2


# ---------------------------------------------------------------- the session's consent step
class NoFrames:
    """A camera that proves it was never read (camera hardware may be stood in for)."""
    reads = 0
    eof = False

    def read(self, timeout):
        NoFrames.reads += 1
        raise AssertionError("a frame was read before consent")


class NoVision:
    versions = {"detector": "x"}
    touched: list = []

    def __getattr__(self, name):
        if name == "reset":
            return lambda: None
        NoVision.touched.append(name)
        raise AssertionError(f"vision.{name} used before consent")


def _card(birth="19900101"):
    from device.cardreader.reader import CardRead
    from device.cardreader.records import parse_text
    from device.cardreader.simulator import FakeCard
    return CardRead(record=parse_text(FakeCard.resident(birth=birth).text), photo=np.full((126, 102, 3), 99, np.uint8))


@pytest.mark.parametrize("answer, channel, reason", [
    ("decline", "display", "consent_declined"), ("alternative", "display", "manual_review"),
    (None, None, "consent_timeout")])
def test_no_consent_ends_the_session_before_any_face_is_looked_at(answer, channel, reason):
    from device.session import Session
    cfg = C.from_dict({"consent": {"required": True, "timeout_s": 1}})
    events, out, asked = [], [], []

    def consent(session_id, version, timeout_s, poll):
        poll()
        asked.append((session_id, version, timeout_s))
        return answer, channel
    card = _card()
    photo = card.photo
    v = Session(cfg, reader=None, camera=NoFrames(), vision=NoVision(), sink=out.append, events=events.append,
                consent=consent).run(card=card)
    assert v["result"] == "fail" and v["reasons"] == [reason]
    assert v["schema_version"] == "2"
    assert v["consent"] == {"given": False, "channel": channel, "notice_version": "notice-2025-06",
                            "guardian_required": False}
    assert v["scores"]["similarity"] is None and v["scores"]["liveness"] is None
    assert NoFrames.reads == 0 and NoVision.touched == []
    assert not photo.any(), "the card photo is wiped even when the session ends at consent"
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["card_detected", "card_read", "consent"] and "capturing" not in kinds
    assert asked == [(v["verdict_id"], "notice-2025-06", 1.0)]
    from device.link.events import session_event
    for e in events:
        session_event(e)          # what the daemon publishes and the display shows: schema-valid
    assert out == [v]


def test_under_14_needs_a_guardian_computed_on_the_device():
    from device.session import Session
    cfg = C.from_dict({"consent": {"required": True}})
    today = dt.date.today()
    young = f"{today.year - 10}{today.month:02d}{min(today.day, 28):02d}"
    events = []
    for birth, want in ((young, True), ("19900101", False)):
        v = Session(cfg, reader=None, camera=NoFrames(), vision=NoVision(), sink=lambda v: None,
                    events=events.append, consent=lambda *a: ("decline", "operator")).run(card=_card(birth))
        assert v["consent"]["guardian_required"] is want
        assert v["consent"]["channel"] == "operator"
        ev = [e for e in events if e["event"] == "consent"][-1]
        assert ev["guardian_required"] is want
        assert young not in json.dumps(v) and young not in json.dumps(events)
