"""`kyc-edge bench chaos`: the faults of issue 20 as scripted faults against a real daemon.

One real `kyc-edge run` subprocess on real parts: a loopback mosquitto (device.localbroker), the pty
card-reader simulator, the replay camera on a face video and the installed models. Each fault is
injected, then the script checks, per fault:

  verdicts_expected   cards inserted that must end in a verdict
  verdicts_survived   of those, verdicts that arrived on MQTT, signed by the device
  refused             sessions the daemon refused on purpose (storage_low, ...; not lost: the
                      customer was told before anything was captured)
  daemon_kept_serving after the fault (and the repair, where the fault is a start-up refusal) a
                      clean session still produced a verdict, or the fault was refused by
                      check-config so no daemon ever ran with it
  result              ok | failed | skipped (with the reason: e.g. no tmpfs without root) |
                      not_in_this_build (an item another branch delivers; none at present)

Items 6, 7 and 11 go through the daemon's own update agent (the rig's config carries a fleet key;
bundles are built and signed with kyc_tools.fleet and published with its FleetClient); item 15 runs
`kyc-edge verdicts listen` against the daemon's own verdicts.

The JSON ends with totals: lost verdicts and stops. `--short` runs the subset CI runs
(tests/test_bench_chaos.py: no timing assertions). Loopback only; everything lives in a temp dir
that is removed at the end (a tmpfs state dir is unmounted).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kyc_tools import paths as tool_paths
from typing import Callable

REPO = tool_paths.checkout() or Path.cwd()    # PYTHONPATH / cwd for the daemons it starts
DEVICE, SITE, PREFIX = "chaos-counter", "chaos-shop", "kyc/v1"
BASE = f"{PREFIX}/{SITE}/{DEVICE}"


# ---------------------------------------------------------------- the rig
class Rig:
    def __init__(self, work: Path, video: Path, card_photo_rgb, model_dir: Path, *, tmpfs: bool):
        from device.cardreader.photo import card_photo_jpeg
        from device.cardreader.simulator import Simulator
        from device.localbroker import LocalBroker

        self.work = work
        self.broker = LocalBroker(work).start()
        self.sim = Simulator(card=None)
        self.port = self.sim.start_pty()
        self.photo = card_photo_jpeg(card_photo_rgb)
        self.state = work / "state"
        self.state.mkdir(mode=0o700, exist_ok=True)
        self.tmpfs = tmpfs and _mount(self.state, "64m")
        from device.fleet import manifest as mf
        self.model_dir = model_dir
        self.fleet_key, fleet_pub, _ = mf.keygen(work / "fleetkey")
        self.fleet_version = 1
        self._fc = None
        self.sections = {
            "device": {"id": DEVICE, "site": SITE, "state_dir": str(self.state)},
            "camera": {"backend": "replay", "stall_s": 2.0, "lost_s": 5.0},
            "camera.replay": {"path": str(video), "pace": "realtime", "loop": True},
            "reader": {"port": self.port, "poll_s": 0.1},
            "models": {"dir": str(model_dir)},
            "liveness": {"challenges": ["blink"], "count": 1},
            "mqtt": {"url": self.broker.url, "connect_timeout_s": 5.0},
            "fleet": {"public_keys": [fleet_pub.read_text().strip()], "min_free_bytes": 0,
                      "crash_loop_window_s": 120},
            "storage": {"reserve_bytes": 8_000_000, "ballast_bytes": 1_000_000, "check_interval_s": 0.5},
            "log": {"level": "info", "target": "stderr"},
            "consent": {"required": False},          # no customer to agree: the rig drives sessions
        }
        self.cfg_path = work / "config.toml"
        self.write_config()
        self.msgs: list = []
        self._sub = self._subscribe()
        self.proc: subprocess.Popen | None = None
        self.notify = None
        self.log = work / "daemon.log"
        self._n = 0
        self.public_key: str | None = None

    def write_config(self, **changes) -> Path:
        from device.demo import write_config
        secs = {k: dict(v) for k, v in self.sections.items()}
        for dotted, value in changes.items():
            sec, key = dotted.rsplit(".", 1)
            secs.setdefault(sec, {})[key] = value
        return write_config(self.cfg_path, secs)

    def _subscribe(self):
        import threading
        import paho.mqtt.client as mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ready = threading.Event()
        c.on_message = lambda cl, u, m: self.msgs.append((m.topic, bytes(m.payload), m.properties))
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{PREFIX}/#", qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("chaos: subscriber could not subscribe")
        return c

    # ------------------------------------------------------------ daemon
    def start(self, wait_ready: bool = True) -> bool:
        from device.notify import NotifyListener
        self._n += 1
        if self.notify is not None:
            self.notify.close()
        self.notify = NotifyListener(self.work / f"notify{self._n}.sock")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                                                "INVOCATION_ID", "JOURNAL_STREAM")}
        env["NOTIFY_SOCKET"] = self.notify.path
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(self.cfg_path)],
                                         cwd=REPO, env=env, stdout=log, stderr=log)
        if not wait_ready:
            return True
        return self.notify.first("READY=1", 90, alive=lambda: self.proc.poll() is None) is not None

    def run_once(self) -> subprocess.CompletedProcess:
        """Start the daemon and wait for it to exit by itself (start-up refusals)."""
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM")}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        try:
            return subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(self.cfg_path)],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, -1, "", "timeout: still running (not refused)")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc, self.proc = self.proc.returncode, None
        return rc

    def fc(self):
        """A fleet-manager client (kyc_tools.fleet.rollout), mirroring the retained update status."""
        if self._fc is None:
            from kyc_tools.fleet.rollout import FleetClient
            self._fc = FleetClient(self.broker.url, PREFIX).connect()
        return self._fc

    def update(self) -> dict:
        return dict(self.fc().updates.get(f"{SITE}/{DEVICE}") or {})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        if self._fc is not None:
            with contextlib.suppress(Exception):
                self._fc.close()
        with contextlib.suppress(Exception):
            self._sub.loop_stop()
            self._sub.disconnect()
        with contextlib.suppress(Exception):
            self.sim.stop()
        with contextlib.suppress(Exception):
            self.broker.stop()
        if self.notify is not None:
            self.notify.close()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.state)], capture_output=True)

    # ------------------------------------------------------------ observations
    def on(self, suffix: str) -> list:
        return [m for m in list(self.msgs) if m[0].endswith(suffix)]

    def verdicts(self) -> list[dict]:
        return [json.loads(p) for t, p, _ in self.on("/verdict")]

    def events(self) -> list[dict]:
        return [json.loads(p) for t, p, _ in self.on("/session")]

    def status(self) -> dict:
        st = [json.loads(p) for t, p, _ in self.on(BASE + "/status") if p]
        for s in st:
            if s.get("public_key"):
                self.public_key = s["public_key"]
        return st[-1] if st else {}

    def refused(self, reason: str | None = None) -> int:
        return sum(1 for e in self.events() if e.get("event") == "refused" and (reason is None or e.get("reason") == reason))

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        return bool(pred())

    def verified(self, signed: dict) -> bool:
        from device import verdict as V
        self.status()
        if not self.public_key:
            return False
        try:
            V.verify(signed, [self.public_key])
            return True
        except V.VerdictError:
            return False

    # ------------------------------------------------------------ sessions
    def session(self, photo: bytes | None = None, during: Callable[[], None] | None = None,
                timeout: float = 60.0) -> dict | None:
        """One card -> the signed verdict that arrived (None if none arrived)."""
        from device.cardreader.simulator import FakeCard
        before_v = len(self.verdicts())
        before_s = sum(e.get("event") == "card_detected" for e in self.events())
        self.sim.insert(FakeCard.resident(photo_bytes=photo or self.photo))
        if during is not None:
            self.wait(lambda: sum(e.get("event") == "card_detected" for e in self.events()) > before_s, 20)
            during()
        ok = self.wait(lambda: len(self.verdicts()) > before_v, timeout)
        self.sim.remove()
        time.sleep(0.4)
        return self.verdicts()[before_v] if ok else None

    def publish_cmd(self, name: str, payload: dict, *, retain: bool = False, **props) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        p = None
        if props:
            p = Properties(PacketTypes.PUBLISH)
            for k, v in props.items():
                setattr(p, k, v)
        self._sub.publish(f"{BASE}/cmd/{name}", json.dumps(payload), qos=1, retain=retain,
                          properties=p).wait_for_publish(5)


def _mount(path: Path, size: str) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def _fill(directory: Path) -> Path:
    p = directory / "chaos-filler.bin"
    with open(p, "wb", buffering=0) as f:
        for chunk in (b"\xff" * 65536, b"\xff" * 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
    return p


def _check_configs(tomls: list[str], work: Path) -> list[int]:
    """`kyc-edge check-config` on each text (in parallel); their exit codes."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = []
    for i, toml in enumerate(tomls):
        p = work / f"probe{i}.toml"
        p.write_text(toml)
        procs.append(subprocess.Popen([sys.executable, "-m", "device.cli", "check-config", str(p)], cwd=REPO,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return [pr.wait(120) for pr in procs]


def _one_line(r: subprocess.CompletedProcess) -> bool:
    errs = [l for l in r.stderr.splitlines() if " ERROR " in l or " CRITICAL " in l]
    return r.returncode == 2 and "Traceback" not in r.stderr and len(errs) == 1 and "start-up refused" in errs[0]


def _bomb_jpeg() -> bytes:
    import cv2
    import numpy as np
    ok, buf = cv2.imencode(".jpg", np.full((126, 102, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 40])
    j = buf.tobytes()
    i = j.index(b"\xff\xc0")
    j = j[:i + 5] + struct.pack(">HH", 16000, 16000) + j[i + 9:]
    return (j + b"\0" * 1022)[:1022]


# ---------------------------------------------------------------- faults
def _res(expected=0, survived=0, serving=True, refused=0, **notes) -> dict:
    return {"verdicts_expected": expected, "verdicts_survived": survived, "refused": refused,
            "daemon_kept_serving": bool(serving), **notes}


def _serve_check(rig: Rig) -> tuple[int, int, bool]:
    v = rig.session()
    return 1, int(v is not None and rig.verified(v)), bool(v is not None and rig.alive())


def f_poisoned_start(rig: Rig) -> dict:
    rig.publish_cmd("start", {"operator": "x"}, retain=True, CorrelationData=b"c" * 300)
    rig.publish_cmd("start", {"operator": "x"}, ResponseTopic="ops/" + "r" * 300)
    rig.publish_cmd("start", {"operator": "x"}, ResponseTopic="ops/#")
    refused = rig.wait(lambda: rig.refused("bad_command") >= 3, 15)
    e, s, ok = _serve_check(rig)
    rig.stop()
    restarted = rig.start()
    e2, s2, ok2 = _serve_check(rig)
    rig._sub.publish(f"{BASE}/cmd/start", b"", qos=1, retain=True).wait_for_publish(5)
    return _res(e + e2, s + s2, ok and ok2 and restarted, refused=rig.refused("bad_command"),
                bad_starts_refused=refused)


def f_rebind_start(rig: Rig) -> dict:
    rig.publish_cmd("start", {"operator": "desk"}, CorrelationData=b"ticket-1")
    rig.wait(lambda: "start command received" in rig.log.read_text(errors="replace"), 10)
    n = rig.refused("session_running")
    v = rig.session(during=lambda: rig.publish_cmd("start", {"operator": "evil"}, CorrelationData=b"evil"))
    bound = bool(v) and v["verdict"].get("binding") == {
        "kind": "correlation", "sha256": hashlib.sha256(b"ticket-1").hexdigest()}
    return _res(1, int(bool(v) and rig.verified(v) and bound), bool(v) and rig.alive(),
                refused=rig.refused("session_running") - n, binding_kept=bound,
                listener_side="freshness window, persistent dedup: tests/test_listen_replay.py")


def f_bad_device_ids(rig: Rig) -> dict:
    bad = ["counter-123456789", "counter 1", "c" * 65, "zähler"]
    refused = [rc == 2 for rc in _check_configs([f'[device]\nid = "{b}"\n' for b in bad], rig.work)]
    return _res(0, 0, all(refused), check_config_refused=f"{sum(refused)}/{len(bad)}")


def f_nan_threshold(rig: Rig) -> dict:
    rc = _check_configs(["[liveness]\npad_threshold = nan\n"], rig.work)[0]
    return _res(0, 0, rc == 2, check_config_refused=rc == 2)


def f_bad_config_values(rig: Rig) -> dict:
    cases = ['[mqtt]\nurl = "mqtt://127.0.0.1:99999"\n', '[device]\ngroups = ["g#"]\n',
             '[mqtt]\nprefix = "kyc/#"\n', '[device]\nsite = "_fleet"\n', "device = 5\n"]
    ok = [rc == 2 for rc in _check_configs(cases, rig.work)]
    rig.stop()
    rig.write_config(**{"mqtt.username": "u", "mqtt.password_file": str(rig.work / "missing-password")})
    r = rig.run_once()
    rig.write_config()
    restarted = rig.start()
    return _res(0, 0, all(ok) and _one_line(r) and restarted, check_config_refused=f"{sum(ok)}/{len(ok)}",
                missing_password_file_one_line=_one_line(r))


def f_disk_full(rig: Rig) -> dict:
    if not rig.tmpfs:
        return {"result": "skipped", "reason": "the state dir is not a tmpfs (needs root to mount one)"}
    filler: list[Path] = []
    v = rig.session(during=lambda: filler.append(_fill(rig.state)))
    survived = int(v is not None and rig.verified(v))
    low = rig.wait(lambda: rig.status().get("storage") == "storage_low", 10)
    n = rig.refused()
    from device.cardreader.simulator import FakeCard
    rig.sim.insert(FakeCard.resident(photo_bytes=rig.photo))
    refused = rig.wait(lambda: rig.refused() > n, 10)
    rig.sim.remove()
    time.sleep(0.4)
    for f in filler:
        f.unlink(missing_ok=True)
    rig.wait(lambda: rig.status().get("storage") == "ok", 15)
    e, s, ok = _serve_check(rig)
    return _res(1 + e, survived + s, ok, refused=int(refused), storage_low_in_status=low)


def f_corrupt_outbox(rig: Rig) -> dict:
    rig.stop()
    db = rig.state / "outbox.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(os.urandom(max(8192, db.stat().st_size if db.exists() else 0)))
    started = rig.start()
    alarm = rig.wait(lambda: "outbox_recovered" in rig.status().get("alarms", []), 10)
    e, s, ok = _serve_check(rig)
    return _res(e, s, started and ok, outbox_recovered_alarm=alarm)


def f_truncated_key(rig: Rig) -> dict:
    from device.verdict import KEY_FILE
    rig.stop()
    key = rig.state / KEY_FILE
    good = key.read_bytes()
    key.write_bytes(good[:40])
    r = rig.run_once()
    key.write_bytes(good)                          # the repair: the operator restores the key
    started = rig.start()
    e, s, ok = _serve_check(rig)
    return _res(e, s, started and ok and _one_line(r), exit_code=r.returncode, one_clear_line=_one_line(r))


def f_read_only_state(rig: Rig) -> dict:
    if not rig.tmpfs:
        return {"result": "skipped", "reason": "needs a tmpfs state dir (root) to remount read-only"}
    rig.stop()
    subprocess.run(["mount", "-o", "remount,ro", str(rig.state)], check=True)
    try:
        r = rig.run_once()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(rig.state)], check=True)
    started = rig.start()
    e, s, ok = _serve_check(rig)
    return _res(e, s, started and ok and _one_line(r), exit_code=r.returncode, one_clear_line=_one_line(r))


def f_photo_bomb(rig: Rig) -> dict:
    t = time.monotonic()
    v = rig.session(photo=_bomb_jpeg(), timeout=30)
    secs = time.monotonic() - t
    refused_ok = bool(v) and v["verdict"]["reasons"] == ["card_read_failed"]
    e, s, ok = _serve_check(rig)
    return _res(1 + e, int(bool(v) and rig.verified(v)) + s, ok and refused_ok, card_read_failed=refused_ok,
                seconds_to_verdict=round(secs, 1))


def f_sighup_device_id(rig: Rig) -> dict:
    rig.write_config(**{"device.id": "chaos-renamed"})
    rig.proc.send_signal(signal.SIGHUP)
    rig.wait(lambda: "need a restart" in rig.log.read_text(errors="replace"), 10)
    v = rig.session()
    kept = bool(v) and v["verdict"]["device"] == DEVICE
    rig.write_config()
    rig.proc.send_signal(signal.SIGHUP)
    return _res(1, int(bool(v) and rig.verified(v) and kept), bool(v) and rig.alive(), device_id_kept=kept)


def f_wlt_missing(rig: Rig) -> dict:
    alarm = rig.wait(lambda: "photo_decoder_wlt_missing" in rig.status().get("alarms", []), 10)
    warned = "reader.wlt_library is not set" in rig.log.read_text(errors="replace")
    return _res(0, 0, rig.alive() and warned and alarm, start_up_warning=warned, alarm=alarm)


def f_unwritable_state_path(rig: Rig) -> dict:
    rig.stop()
    blocker = rig.work / "a-file"
    blocker.write_text("x")
    rig.write_config(**{"device.state_dir": str(blocker / "state")})
    r = rig.run_once()
    rig.write_config()
    started = rig.start()
    return _res(0, 0, started and _one_line(r), exit_code=r.returncode, one_clear_line=_one_line(r))


def f_unit_procsubset(rig: Rig) -> dict:
    text = (REPO / "systemd" / "kyc-edge.service").read_text()
    has = any(l.strip() == "ProcSubset=pid" for l in text.splitlines())
    return _res(0, 0, not has, procsubset_pid=has,
                note="XNNPACK under the unit's /proc settings: tests/test_unit_xnnpack.py")


# ---------------------------------------------------------------- fleet and operator side
DET = "face_detection_short_range.tflite"


def _bundle(rig: Rig, patch: dict | None = None, pad: int = 8) -> tuple[int, Path]:
    """A signed models-only (or config) bundle for every device: the installed detector + `pad` bytes."""
    from kyc_tools.fleet.commands import build_bundle, sign_bundle
    rig.fleet_version += 1
    v = rig.fleet_version
    b = rig.work / f"bundle{v}"
    (b / "src").mkdir(parents=True)
    (b / "src" / DET).write_bytes((rig.model_dir / DET).read_bytes() + b"\0" * (pad + v))
    build_bundle(b / "src", b, v, patch, vectors=False)
    sign_bundle(b, str(rig.fleet_key), ["*"])
    return v, b


def _envelope(b: Path) -> dict:
    from kyc_tools.fleet.commands import SIGNED
    return json.loads((b / SIGNED).read_text())


def _agent_idle(rig: Rig) -> bool:
    return bool(rig.fc().wait_for(lambda: rig.update().get("state") in ("idle", "applied"), 30))


def _applied(rig: Rig, v: int, timeout: float = 60) -> bool:
    return bool(rig.fc().wait_for(lambda: rig.update().get("state") == "applied"
                                  and rig.update().get("bundle_version") == v, timeout))


def f_unsigned_update_status(rig: Rig) -> dict:
    """Item 6: forged update messages naming a bundle_version change nothing in the retained status
    but a `rejected` count; a staged rollout would count no failure."""
    from device.fleet import manifest as mf
    from kyc_tools.fleet.rollout import update_topic
    up = _agent_idle(rig)
    before = rig.update()
    other_key, _, _ = mf.keygen(rig.work / "otherkey")
    _v, b = _bundle(rig)                                    # signed, never published: forgeries of it
    env = _envelope(b)
    forged = [mf.sign({**env["manifest"], "bundle_version": 77}, mf.load_private_key(other_key)),  # unknown_key
              {**env, "manifest": {**env["manifest"], "bundle_version": 78}},                        # bad_signature
              {"manifest": {"bundle_version": 79, "format": 1}, "sig": "x"}]                         # malformed
    n0 = int(before.get("rejected", 0))
    seen: list[dict] = []
    for n, e in enumerate(forged, 1):
        rig.fc().client.publish(update_topic(PREFIX, "*"), json.dumps(e), qos=1).wait_for_publish(5)
        rig.fc().wait_for(lambda n=n: rig.update().get("rejected", 0) >= n0 + n, 15)
        seen.append(rig.update())
        time.sleep(1.05)                                    # the agent re-publishes a rejection at most 1/s
    counted = rig.update().get("rejected", 0) - n0
    echoed = [u for u in seen if {77, 78, 79} & {x for x in u.values() if isinstance(x, int)}]
    kept = all((u.get("state"), u.get("bundle_version")) == (before.get("state"), before.get("bundle_version"))
               for u in seen)
    no_failure = all(rig.fc().results(x) == {} for x in (77, 78, 79))
    e, s, ok = _serve_check(rig)
    return _res(e, s, ok and up and counted == 3 and not echoed and kept and no_failure,
                rejected_counted=counted, forged_values_echoed=len(echoed), genuine_state_kept=kept,
                rollout_sees_failure=not no_failure)


def f_injected_inline_chunk(rig: Rig) -> dict:
    """Item 7: unauthenticated inline chunks injected during a genuine update are dropped; the update
    completes and the daemon goes on deciding with the new slot."""
    import base64
    from kyc_tools.fleet.rollout import messages, update_topic
    up = _agent_idle(rig)
    v, b = _bundle(rig)
    env = _envelope(b)
    m = env["manifest"]
    art = m["artifacts"][0]
    name, nonce, cb = art["name"], m["nonce"], art["chunk_bytes"]
    genuine = messages(env, b / "artifacts")

    def chunk(offset, data: str) -> bytes:
        return json.dumps({"chunk": {"nonce": nonce, "name": name, "offset": offset, "data": data}}).encode()
    junk = base64.b64encode(os.urandom(cb)).decode()
    fake_page = json.dumps({"page": {"nonce": nonce, "name": name, "index": 0,
                                     "sha256": [hashlib.sha256(os.urandom(8)).hexdigest()] * 3}}).encode()
    early = [chunk(0, junk), fake_page, chunk(art["size"] + cb, junk), chunk(1, junk), chunk("0", "!!")]
    after_page = [chunk(0, junk), chunk(cb, junk[:100])]
    msgs = [genuine[0], *early, genuine[1], *after_page, *genuine[2:]]
    n_ev = len(rig.fc().events)
    topic = update_topic(PREFIX, "*")
    infos = []
    for n, x in enumerate(msgs):
        infos.append(rig.fc().client.publish(topic, x, qos=1))
        if n % 50 == 49:
            time.sleep(0.2)
    for i in infos:
        i.wait_for_publish(10)
    applied = _applied(rig, v, 60)
    states = [u.get("state") for _, _d, u in rig.fc().events[n_ev:] if u.get("target_version") == v]
    dropped = "inline message dropped" in rig.log.read_text(errors="replace")
    e, s, ok = _serve_check(rig)
    return _res(e, s, ok and up and applied and "failed" not in states and dropped, genuine_update_applied=applied,
                update_states=states, injected_dropped_logged=dropped, injected_messages=len(early) + len(after_page))


def f_config_stacking(rig: Rig) -> dict:
    """Item 11: threshold 0.55 from a config bundle is what the daemon decides with after a later
    models-only bundle."""
    from device.config import MatchConfig
    up = _agent_idle(rig)
    default = MatchConfig().threshold
    applied = []
    for patch in ({"match": {"threshold": 0.55}}, None):
        v, b = _bundle(rig, patch)
        rig.fc().publish(_envelope(b), b / "artifacts", "*")
        applied.append(_applied(rig, v, 60))
    v = rig.session()
    thr = v["verdict"]["scores"].get("threshold") if v else None
    stacked = thr is not None and abs(thr - 0.55) < 1e-9
    survived = int(v is not None and rig.verified(v))
    # repair: a bundle declaring itself complete puts the fleet layer back to the defaults
    from kyc_tools.fleet.commands import build_bundle, sign_bundle
    rig.fleet_version += 1
    bd = rig.work / f"bundle{rig.fleet_version}"
    (bd / "src").mkdir(parents=True)
    (bd / "src" / DET).write_bytes((rig.model_dir / DET).read_bytes())
    build_bundle(bd / "src", bd, rig.fleet_version, None, vectors=False, config_complete=True)
    sign_bundle(bd, str(rig.fleet_key), ["*"])
    rig.fc().publish(_envelope(bd), bd / "artifacts", "*")
    reset = _applied(rig, rig.fleet_version, 60)
    return _res(1, survived, bool(v) and rig.alive() and up and all(applied) and stacked,
                bundles_applied=all(applied), threshold_in_verdict=thr, default_threshold=default,
                complete_bundle_resets=reset)


def f_listener_key_files(rig: Rig) -> dict:
    """Item 15: `verdicts listen` given keys as separate files binds each to its device: the daemon's
    verdict signed with another device's key is `forged`, the genuine one `ok`; a private key in the
    key directory is one clear line and exit 2."""
    import copy
    import uuid
    from device import verdict as V
    rig.status()
    if not rig.public_key:
        rig.wait(lambda: bool(rig.status().get("public_key")), 10)
    kd = rig.work / "listener-keys"
    kd.mkdir(exist_ok=True)
    other = V.Signer.load_or_create(rig.work / "other-counter")
    (kd / f"{DEVICE}.pub").write_text(rig.public_key + "\n")
    (kd / "chaos-other.pub").write_text(other.public_key_b64 + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-m", "device.cli", "verdicts", "listen", "--broker", rig.broker.url,
                          "--verify-key", str(kd / f"{DEVICE}.pub"), "--verify-key", str(kd / "chaos-other.pub"),
                          "--topic", f"{BASE}/verdict", "--count", "1", "--timeout", "45",
                          "--state", str(rig.work / "listen.db")],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        subscribed = "subscribed to" in p.stderr.readline()
        last = rig.verdicts()[-1] if rig.verdicts() else None
        crossed = None
        if last is not None:
            body = copy.deepcopy(last["verdict"])
            now = time.time()
            body["verdict_id"] = str(uuid.uuid4())
            body["started_at"], body["decided_at"] = V.rfc3339(now - 6), V.rfc3339(now)
            body.pop("binding", None)
            crossed = other.sign(body)           # this device's verdict, the other device's key
            rig._sub.publish(f"{BASE}/verdict", json.dumps(crossed), qos=1).wait_for_publish(5)
        v = rig.session()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    statuses = [x.get("status") for x in lines]
    cross_forged = crossed is not None and bool(lines) and lines[0].get("status") == "forged" \
        and lines[0].get("error") == "signed with another device's key"
    genuine_ok = v is not None and lines[-1:] and lines[-1].get("status") == "ok" \
        and lines[-1].get("verdict", {}).get("verdict_id") == v["verdict"]["verdict_id"]
    from device.verdict import KEY_FILE
    (kd / "chaos-third.key").write_bytes((rig.state / KEY_FILE).read_bytes())
    r = subprocess.run([sys.executable, "-m", "device.cli", "verdicts", "listen", "--broker", rig.broker.url,
                        "--verify-key", str(kd), "--timeout", "1", "--state", str(rig.work / "listen2.db")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    private_one_line = r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (kd / "chaos-third.key").unlink()
    return _res(1, int(bool(v) and rig.verified(v) and bool(genuine_ok)),
                bool(v) and rig.alive() and subscribed and cross_forged and private_one_line,
                listener_statuses=statuses, cross_signed_forged=cross_forged,
                private_key_file_one_line=private_one_line)



FAULTS: list[tuple[str, str, Callable[[Rig], dict], bool]] = [
    # id, issue item, script, in --short
    ("poisoned_start", "1", f_poisoned_start, True),
    ("bad_device_id", "2", f_bad_device_ids, True),
    ("disk_full_mid_session", "3", f_disk_full, False),
    ("corrupt_outbox", "4", f_corrupt_outbox, True),
    ("truncated_signing_key", "4", f_truncated_key, True),
    ("read_only_state_dir", "4", f_read_only_state, False),
    ("photo_header_bomb", "5", f_photo_bomb, True),
    ("unsigned_update_status", "6", f_unsigned_update_status, True),
    ("injected_inline_chunk", "7", f_injected_inline_chunk, True),
    ("second_start_rebind", "8", f_rebind_start, False),
    ("nan_pad_threshold", "9", f_nan_threshold, True),
    ("bad_config_values", "10", f_bad_config_values, False),
    ("config_stacking", "11", f_config_stacking, True),
    ("sighup_device_id", "12", f_sighup_device_id, False),
    ("unit_procsubset", "13", f_unit_procsubset, True),
    ("wlt_library_missing", "14", f_wlt_missing, True),
    ("listener_key_files", "15", f_listener_key_files, True),
    ("unwritable_state_dir", "16", f_unwritable_state_path, False),
]


def _default_photo(video: Path):
    """The card photo: a head-and-shoulders crop of the video's subject (as tests/faces.py)."""
    import numpy as np

    from device.camera.replay import video_frame
    rgb = video_frame(video, 60)
    if rgb is None:
        raise SystemExit(f"chaos: {video} has fewer than 61 frames")
    return np.ascontiguousarray(rgb[180:620, 470:830])


def run(args) -> dict:
    video = Path(getattr(args, "frames", None) or _shared() / "data" / "blink" / "demo_old.mp4")
    from device.models import find_model_dir
    model_dir = find_model_dir(getattr(args, "models_dir", None), search=True)
    short = bool(getattr(args, "short", False))
    only = set(getattr(args, "only", None) or [])
    if not video.exists():
        raise SystemExit(f"chaos: no face video at {video} (--frames VIDEO)")
    photo = _default_photo(video)
    work = Path(tempfile.mkdtemp(prefix="kyc-chaos-"))
    rows = []
    t_all = time.monotonic()
    rig = Rig(work, video, photo, model_dir, tmpfs=not getattr(args, "no_tmpfs", False))
    try:
        if not rig.start():
            raise SystemExit("chaos: the daemon did not become READY:\n" + rig.log.read_text(errors="replace")[-3000:])
        for fid, item, fn, in_short in FAULTS:
            if (short and not in_short) or (only and fid not in only):
                continue
            if not rig.alive() and fn not in (f_bad_device_ids, f_nan_threshold, f_unit_procsubset):
                rig.start()
            t = time.monotonic()
            try:
                res = fn(rig)
            except Exception as e:  # noqa: BLE001 - a fault script that breaks is a failed fault, not a crash
                res = _res(0, 0, False, error=f"{type(e).__name__}: {e}"[:300])
            res.setdefault("result", "ok" if res.get("daemon_kept_serving")
                           and res.get("verdicts_survived") == res.get("verdicts_expected") else "failed")
            rows.append({"fault": fid, "item": item, **res, "seconds": round(time.monotonic() - t, 1)})
    finally:
        rig.close()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    ran = [r for r in rows if r["result"] in ("ok", "failed")]
    return {
        "faults": rows,
        "ran": len(ran),
        "lost_verdicts": sum(r["verdicts_expected"] - r["verdicts_survived"] for r in ran),
        "stops": sum(not r["daemon_kept_serving"] for r in ran),
        "failed": [r["fault"] for r in ran if r["result"] == "failed"],
        "skipped": [r["fault"] for r in rows if r["result"] == "skipped"],
        "not_in_this_build": [r["fault"] for r in rows if r["result"] == "not_in_this_build"],
        "short": short,
        "seconds": round(time.monotonic() - t_all, 1),
    }


def _shared() -> Path:
    return tool_paths.shared_dir() or Path("$KYC_EDGE_SHARED")
