"""Fleet updates end to end: real mosquitto, real device processes (tests/fleet_standin.py: the real
boot_guard + UpdateAgent + Link + TFLite self-test), real CLI subprocesses for the fleet manager."""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from device.fleet import manifest as mf
from device.fleet import slots
from device.fleet.commands import SIGNED, build_bundle, sign_bundle
from device.fleet.rollout import FleetClient

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SITE = "s1"


# ------------------------------------------------------------------ harness
@pytest.fixture(scope="module")
def fleet_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleetkey")
    key, pub, _ = mf.keygen(d)
    return key, pub.read_text().strip()


@pytest.fixture
def factory(tmp_path, model_dir):
    d = tmp_path / "factory"
    d.mkdir()
    shutil.copyfile(model_dir / "face_detection_short_range.tflite", d / "face_detection_short_range.tflite")
    return d


def variant(factory: Path, out: Path, pad: int, name: str = "face_detection_short_range.tflite") -> Path:
    """A model that still loads and runs but has its own sha256 (trailing bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes((factory / "face_detection_short_range.tflite").read_bytes() + b"\0" * pad)
    return out


def make_bundle(tmp: Path, key: Path, factory: Path, version: int, *, targets=("*",), patch=None,
                pad: int | None = None, vectors: bool = True, **sign_kw) -> Path:
    b = tmp / f"bundle-v{version}-{os.urandom(3).hex()}"
    models = variant(factory, b / "src", version if pad is None else pad)
    build_bundle(models, b, version, patch, vectors=vectors)
    sign_bundle(b, str(key), list(targets), **sign_kw)
    return b


def envelope(b: Path) -> dict:
    return json.loads((b / SIGNED).read_text())


class Dev:
    def __init__(self, tmp: Path, broker, name: str, pub: str, factory: Path, groups=(), fleet: str = ""):
        self.name, self.dir = name, tmp / name
        self.state = self.dir / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = self.dir / "config.toml"
        self.cfg.write_text(f"""
[device]
id = "{name}"
site = "{SITE}"
state_dir = "{self.state}"
groups = {json.dumps(list(groups))}
[models]
dir = "{factory}"
[mqtt]
url = "{broker.url}"
reconnect_min_s = 0.1
reconnect_max_s = 1.0
connect_timeout_s = 5
status_interval_s = 0
[outbox]
path = "{self.dir / 'outbox.db'}"
[fleet]
public_keys = ["{pub}"]
crash_loop_restarts = 3
crash_loop_window_s = 60
download_timeout_s = 20
min_free_bytes = 0
{fleet}
""")
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exits: list[int] = []
        self._sup: threading.Thread | None = None
        self._sup_stop = threading.Event()

    def start(self, env: dict | None = None, limit_fsize: int | None = None) -> "Dev":
        e = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        pre = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))) if limit_fsize else None
        self.out = open(self.dir / f"run{self.starts}.log", "wb")
        self.proc = subprocess.Popen([PY, "-m", "tests.fleet_standin", "--config", str(self.cfg)], cwd=REPO,
                                     env=e, stdout=self.out, stderr=subprocess.STDOUT, preexec_fn=pre)
        self.starts += 1
        return self

    def supervise(self, env: dict | None = None, max_restarts: int = 6) -> "Dev":
        """Like systemd Restart=on-failure: restart after an abnormal exit."""
        self.start(env)

        def run():
            while not self._sup_stop.is_set():
                rc = self.proc.wait()
                self.exits.append(rc)
                if rc == 0 or self._sup_stop.is_set() or len(self.exits) > max_restarts:
                    return
                time.sleep(0.2)
                self.start(env)
        self._sup = threading.Thread(target=run, daemon=True)
        self._sup.start()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._sup_stop.set()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.dir.glob("run*.log")))

    @property
    def key(self) -> str:
        return f"{SITE}/{self.name}"

    def version(self) -> int:
        return slots.current_version(self.state)


@pytest.fixture
def fc(broker):
    with FleetClient(broker.url, watch=("kyc/v1/+/+/session",)) as c:
        yield c


@pytest.fixture
def devices():
    made: list[Dev] = []
    yield made
    for d in made:
        d.stop()


def wait_update(fc: FleetClient, dev: Dev, pred, timeout: float = 30.0) -> dict:
    ok = fc.wait_for(lambda: (u := fc.updates.get(dev.key)) is not None and pred(u), timeout)
    assert ok, f"{dev.name}: update status {fc.updates.get(dev.key)}\n{dev.logs()}"
    return fc.updates[dev.key]


def online(fc: FleetClient, dev: Dev, timeout: float = 20.0) -> None:
    ok = fc.wait_for(lambda: fc.status.get(dev.key, {}).get("state") == "online" and dev.alive(), timeout)
    assert ok, f"{dev.name} not online: {fc.status.get(dev.key)}\n{dev.logs()}"


def states_of(fc: FleetClient, dev: Dev, version: int) -> list[str]:
    return [u["state"] for _, d, u in fc.events if d == dev.key and u.get("target_version") == version]


def apply_good(fc, dev, tmp, key, factory, version) -> Path:
    b = make_bundle(tmp, key, factory, version, targets=[dev.name])
    fc.publish(envelope(b), b / "artifacts", f"{SITE}/{dev.name}")
    wait_update(fc, dev, lambda u: u["state"] == "applied" and u["bundle_version"] == version)
    return b


# ------------------------------------------------------------------ tests
def test_canary_then_widen_three_devices_all_applied(tmp_path, broker, fleet_key, factory, fc, devices):
    key, pub = fleet_key
    devs = [Dev(tmp_path, broker, "c1", pub, factory, groups=("canary", "north")),
            Dev(tmp_path, broker, "n1", pub, factory, groups=("north",)),
            Dev(tmp_path, broker, "n2", pub, factory, groups=("north",))]
    devices.extend(devs)
    for d in devs:
        d.start()
    for d in devs:
        online(fc, d)
        assert d.version() == 0
    b = make_bundle(tmp_path, key, factory, 2, targets=["group:north"], patch={"match": {"threshold": 0.45}})
    t0 = time.monotonic()
    r = subprocess.run([PY, "-m", "device.cli", "fleet", "publish", str(b), "--broker", broker.url,
                        "--target", "group:canary", "--target", "group:north", "--canary-count", "1",
                        "--expect", "3", "--timeout", "60"], cwd=REPO, capture_output=True, text=True, timeout=90)
    res = json.loads(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert res["result"] == "completed" and sorted(res["applied"]) == [d.key for d in devs] and not res["failed"]
    assert "canary ok: 1 APPLIED" in r.stderr
    for d in devs:
        u = wait_update(fc, d, lambda u: u["state"] == "applied")
        assert u["bundle_version"] == 2 and u["target_version"] == 2
        assert d.version() == 2
        assert slots.config_patch(slots.active_bundle(d.state)) == {"match": {"threshold": 0.45}}
        seq = states_of(fc, d, 2)
        # in order (the link coalesces statuses that follow each other within one I/O turn)
        order = ["queued", "downloading", "verifying", "staged", "applied"]
        assert seq[-1] == "applied" and [order.index(s) for s in seq] == sorted(order.index(s) for s in seq), seq
    # the canary applied before the widening stage was published to the others
    first_applied = {d: t for t, d, u in reversed(fc.events) if u.get("state") == "applied"}
    first_queued = {d: t for t, d, u in reversed(fc.events) if u.get("target_version") == 2}
    assert first_applied["s1/c1"] < first_queued["s1/n1"] and first_applied["s1/c1"] < first_queued["s1/n2"]
    # c1 got the bundle twice (canary and north group): deduplicated, no replay failure reported
    assert "failed" not in states_of(fc, devs[0], 2)
    # fleet status table from the retained topics
    r = subprocess.run([PY, "-m", "device.cli", "fleet", "status", "--broker", broker.url, "--json", "--wait", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    rows = {x["device"]: x for x in json.loads(r.stdout)}
    for d in devs:
        assert rows[d.key]["bundle_version"] == 2 and rows[d.key]["update"] == "APPLIED"
        assert rows[d.key]["online"] == "online" and rows[d.key]["outbox_depth"] == 0
    print(f"rollout of 3 devices took {time.monotonic() - t0:.1f} s")


def test_canary_failure_aborts_rollout(tmp_path, broker, fleet_key, factory, fc, devices):
    key, pub = fleet_key
    c = Dev(tmp_path, broker, "c1", pub, factory, groups=("canary", "north"))
    n = Dev(tmp_path, broker, "n1", pub, factory, groups=("north",))
    devices.extend([c, n])
    c.start(), n.start()
    online(fc, c), online(fc, n)
    # a bundle whose model does not load: the canary's self-test fails -> abort, north never gets it
    b = tmp_path / "badb"
    (b / "src").mkdir(parents=True)
    (b / "src" / "face_detection_short_range.tflite").write_bytes(os.urandom(4096))
    build_bundle(b / "src", b, 2, vectors=False)
    sign_bundle(b, str(key), ["group:north"])
    r = subprocess.run([PY, "-m", "device.cli", "fleet", "publish", str(b), "--broker", broker.url,
                        "--target", "group:canary", "--target", "group:north", "--timeout", "30"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    res = json.loads(r.stdout)
    assert r.returncode == 1 and res["result"] == "aborted" and res["stages_published"] == 1
    assert res["failed"] == {"s1/c1": "failed:self_test_failed"}
    time.sleep(1.0)
    assert states_of(fc, n, 2) == [] and n.version() == 0 and c.version() == 0
