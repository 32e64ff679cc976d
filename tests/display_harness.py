"""Headless Chromium (Debian's chromium + chromium-driver, driven by selenium; nothing is downloaded)
on the display page, and the display process as a real subprocess."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=zh-CN")


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(browser).exists() and Path(driver).exists()):
        missing("chromium / chromium-driver not installed (scripts/setup: apt-get install chromium chromium-driver)")
    return browser, driver


def browser(tmp: Path, size=(800, 480)):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium not installed (setup.cfg test extra)")
    exe, driver = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for f in CHROMIUM_FLAGS:
        opts.add_argument(f)
    prof = tmp / f"chromium-profile-{time.monotonic_ns()}"
    opts.add_argument(f"--user-data-dir={prof}")
    opts.add_argument(f"--window-size={size[0]},{size[1]}")
    svc = Service(executable_path=driver, log_output=str(tmp / "chromedriver.log"))
    d = webdriver.Chrome(service=svc, options=opts)
    set_size(d, size)
    return d


def set_size(d, size) -> None:
    """Viewport exactly size (the window's chrome is zero in headless, but make sure)."""
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})


def start_display(config_path: Path, port: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "display", "serve", "--config", str(config_path),
                             "--port", str(port)], cwd=REPO, stdout=log, stderr=log,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/settings.json", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    raise RuntimeError("display did not start: " + log_path.read_text()[-2000:])


def kyc(d) -> dict:
    return d.execute_script("return JSON.parse(JSON.stringify(window.__kyc || {}))")


def wait_js(d, cond: str, timeout: float, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = d.execute_script("try { return " + cond + " } catch (e) { return null }")
        if v:
            return v
        time.sleep(0.05)
    k = kyc(d)
    k.pop("ring", None)
    text = d.execute_script("return document.querySelector('main').innerText")
    raise AssertionError(f"timed out waiting for {what or cond}; page state: {json.dumps(k)[:1500]}; "
                         f"main text: {text!r}")


def screenshot(d, path: Path, size) -> Path:
    set_size(d, size)
    time.sleep(0.15)
    d.save_screenshot(str(path))
    return path


def subsequence(want: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(any(g == w for g in it) for w in want)


def assert_spoken_without_overlap(k: dict) -> list[dict]:
    """Each clip the page played ended (or was cut) before the next one started; returns the clips heard."""
    heard = sorted((c for c in k.get("audio", []) if c.get("start")), key=lambda c: c["start"])
    assert heard, f"no prompt was played at all: {k.get('audio')}"
    for a, b in zip(heard, heard[1:]):
        assert a["end"] and a["end"] <= b["start"], f"{a['key']} still playing when {b['key']} started"
    return heard
