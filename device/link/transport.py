"""The MQTT connection: a fresh paho client per connection (auth, TLS >= 1.2, LWT), MQTT 5
properties, one network step, graceful close. Only the link's I/O thread calls into it, except
`wake()`.

paho's own loop() is not used: `step()` runs paho's documented external-loop API (socket(),
want_write(), loop_read/loop_write/loop_misc) in a select() that also watches the transport's
own wake-up socket pair, so other threads can wake the I/O thread without touching paho's
private attributes.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.link.status import offline_payload
from device.link.topics import CONTENT_TYPE, SESSION_EVENT_EXPIRY_S, VERDICT_SCHEMA_ID
from device.verdict import SCHEMA_VERSION

log = logging.getLogger("kyc_edge.link")

OK = mqtt.MQTT_ERR_SUCCESS


def is_failure(rc: Any) -> bool:
    if rc is None:
        return False
    if isinstance(rc, ReasonCode):
        return rc.is_failure
    try:
        return int(rc) >= 0x80
    except (TypeError, ValueError):
        return False


NO_MATCHING_SUBSCRIBERS = 0x10


def _rc_int(rc: Any) -> int:
    return int(rc.value if isinstance(rc, ReasonCode) else rc)


def is_no_subscribers(rc: Any) -> bool:
    """PUBACK 0x10 No matching subscribers: a success code, but nobody received the message (e.g.
    a restarted mosquitto that has not restored the back office's $share subscriptions yet)."""
    try:
        return _rc_int(rc) == NO_MATCHING_SUBSCRIBERS
    except (TypeError, ValueError, AttributeError):
        return False


def rc_str(rc: Any) -> str:
    try:
        return f"0x{_rc_int(rc):02x} {rc}"
    except Exception:  # noqa: BLE001
        return str(rc)


def command_reply_info(props: Any) -> tuple[str | None, bytes | None]:
    """(response_topic, correlation_data) of an MQTT 5 command, (None, None) on 3.1.1."""
    if props is None:
        return None, None
    rt = getattr(props, "ResponseTopic", None)
    cd = getattr(props, "CorrelationData", None)
    return (rt or None), (bytes(cd) if cd else None)


class Transport:
    def __init__(self, m, *, device: str, site: str, status_topic: str, client_id: str):
        self.m = m                                # cfg.mqtt
        self.device, self.site = device, site
        self.status_topic = status_topic
        self.client_id = client_id
        self.v5 = m.protocol == "5"
        u = urlsplit(m.url)
        self.tls = u.scheme == "mqtts"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (8883 if self.tls else 1883)
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.other_inflight: dict[int, str] = {}  # mid -> topic of a QoS 1 non-verdict message

    @property
    def protocol(self) -> str:
        return "5" if self.v5 else "3.1.1"

    # ------------------------------------------------------------ wake-up pair
    def open(self) -> None:
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)

    def close(self) -> None:
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._wake_r = self._wake_w = None

    def wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"0")
            except OSError:                       # full (already woken) or closed
                pass

    # ------------------------------------------------------------ one connection
    def _password(self) -> str | None:
        if not self.m.password_file:
            return None
        return Path(self.m.password_file).read_text(encoding="utf-8").strip()

    def make_client(self, *, on_connect, on_disconnect, on_publish, on_message, on_subscribe) -> mqtt.Client:
        proto = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        kw = {} if self.v5 else {"clean_session": True}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto, **kw)
        c.connect_timeout = max(1.0, min(self.m.connect_timeout_s or 5.0, 30.0))
        c.max_inflight_messages_set(self.m.max_inflight)
        c.max_queued_messages_set(0)
        if self.m.username:
            c.username_pw_set(self.m.username, self._password())
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.m.ca_file or None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.m.cert_file:
                ctx.load_cert_chain(self.m.cert_file, self.m.key_file or None)
            c.tls_set_context(ctx)
        wp = None
        if self.v5:
            wp = Properties(PacketTypes.WILLMESSAGE)
            wp.ContentType = CONTENT_TYPE
            wp.PayloadFormatIndicator = 1
        c.will_set(self.status_topic, offline_payload(self.device, self.site), qos=1, retain=True, properties=wp)
        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_publish = on_publish
        c.on_message = on_message
        c.on_subscribe = on_subscribe
        self.other_inflight.clear()
        return c

    def connect(self, c: mqtt.Client) -> bool:
        try:
            if self.v5:
                c.connect(self.host, self.port, keepalive=self.m.keepalive_s, clean_start=True)
            else:
                c.connect(self.host, self.port, keepalive=self.m.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as e:
            log.info("mqtt: cannot connect to %s:%s: %s", self.host, self.port, type(e).__name__)
            return False
        return True

    def step(self, c: mqtt.Client, timeout: float) -> int:
        """One round of network I/O (what paho's loop() does), woken early by wake()."""
        sock = c.socket()
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        pending = sock.pending() if hasattr(sock, "pending") else 0
        rlist = [sock] + ([self._wake_r] if self._wake_r is not None else [])
        try:
            r, w, _ = select.select(rlist, [sock] if c.want_write() else [], [], 0.0 if pending else timeout)
        except (TypeError, ValueError, OSError):
            return mqtt.MQTT_ERR_CONN_LOST
        if sock in r or pending:
            rc = c.loop_read()
            if rc or c.socket() is None:
                return rc or mqtt.MQTT_ERR_CONN_LOST
        if self._wake_r is not None and self._wake_r in r:
            try:
                self._wake_r.recv(10000)
            except (BlockingIOError, OSError):
                pass
        if c.want_write():
            rc = c.loop_write()
            if rc or c.socket() is None:
                return rc or mqtt.MQTT_ERR_CONN_LOST
        return c.loop_misc()

    @staticmethod
    def drop(c: mqtt.Client) -> None:
        try:
            s = c.socket()
            if s is not None:
                s.close()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------ publishing
    def _props(self, *, expiry: int | None = None, user: list | None = None) -> Properties | None:
        if not self.v5:
            return None
        p = Properties(PacketTypes.PUBLISH)
        p.ContentType = CONTENT_TYPE
        p.PayloadFormatIndicator = 1
        if expiry:
            p.MessageExpiryInterval = int(expiry)
        p.UserProperty = user if user is not None else [("schema_version", SCHEMA_VERSION)]
        return p

    def publish_json(self, c: mqtt.Client, topic: str, obj: dict, *, qos: int, retain: bool,
                     expiry: int | None = None):
        """The message info, or None if the client refused it."""
        info = c.publish(topic, json.dumps(obj, separators=(",", ":")), qos=qos, retain=retain,
                         properties=self._props(expiry=expiry))
        if info.rc != OK:
            return None
        if qos:
            self.other_inflight[info.mid] = topic
        return info

    def publish_session(self, c: mqtt.Client, topic: str, payload: bytes) -> None:
        c.publish(topic, payload, qos=0, retain=False, properties=self._props(expiry=SESSION_EVENT_EXPIRY_S))

    def publish_verdict(self, c: mqtt.Client, topic: str, row):
        """The message info of one outbox row at QoS 1, or None if the client refused it."""
        p = self._props(expiry=self.m.message_expiry_s or None,
                        user=[("schema", VERDICT_SCHEMA_ID), ("schema_version", SCHEMA_VERSION),
                              ("verdict_id", row.verdict_id)])
        if p is not None:
            if row.response_topic:
                p.ResponseTopic = row.response_topic
            if row.correlation:
                p.CorrelationData = row.correlation
        info = c.publish(topic, row.payload, qos=1, retain=False, properties=p)
        return info if info.rc == OK else None

    def graceful_close(self, c: mqtt.Client, stopping: dict) -> None:
        """`stopping` (retained), on 3.1.1 an explicit retained `offline`, then DISCONNECT (MQTT 5:
        0x04 Disconnect with will message, so the broker publishes the LWT `offline`)."""
        infos = [self.publish_json(c, self.status_topic, stopping, qos=1, retain=True)]
        if not self.v5:
            infos.append(self.publish_json(c, self.status_topic, json.loads(offline_payload(self.device, self.site)),
                                           qos=1, retain=True))
        end = time.monotonic() + 2.0
        while time.monotonic() < end and any(i is not None and not i.is_published() for i in infos):
            if self.step(c, 0.05) != OK:
                return
        if self.v5:
            c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        else:
            c.disconnect()
        end = time.monotonic() + 1.0
        while time.monotonic() < end and self.step(c, 0.05) == OK:
            pass
