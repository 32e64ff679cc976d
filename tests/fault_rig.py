"""A daemon subprocess on real parts (mosquitto, pty card-reader simulator, replay camera, real
models) for the issue-20 fault tests: start, stop, restart, drive sessions, read events/status."""
from __future__ import annotations

import json
import time
from pathlib import Path

from device.cardreader.simulator import FakeCard, Simulator
from tests.brokers import Sub
from tests.daemon_harness import NotifySocket, daemon_config, start_daemon, stop_daemon, write_config
from tests.faces import BLINK_VIDEO, chip_jpeg, genuine_photo

BASE = "kyc/v1/shop-test/counter-e2e"


class Rig:
    def __init__(self, tmp: Path, broker, shared_data: Path, model_dir: Path, *, extra: dict | None = None,
                 state_dir: Path | None = None):
        self.tmp, self.broker, self.shared_data = tmp, broker, shared_data
        self.sim = Simulator(card=None)
        port = self.sim.start_pty()
        self.cfg = daemon_config(tmp, broker_url=broker.url, reader_port=port,
                                 video=str(shared_data / BLINK_VIDEO), model_dir=model_dir, extra=extra)
        if state_dir is not None:
            self.cfg["device"]["state_dir"] = str(state_dir)
        self.state = Path(self.cfg["device"]["state_dir"])
        self.cfg_path = write_config(tmp / "config.toml", self.cfg)
        self.sub = Sub(broker.url, "kyc/#")
        self.log = tmp / "daemon.log"
        self.proc = self.notify = None
        self._n = 0

    # ------------------------------------------------------------ lifecycle
    def start(self, wait_ready: bool = True):
        self._n += 1
        self.notify = NotifySocket(self.tmp / f"notify{self._n}.sock")
        self.proc = start_daemon(self.cfg_path, self.notify, log_path=self.log)
        if wait_ready:
            t = self.notify.first("READY=1", 60, alive=lambda: self.proc.poll() is None)
            assert t is not None, "no READY=1; log:\n" + self.log_text()[-3000:]
        return self

    def stop(self) -> int:
        rc = stop_daemon(self.proc) if self.proc is not None else 0
        if self.notify is not None:
            self.notify.close()
        return rc

    def close(self) -> None:
        self.stop()
        self.sub.close()
        self.sim.stop()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # ------------------------------------------------------------ observations
    def events(self) -> list[dict]:
        return [json.loads(p) for t, p, *_ in self.sub.on("/session")]

    def verdicts(self) -> list[tuple[dict, object]]:
        return [(json.loads(p), props) for t, p, props, *_ in self.sub.on("/verdict")]

    def status(self) -> dict:
        st = [json.loads(p) for t, p, *_ in self.sub.on(BASE + "/status") if p]
        return st[-1] if st else {}

    def wait(self, pred, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        assert pred(), f"timed out waiting for {what}; daemon rc={self.proc.poll() if self.proc else None}; " \
                       "log:\n" + self.log_text()[-3000:]

    def refused(self, reason: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == "refused" and e.get("reason") == reason)

    # ------------------------------------------------------------ sessions
    def insert(self, photo=None) -> None:
        rgb = genuine_photo(self.shared_data) if photo is None else photo
        self.sim.insert(FakeCard.resident(photo_bytes=chip_jpeg(rgb)))

    def session(self, timeout: float = 60.0, during=None, exclude: set | frozenset = frozenset()) -> dict:
        """Insert a genuine card, optionally run `during()` once the session has started, wait for
        the verdict on MQTT, remove the card. Returns (signed payload, properties). Verdicts whose
        id is in `exclude` (older rows still draining from the outbox) are not this session's."""
        def fresh():
            return [v for v in self.verdicts()[before:] if v[0]["verdict"]["verdict_id"] not in exclude]
        before = len(self.verdicts())
        self.insert()
        if during is not None:
            self.wait(lambda: sum(e.get("event") == "card_detected" for e in self.events()) > self._sessions_seen(),
                      30, "the session to start")
            during()
        self.wait(lambda: bool(fresh()), timeout, "a verdict")
        self.sim.remove()
        time.sleep(0.4)     # the daemon sees the card removed before the next one goes in
        return fresh()[0]

    def _sessions_seen(self) -> int:
        return len(self.verdicts())

    def publish(self, name: str, payload: dict | None = None, *, retain: bool = False, **props) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        p = None
        if props:
            p = Properties(PacketTypes.PUBLISH)
            for k, v in props.items():
                setattr(p, k, v)
        self.sub.publish(f"{BASE}/cmd/{name}", json.dumps(payload or {}), qos=1, retain=retain, properties=p)
