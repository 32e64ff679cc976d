"""Run `kyc-edge run` as a real subprocess against real parts: mosquitto, the pty card-reader
simulator and the replay camera, with a NOTIFY_SOCKET the test owns."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from device.demo import write_config  # noqa: F401  (re-exported for tests)
from device.notify import NotifyListener

REPO = Path(__file__).resolve().parents[1]


def daemon_config(tmp: Path, *, broker_url: str, reader_port: str, video: str, model_dir: Path,
                  challenges=("blink",), extra: dict | None = None) -> dict:
    cfg = {
        "device": {"id": "counter-e2e", "site": "shop-test", "state_dir": str(tmp / "state")},
        "camera": {"backend": "replay", "stall_s": 2.0, "lost_s": 5.0},
        "camera.replay": {"path": video, "pace": "realtime", "loop": True},
        "reader": {"port": reader_port, "poll_s": 0.1, "photo_decoder": "auto"},
        "models": {"dir": str(model_dir)},
        "liveness": {"challenges": list(challenges), "count": len(challenges), "challenge_timeout_s": 8.0},
        "session": {"capture_timeout_s": 30.0},
        "mqtt": {"url": broker_url, "connect_timeout_s": 5.0},
        "log": {"level": "info", "target": "stderr"},
        # nobody at the counter to agree: consent (on by default) is off unless a test asks for it
        "consent": {"required": False},
    }
    for k, v in (extra or {}).items():
        cfg.setdefault(k, {}).update(v)
    return cfg


NotifySocket = NotifyListener   # the systemd side of sd_notify


class Subscriber:
    """A wildcard MQTT subscriber that records every (topic, payload, properties)."""

    def __init__(self, broker_url: str, topic: str = "#"):
        host, port = broker_url.split("://", 1)[1].rsplit(":", 1)
        self.messages: list[tuple[str, bytes, object]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.properties))
        self._ready = threading.Event()
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self._ready.wait(10), "subscriber did not subscribe"

    def verdicts(self) -> list[dict]:
        out = []
        for topic, payload, _ in list(self.messages):
            if topic.endswith("/verdict"):
                out.append(json.loads(payload))
        return out

    def wait_verdicts(self, n: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.verdicts()
            if len(v) >= n:
                return v
            time.sleep(0.1)
        return self.verdicts()

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def start_daemon(config_path: Path, notify: NotifySocket | None, *, watchdog_usec: int = 2_000_000,
                 log_path: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                                            "INVOCATION_ID", "JOURNAL_STREAM")}
    env["PYTHONFAULTHANDLER"] = "1"     # a daemon that will not stop dumps its threads on SIGABRT (stop_daemon)
    if notify:
        env["NOTIFY_SOCKET"] = notify.path
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(config_path)],
                            cwd=REPO, env=env, stdout=log, stderr=log)


def stop_daemon(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # where it hangs goes to its log: faulthandler prints every thread's stack on SIGABRT
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return -9
    return proc.returncode
