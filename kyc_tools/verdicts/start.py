"""`kyc-edge verdicts start`: the operator's cmd/start with a nonce.

The nonce (32 hex) goes in the payload, its sha256 into the listener's state file; the device signs
`binding = {"kind": "nonce", "sha256": sha256(nonce)}` into the session's verdict, and `verdicts
listen` with the same --state accepts exactly one verdict for it (`replayed` for a second one,
`unbound` for a nonce it never issued)."""
from __future__ import annotations

import json
import os
import sys
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from kyc_tools.mqtt_client import apply_auth
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kyc_tools.verdicts.check import SeenStore, default_state_path


def send_start(url: str, topic: str, nonce: str, *, response_topic: str = "", correlation: bytes = b"",
               username: str = "", password: str | None = None, ca_file: str = "", cert_file: str = "",
               key_file: str = "", timeout: float = 10.0) -> None:
    u = urlsplit(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"kyc-start-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    apply_auth(c, tls=u.scheme == "mqtts", username=username, password=password, ca_file=ca_file,
               cert_file=cert_file, key_file=key_file)
    c.connect(u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883), keepalive=30)
    c.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation:
            props.CorrelationData = correlation
        info = c.publish(topic, json.dumps({"nonce": nonce}), qos=1, properties=props)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ConnectionError(f"cmd/start not acknowledged by {url} in {timeout:g} s")
    finally:
        c.disconnect()
        c.loop_stop()


def run_start(args) -> int:
    site, sep, dev = args.device.partition("/")
    if not sep or not site or not dev or any(ch in args.device for ch in "+#"):
        raise ValueError("--device: expected SITE/DEVICE")
    nonce = os.urandom(16).hex()
    store = SeenStore(args.state or default_state_path())
    try:
        h = store.issue_nonce(nonce)
    finally:
        store.close()
    pw = None
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            pw = f.read().strip()
    send_start(args.broker, f"{args.prefix.rstrip('/')}/{site}/{dev}/cmd/start", nonce,
               response_topic=args.response_topic, correlation=args.correlation.encode(),
               username=args.username, password=pw, ca_file=args.ca_file, cert_file=args.cert_file,
               key_file=args.key_file)
    print(json.dumps({"device": args.device, "nonce_sha256": h}), flush=True)
    print(f"kyc-edge verdicts start: sent to {site}/{dev}; the next session's verdict is bound to it", file=sys.stderr)
    return 0
