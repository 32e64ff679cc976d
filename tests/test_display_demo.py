"""`kyc-edge demo` on a fresh clone: no arguments (a card photo made from the shared blink video, in
memory), a clear message naming the flags when the video is not there, and `--display` opening the
same counter flow in a browser (headless Chromium clicks "agree")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from device.localbroker import free_port
from tests.daemon_harness import REPO
from tests.display_harness import browser, wait_js


def test_demo_with_no_arguments_prints_a_passing_verdict(shared_data):
    env = {**os.environ, "KYC_EDGE_SHARED": str(shared_data.parent)}
    r = subprocess.run([sys.executable, "-m", "device.cli", "demo"], cwd=REPO, capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    v = json.loads(r.stdout)["verdict"]
    assert v["result"] == "pass" and v["device"] == "demo-counter", v
    assert "card photo made from the blink video" in r.stderr
    # consent is on by default: without --display the demo's stand-in operator agreed over cmd/consent
    assert v["consent"]["given"] is True and v["consent"]["channel"] == "operator", v["consent"]
    assert "the demo operator agrees" in r.stderr
    assert not list(REPO.glob("*.jpg")) and not list(REPO.glob("*.png")), "the demo must not save a photo"


def test_demo_without_the_shared_video_names_the_flags(tmp_path):
    env = {**os.environ, "KYC_EDGE_SHARED": str(tmp_path / "nowhere")}
    r = subprocess.run([sys.executable, "-m", "device.cli", "demo"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2
    assert "--card-photo" in r.stderr and "--video" in r.stderr and "demo_old.mp4" in r.stderr


def test_demo_display_opens_the_counter_flow(shared_data, tmp_path):
    port = free_port()
    env = {**os.environ, "KYC_EDGE_SHARED": str(shared_data.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "demo", "--display", "--display-port", str(port),
                             "--display-wait", "2", "--timeout", "90"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "demo.log", "wb"), text=True)
    d = None
    try:
        deadline = time.monotonic() + 60
        while "customer display at" not in (tmp_path / "demo.log").read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            time.sleep(0.2)
        d = browser(tmp_path)
        d.get(f"http://127.0.0.1:{port}/")
        wait_js(d, "window.__kyc.ready && window.__kyc.connected", 20)
        wait_js(d, "document.body.dataset.screen === 'consent'", 90, "consent screen")
        d.find_element("id", "btn-agree").click()
        wait_js(d, "document.body.dataset.screen === 'result'", 90, "result screen")
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, (tmp_path / "demo.log").read_text()[-3000:]
        v = json.loads(out)["verdict"]
        assert v["consent"]["given"] is True and v["consent"]["channel"] == "display"
        assert d.execute_script("return document.body.dataset.result") == v["result"] == "pass"
    finally:
        if d is not None:
            d.quit()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
