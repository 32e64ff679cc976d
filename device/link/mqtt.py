"""The MQTT link: verdicts from the durable outbox, retained status with LWT, session events,
inbound commands and fleet topics.

Topics (prefix defaults to kyc/v1):
    <prefix>/<site>/<device>/verdict         QoS 1, not retained, signed closed-schema verdict
    <prefix>/<site>/<device>/status          QoS 1, retained: online | offline (LWT) | stopping + health
    <prefix>/<site>/<device>/session         QoS 0, progress events (closed schema, non-biometric)
    <prefix>/<site>/<device>/update/status   QoS 1, retained, fleet update state
    <prefix>/<site>/<device>/cmd/#           inbound commands (subscribed QoS 1)
    <prefix>/_fleet/all/cmd/#, <prefix>/_fleet/group/<g>/cmd/#   fleet-wide / group commands

Design: one I/O thread owns the paho client and is the only thread that touches it; other
threads enqueue and wake it. A fresh paho client is made for every connection, so paho never
re-sends on its own: the outbox is the single source of (re)transmission. On every (re)connect
the drain starts again at the oldest row, in order; a row is deleted only when its PUBACK
carries a success reason code (< 0x80). A failure code (e.g. 0x87 Not authorized from an ACL)
keeps the row, raises the `publish_denied` alarm and is logged; denied rows are retried after
`reconnect_max_s` or on the next reconnect. Acknowledged rows are kept `replay_window_s`; after
an unexpected disconnect the ones acknowledged within that window before it are sent again,
because a broker that crashes (kill -9, OOM, power) can lose messages it already acknowledged.
Subscribers deduplicate by verdict_id.
"""
from __future__ import annotations

import json
import logging
import queue
import random
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.config import Config
from device.link import events as _events
from device.link.outbox import Outbox, Row
from device import verdict as _verdict
from device.verdict import SCHEMA_VERSION, VerdictError, rfc3339

log = logging.getLogger("kyc_edge.link")

CONTENT_TYPE = "application/json"
VERDICT_SCHEMA_ID = "kyc-edge/verdict"
MAX_COMMAND_BYTES = 16384
MAX_QUEUED_COMMANDS = 512        # waiting for the on_command thread (<= 8 MiB of payloads)
SESSION_EVENT_EXPIRY_S = 60


def topics_for(prefix: str, site: str, device: str) -> dict[str, str]:
    base = f"{prefix.rstrip('/')}/{site}/{device}"
    return {"base": base, "verdict": f"{base}/verdict", "status": f"{base}/status",
            "session": f"{base}/session", "cmd": f"{base}/cmd/#",
            "update_status": f"{base}/update/status"}


def cpu_temperature_c() -> float | None:
    """Highest readable thermal zone (Pi: zone0 = SoC; Jetson: several zones), else None."""
    best = None
    for p in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        try:
            v = int(p.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -40 < v < 150:
            best = v if best is None else max(best, v)
    return round(best, 1) if best is not None else None


def command_reply_info(props: Any) -> tuple[str | None, bytes | None]:
    """(response_topic, correlation_data) of an MQTT 5 command, (None, None) on 3.1.1."""
    if props is None:
        return None, None
    rt = getattr(props, "ResponseTopic", None)
    cd = getattr(props, "CorrelationData", None)
    return (rt or None), (bytes(cd) if cd else None)


def _is_failure(rc: Any) -> bool:
    if rc is None:
        return False
    if isinstance(rc, ReasonCode):
        return rc.is_failure
    try:
        return int(rc) >= 0x80
    except (TypeError, ValueError):
        return False


def _rc_str(rc: Any) -> str:
    try:
        return f"0x{int(rc.value if isinstance(rc, ReasonCode) else rc):02x} {rc}"
    except Exception:  # noqa: BLE001
        return str(rc)


class Link:
    def __init__(self, cfg: Config, outbox: Outbox, *,
                 health: Callable[[], dict] = lambda: {},
                 on_command: Callable[[str, dict, Any], None] = lambda name, payload, props: None,
                 signer: Any = None, client_id: str | None = None):
        self.cfg = cfg
        self.m = cfg.mqtt
        self.outbox = outbox
        self.health = health
        self.on_command = on_command
        self.signer = signer
        self.device, self.site = cfg.device.id, cfg.device.site
        self.topics = topics_for(self.m.prefix, self.site, self.device)
        self.fleet_topics = [f"{self.m.prefix.rstrip('/')}/_fleet/all/cmd/#"] + [
            f"{self.m.prefix.rstrip('/')}/_fleet/group/{g}/cmd/#" for g in cfg.device.groups]
        self.client_id = client_id or f"kyc-edge-{self.site}-{self.device}"
        self.v5 = self.m.protocol == "5"
        u = urlsplit(self.m.url)
        self.tls = u.scheme == "mqtts"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (8883 if self.tls else 1883)

        self._thread: threading.Thread | None = None
        self._cmd_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_reason = "stopping"
        self._connected = threading.Event()
        self._conn_refused: Any = None
        self._client: mqtt.Client | None = None
        self._jobs: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self._cmds: "queue.Queue[tuple | None]" = queue.Queue(maxsize=MAX_QUEUED_COMMANDS)
        self._kicks = 1                  # bumped by kick(); the drain re-reads when it changed
        self._seen_kicks = 0
        self._next_poll = 0.0
        self._inflight: dict[int, Row] = {}
        self._acked: list[str] = []
        self._replay_since: float | None = None     # wall time; replay rows acked since then
        self._connected_mono = 0.0
        self._next_purge = 0.0
        self._other_inflight: dict[int, str] = {}
        self._last_seq = 0
        self._denied: dict[str, int] = {}
        self._retry_denied_at = 0.0
        self._status_extra: dict = {}
        self._update_status: dict | None = None
        self._started_wall = time.time()
        self._started_mono = time.monotonic()
        self._next_status = 0.0
        self.alarms: set[str] = set()
        self._state_lock = threading.Lock()
        self.stats = {"connects": 0, "disconnects": 0, "published": 0, "acked": 0, "denied": 0,
                      "refused_connects": 0, "commands": 0, "bad_commands": 0, "dropped_commands": 0, "replayed": 0}

    # ------------------------------------------------------------ public API
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> "Link":
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kyc-link", daemon=True)
        self._cmd_thread = threading.Thread(target=self._dispatch_commands, name="kyc-link-cmd", daemon=True)
        self._thread.start()
        self._cmd_thread.start()
        return self

    def stop(self, reason: str = "stopping", timeout: float = 5.0) -> None:
        """Publish `stopping` (retained), then disconnect so the broker publishes the LWT
        `offline` (MQTT 5: DISCONNECT 0x04; 3.1.1: an explicit retained `offline`)."""
        self._stop_reason = reason if isinstance(reason, str) else "stopping"
        self._stop.set()
        self._wake()
        if self._thread:
            self._thread.join(timeout)
        if self._cmd_thread:
            try:
                self._cmds.put_nowait(None)
            except queue.Full:
                pass
            self._cmd_thread.join(1.0)
        self._thread = self._cmd_thread = None

    def kick(self) -> None:
        """Wake the outbox drain (call after Outbox.put)."""
        self._kicks += 1
        self._wake()

    def publish_status(self, extra: dict | None = None) -> None:
        if extra:
            with self._state_lock:
                self._status_extra.update(extra)
        self._jobs.put(("status",))
        self._wake()

    def publish_session_event(self, event: dict) -> dict:
        """Validate (closed schema, raises VerdictError) and publish at QoS 0; dropped while
        disconnected (progress events are ephemeral)."""
        ev = _events.session_event(event)
        self._jobs.put(("session", json.dumps(ev, separators=(",", ":")).encode()))
        self._wake()
        return ev

    def publish_update_status(self, status: dict) -> dict:
        st = _events.update_status(status)
        self._update_status = st
        self._jobs.put(("update",))
        self._wake()
        return st

    def status_payload(self, state: str = "online") -> dict:
        ob_depth = self.outbox.depth()
        full = ob_depth >= self.outbox.max_rows
        with self._state_lock:
            alarms = set(self.alarms)
            extra = dict(self._status_extra)
        alarms.discard("outbox_full")
        if full:
            alarms.add("outbox_full")
        st = {
            "state": state, "device": self.device, "site": self.site,
            "at": rfc3339(time.time()), "since": rfc3339(self._started_wall),
            "uptime_s": int(time.monotonic() - self._started_mono),
            "schema_version": SCHEMA_VERSION,
            "outbox": {"depth": ob_depth, "max": self.outbox.max_rows, "full": full},
            "alarms": sorted(alarms),
            "cpu_temp_c": cpu_temperature_c(),
            "protocol": "5" if self.v5 else "3.1.1",
        }
        if self.signer is not None:
            st["key_id"] = self.signer.key_id
            st["public_key"] = self.signer.public_key_b64
        try:
            h = self.health() or {}
        except Exception as e:  # noqa: BLE001 - health must never kill the link
            log.warning("health callback failed: %s", type(e).__name__)
            h = {}
        for k, v in _events.sanitize_health({**h, **extra}).items():
            if k not in ("state", "device", "site", "at") and not (v is None and st.get(k) is not None):
                st[k] = v
        return st

    # ------------------------------------------------------------ I/O thread
    def _wake(self) -> None:
        c = self._client
        w = getattr(c, "_sockpairW", None) if c is not None else None
        if w is not None:
            try:
                w.send(b"0")
            except OSError:
                pass

    def _password(self) -> str | None:
        if not self.m.password_file:
            return None
        return Path(self.m.password_file).read_text(encoding="utf-8").strip()

    def _make_client(self) -> mqtt.Client:
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
        offline = json.dumps({"state": "offline", "device": self.device, "site": self.site,
                              "schema_version": SCHEMA_VERSION}, separators=(",", ":"))
        wp = None
        if self.v5:
            wp = Properties(PacketTypes.WILLMESSAGE)
            wp.ContentType = CONTENT_TYPE
            wp.PayloadFormatIndicator = 1
        c.will_set(self.topics["status"], offline, qos=1, retain=True, properties=wp)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _run(self) -> None:
        delay = self.m.reconnect_min_s
        while not self._stop.is_set():
            was_connected = self._guarded_connection()
            if self._stop.is_set():
                break
            if was_connected:
                delay = self.m.reconnect_min_s
            wait = delay * random.uniform(0.8, 1.2)
            self._stop.wait(wait)
            delay = min(delay * 2, self.m.reconnect_max_s)
        self._connected.clear()

    def _guarded_connection(self) -> bool:
        """One connection attempt that can never end the I/O thread (an unreadable password or
        certificate file, a bad TLS setting): logged once per distinct error, then retried with
        the usual back-off."""
        try:
            return self._one_connection()
        except Exception as e:  # noqa: BLE001
            why = f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"
            if why != getattr(self, "_last_setup_error", None):
                self._last_setup_error = why
                log.error("mqtt: cannot set up the connection (%s); retrying", why)
            self.alarms.add("link_setup_failed")
            return False

    def _one_connection(self) -> bool:
        c = self._make_client()
        self._conn_refused = None
        self._inflight.clear()
        self._other_inflight.clear()
        self._last_seq = 0
        self._seen_kicks = 0
        try:
            if self.v5:
                c.connect(self.host, self.port, keepalive=self.m.keepalive_s, clean_start=True)
            else:
                c.connect(self.host, self.port, keepalive=self.m.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as e:
            log.info("mqtt: cannot connect to %s:%s: %s", self.host, self.port, type(e).__name__)
            return False
        self._client = c
        was_connected = False
        deadline = time.monotonic() + c.connect_timeout
        try:
            while True:
                rc = c.loop(timeout=0.2 if self._connected.is_set() else 0.05)
                self._flush_acks()
                if self._conn_refused is not None:
                    break
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set():
                    was_connected = True
                    if self._stop.is_set():
                        self._graceful_close(c)
                        break
                    self._do_jobs(c)
                    self._pump(c)
                    self._periodic(c)
                else:
                    if self._stop.is_set() or time.monotonic() > deadline:
                        break
        except Exception as e:  # noqa: BLE001 - keep the link alive whatever paho raises
            log.warning("mqtt: connection loop error: %s", type(e).__name__)
        finally:
            self._flush_acks()
            if was_connected:
                self.stats["disconnects"] += 1
                if not self._stop.is_set() and self.m.replay_window_s > 0:
                    since = time.time() - self.m.replay_window_s
                    self._replay_since = since if self._replay_since is None else min(since, self._replay_since)
            self._connected.clear()
            self._client = None
            try:
                c.socket() and c.socket().close()
            except Exception:  # noqa: BLE001
                pass
            for s in ("_sockpairR", "_sockpairW"):
                sp = getattr(c, s, None)
                if sp is not None:
                    try:
                        sp.close()
                    except OSError:
                        pass
        return was_connected

    def _flush_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            try:
                self.outbox.ack_many(ids)
            except Exception as e:  # noqa: BLE001 - rows stay; they are re-sent and deduplicated
                log.error("outbox: ack failed: %s", type(e).__name__)

    def _graceful_close(self, c: mqtt.Client) -> None:
        st = self.status_payload("stopping")
        st["reason"] = self._stop_reason if re.fullmatch(r"[a-z][a-z0-9_]{0,31}", self._stop_reason) else "stopping"
        infos = [self._publish_json(c, self.topics["status"], st, qos=1, retain=True)]
        if not self.v5:
            off = {"state": "offline", "device": self.device, "site": self.site,
                   "schema_version": SCHEMA_VERSION}
            infos.append(self._publish_json(c, self.topics["status"], off, qos=1, retain=True))
        end = time.monotonic() + 2.0
        while time.monotonic() < end and any(i is not None and not i.is_published() for i in infos):
            if c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                return
        if self.v5:
            c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        else:
            c.disconnect()
        end = time.monotonic() + 1.0
        while time.monotonic() < end and c.loop(timeout=0.05) == mqtt.MQTT_ERR_SUCCESS:
            pass

    def _publish_json(self, c: mqtt.Client, topic: str, obj: dict, *, qos: int, retain: bool,
                      expiry: int | None = None):
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = CONTENT_TYPE
            props.PayloadFormatIndicator = 1
            props.UserProperty = [("schema_version", SCHEMA_VERSION)]
            if expiry:
                props.MessageExpiryInterval = int(expiry)
        info = c.publish(topic, json.dumps(obj, separators=(",", ":")), qos=qos, retain=retain,
                         properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        if qos:
            self._other_inflight[info.mid] = topic
        return info

    def _do_jobs(self, c: mqtt.Client) -> None:
        status = update = False
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job[0] == "status":
                status = True
            elif job[0] == "update":
                update = True
            elif job[0] == "session":
                props = None
                if self.v5:
                    props = Properties(PacketTypes.PUBLISH)
                    props.ContentType = CONTENT_TYPE
                    props.PayloadFormatIndicator = 1
                    props.MessageExpiryInterval = SESSION_EVENT_EXPIRY_S
                    props.UserProperty = [("schema_version", SCHEMA_VERSION)]
                c.publish(self.topics["session"], job[1], qos=0, retain=False, properties=props)
        if status:
            self._send_status(c)
        if update and self._update_status is not None:
            self._publish_json(c, self.topics["update_status"], self._update_status, qos=1, retain=True)

    def _send_status(self, c: mqtt.Client) -> None:
        self._publish_json(c, self.topics["status"], self.status_payload("online"), qos=1, retain=True)
        iv = self.m.status_interval_s
        self._next_status = time.monotonic() + iv if iv > 0 else float("inf")

    def _periodic(self, c: mqtt.Client) -> None:
        now = time.monotonic()
        if now >= self._next_status:
            self._send_status(c)
        full = self.outbox.full()
        if full != ("outbox_full" in self.alarms):
            (self.alarms.add if full else self.alarms.discard)("outbox_full")
            self._send_status(c)
        if self._denied and not self._inflight and now >= self._retry_denied_at:
            self._retry_denied_at = now + self.m.reconnect_max_s
            self._last_seq = 0           # resend from the oldest row (the denied ones)
            self._seen_kicks = 0
        if (now >= self._next_purge and self._replay_since is None
                and now - self._connected_mono >= self.m.replay_window_s):
            self._next_purge = now + 1.0
            try:
                self.outbox.purge(time.time() - self.m.replay_window_s)
            except Exception as e:  # noqa: BLE001
                log.warning("outbox: purge failed: %s", type(e).__name__)
        if now >= self._next_poll:       # rows put by another process / without kick()
            self._next_poll = now + 1.0
            self._seen_kicks = 0

    def _verdict_props(self, row: Row) -> Properties | None:
        if not self.v5:
            return None
        p = Properties(PacketTypes.PUBLISH)
        p.ContentType = CONTENT_TYPE
        p.PayloadFormatIndicator = 1
        if self.m.message_expiry_s:
            p.MessageExpiryInterval = self.m.message_expiry_s
        p.UserProperty = [("schema", VERDICT_SCHEMA_ID), ("schema_version", SCHEMA_VERSION),
                          ("verdict_id", row.verdict_id)]
        if row.response_topic:
            p.ResponseTopic = row.response_topic
        if row.correlation:
            p.CorrelationData = row.correlation
        return p

    def _pump(self, c: mqtt.Client) -> None:
        room = self.m.max_inflight - len(self._inflight)
        kicks = self._kicks
        if room <= 0 or kicks == self._seen_kicks:
            return
        rows = self.outbox.rows(limit=room, after_seq=self._last_seq, acked_since=self._replay_since)
        if len(rows) < room:
            self._seen_kicks = kicks     # drained up to this kick
            self._replay_since = None    # replay pass (if any) complete
        for row in rows:
            try:                         # the validator runs before every publish, too
                _verdict.check_signed_shape(_verdict.parse(row.payload))
            except VerdictError as e:
                log.error("outbox: row %s is not a valid signed verdict (%s); dropped, never published",
                          row.seq, e.detail)
                self.alarms.add("outbox_invalid_row")
                self._last_seq = row.seq
                self.outbox.ack_many([row.verdict_id])
                continue
            info = c.publish(self.topics["verdict"], row.payload, qos=1, retain=False,
                             properties=self._verdict_props(row))
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._seen_kicks = 0
                return
            self._inflight[info.mid] = row
            self._last_seq = row.seq
            self.stats["published"] += 1
            if row.acked:
                self.stats["replayed"] += 1

    # ------------------------------------------------------------ paho callbacks (I/O thread)
    def _on_connect(self, c, userdata, flags, reason_code, properties) -> None:
        if _is_failure(reason_code):
            self._conn_refused = reason_code
            self.stats["refused_connects"] += 1
            log.error("mqtt: broker refused the connection: %s", _rc_str(reason_code))
            return
        self.stats["connects"] += 1
        self._connected_mono = time.monotonic()
        subs = [(self.topics["cmd"], 1)] + [(t, 1) for t in self.fleet_topics]
        c.subscribe(subs)
        self._connected.set()
        self._send_status(c)               # `online` on every (re)connect
        if self._update_status is not None:
            self._publish_json(c, self.topics["update_status"], self._update_status, qos=1, retain=True)
        log.info("mqtt: connected to %s:%s (MQTT %s%s)", self.host, self.port,
                 "5" if self.v5 else "3.1.1", ", TLS" if self.tls else "")

    def _on_disconnect(self, c, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("mqtt: disconnected: %s", _rc_str(reason_code))
        self._connected.clear()

    def _on_subscribe(self, c, userdata, mid, reason_codes, properties) -> None:
        for rc in reason_codes or []:
            if _is_failure(rc):
                self.alarms.add("command_subscribe_denied")
                log.error("mqtt: command subscription refused: %s", _rc_str(rc))

    def _on_publish(self, c, userdata, mid, reason_code, properties) -> None:
        row = self._inflight.pop(mid, None)
        if row is None:
            topic = self._other_inflight.pop(mid, None)
            if topic is not None and _is_failure(reason_code):
                self.stats["denied"] += 1
                self.alarms.add("publish_denied")
                log.error("mqtt: publish to %s refused by the broker: %s", topic, _rc_str(reason_code))
            return
        if _is_failure(reason_code):
            self.stats["denied"] += 1
            self._denied[row.verdict_id] = self._denied.get(row.verdict_id, 0) + 1
            if len(self._denied) > 1000:
                self._denied.pop(next(iter(self._denied)))
            self.alarms.add("publish_denied")
            log.error("mqtt: verdict %s refused by the broker (%s); kept in the outbox",
                      row.verdict_id, _rc_str(reason_code))
            if not self._retry_denied_at or self._retry_denied_at < time.monotonic():
                self._retry_denied_at = time.monotonic() + self.m.reconnect_max_s
            return
        self._acked.append(row.verdict_id)      # deleted in one transaction after this loop round
        self.stats["acked"] += 1
        if self._denied.pop(row.verdict_id, None) is not None and not self._denied:
            self.alarms.discard("publish_denied")

    def _on_message(self, c, userdata, msg) -> None:
        topic = msg.topic
        name = None
        own = self.topics["cmd"][:-1]            # '<base>/cmd/'
        if topic.startswith(own):
            name = topic[len(own):]
        else:
            root = self.m.prefix.rstrip("/") + "/"
            if topic.startswith(root + "_fleet/"):
                name = topic[len(root):]            # '_fleet/all/cmd/x' or '_fleet/group/g/cmd/x'
        if not name:
            return
        if len(msg.payload) > MAX_COMMAND_BYTES:
            self.stats["bad_commands"] += 1
            log.warning("mqtt: command %s ignored: payload too large", name)
            return
        try:
            payload = json.loads(msg.payload) if msg.payload else {}
            if not isinstance(payload, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            self.stats["bad_commands"] += 1
            log.warning("mqtt: command %s ignored: not a JSON object", name)
            return
        self.stats["commands"] += 1
        try:
            self._cmds.put_nowait((name, payload, getattr(msg, "properties", None)))
        except queue.Full:
            self.stats["dropped_commands"] += 1
            log.warning("mqtt: command %s dropped: command queue full (%d waiting)", name, MAX_QUEUED_COMMANDS)

    def _dispatch_commands(self) -> None:
        while True:
            item = self._cmds.get()
            if item is None:
                return
            name, payload, props = item
            try:
                self.on_command(name, payload, props)
            except Exception as e:  # noqa: BLE001
                log.warning("mqtt: command handler for %s failed: %s", name, type(e).__name__)


def outbox_path(cfg: Config) -> Path:
    return Path(cfg.outbox.path) if cfg.outbox.path else Path(cfg.device.state_dir) / "outbox.sqlite"


def open_outbox(cfg: Config) -> Outbox:
    return Outbox(outbox_path(cfg), cfg.outbox.max_rows)


__all__ = ["Link", "topics_for", "command_reply_info", "cpu_temperature_c", "open_outbox",
           "outbox_path", "VerdictError"]

