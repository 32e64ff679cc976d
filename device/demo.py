"""`kyc-edge demo`: the whole flow on one machine, with every hardware edge replaced by its twin.

mosquitto on a free loopback port (unless the config names a broker) -> the card-reader simulator on
a pty, serving a fabricated card with the given photo -> the replay camera on the given video ->
`kyc-edge run` as a subprocess -> a subscriber that prints each verdict it receives.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from device import config as config_mod
from device.localbroker import LocalBroker


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
    """Subscribes to every device's verdict topic under the prefix; keeps the signed payloads.

    `consent_for` (a device's topic base, <prefix>/<site>/<device>): the demo's stand-in operator. On
    that device's `consent` session event it answers `agree` with cmd/consent (channel `operator`, the
    notice version the event names), as a clerk would for a customer who said yes at the counter.
    """

    def __init__(self, broker_url: str, topic: str, consent_for: str | None = None):
        import paho.mqtt.client as mqtt
        host, port = broker_url.split("://", 1)[1].rsplit(":", 1)
        self.payloads: list[dict] = []
        self.consents = 0
        self._ok = threading.Event()
        self._consent_for = consent_for
        topics = [(topic, 1)] + ([(f"{consent_for}/session", 1)] if consent_for else [])
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topics)
        self.client.on_subscribe = lambda *a: self._ok.set()
        self.client.on_message = self._message
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._ok.wait(10):
            raise RuntimeError("could not subscribe to the broker")

    def _message(self, client, userdata, m) -> None:
        payload = json.loads(m.payload)
        if self._consent_for and m.topic == f"{self._consent_for}/session":
            if payload.get("event") == "consent" and payload.get("notice_version"):
                client.publish(f"{self._consent_for}/cmd/consent", json.dumps(
                    {"answer": "agree", "notice_version": payload["notice_version"],
                     "session_id": payload.get("session_id")}), qos=1)
                self.consents += 1
                print("demo: consent asked; the demo operator agrees for the customer (cmd/consent; "
                      "with --display the customer presses agree)", file=sys.stderr, flush=True)
            return
        self.payloads.append(payload)

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.payloads) < n:
            time.sleep(0.1)
        return len(self.payloads) >= n

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def shared_blink_video() -> Path:
    # a source checkout's ../shared is only the fallback; installed boxes set KYC_EDGE_SHARED
    from device.models import checkout_root
    root = checkout_root()
    shared = Path(os.environ.get("KYC_EDGE_SHARED") or (root.parent / "shared" if root else "/nonexistent"))
    return shared / "data" / "blink" / "demo_old.mp4"


def builtin_card_photo(video: Path):
    """A card photo made here, in memory, from the blink video's subject (never written anywhere):
    the largest face of frame 60, cropped head-and-shoulders like a chip photo. BGR, or None."""
    from device.camera.replay import video_frame
    rgb = video_frame(video, 60)
    if rgb is None:
        return None
    frame = np.ascontiguousarray(rgb[:, :, ::-1])
    h, w = frame.shape[:2]
    cx, cy = w // 2, h // 2
    try:
        from device import models as models_mod
        from device.vision.detect import DetectorOptions, FaceDetector
        from device.models import find_model_dir
        model_dir = find_model_dir(search=True)
        det = FaceDetector.create(DetectorOptions(str(models_mod.resolve(model_dir, "float", "short_range")["detector"])))
        faces = det.detect(np.ascontiguousarray(frame[:, :, ::-1])).faces
        if faces:
            x0, y0, x1, y1 = max(faces, key=lambda f: f.width * f.height).box
            cx, cy, fw = int((x0 + x1) / 2), int((y0 + y1) / 2), int(x1 - x0)
            half_w, half_h = int(fw * 0.9), int(fw * 1.1)
            return np.ascontiguousarray(frame[max(0, cy - half_h):cy + half_h, max(0, cx - half_w):cx + half_w])
    except Exception:  # noqa: BLE001 - no models yet: the centre crop below still makes a photo
        pass
    return np.ascontiguousarray(frame[max(0, cy - 220):cy + 220, max(0, cx - 180):cx + 180])


def run_demo(args) -> int:
    import cv2

    from device.cardreader.photo import card_photo_jpeg
    from device.cardreader.simulator import FakeCard, Simulator

    base = config_mod.load(args.config) if args.config else None
    if args.video is None or args.card_photo is None:
        blink = shared_blink_video()
        if not blink.exists():
            print(f"demo: no --card-photo/--video given, and the shared blink video is not at {blink}.\n"
                  "demo: give both: kyc-edge demo --card-photo FACE.jpg --video VIDEO.mp4 "
                  "(or set KYC_EDGE_SHARED to the folder holding data/blink/demo_old.mp4)", file=sys.stderr)
            return 2
        args.video = args.video or str(blink)
    if args.card_photo is None:
        img = builtin_card_photo(Path(args.video) if Path(args.video).is_file() else shared_blink_video())
        if img is None:
            print("demo: could not make a card photo from the video; give --card-photo FILE", file=sys.stderr)
            return 2
        print("demo: card photo made from the blink video (kept in memory only)", file=sys.stderr)
    else:
        img = cv2.imread(args.card_photo, cv2.IMREAD_COLOR)
    if img is None:
        print(f"demo: cannot read --card-photo {args.card_photo}", file=sys.stderr)
        return 2
    if not Path(args.video).exists():
        print(f"demo: --video {args.video}: no such file or folder", file=sys.stderr)
        return 2
    display = getattr(args, "display", False)
    work = Path(tempfile.mkdtemp(prefix="kyc-demo-"))
    broker = None
    sim = proc = sub = screen = None
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
            # consent is asked as on a real counter: on the display (--display), else answered by the
            # demo's stand-in operator over cmd/consent (VerdictSubscriber consent_for)
            "consent": {"required": True, "timeout_s": max(60.0, args.timeout)},
            **({"display": {"enabled": True, "socket": str(work / "display.sock"), "port": args.display_port,
                            "voice_dir": str(work / "voice")}} if display else {}),
        })
        if display:
            screen = _start_display(cfg_path, work)
        sub = VerdictSubscriber(url, f"{prefix}/+/+/verdict",
                                consent_for=None if display else f"{prefix}/{site}/{device_id}")
        # the unit's malloc settings (device/memory.py): the demo runs the daemon as systemd would
        from device.memory import daemon_env
        proc = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg_path)],
                                env=daemon_env(os.environ))
        photo = card_photo_jpeg(img[:, :, ::-1].copy())
        if screen is not None:
            print(f"demo: customer display at {screen.url} - open it in a browser (README: customer display); "
                  f"the card goes on the reader in {args.display_wait:.0f} s, then press the agree button",
                  file=sys.stderr, flush=True)
            time.sleep(args.display_wait)
        deadline = time.monotonic() + args.timeout + (args.display_wait if screen is not None else 0)
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
        if screen is not None:
            screen.stop()
        shutil.rmtree(work, ignore_errors=True)


def _start_display(cfg_path: Path, work: Path):
    """The display server in this process; the prompts are rendered first where espeak-ng exists."""
    from device.display.server import DisplayServer
    from device.display.voice import render
    cfg = config_mod.load(cfg_path)
    try:
        render(work / "voice")
    except (RuntimeError, OSError) as e:
        print(f"demo: display without spoken prompts ({e})", file=sys.stderr)
    return DisplayServer(cfg).start()
