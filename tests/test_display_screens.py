"""Every screen of the customer display in a real headless Chromium, in 中文 and English, at the Pi
touchscreen's 800x480 and at 1920x1080. Events come over the display's real daemon socket.

Screenshots: <pytest tmp dir>/screens/<screen>-<lang>-<w>x<h>.png. Regenerate them with
    scripts/test-display-screens   (= pytest tests/test_display_screens.py --basetemp=/tmp/kyc-screens)
"""
from __future__ import annotations

import json
import re
import socket
import time

import pytest

from device import config as C
from device.display.server import DisplayServer
from tests.display_harness import assert_spoken_without_overlap, browser, kyc, screenshot, wait_js

SID = "5d3f2a10-9c8b-4e7d-a6f5-0e1d2c3b4a59"
SIZES = ((800, 480), (1920, 1080))
TEXTS = json.loads((C.Path(__file__).resolve().parents[1] / "device/display/static/texts.json").read_text("utf-8"))

# (name, events to send, expected body[data-screen], the text that must be on screen, key spoken)
SCRIPT = [
    ("idle", [], "idle", "idle", None),
    ("reading", [{"event": "card_detected"}, {"event": "card_read"}], "reading", "reading", None),
    ("consent", [{"event": "consent", "prompt": "consent", "notice_version": "notice-2025-06", "deadline_s": 30,
                  "guardian_required": True}], "consent", "consent_ask", "consent_ask"),
    ("look", [{"event": "consent_given", "channel": "display"}, {"event": "capturing"}], "look", "look", "look"),
    ("hint-mask", [{"event": "hint", "prompt": "take_off_mask"}], "look", "take_off_mask", "take_off_mask"),
    ("challenge-1", [{"event": "challenge", "prompt": "blink", "challenge": "blink", "step": 1, "of": 2,
                      "deadline_s": 8}], "challenge", "blink", "blink"),
    ("challenge-2", [{"event": "challenge_passed", "challenge": "blink", "step": 1, "of": 2},
                     {"event": "challenge", "prompt": "turn_left", "challenge": "turn_left", "step": 2, "of": 2,
                      "deadline_s": 8}], "challenge", "turn_left", "turn_left"),
    ("hold", [{"event": "capturing", "prompt": "hold_still"}], "hold", "hold_still", "hold_still"),
    ("deciding", [{"event": "deciding"}], "deciding", "deciding", "deciding"),
    ("result-fail", [{"event": "verdict", "result": "fail", "reason": "face_covered", "verdict_id": SID},
                     {"event": "idle"}], "result", "r_face_covered", "fail"),
    ("result-pass", [{"event": "card_detected"}, {"event": "verdict", "result": "pass", "verdict_id": SID}],
     "result", "pass", "pass"),
    ("alternative", [{"event": "card_detected"}, {"event": "verdict", "result": "fail", "reason": "manual_review",
                                                   "verdict_id": SID}], "alternative", "alt_body", "alt_title"),
]


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    from device.display.voice import render
    out = tmp_path_factory.mktemp("voice")
    try:
        render(out)
    except RuntimeError as e:
        from tests.conftest import missing
        missing(str(e))
    return out


@pytest.fixture
def page(tmp_path, voices):
    cfg = C.replace(C.from_dict({}), **{"display.socket": str(tmp_path / "d.sock"), "display.port": 0,
                                        "display.voice_dir": str(voices), "display.result_hold_s": 60.0})
    srv = DisplayServer(cfg).start()
    d = browser(tmp_path)
    d.get(srv.url)
    wait_js(d, "window.__kyc.ready && window.__kyc.connected", 20, "page ready")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.daemon_sock.path)
    yield d, s, srv, tmp_path
    s.close()
    d.quit()
    srv.stop()


def _send(s, events):
    for e in events:
        s.sendall(json.dumps({**e, "session_id": SID}).encode() + b"\n")


def _visible_text(d) -> str:
    return d.execute_script("""
      const s = document.querySelector('.screen:not([style*="none"])');
      return Array.from(document.querySelectorAll('main .screen, #hint, header'))
        .filter(e => e.offsetParent !== null || getComputedStyle(e).display !== 'none')
        .map(e => e.innerText).join('\\n');""")


def test_every_screen_in_both_languages_and_sizes(page):
    d, s, srv, tmp = page
    shots = tmp / "screens"
    shots.mkdir()
    seen_texts = []
    for name, events, want_screen, text_key, spoken in SCRIPT:
        before = len(kyc(d).get("spoken", []))
        _send(s, events)
        wait_js(d, f"document.body.dataset.screen === {json.dumps(want_screen)}", 10, name)
        for lang in ("zh", "en"):
            current = d.execute_script("return document.documentElement.lang")
            if current.split("-")[0] != lang:
                d.find_element("id", "lang").click()
            want = TEXTS[lang][text_key]
            wait_js(d, f"document.querySelector('main').innerText.indexOf({json.dumps(want)}) >= 0", 5,
                    f"{name} text {want!r}")
            text = _visible_text(d)
            seen_texts.append(text)
            for w, h in SIZES:
                p = screenshot(d, shots / f"{name}-{lang}-{w}x{h}.png", (w, h))
                assert p.stat().st_size > 3000
                # nothing may overflow the screen at either size (large type must still fit)
                over = d.execute_script(
                    "return document.documentElement.scrollHeight > innerHeight + 2 || "
                    "document.documentElement.scrollWidth > innerWidth + 2")
                assert not over, f"{name} {lang} overflows at {w}x{h}"
            d.find_element("id", "lang").click() if lang == "zh" else None
        screenshot(d, shots / f"{name}-back.png", SIZES[0])
        if spoken:
            k = kyc(d)
            keys = [x["key"] for x in k["spoken"][before:]]
            assert spoken in keys, (name, keys)
    k = kyc(d)
    heard = assert_spoken_without_overlap(k)
    assert {"consent_ask", "blink", "take_off_mask"} <= {c["key"] for c in heard}
    # the prompts are spoken once each, as they appear, in order
    keys = [x["key"] for x in k["spoken"]]
    assert keys.index("consent_ask") < keys.index("look") < keys.index("take_off_mask") < keys.index("blink") \
        < keys.index("turn_left") < keys.index("hold_still") < keys.index("deciding") < keys.index("fail")
    assert keys.count("blink") == 1
    # step k of n, guardian line, countdown ring
    # no face, frame, name or ID number: no image/video/canvas element at all, no long digit runs
    assert d.execute_script("return document.querySelectorAll('img, video, canvas, object, embed, iframe').length") == 0
    for t in seen_texts:
        assert not re.search(r"\d{6,}", t), t
    assert len(list(shots.glob("*-800x480.png"))) == 2 * len(SCRIPT)
    assert len(list(shots.glob("*-1920x1080.png"))) == 2 * len(SCRIPT)


def test_countdown_ring_moves_and_steps_are_shown(page):
    d, s, srv, tmp = page
    _send(s, [{"event": "card_detected"},
              {"event": "challenge", "prompt": "nod", "challenge": "nod", "step": 2, "of": 3, "deadline_s": 5}])
    wait_js(d, "document.body.dataset.screen === 'challenge'", 10)
    a = float(wait_js(d, "document.getElementById('ring-challenge').dataset.left", 5))
    time.sleep(1.2)
    b = float(d.execute_script("return document.getElementById('ring-challenge').dataset.left"))
    assert 4.0 < a <= 5.0 and a - b > 0.8, (a, b)
    assert d.find_element("id", "step").text in ("第 2 步，共 3 步", "Step 2 of 3")
    assert "SVG" in d.execute_script("return document.getElementById('challenge-pict').firstChild.tagName").upper()


def test_voice_switch_off_plays_nothing(tmp_path, voices):
    cfg = C.replace(C.from_dict({}), **{"display.socket": str(tmp_path / "d.sock"), "display.port": 0,
                                        "display.voice_dir": str(voices), "display.voice": False})
    srv = DisplayServer(cfg).start()
    d = browser(tmp_path)
    try:
        d.get(srv.url)
        wait_js(d, "window.__kyc.ready && window.__kyc.connected", 20)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(srv.daemon_sock.path)
        _send(s, [{"event": "card_detected"}, {"event": "challenge", "prompt": "blink", "step": 1, "of": 1,
                                                "deadline_s": 8}])
        wait_js(d, "document.body.dataset.screen === 'challenge'", 10)
        assert kyc(d)["spoken"] == []
        import urllib.request
        import urllib.error
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(srv.url + "voice/zh/blink.wav", timeout=5)
        s.close()
    finally:
        d.quit()
        srv.stop()


def test_one_face_only_hint_shows_during_a_challenge_and_clears(page):
    """A second face (device/liveness/rules.py OneFace): the hint appears over the challenge, is spoken,
    and goes when the session says the other face left (state `cleared`); the challenge stays."""
    d, s, srv, tmp = page
    _send(s, [{"event": "card_detected"},
              {"event": "challenge", "prompt": "blink", "challenge": "blink", "step": 1, "of": 2, "deadline_s": 8},
              {"event": "hint", "prompt": "one_face_only"}])
    wait_js(d, "!document.getElementById('hint').hidden", 10, "hint shown")
    assert d.execute_script("return document.body.dataset.screen") == "challenge"
    lang = d.execute_script("return document.documentElement.lang").split("-")[0]
    assert d.find_element("id", "hint-text").text == TEXTS[lang]["one_face_only"]
    screenshot(d, tmp / "one-face-only-800x480.png", SIZES[0])
    wait_js(d, "window.__kyc.spoken.some(x => x.key === 'one_face_only')", 10, "spoken")
    _send(s, [{"event": "hint", "prompt": "one_face_only", "state": "cleared"}])
    wait_js(d, "document.getElementById('hint').hidden", 10, "hint cleared")
    assert d.execute_script("return document.body.dataset.screen") == "challenge"
