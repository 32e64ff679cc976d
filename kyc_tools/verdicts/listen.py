"""Operator side: subscribe to verdicts, verify signatures, deduplicate by verdict_id.

Delivery is at-least-once, so the same verdict can arrive twice (after a reconnect or a broker
restart); `Dedup` drops repeats. Each message becomes one `Received` record with `status`:
    ok         signature valid, schema valid, first time seen
    duplicate  same verdict_id seen before (signature still checked first)
    forged     signature invalid, unknown key, the verdict claims another device than its topic, or
               (key directory with <device>.pub files) it is signed with another device's key
    invalid    not JSON / not a signed verdict / schema violation
"""
from __future__ import annotations

import collections
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device import verdict as _verdict


class Dedup:
    """Bounded memory of seen verdict_ids (oldest forgotten first)."""

    def __init__(self, max_ids: int = 1_000_000):
        self.max_ids = max_ids
        self._seen: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self.duplicates = 0

    def first_time(self, verdict_id: str) -> bool:
        if verdict_id in self._seen:
            self.duplicates += 1
            return False
        self._seen[verdict_id] = None
        if len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class Received:
    status: str                       # ok | duplicate | forged | invalid
    topic: str
    verdict: dict | None = None
    error: str = ""
    correlation: bytes | None = None
    response_topic: str | None = None
    user_properties: dict = field(default_factory=dict)

    def line(self) -> str:
        out: dict[str, Any] = {"status": self.status, "topic": self.topic}
        if self.verdict is not None:
            if self.status == "ok":
                out["verdict"] = self.verdict
            else:
                out["verdict_id"] = self.verdict.get("verdict_id")
        if self.error:
            out["error"] = self.error
        if self.correlation is not None:
            out["correlation"] = self.correlation.hex()
        if self.response_topic:
            out["response_topic"] = self.response_topic
        return json.dumps(out, separators=(",", ":"), sort_keys=True)


def bound_keys(spec: str) -> dict[str, str]:
    """device id -> key_id for a key directory whose files are named <device>.pub/.pem/.b64."""
    from pathlib import Path
    p = Path(spec)
    out: dict[str, str] = {}
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.is_file() and f.suffix in (".pub", ".pem", ".b64"):
                try:
                    out[f.stem] = _verdict.key_id_of(_verdict.load_public_key(f))
                except _verdict.VerdictError:
                    continue
    return out


def check_message(topic: str, payload: bytes, keys: list, dedup: Dedup | None,
                  properties: Any = None, bound: dict[str, str] | None = None) -> Received:
    corr = rt = None
    ups: dict = {}
    if properties is not None:
        cd = getattr(properties, "CorrelationData", None)
        corr = bytes(cd) if cd else None
        rt = getattr(properties, "ResponseTopic", None) or None
        ups = dict(getattr(properties, "UserProperty", None) or [])
    rec = Received("invalid", topic, correlation=corr, response_topic=rt, user_properties=ups)
    try:
        obj = _verdict.parse(payload)
        _verdict.check_signed_shape(obj)
    except _verdict.VerdictError as e:
        rec.error = e.detail
        return rec
    rec.verdict = obj["verdict"]
    try:
        v = _verdict.verify(obj, keys)
    except _verdict.VerdictError as e:
        rec.status, rec.error = "forged", e.detail
        return rec
    parts = topic.split("/")
    if len(parts) >= 3 and (parts[-2] != v["device"] or parts[-3] != v["site"]):
        rec.status, rec.error = "forged", "verdict device/site differ from the topic"
        return rec
    if bound and v["device"] in bound and bound[v["device"]] != obj["sig"]["key_id"]:
        rec.status, rec.error = "forged", "signed with another device's key"
        return rec
    if dedup is not None and not dedup.first_time(v["verdict_id"]):
        rec.status = "duplicate"
        return rec
    rec.status = "ok"
    return rec


class Listener:
    """A paho subscriber (own thread) feeding `on_received(Received)`.

    With `client_id` and `session_expiry_s > 0` it keeps a persistent MQTT 5 session, so QoS 1
    verdicts published while it is away (or across a broker restart with persistence) are queued
    by the broker and delivered when it comes back."""

    def __init__(self, url: str, keys: list, on_received: Callable[[Received], None], *,
                 topic: str = "kyc/v1/+/+/verdict", protocol: str = "5", client_id: str = "",
                 session_expiry_s: int = 0, username: str = "", password: str | None = None,
                 ca_file: str = "", cert_file: str = "", key_file: str = "",
                 tls_context: ssl.SSLContext | None = None, dedup: Dedup | None = None,
                 bound: dict[str, str] | None = None):
        self.keys = [_verdict.load_public_key(k) for k in keys]
        self.bound = dict(bound or {})
        self.on_received = on_received
        self.topic = topic
        self.dedup = dedup if dedup is not None else Dedup()
        self.v5 = protocol == "5"
        u = urlsplit(url)
        self.host, self.tls = u.hostname or "127.0.0.1", u.scheme == "mqtts"
        self.port = u.port or (8883 if self.tls else 1883)
        self.session_expiry_s = session_expiry_s
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        if self.v5:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                            clean_session=not (client_id and session_expiry_s))
        c.reconnect_delay_set(0.1, 2)
        if username:
            c.username_pw_set(username, password)
        if self.tls:
            ctx = tls_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
            if cert_file and tls_context is None:
                ctx.load_cert_chain(cert_file, key_file or None)
            c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_disconnect = lambda *a: self.connected.clear()
        self.client = c

    def _on_connect(self, c, userdata, flags, rc, props) -> None:
        if rc.is_failure:
            return
        self.connected.set()
        c.subscribe(self.topic, qos=1)

    def _on_message(self, c, userdata, msg) -> None:
        with self._lock:
            rec = check_message(msg.topic, msg.payload, self.keys, self.dedup,
                                getattr(msg, "properties", None), self.bound)
            self.counts[rec.status] += 1
        self.on_received(rec)

    def start(self) -> "Listener":
        kw: dict[str, Any] = {}
        if self.v5:
            kw["clean_start"] = not (self.session_expiry_s > 0)
            if self.session_expiry_s > 0:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = int(self.session_expiry_s)
                kw["properties"] = p
        self.client.connect_async(self.host, self.port, keepalive=30, **kw)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        return self.subscribed.wait(timeout)


def run_listen(args) -> int:
    """`kyc-edge verdicts listen`: print one JSON line per message, flag forged/tampered."""
    import sys
    keys: list = []
    bound: dict[str, str] = {}
    for spec in args.verify_key:
        keys += _verdict.load_public_keys(spec)
        bound.update(bound_keys(spec))       # <device>.pub in a key directory binds that key
    password = None
    if getattr(args, "password_file", ""):
        with open(args.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    done = threading.Event()
    state = {"n": 0, "bad": 0}

    def show(rec: Received) -> None:
        print(rec.line(), flush=True)
        if rec.status in ("forged", "invalid"):
            state["bad"] += 1
            print(f"WARNING: {rec.status.upper()} verdict on {rec.topic}: {rec.error}", file=sys.stderr,
                  flush=True)
        if rec.status == "ok":
            state["n"] += 1
            if args.count and state["n"] >= args.count:
                done.set()

    lst = Listener(args.broker, keys, show, topic=args.topic, protocol=args.protocol,
                   client_id=args.client_id or "", session_expiry_s=args.session_expiry,
                   username=args.username or "", password=password, ca_file=args.ca_file or "",
                   cert_file=args.cert_file or "", key_file=args.key_file or "", bound=bound).start()
    if lst.wait_subscribed(args.timeout if args.timeout and args.timeout > 0 else 30):
        print(f"kyc-edge verdicts listen: subscribed to {args.topic} on {args.broker}", file=sys.stderr, flush=True)
    else:
        print(f"kyc-edge verdicts listen: not subscribed yet ({args.broker} unreachable?), retrying",
              file=sys.stderr, flush=True)
    try:
        done.wait(args.timeout if args.timeout and args.timeout > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        lst.stop()
    time.sleep(0)
    return 1 if state["bad"] else 0
