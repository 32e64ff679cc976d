"""Fleet updates end to end: real mosquitto, real device processes (tests/fleet_standin.py: the real
boot_guard + UpdateAgent + Link + TFLite self-test), real CLI subprocesses for the fleet manager."""
from __future__ import annotations

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
from kyc_tools.fleet.commands import SIGNED, build_bundle, sign_bundle
from kyc_tools.fleet.rollout import FleetClient

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
    def __init__(self, tmp: Path, broker, name: str, pub: str, factory: Path, groups=(), fleet: str = "",
                 download_timeout_s: float = 20):
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
download_timeout_s = {download_timeout_s}
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
def test_canary_abort_then_canary_and_widen_three_devices_all_applied(tmp_path, broker, fleet_key, factory, fc,
                                                                       devices):
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

    def publish(b: Path) -> tuple[subprocess.CompletedProcess, dict]:
        r = subprocess.run([PY, "-m", "device.cli", "fleet", "publish", str(b), "--broker", broker.url,
                            "--target", "group:canary", "--target", "group:north", "--canary-count", "1",
                            "--expect", "3", "--timeout", "60"], cwd=REPO, capture_output=True, text=True, timeout=90)
        return r, json.loads(r.stdout)

    # 1. a bundle whose model does not load: the canary's self-test fails -> abort, north never gets it
    bad = tmp_path / "badb"
    (bad / "src").mkdir(parents=True)
    (bad / "src" / "face_detection_short_range.tflite").write_bytes(os.urandom(4096))
    build_bundle(bad / "src", bad, 2, vectors=False)
    sign_bundle(bad, str(key), ["group:north"])
    r, res = publish(bad)
    assert r.returncode == 1 and res["result"] == "aborted" and res["stages_published"] == 1, r.stdout + r.stderr
    assert res["failed"] == {"s1/c1": "failed:self_test_failed"}
    assert devs[0].version() == 0

    # 2. a good bundle: canary APPLIED, then widened to the north group
    b = make_bundle(tmp_path, key, factory, 3, targets=["group:north"], patch={"match": {"threshold": 0.45}})
    r, res = publish(b)
    assert r.returncode == 0, r.stdout + r.stderr
    assert res["result"] == "completed" and sorted(res["applied"]) == [d.key for d in devs] and not res["failed"]
    assert "canary ok: 1 APPLIED" in r.stderr
    assert states_of(fc, devs[1], 2) == [] and states_of(fc, devs[2], 2) == []   # the aborted v2 never reached north
    for d in devs:
        u = wait_update(fc, d, lambda u: u["state"] == "applied")
        assert u["bundle_version"] == 3 and u["target_version"] == 3
        assert d.version() == 3
        assert slots.config_patch(slots.active_bundle(d.state)) == {"match": {"threshold": 0.45}}
        seq = states_of(fc, d, 3)
        # in order (the link coalesces statuses that follow each other within one I/O turn)
        order = ["queued", "downloading", "verifying", "staged", "applied"]
        assert seq[-1] == "applied" and [order.index(s) for s in seq] == sorted(order.index(s) for s in seq), seq
    # the canary applied before the widening stage reached the others
    first_applied = {d: t for t, d, u in reversed(fc.events) if u.get("state") == "applied"}
    first_seen = {d: t for t, d, u in reversed(fc.events) if u.get("target_version") == 3}
    assert first_applied["s1/c1"] < first_seen["s1/n1"] and first_applied["s1/c1"] < first_seen["s1/n2"]
    # c1 got the bundle twice (canary and north group): deduplicated, no replay failure reported
    assert "failed" not in states_of(fc, devs[0], 3)
    # fleet status table from the retained topics
    r = subprocess.run([PY, "-m", "device.cli", "fleet", "status", "--broker", broker.url, "--json", "--wait", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    rows = {x["device"]: x for x in json.loads(r.stdout)}
    for d in devs:
        assert rows[d.key]["bundle_version"] == 3 and rows[d.key]["update"] == "APPLIED"
        assert rows[d.key]["online"] == "online" and rows[d.key]["outbox_depth"] == 0


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Announces the whole file, sends half of it, closes: a truncated download."""
    root: Path = Path("/nonexistent")

    def do_GET(self):  # noqa: N802
        data = (self.root / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *a):
        pass


def _resign(b: Path, key, edit, **kw) -> dict:
    """Edit the unsigned body (bypassing the CLI's own checks, as a buggy or hostile tool would), sign."""
    body = json.loads((b / "manifest.unsigned.json").read_text())
    edit(body)
    (b / "manifest.unsigned.json").write_text(json.dumps(body))
    return sign_bundle(b, str(key), ["*"], **kw)


def test_each_bad_input_has_its_reason_and_the_old_bundle_keeps_serving(tmp_path, broker, fleet_key, factory, fc,
                                                                        devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "d1", pub, factory, fleet="max_bundle_bytes = 1000000")
    devices.append(d)
    d.start()
    online(fc, d)
    good2 = apply_good(fc, d, tmp_path, key, factory, 2)
    slot_before = slots.current_slot(d.state)
    models_before = {p.name: p.read_bytes() for p in (slots.active_bundle(d.state) / "models").iterdir()}

    def nb(v, **kw):   # a bundle without self-test vectors (fast) for inputs refused before the self-test
        return make_bundle(tmp_path, key, factory, v, vectors=False, **kw)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cases: list[tuple[str, int, dict, Path | None]] = []

    # bad_signature / unknown_key: tests/test_fleet_integrity.py (never echoed into the status)
    b = nb(12)
    env = sign_bundle(b, str(key), ["*"], url_base=f"file://{b / 'artifacts'}")
    art = b / "artifacts" / "face_detection_short_range.tflite"
    data = bytearray(art.read_bytes())
    data[1000] ^= 0xFF                                                # same size, one byte flipped on the server
    art.write_bytes(bytes(data))                                      # (inline, such a chunk is dropped: integrity tests)
    cases.append(("hash_mismatch", 12, env, None))
    b = nb(13)
    env = sign_bundle(b, str(key), ["*"], url_base=f"file://{b / 'artifacts'}")
    art = b / "artifacts" / "face_detection_short_range.tflite"
    art.write_bytes(art.read_bytes()[:50000])                         # partial file behind a file:// URL
    cases.append(("truncated", 13, env, None))
    b = nb(14)
    _TruncatingHandler.root = b / "artifacts"
    env = sign_bundle(b, str(key), ["*"], url_base=f"http://127.0.0.1:{srv.server_address[1]}")
    cases.append(("truncated", 14, env, None))                        # HTTP connection closed early
    b = tmp_path / "garbage"
    (b / "src").mkdir(parents=True)
    (b / "src" / "face_detection_short_range.tflite").write_bytes(os.urandom(20000))
    build_bundle(b / "src", b, 15, vectors=False)
    cases.append(("self_test_failed", 15, sign_bundle(b, str(key), ["*"]), b / "artifacts"))  # does not load
    b = make_bundle(tmp_path, key, factory, 16)

    def skew(body):
        body["vectors"][0]["outputs"][0]["sample"][0] += 1.0          # loads, but computes the wrong output
    cases.append(("self_test_failed", 16, _resign(b, key, skew), b / "artifacts"))
    b = nb(17)
    cases.append(("config_invalid", 17, _resign(b, key, lambda body: body.update(config_patch={"match": {"threshold": 5}})),
                  b / "artifacts"))
    b = nb(18)
    cases.append(("expired", 18, sign_bundle(b, str(key), ["*"], valid_days=-1), b / "artifacts"))
    b = nb(19)
    m = mf.make_manifest(bundle_version=19, artifacts=envelope(b)["manifest"]["artifacts"], not_before=int(time.time()) + 3600)
    cases.append(("not_yet_valid", 19, mf.sign(m, mf.load_private_key(key)), b / "artifacts"))
    b = nb(1)
    cases.append(("downgrade_refused", 1, envelope(b), b / "artifacts"))
    b = nb(20, pad=900_000)                                           # 1.13 MB > fleet.max_bundle_bytes
    cases.append(("too_large", 20, envelope(b), b / "artifacts"))
    b = nb(21)
    cases.append(("daemon_too_old", 21, _resign(b, key, lambda body: body.update(min_daemon_version="99.0")),
                  b / "artifacts"))

    for reason, v, env, arts in cases:
        fc.publish(env, arts, f"{SITE}/{d.name}")
        u = wait_update(fc, d, lambda u: u.get("target_version") == v and u["state"] == "failed", timeout=20)
        assert u["reason"] == reason, (v, u)
        assert u["bundle_version"] == 2 and d.alive() and d.version() == 2
        assert slots.current_slot(d.state) == slot_before
    srv.shutdown()
    assert "downloading" not in states_of(fc, d, 20)                  # refused before any byte was fetched
    assert {p.name: p.read_bytes() for p in (slots.active_bundle(d.state) / "models").iterdir()} == models_before
    # still serving: a session runs to its verdict
    fc.client.publish(f"kyc/v1/{SITE}/{d.name}/cmd/test_session", json.dumps({"action": "start"}), qos=1)
    fc.client.publish(f"kyc/v1/{SITE}/{d.name}/cmd/test_session", json.dumps({"action": "end"}), qos=1)
    assert fc.wait_for(lambda: any(t.endswith(f"{d.name}/session") and o.get("event") == "verdict"
                                   for _, t, o in fc.log), 10)
    # and still updatable; then the classic replay: re-send the old signed v2 manifest
    apply_good(fc, d, tmp_path, key, factory, 3)
    fc.publish(envelope(good2), good2 / "artifacts", f"{SITE}/{d.name}")
    u = wait_update(fc, d, lambda u: u.get("target_version") == 2 and u["state"] == "failed")
    assert u["reason"] == "replayed_nonce" and u["bundle_version"] == 3 and d.version() == 3
    # an explicit, signed downgrade is allowed
    b = make_bundle(tmp_path, key, factory, 2, targets=[d.name], allow_downgrade=True)
    fc.publish(envelope(b), b / "artifacts", f"{SITE}/{d.name}")
    u = wait_update(fc, d, lambda u: u["state"] == "applied" and u.get("target_version") == 2)
    assert u["bundle_version"] == 2 and d.version() == 2


def test_disk_full_while_receiving_is_refused_and_device_keeps_running(tmp_path, broker, fleet_key, factory, fc,
                                                                       devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "df", pub, factory)
    devices.append(d)
    d.start(limit_fsize=150_000)          # RLIMIT_FSIZE: writes past 150 kB fail (EFBIG), like a full disk
    online(fc, d)
    b = make_bundle(tmp_path, key, factory, 2, vectors=False)
    fc.publish(envelope(b), b / "artifacts", f"{SITE}/{d.name}")
    u = wait_update(fc, d, lambda u: u["state"] == "failed")
    assert u["reason"] == "disk_full" and u["bundle_version"] == 0 and u["target_version"] == 2
    time.sleep(0.3)
    assert d.alive() and d.version() == 0 and not list((d.state / "bundles").glob(".incoming/*"))
    assert "File too large" in d.logs()    # the real write failed (EFBIG), not the free-space pre-check


def test_update_during_a_session_is_applied_only_after_its_verdict(tmp_path, broker, fleet_key, factory, fc, devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "ds", pub, factory)
    devices.append(d)
    d.start()
    online(fc, d)
    cmd = f"kyc/v1/{SITE}/{d.name}/cmd/test_session"
    fc.client.publish(cmd, json.dumps({"action": "start"}), qos=1).wait_for_publish(5)
    time.sleep(0.3)
    b = make_bundle(tmp_path, key, factory, 2)
    fc.publish(envelope(b), b / "artifacts", f"{SITE}/{d.name}")
    wait_update(fc, d, lambda u: u["state"] == "staged")
    time.sleep(1.5)                                   # staged, but the customer is still at the counter
    assert fc.updates[d.key]["state"] == "staged" and d.version() == 0
    fc.client.publish(cmd, json.dumps({"action": "end"}), qos=1)
    wait_update(fc, d, lambda u: u["state"] == "applied" and u["bundle_version"] == 2)
    t_verdict = next(t for t, topic, o in fc.log if topic.endswith("/session") and o.get("event") == "verdict")
    t_applied = next(t for t, topic, o in fc.log if topic.endswith("/update/status") and o.get("state") == "applied")
    assert t_verdict < t_applied
    assert d.version() == 2


def _sha_variant(factory: Path, pad: int) -> str:
    return hashlib.sha256((factory / "face_detection_short_range.tflite").read_bytes() + b"\0" * pad).hexdigest()


def test_model_that_crashes_the_daemon_after_the_switch_is_rolled_back(tmp_path, broker, fleet_key, factory, fc,
                                                                       devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "dc", pub, factory)
    devices.append(d)
    d.supervise(env={"STANDIN_CRASH_SHA": _sha_variant(factory, 3)})
    online(fc, d)
    apply_good(fc, d, tmp_path, key, factory, 2)
    b = make_bundle(tmp_path, key, factory, 3)        # passes its self-test, crashes the live pipeline
    fc.publish(envelope(b), b / "artifacts", f"{SITE}/{d.name}")
    u = wait_update(fc, d, lambda u: u["state"] == "rolled_back", timeout=60)
    assert u["reason"] == "crash_loop" and u["bundle_version"] == 2 and u["target_version"] == 3
    online(fc, d)
    assert d.version() == 2 and slots.read_state(d.state).get("trial") is None
    assert d.exits == [-signal.SIGABRT] * 3, d.exits   # crash on apply, then 2 crashing restarts; the 3rd rolls back


def test_failed_health_probe_after_the_switch_rolls_back_without_restart(tmp_path, broker, fleet_key, factory, fc,
                                                                         devices):
    key, pub = fleet_key
    d = Dev(tmp_path, broker, "dh", pub, factory)
    devices.append(d)
    d.start(env={"STANDIN_PROBE_FAIL_SHA": _sha_variant(factory, 3)})
    online(fc, d)
    apply_good(fc, d, tmp_path, key, factory, 2)
    b = make_bundle(tmp_path, key, factory, 3)
    fc.publish(envelope(b), b / "artifacts", f"{SITE}/{d.name}")
    u = wait_update(fc, d, lambda u: u["state"] == "rolled_back")
    assert u["reason"] == "health_probe_failed" and u["bundle_version"] == 2 and u["target_version"] == 3
    assert d.alive() and d.starts == 1 and d.version() == 2
    assert "applied" not in states_of(fc, d, 3)


STEPS = {"stage_written": 0, "staged": 0, "journaled": 2, "switched": 2, "applied": 2, "committed": 2}


def test_power_cut_at_each_switch_step_leaves_a_bootable_slot(tmp_path, broker, fleet_key, factory, fc, devices):
    key, pub = fleet_key
    devs = {step: Dev(tmp_path, broker, f"p-{step}", pub, factory) for step in STEPS}
    devices.extend(devs.values())
    for step, d in devs.items():
        d.start(env={slots.KILL_ENV: step})
    for d in devs.values():
        online(fc, d, timeout=40)
    b = make_bundle(tmp_path, key, factory, 2)
    fc.publish(envelope(b), b / "artifacts", "*")
    for step, d in devs.items():
        assert d.proc.wait(30) == -signal.SIGKILL, (step, d.logs())
    for d in devs.values():
        d.start()                                     # power back: plain start, no fault injection
    for step, d in devs.items():
        online(fc, d, timeout=40)
        want = STEPS[step]
        if want:
            wait_update(fc, d, lambda u: u["state"] == "applied" and u["bundle_version"] == 2)
        ab = slots.active_bundle(d.state)
        assert d.version() == want, step
        assert (ab is None) == (want == 0)
        if ab is not None:   # the slot is complete and byte-identical to the manifest
            m = json.loads((ab / "manifest.json").read_text())["manifest"]
            for a in m["artifacts"]:
                assert hashlib.sha256((ab / "models" / a["name"]).read_bytes()).hexdigest() == a["sha256"]
        assert not [p for p in (d.state / "bundles").iterdir() if p.name.startswith((".stage", ".incoming", ".current"))]
        assert fc.status[d.key]["state"] == "online" and d.alive()
