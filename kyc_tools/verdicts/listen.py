"""Operator side: subscribe to verdicts, verify them, deduplicate by verdict_id.

The checks themselves live in `kyc_tools.verdicts.check` (shared with the PostgreSQL ingest).
Each message becomes one `Received` record with `status`:
    ok         every check passed, first time seen
    duplicate  same verdict_id accepted before (persistent across restarts with a SeenStore)
    forged     signature invalid, unknown key, the verdict claims another device than its topic, or
               it is signed with a key bound to another device (<device>.pub files, a registry)
    invalid    not JSON / not a signed verdict / schema violation
    stale      decided_at outside the freshness window (--max-age, --clock-skew)
    replayed   its signed binding does not match the Correlation Data it arrived with, or its
               nonce was used by another verdict
    unbound    it arrived with Correlation Data it does not sign, or names a nonce we never sent
"""
from __future__ import annotations

import collections
import json
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from kyc_tools.mqtt_client import apply_auth
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device import verdict as _verdict
from kyc_tools.verdicts.check import REJECTED, KeyRing, Policy, SeenStore, check, default_state_path


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
    """device id -> key_id for key files named <device>.pub/.pem/.b64 (a directory or one file)."""
    ring = KeyRing()
    ring.add_spec(spec)
    return {dev: sorted(kids)[0] for dev, kids in ring.by_device.items()}


def _props(properties: Any) -> tuple[bytes | None, str | None, dict]:
    if properties is None:
        return None, None, {}
    cd = getattr(properties, "CorrelationData", None)
    return (bytes(cd) if cd else None, getattr(properties, "ResponseTopic", None) or None,
            dict(getattr(properties, "UserProperty", None) or []))


def check_message(topic: str, payload: bytes, keys: list | KeyRing, dedup: Any,
                  properties: Any = None, bound: dict[str, str] | None = None, *,
                  policy: Policy | None = None, nonces: SeenStore | None = None,
                  now: float | None = None) -> Received:
    """One MQTT message -> Received. `keys` a KeyRing (bindings included) or a key list plus the
    old `bound` dict; no freshness check unless a `policy` is given."""
    corr, rt, ups = _props(properties)
    ring = keys if isinstance(keys, KeyRing) else KeyRing.from_bound(keys, bound)
    o = check(payload, topic=topic, ring=ring, policy=policy or Policy(max_age_s=None), correlation=corr,
              seen=dedup, nonces=nonces, now=now)
    return Received(o.status, topic, verdict=o.verdict, error=o.error, correlation=corr, response_topic=rt,
                    user_properties=ups)


class Listener:
    """A paho subscriber (own thread) feeding `on_received(Received)`.

    With `client_id` and `session_expiry_s > 0` it keeps a persistent MQTT 5 session, so QoS 1
    verdicts published while it is away (or across a broker restart with persistence) are queued
    by the broker and delivered when it comes back."""

    def __init__(self, url: str, keys: list, on_received: Callable[[Received], None], *,
                 topic: str = "kyc/v1/+/+/verdict", protocol: str = "5", client_id: str = "",
                 session_expiry_s: int = 0, username: str = "", password: str | None = None,
                 ca_file: str = "", cert_file: str = "", key_file: str = "",
                 tls_context: ssl.SSLContext | None = None, dedup: Any = None,
                 bound: dict[str, str] | None = None, ring: KeyRing | None = None,
                 policy: Policy | None = None, nonces: SeenStore | None = None):
        self.ring = ring if ring is not None else KeyRing.from_bound(keys, bound)
        self.keys = self.ring.keys
        self.policy = policy or Policy(max_age_s=None)
        self.nonces = nonces
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
        apply_auth(c, tls=self.tls, username=username, password=password, ca_file=ca_file,
                   cert_file=cert_file, key_file=key_file, tls_context=tls_context)
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
            rec = check_message(msg.topic, msg.payload, self.ring, self.dedup,
                                getattr(msg, "properties", None), policy=self.policy, nonces=self.nonces)
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


def listener_state(args) -> SeenStore:
    path = getattr(args, "state", "") or str(default_state_path())
    keep = max(7 * 86400.0, (args.max_age or 0) + args.clock_skew + 3600)
    return SeenStore(path, keep_s=keep)


def key_ring(args) -> KeyRing:
    ring = KeyRing()
    for spec in args.verify_key or []:
        ring.add_spec(spec)              # <device>.pub (a file or in a directory) binds that key
    for reg in getattr(args, "key_registry", None) or []:
        ring.add_registry(reg)
    if not ring.keys:
        raise _verdict.VerdictError("no verification keys: give --verify-key and/or --key-registry")
    return ring


def run_listen(args) -> int:
    """`kyc-edge verdicts listen`: print one JSON line per message, flag forged/tampered/replayed."""
    import sys
    ring = key_ring(args)
    policy = Policy(max_age_s=args.max_age if args.max_age and args.max_age > 0 else None,
                    skew_s=args.clock_skew, require_binding=not getattr(args, "allow_unbound", False))
    store = listener_state(args)
    password = None
    if getattr(args, "password_file", ""):
        with open(args.password_file, encoding="utf-8") as f:
            password = f.read().strip()
    done = threading.Event()
    state = {"n": 0, "bad": 0}

    def show(rec: Received) -> None:
        print(rec.line(), flush=True)
        if rec.status in REJECTED:
            state["bad"] += 1
            print(f"WARNING: {rec.status.upper()} verdict on {rec.topic}: {rec.error}", file=sys.stderr,
                  flush=True)
        if rec.status == "ok":
            state["n"] += 1
            if args.count and state["n"] >= args.count:
                done.set()

    lst = Listener(args.broker, [], show, topic=args.topic, protocol=args.protocol,
                   client_id=args.client_id or "", session_expiry_s=args.session_expiry,
                   username=args.username or "", password=password, ca_file=args.ca_file or "",
                   cert_file=args.cert_file or "", key_file=args.key_file or "", ring=ring, policy=policy,
                   dedup=store, nonces=store).start()
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
        with lst._lock:
            store.close()
    return 1 if state["bad"] else 0
