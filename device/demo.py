"""`kyc-edge demo`: the whole flow on one machine, with every hardware edge replaced by its twin.

mosquitto on a free loopback port (unless the config names a broker) -> the card-reader simulator on
a pty, serving a fabricated card with the given photo -> the replay camera on the given video ->
`kyc-edge run` as a subprocess -> a subscriber that prints each verdict it receives.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from device import config as config_mod
from device.localbroker import LocalBroker

REPO = Path(__file__).resolve().parents[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(path: Path, sections: dict) -> Path:
    """{"camera.replay": {...}, ...} -> a TOML file (dotted section names become [a.b])."""
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class VerdictSubscriber:
    """Subscribes to every device's verdict topic under the prefix; keeps the signed payloads."""

    def __init__(self, broker_url: str, topic: str):
        import paho.mqtt.client as mqtt
        host, port = broker_url.split("://", 1)[1].rsplit(":", 1)
        self.payloads: list[dict] = []
        self._ok = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._ok.set()
        self.client.on_message = lambda c, u, m: self.payloads.append(json.loads(m.payload))
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._ok.wait(10):
            raise RuntimeError("could not subscribe to the broker")

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.payloads) < n:
            time.sleep(0.1)
        return len(self.payloads) >= n

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_demo(args) -> int:
    import cv2

    from device.cardreader.photo import card_photo_jpeg
    from device.cardreader.simulator import FakeCard, Simulator

    base = config_mod.load(args.config) if args.config else None
    img = cv2.imread(args.card_photo, cv2.IMREAD_COLOR)
    if img is None:
        print(f"demo: cannot read --card-photo {args.card_photo}", file=sys.stderr)
        return 2
    if not Path(args.video).exists():
        print(f"demo: --video {args.video}: no such file or folder", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kyc-demo-"))
    broker = None
    sim = proc = sub = None
    try:
        if base is not None:
            url = base.mqtt.url
        else:
            broker = LocalBroker(work).start()
            url = broker.url
            print(f"demo: started mosquitto at {url}", file=sys.stderr)
        sim = Simulator(card=None)
        port = sim.start_pty()
        from device.models import find_model_dir
        model_dir = str(find_model_dir(configured=base and base.models.dir))
        device_id, site, prefix = ("demo-counter", "demo-shop", "kyc/v1") if base is None else \
            (base.device.id, base.device.site, base.mqtt.prefix)
        cfg_path = write_config(work / "config.toml", {
            "device": {"id": device_id, "site": site, "state_dir": str(work / "state")},
            "camera": {"backend": "replay"},
            "camera.replay": {"path": str(Path(args.video).resolve()), "pace": "realtime", "loop": True},
            "reader": {"port": port, "poll_s": 0.1},
            "models": {"dir": str(model_dir)},
            "liveness": {"challenges": ["blink"], "count": 1},
            "mqtt": {"url": url, "prefix": prefix},
            "log": {"level": "warning", "target": "stderr"},
        })
        sub = VerdictSubscriber(url, f"{prefix}/+/+/verdict")
        proc = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg_path)])
        photo = card_photo_jpeg(img[:, :, ::-1].copy())
        deadline = time.monotonic() + args.timeout
        for i in range(args.sessions):
            sim.insert(FakeCard.resident(photo_bytes=photo))
            print(f"demo: card {i + 1} on the reader; look at the camera and blink", file=sys.stderr)
            if not sub.wait(i + 1, max(0.0, deadline - time.monotonic())):
                print("demo: no verdict before the timeout", file=sys.stderr)
                return 1
            print(json.dumps(sub.payloads[i], indent=2), flush=True)
            sim.remove()
            time.sleep(0.5)
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for closer in (sub, sim):
            if closer is not None:
                try:
                    (closer.close if hasattr(closer, "close") else closer.stop)()
                except Exception:  # noqa: BLE001
                    pass
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
