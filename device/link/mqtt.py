"""The MQTT link: verdicts from the durable outbox, retained status with LWT, session events,
inbound commands and fleet topics. `Link` is the wiring of its parts:

    topics.py     topic names, inbound topic -> command name
    transport.py  the paho client per connection (auth, TLS, LWT, MQTT 5 properties, network step)
    drain.py      the outbox drain, a pure state machine (window, replay, denied retry, purge)
    backoff.py    the reconnect back-off, a pure state machine (doubling, stable connection, flapping)
    status.py     the retained status payload, alarms, the CPU temperature
    inbox.py      inbound commands: checked, queued, dispatched on their own thread

Design: one I/O thread owns the paho client and is the only thread that touches it; other
threads enqueue and wake it. A fresh paho client is made for every connection, so paho never
re-sends on its own: the outbox is the single source of (re)transmission. On every (re)connect
the drain starts again at the oldest row, in order; a row is deleted only when its PUBACK
carries a success reason code (< 0x80). A failure code (e.g. 0x87 Not authorized from an ACL)
keeps the row, raises the `publish_denied` alarm and is logged; denied rows are retried after
`reconnect_max_s` or on the next reconnect. A verdict's PUBACK 0x10 *No matching subscribers* is a
success code, yet nobody took the verdict in (a restarted broker before the back office has
subscribed again): it is kept and retried the same way, under the `verdict_no_subscribers` alarm. Acknowledged rows are kept `replay_window_s`; after
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
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from device import verdict as _verdict
from device.config import Config
from device.link import events as _events
from device.link.backoff import Backoff
from device.link.drain import Delivered, Denied, Drain
from device.link.inbox import MAX_COMMAND_BYTES, MAX_QUEUED_COMMANDS, Inbox
from device.link.outbox import Outbox
from device.link.status import Status, cpu_temperature_c
from device.link.topics import command_name, fleet_topics, topics_for
from device.link.transport import Transport, command_reply_info, is_failure, is_no_subscribers, rc_str
from device.verdict import VerdictError

log = logging.getLogger("kyc_edge.link")


class Link:
    def __init__(self, cfg: Config, outbox: Outbox, *,
                 health: Callable[[], dict] = lambda: {},
                 on_command: Callable[[str, dict, Any], None] = lambda name, payload, props: None,
                 signer: Any = None, client_id: str | None = None,
                 thermal_root: str | Path | None = None):
        self.cfg = cfg
        self.m = m = cfg.mqtt
        self.outbox = outbox
        self.signer = signer
        self.device, self.site = cfg.device.id, cfg.device.site
        self.topics = topics_for(m.prefix, self.site, self.device)
        self.fleet_topics = fleet_topics(m.prefix, cfg.device.groups)
        self.client_id = client_id or f"kyc-edge-{self.site}-{self.device}"
        self.backoff = Backoff(m.reconnect_min_s, m.reconnect_max_s)   # backoff.py: pure, like the drain
        self.stats = {"connects": 0, "disconnects": 0, "published": 0, "acked": 0, "denied": 0,
                      "refused_connects": 0, "commands": 0, "bad_commands": 0, "dropped_commands": 0,
                      "replayed": 0}
        self.transport = Transport(m, device=self.device, site=self.site, status_topic=self.topics["status"],
                                   client_id=self.client_id)
        self.drain = Drain(m.max_inflight, m.replay_window_s, m.reconnect_max_s, stats=self.stats)
        self.status = Status(self.device, self.site, outbox, protocol=self.transport.protocol,
                             health=health, signer=signer, thermal_root=thermal_root)
        self.inbox = Inbox(on_command, self.stats)
        self.alarms = self.status.alarms           # one set: the daemon raises its alarms here too

        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_reason = "stopping"
        self._connected = threading.Event()
        self._conn_refused: Any = None
        self._client: mqtt.Client | None = None
        self._jobs: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self._next_status = 0.0

    # ------------------------------------------------------------ public API
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def v5(self) -> bool:
        return self.transport.v5

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> "Link":
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self.transport.open()
        self._thread = threading.Thread(target=self._run, name="kyc-link", daemon=True)
        self._thread.start()
        self.inbox.start()
        return self

    def stop(self, reason: str = "stopping", timeout: float = 5.0) -> None:
        """Publish `stopping` (retained), then disconnect so the broker publishes the LWT
        `offline` (MQTT 5: DISCONNECT 0x04; 3.1.1: an explicit retained `offline`)."""
        self._stop_reason = reason if isinstance(reason, str) else "stopping"
        self._stop.set()
        self.transport.wake()
        alive = False
        if self._thread:
            self._thread.join(timeout)
            alive = self._thread.is_alive()
        self.inbox.stop(1.0)
        self._thread = None
        if not alive:
            self.transport.close()

    def kick(self) -> None:
        """Wake the outbox drain (call after Outbox.put)."""
        self.drain.kick()
        self.transport.wake()

    def publish_status(self, extra: dict | None = None) -> None:
        if extra:
            self.status.add_extra(extra)
        self._jobs.put(("status",))
        self.transport.wake()

    def publish_session_event(self, event: dict) -> dict:
        """Validate (closed schema, raises VerdictError) and publish at QoS 0; dropped while
        disconnected (progress events are ephemeral)."""
        ev = _events.session_event(event)
        self._jobs.put(("session", json.dumps(ev, separators=(",", ":")).encode()))
        self.transport.wake()
        return ev

    def publish_update_status(self, status: dict) -> dict:
        st = _events.update_status(status)
        self.status.update = st
        self._jobs.put(("update",))
        self.transport.wake()
        return st

    def status_payload(self, state: str = "online") -> dict:
        return self.status.payload(state)

    # ------------------------------------------------------------ I/O thread
    def _run(self) -> None:
        while not self._stop.is_set():
            self._guarded_connection()
            if self._stop.is_set():
                break
            wait = self.backoff.next_wait(time.monotonic())
            if self.backoff.flapping and "connection_flapping" not in self.alarms:
                self.alarms.add("connection_flapping")
                log.warning("mqtt: the broker ended %d connections in a row within %.0f s of connecting: "
                            "another client uses client id %s (a cloned device id?) or the path is "
                            "unstable; reconnecting with back-off", self.backoff.short, self.backoff.stable_s,
                            self.client_id)
            self._stop.wait(wait * random.uniform(0.8, 1.2))
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
        t = self.transport
        c = t.make_client(on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                          on_publish=self._on_publish, on_message=self._on_message,
                          on_subscribe=self._on_subscribe)
        self._conn_refused = None
        self.drain.reset()
        if not t.connect(c):
            return False
        self._client = c
        was_connected = False
        deadline = time.monotonic() + c.connect_timeout
        try:
            while True:
                rc = t.step(c, 0.2 if self._connected.is_set() else 0.05)
                self._flush_acks()
                if self._conn_refused is not None or rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set():
                    was_connected = True
                    if self._stop.is_set():
                        self._graceful_close(c)
                        break
                    self._do_jobs(c)
                    self._pump(c)
                    self._periodic(c)
                elif self._stop.is_set() or time.monotonic() > deadline:
                    break
        except Exception as e:  # noqa: BLE001 - keep the link alive whatever paho raises
            log.warning("mqtt: connection loop error: %s", type(e).__name__)
        finally:
            self._flush_acks()
            if was_connected:
                self.stats["disconnects"] += 1
                self.drain.disconnected(time.time(), unexpected=not self._stop.is_set())
            self._connected.clear()
            self._client = None
            t.drop(c)
        return was_connected

    def _flush_acks(self) -> None:
        ids = self.drain.take_acked()
        if ids:
            try:
                self.outbox.ack_many(ids)
            except Exception as e:  # noqa: BLE001 - rows stay; they are re-sent and deduplicated
                log.error("outbox: ack failed: %s", type(e).__name__)

    def _graceful_close(self, c: mqtt.Client) -> None:
        st = self.status_payload("stopping")
        st["reason"] = self._stop_reason if re.fullmatch(r"[a-z][a-z0-9_]{0,31}", self._stop_reason) else "stopping"
        self.transport.graceful_close(c, st)

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
                self.transport.publish_session(c, self.topics["session"], job[1])
        if status:
            self._send_status(c)
        if update:
            self._send_update_status(c)

    def _send_status(self, c: mqtt.Client) -> None:
        self.transport.publish_json(c, self.topics["status"], self.status_payload("online"), qos=1, retain=True)
        iv = self.m.status_interval_s
        self._next_status = time.monotonic() + iv if iv > 0 else float("inf")

    def _send_update_status(self, c: mqtt.Client) -> None:
        if self.status.update is not None:
            self.transport.publish_json(c, self.topics["update_status"], self.status.update, qos=1, retain=True)

    def _periodic(self, c: mqtt.Client) -> None:
        if "connection_flapping" in self.alarms and self.backoff.held(time.monotonic()):
            self.alarms.discard("connection_flapping")      # this connection held: the alarm is over
            self._send_status(c)
        if time.monotonic() >= self._next_status:
            self._send_status(c)
        if self.status.outbox_full_changed():
            self._send_status(c)
        for p in self.drain.tick(time.monotonic(), time.time()):
            try:
                self.outbox.purge(p.acked_before)
            except Exception as e:  # noqa: BLE001
                log.warning("outbox: purge failed: %s", type(e).__name__)

    def _pump(self, c: mqtt.Client) -> None:
        req = self.drain.want()
        if req is None:
            return
        rows = self.outbox.rows(limit=req.limit, after_seq=req.after_seq, acked_since=req.acked_since)
        for action in self.drain.read(req, rows):
            row = action.row
            try:                         # the validator runs before every publish, too
                _verdict.check_signed_shape(_verdict.parse(row.payload))
            except VerdictError as e:
                log.error("outbox: row %s is not a valid signed verdict (%s); dropped, never published",
                          row.seq, e.detail)
                self.alarms.add("outbox_invalid_row")
                self.drain.skipped(row)
                self.outbox.ack_many([row.verdict_id])
                continue
            info = self.transport.publish_verdict(c, self.topics["verdict"], row)
            if info is None:
                self.drain.send_failed()
                return
            self.drain.sent(info.mid, row)

    # ------------------------------------------------------------ paho callbacks (I/O thread)
    def _on_connect(self, c, userdata, flags, reason_code, properties) -> None:
        if is_failure(reason_code):
            self._conn_refused = reason_code
            self.stats["refused_connects"] += 1
            log.error("mqtt: broker refused the connection: %s", rc_str(reason_code))
            return
        self.stats["connects"] += 1
        now = time.monotonic()
        self.backoff.connected(now)
        self.drain.connected(now)
        c.subscribe([(self.topics["cmd"], 1)] + [(t, 1) for t in self.fleet_topics])
        self._connected.set()
        self._send_status(c)               # `online` on every (re)connect
        self._send_update_status(c)
        t = self.transport
        log.info("mqtt: connected to %s:%s (MQTT %s%s)", t.host, t.port, t.protocol, ", TLS" if t.tls else "")

    def _on_disconnect(self, c, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("mqtt: disconnected: %s", rc_str(reason_code))
        self._connected.clear()

    def _on_subscribe(self, c, userdata, mid, reason_codes, properties) -> None:
        for rc in reason_codes or []:
            if is_failure(rc):
                self.alarms.add("command_subscribe_denied")
                log.error("mqtt: command subscription refused: %s", rc_str(rc))

    def _on_publish(self, c, userdata, mid, reason_code, properties) -> None:
        failed = is_failure(reason_code)
        unheard = is_no_subscribers(reason_code)     # only a verdict waits for a listener
        out = self.drain.puback(mid, failed or unheard, time.monotonic())
        if out is None:
            topic = self.transport.other_inflight.pop(mid, None)
            if topic is not None and failed:
                self.stats["denied"] += 1
                self.alarms.add("publish_denied")
                log.error("mqtt: publish to %s refused by the broker: %s", topic, rc_str(reason_code))
            return
        if isinstance(out, Denied) and out.row.acked:
            try:                         # a replayed copy was not taken in: the row is pending again
                self.outbox.reopen(out.row.verdict_id)
            except Exception as e:  # noqa: BLE001 - it stays delivered; logged, the link goes on
                log.error("outbox: reopen failed: %s", type(e).__name__)
        if isinstance(out, Denied) and unheard:
            if "verdict_no_subscribers" not in self.alarms:
                log.warning("mqtt: verdict %s reached no subscriber (%s); kept in the outbox, sent again",
                            out.row.verdict_id, rc_str(reason_code))
            self.alarms.add("verdict_no_subscribers")
        elif isinstance(out, Denied):
            self.alarms.add("publish_denied")
            log.error("mqtt: verdict %s refused by the broker (%s); kept in the outbox",
                      out.row.verdict_id, rc_str(reason_code))
        elif isinstance(out, Delivered) and out.denied_cleared:
            self.alarms.discard("publish_denied")
            self.alarms.discard("verdict_no_subscribers")

    def _on_message(self, c, userdata, msg) -> None:
        name = command_name(msg.topic, self.topics, self.m.prefix)
        if name:
            self.inbox.accept(name, msg.payload, getattr(msg, "properties", None))


def outbox_path(cfg: Config) -> Path:
    from device.config import outbox_path as _path     # one definition: [outbox] path, else <state_dir>/
    return _path(cfg)


def open_outbox(cfg: Config) -> Outbox:
    return Outbox(outbox_path(cfg), cfg.outbox.max_rows)


__all__ = ["Link", "topics_for", "command_reply_info", "cpu_temperature_c", "open_outbox",
           "outbox_path", "VerdictError", "MAX_COMMAND_BYTES", "MAX_QUEUED_COMMANDS"]
