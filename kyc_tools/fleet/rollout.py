"""Fleet-manager side: publish a signed bundle to device / group / fleet topics, watch the
retained update statuses, staged rollout (canary first, then widen; abort on a failure rate, like
AWS IoT Jobs' abortConfig), and the fleet status table.

Topics (must match device/link/mqtt.py):
    <prefix>/<site>/<device>/cmd/update          one device   (target `SITE/DEVICE`)
    <prefix>/_fleet/group/<group>/cmd/update     a group      (target `group:NAME`)
    <prefix>/_fleet/all/cmd/update               every device (target `*`)
A manifest is one message; inline artifacts follow as page + chunk messages on the same topic.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from kyc_tools.mqtt_client import apply_auth

from device.fleet import manifest as mf

MAX_MESSAGE_BYTES = 16384     # device/link/mqtt.py MAX_COMMAND_BYTES
TERMINAL = ("applied", "failed", "rolled_back")
BAD = ("failed", "rolled_back")


def update_topic(prefix: str, target: str) -> str:
    p = prefix.rstrip("/")
    if target == "*":
        return f"{p}/_fleet/all/cmd/update"
    if target.startswith("group:"):
        return f"{p}/_fleet/group/{target[6:]}/cmd/update"
    site, sep, dev = target.partition("/")
    if not sep or not site or not dev or any(c in target for c in "+#"):
        raise ValueError(f"target {target!r}: expected *, group:NAME or SITE/DEVICE")
    return f"{p}/{site}/{dev}/cmd/update"


def _j(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def messages(envelope: dict, artifacts_dir: Path | None) -> list[bytes]:
    """The manifest, then per inline artifact and page: the page (the sha256s of its chunks, which
    the signed manifest pins by `pages[i]`), then the page's chunks of `chunk_bytes`."""
    out = [_j(envelope)]
    if len(out[0]) > MAX_MESSAGE_BYTES:
        raise ValueError(f"signed manifest is {len(out[0])} bytes; the device link accepts {MAX_MESSAGE_BYTES}")
    m = envelope["manifest"]
    for a in m["artifacts"]:
        if not a.get("inline"):
            continue
        data = (Path(artifacts_dir) / a["name"]).read_bytes()
        cb = int(a["chunk_bytes"])
        for i, page in enumerate(mf.paginate(mf.chunk_digests(data, cb))):
            out.append(_j({"page": {"nonce": m["nonce"], "name": a["name"], "index": i, "sha256": page}}))
            for k in range(i * mf.PAGE_CHUNKS, i * mf.PAGE_CHUNKS + len(page)):
                out.append(_j({"chunk": {"nonce": m["nonce"], "name": a["name"], "offset": k * cb,
                                         "data": base64.b64encode(data[k * cb:(k + 1) * cb]).decode()}}))
    return out


def show_state(u: dict | None) -> str:
    if not u:
        return "-"
    s = str(u.get("state", "?")).upper()
    return f"{s}({u['reason']})" if u.get("reason") else s


class FleetClient:
    """A paho client for fleet managers: publishes updates, mirrors the retained statuses."""

    def __init__(self, url: str, prefix: str = "kyc/v1", *, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, watch: tuple[str, ...] = ()):
        u = urlsplit(url)
        self.watch = tuple(watch)
        self.log: list[tuple[float, str, Any]] = []     # every message received, in order
        self.prefix = prefix.rstrip("/")
        self.status: dict[str, dict] = {}      # "site/device" -> health status
        self.updates: dict[str, dict] = {}     # "site/device" -> update status
        self.events: list[tuple[float, str, dict]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"kyc-fleet-{uuid.uuid4().hex[:8]}",
                        protocol=mqtt.MQTTv5)
        apply_auth(c, tls=u.scheme == "mqtts", username=username, password=password, ca_file=ca_file,
                   cert_file=cert_file, key_file=key_file)
        c.max_inflight_messages_set(50)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c
        self.host, self.port = u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883)

    def __enter__(self) -> "FleetClient":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self, timeout: float = 10.0) -> "FleetClient":
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._ready.wait(timeout):
            raise ConnectionError(f"broker {self.host}:{self.port} not reachable")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, c, userdata, flags, rc, props) -> None:
        c.subscribe([(f"{self.prefix}/+/+/status", 1), (f"{self.prefix}/+/+/update/status", 1)]
                    + [(t, 1) for t in self.watch])
        self._ready.set()

    def _on_message(self, c, userdata, msg) -> None:
        parts = msg.topic[len(self.prefix) + 1:].split("/")
        try:
            obj = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        with self._cond:
            self.log.append((time.monotonic(), msg.topic, obj))
            self._cond.notify_all()
        if not isinstance(obj, dict) or len(parts) < 3:
            return
        dev = f"{parts[0]}/{parts[1]}"
        with self._cond:
            if parts[2:] == ["status"]:
                self.status[dev] = obj
            elif parts[2:] == ["update", "status"]:
                self.updates[dev] = obj
                self.events.append((time.monotonic(), dev, obj))
            self._cond.notify_all()

    # ------------------------------------------------------------------ publishing
    def publish(self, envelope: dict, artifacts_dir: Path | None, target: str, timeout: float = 600.0,
                rate: float = 200.0) -> int:
        """Manifest then chunks, QoS 1, paced at `rate` messages/s: the device link queues at most
        64 commands, so a burst faster than a slow SD card can write would be dropped (and the
        download would end `truncated`)."""
        topic = update_topic(self.prefix, target)
        msgs = messages(envelope, artifacts_dir)
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        infos = []
        for n, m in enumerate(msgs):
            infos.append(self.client.publish(topic, m, qos=1))
            ahead = t0 + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        for i in infos:
            i.wait_for_publish(max(0.1, deadline - time.monotonic()))
        return len(msgs)

    def wait_for(self, pred: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                r = pred()
                if r:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return r
                self._cond.wait(min(left, 0.25))

    def settle(self, seconds: float) -> None:
        time.sleep(seconds)

    # ------------------------------------------------------------------ views
    def results(self, version: int) -> dict[str, dict]:
        with self._cond:
            return {d: u for d, u in self.updates.items() if u.get("target_version") == version
                    or (u.get("state") == "applied" and u.get("bundle_version") == version)}

    def table(self) -> list[dict]:
        with self._cond:
            devs = sorted(set(self.status) | set(self.updates))
            rows = []
            for d in devs:
                s, u = self.status.get(d, {}), self.updates.get(d, {})
                ob = s.get("outbox")
                depth = ob.get("depth") if isinstance(ob, dict) else s.get("outbox_depth")
                rows.append({"device": d, "online": s.get("state", "unknown"),
                             "bundle_version": u.get("bundle_version", s.get("bundle_version", "-")),
                             "update": show_state(u), "target_version": u.get("target_version", "-"),
                             "outbox_depth": depth if depth is not None else "-",
                             "rejected": u.get("rejected", 0)})
            return rows


def staged_rollout(fc: FleetClient, envelope: dict, artifacts_dir: Path | None, stages: list[str], *,
                   canary_count: int = 1, abort_failure_rate: float = 0.2, min_reports: int = 1,
                   expect: int = 0, timeout: float = 600.0, settle_s: float = 3.0, rate: float = 200.0,
                   stage_expect: list[int] | None = None,
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """Publish to stages[0] (canary); wait for `canary_count` APPLIED; then each further stage.
    Abort (publish no further stage) when failed/(applied+failed) > abort_failure_rate once at least
    min_reports devices reported a final state. With `stage_expect` (devices reached by each stage,
    cumulative), a middle stage also waits for that many final reports before the next one is
    published. The last stage waits for `expect` final reports (or until nothing is in flight for
    settle_s). The summary's `stage_s` holds each stage's time from publish to its wait's end."""
    v = envelope["manifest"]["bundle_version"]
    deadline = time.monotonic() + timeout
    stage_s: list[float] = []

    def counts() -> tuple[list, dict, list]:
        r = fc.results(v)
        applied = [d for d, u in r.items() if u.get("state") == "applied"]
        failed = {d: f"{u['state']}:{u.get('reason', '')}" for d, u in r.items() if u.get("state") in BAD}
        busy = [d for d, u in r.items() if u.get("state") not in TERMINAL]
        return applied, failed, busy

    def should_abort() -> bool:
        applied, failed, _ = counts()
        done = len(applied) + len(failed)
        return done >= min_reports and done > 0 and len(failed) / done > abort_failure_rate

    def summary(result: str, stage: int) -> dict:
        applied, failed, busy = counts()
        return {"result": result, "bundle_version": v, "stages_published": stage, "applied": sorted(applied),
                "failed": failed, "in_progress": sorted(busy), "stage_s": [round(x, 2) for x in stage_s]}

    for i, target in enumerate(stages):
        t_stage = time.monotonic()
        if i > 0:
            stage_s.append(0.0)
        n = fc.publish(envelope, artifacts_dir, target, rate=rate)
        log(f"stage {i + 1}/{len(stages)}: published v{v} to {target} ({n} messages)")
        if i == 0 and len(stages) > 1:
            ok = fc.wait_for(lambda: should_abort() or len(counts()[0]) >= canary_count,
                             max(0.1, deadline - time.monotonic()))
            if should_abort():
                log("abort: failure rate above threshold in the canary stage")
                return summary("aborted", i + 1)
            if not ok:
                log("abort: canary did not report APPLIED in time")
                return summary("timeout", i + 1)
            log(f"canary ok: {len(counts()[0])} APPLIED")
            stage_s.append(time.monotonic() - t_stage)
        elif i > 0 and stage_expect and i < len(stages) - 1 and i < len(stage_expect):
            want = stage_expect[i]
            fc.wait_for(lambda: should_abort() or len(counts()[0]) + len(counts()[1]) >= want,
                        max(0.1, deadline - time.monotonic()))
            stage_s[-1] = time.monotonic() - t_stage
            if should_abort():
                log(f"abort: failure rate above threshold after stage {i + 1}")
                return summary("aborted", i + 1)
        elif i > 0 and should_abort():
            return summary("aborted", i + 1)
    # final: wait for the expected number of final reports, or quiet
    if expect:
        fc.wait_for(lambda: should_abort() or len(counts()[0]) + len(counts()[1]) >= expect,
                    max(0.1, deadline - time.monotonic()))
    else:
        quiet_since = time.monotonic()
        last = None
        while time.monotonic() < deadline:
            snap = (tuple(counts()[0]), tuple(counts()[1]), tuple(counts()[2]))
            if snap != last:
                last, quiet_since = snap, time.monotonic()
            elif not snap[2] and time.monotonic() - quiet_since >= settle_s:
                break
            time.sleep(0.2)
    if stage_s and len(stages) > 1:
        stage_s[-1] = time.monotonic() - t_stage
    if should_abort():
        return summary("aborted", len(stages))
    applied, failed, busy = counts()
    return summary("completed" if not busy and (not expect or len(applied) + len(failed) >= expect) else "timeout",
                   len(stages))
