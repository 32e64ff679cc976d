"""`kyc-edge verdicts ingest`: verdicts from MQTT into PostgreSQL, exactly once, forgeries quarantined.

Run N of these (one per core or host) with distinct, stable client ids: they share the load through
the MQTT 5 shared subscription `$share/<group>/<prefix>/+/+/verdict`.

Per message (verdict topic):
  1. closed envelope and schema (device.verdict.check_signed_shape)          -> else `invalid`
  2. the signing key, looked up by key_id in `device_keys` (enrolled by `kyc-edge fleet enrol`,
     never trusted on first use)                                              -> else `unknown_key`
     not revoked                                                              -> else `revoked_key`
     enrolled for the site/device of the topic                                -> else `wrong_device_key`
  3. signature and topic/device/site agreement (kyc_tools.verdicts.listen.check_message)
                                                                              -> `forged` / `topic_mismatch`
     (kyc_tools.verdicts.check.check when present: also the freshness window -> `stale`, and the
     signed session binding: Correlation Data / a nonce from `issued_nonces` -> `replayed`/`unbound`)
  4. INSERT ... ON CONFLICT (verdict_id) DO NOTHING; rejected ones go to `quarantine` instead.
The batch is committed, and only then is each message acknowledged (paho manual_ack: PUBACK after
commit), so a worker killed mid-batch loses nothing: the broker re-sends what was not acknowledged
(persistent session: clean_start=False, a session expiry interval, the same client id on restart).

Retained `<prefix>/+/+/status` and `<prefix>/+/+/update/status` (ordinary subscriptions: MQTT 5 sends
no retained messages on shared ones) go into `devices` for enrolled devices only, newer-wins; a status
is merged over the previous one, so the short LWT `offline` keeps the last known versions and depth.

PostgreSQL loss: the batch is retried with exponential back-off (0.2 s .. 10 s), nothing is
acknowledged meanwhile, so the broker stops sending once `receive_maximum` messages are unacknowledged.
Broker loss: paho reconnects with back-off (0.2 s doubling up to 10 s); messages received on a lost
connection are never acknowledged, from the moment it is lost: not while there is no connection
(such a PUBACK would only be queued and dropped, but counted as `acked`) and not on a later one
(their packet ids belong to the old connection; the broker re-sends them, and they come back as
duplicates). The connection generation changes on disconnect and on connect, under the lock the
acknowledgements are sent under, so no PUBACK of an old connection can be queued behind the new CONNECT.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from kyc_tools.mqtt_client import apply_auth
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from device import verdict as _verdict
from device.link import events as _events
from kyc_tools.verdicts import db as _db
from kyc_tools.verdicts.listen import check_message

log = logging.getLogger("kyc_tools.ingest")

MAX_STATUS_BYTES = 16384
# Fault injection for tests and `bench fleet`: "before_commit:N" / "before_ack:N" SIGKILLs this
# process at batch N, rows inserted but not committed / committed but not acknowledged.
KILL_ENV = "KYC_EDGE_INGEST_KILL_AT"
KEY_CACHE_S = 10.0          # a revocation takes effect within this long
NEG_CACHE_S = 2.0           # unknown key ids are looked up again after this long


try:        # the shared operator-side check (signature, topic, key binding, freshness, session binding)
    from kyc_tools.verdicts import check as _vcheck           # type: ignore[attr-defined]
    if not hasattr(_vcheck, "check"):
        _vcheck = None
except ImportError:
    _vcheck = None
DEFAULT_MAX_AGE_S = 7 * 86400.0   # a box offline for days still delivers; older is quarantined `stale`


class _PgNonces:
    """`nonce_use` of kyc_tools.verdicts.check over the issued_nonces table (same connection)."""

    def __init__(self, ingest: "Ingest"):
        self.ingest = ingest

    def nonce_use(self, sha256: str, verdict_id: str) -> str:
        c = self.ingest._conn
        c.execute("UPDATE issued_nonces SET verdict_id = %s::uuid WHERE sha256 = %s AND verdict_id IS NULL",
                  (verdict_id, sha256))
        row = c.execute("SELECT verdict_id::text FROM issued_nonces WHERE sha256 = %s", (sha256,)).fetchone()
        if row is None:
            return "unknown"
        return "ok" if row[0] == verdict_id else "replayed"


@dataclass
class Item:
    gen: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None = None


@dataclass
class Outcome:
    kind: str                   # verdict | quarantine | status | update | ignored
    row: tuple | None = None
    decided: float | None = None


def _killpoint(step: str, batch_no: int) -> None:
    spec = os.environ.get(KILL_ENV, "")
    if spec and spec == f"{step}:{batch_no}":
        os.kill(os.getpid(), signal.SIGKILL)


def _ts(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class Ingest:
    def __init__(self, dsn: str, broker: str, *, client_id: str, group: str = "kyc-ingest",
                 prefix: str = "kyc/v1", session_expiry_s: int = 3600, receive_maximum: int = 200,
                 batch_max: int = 200, batch_wait_s: float = 0.02, username: str = "",
                 password: str | None = None, ca_file: str = "", cert_file: str = "", key_file: str = "",
                 tls_context: ssl.SSLContext | None = None, stats_file: str | None = None,
                 max_age_s: float | None = DEFAULT_MAX_AGE_S, migrate: bool = True):
        self.dsn = dsn
        self.client_id = client_id
        self.group = group
        self.prefix = prefix.rstrip("/")
        self.depth = len(self.prefix.split("/"))
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.policy = _vcheck.Policy(max_age_s=max_age_s) if _vcheck is not None else None
        self.nonces = _PgNonces(self)
        self.do_migrate = migrate
        self.stats_file = stats_file
        self.counts = {"received": 0, "inserted": 0, "duplicates": 0, "quarantined": 0, "statuses": 0,
                       "ignored": 0, "acked": 0, "stale_acks_skipped": 0, "db_retries": 0, "batches": 0,
                       "connects": 0}
        self._q: "queue.Queue[Item]" = queue.Queue()
        self._gen = 0               # connection generation: +1 on every connect and every disconnect
        self._ack_lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.db_ready = threading.Event()
        self._conn = None
        self._keys: dict[str, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None
        u = urlsplit(broker)
        self.tls = u.scheme == "mqtts"
        self.host, self.port = u.hostname or "127.0.0.1", u.port or (8883 if self.tls else 1883)
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        c.reconnect_delay_set(0.2, 10)
        apply_auth(c, tls=self.tls, username=username, password=password, ca_file=ca_file,
                   cert_file=cert_file, key_file=key_file, tls_context=tls_context)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    # ------------------------------------------------------------ MQTT (paho's thread)
    def _on_connect(self, c, userdata, flags, rc, props) -> None:
        if rc.is_failure:
            log.error("ingest: broker refused the connection: %s", rc)
            return
        with self._ack_lock:
            self._gen += 1
        self.counts["connects"] += 1
        self.connected.set()
        p = self.prefix
        c.subscribe([(f"$share/{self.group}/{p}/+/+/verdict", SubscribeOptions(qos=1)),
                     (f"{p}/+/+/status", SubscribeOptions(qos=1, retainHandling=1)),
                     (f"{p}/+/+/update/status", SubscribeOptions(qos=1, retainHandling=1))])
        log.info("ingest %s: connected (session present: %s)", self.client_id, flags.session_present)

    def _on_subscribe(self, c, userdata, mid, rcs, props) -> None:
        bad = [rc for rc in rcs or [] if rc.is_failure]
        if bad:
            log.error("ingest %s: subscription refused: %s", self.client_id, bad)
            return
        self.subscribed.set()
        log.info("ingest %s: subscribed", self.client_id)

    def _on_disconnect(self, c, userdata, flags, rc, props) -> None:
        with self._ack_lock:        # what this connection delivered is never acknowledged now
            self._gen += 1
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("ingest %s: broker connection lost (%s); reconnecting", self.client_id, rc)

    def _on_message(self, c, userdata, msg) -> None:
        cd = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        self._q.put(Item(self._gen, msg.mid, msg.qos, msg.topic, bytes(msg.payload), bool(msg.retain),
                         bytes(cd) if cd else None))

    # ------------------------------------------------------------ checks
    def _key(self, key_id: str):
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit and now < hit[0]:
            return hit[1]
        rec = _db.lookup_key(self._conn, key_id)
        self._keys[key_id] = (now + (KEY_CACHE_S if rec else NEG_CACHE_S), rec)
        if len(self._keys) > 100_000:
            self._keys.clear()
        return rec

    def _quarantine(self, it: Item, reason: str, detail: str, obj: Any = None, shaped: bool = False) -> Outcome:
        vid = kid = None
        if isinstance(obj, dict):
            v, s = obj.get("verdict"), obj.get("sig")
            if shaped:
                vid, kid = v.get("verdict_id"), s.get("key_id")
        payload = json.dumps(obj, sort_keys=True) if shaped else None
        return Outcome("quarantine", (it.topic[:256], reason, detail[:300], vid, kid,
                                      hashlib.sha256(it.payload).hexdigest(), len(it.payload), payload))

    def check(self, it: Item) -> Outcome:
        """What to do with one message (needs the DB connection for key lookups)."""
        parts = it.topic.split("/")
        tail = parts[self.depth:]
        if len(tail) == 3 and tail[2] == "verdict":
            return self._check_verdict(it, tail[0], tail[1])
        if len(tail) == 3 and tail[2] == "status" or len(tail) == 4 and tail[2:] == ["update", "status"]:
            return self._check_status(it, tail[0], tail[1], tail[2] == "update")
        return Outcome("ignored")

    def _check_verdict(self, it: Item, site: str, device: str) -> Outcome:
        try:
            obj = _verdict.parse(it.payload)
        except _verdict.VerdictError as e:
            return self._quarantine(it, "invalid", e.detail)
        try:
            _verdict.check_signed_shape(obj)
        except _verdict.VerdictError as e:
            return self._quarantine(it, "invalid", e.detail, obj)
        kid = obj["sig"]["key_id"]
        enrolled = self._key(kid)
        if enrolled is None:
            return self._quarantine(it, "unknown_key", "key_id not enrolled (kyc-edge fleet enrol)", obj, True)
        if enrolled.revoked:
            return self._quarantine(it, "revoked_key", "key_id revoked", obj, True)
        if (enrolled.site, enrolled.device) != (site, device):
            return self._quarantine(it, "wrong_device_key", "key enrolled for another device than the topic's",
                                    obj, True)
        if _vcheck is not None:
            ring = _vcheck.KeyRing()
            ring.add(_verdict.load_public_key(enrolled.public_key), device)
            out = _vcheck.check(it.payload, topic=it.topic, ring=ring, policy=self.policy,
                                correlation=it.correlation, seen=None, nonces=self.nonces)
            status, error = out.status, out.error
        else:
            rec = check_message(it.topic, it.payload, [enrolled.public_key], None, None, {device: kid})
            status, error = rec.status, rec.error
        if status != "ok":
            reason = ("topic_mismatch" if "topic" in error else "forged") if status == "forged" else status
            return self._quarantine(it, reason, error, obj, True)
        v = obj["verdict"]
        decided = _ts(v["decided_at"])
        return Outcome("verdict", (v["verdict_id"], site, device, v["result"], list(v["reasons"]),
                                   _ts(v["started_at"]), decided, kid,
                                   json.dumps(obj, sort_keys=True, separators=(",", ":")), self.client_id),
                       decided.timestamp())

    def _check_status(self, it: Item, site: str, device: str, update: bool) -> Outcome:
        if not it.payload or len(it.payload) > MAX_STATUS_BYTES:
            return Outcome("ignored")
        try:
            obj = json.loads(it.payload)
        except (ValueError, UnicodeDecodeError):
            return Outcome("ignored")
        if not isinstance(obj, dict) or obj.get("device", device) != device or obj.get("site", site) != site:
            return Outcome("ignored")
        if update:
            try:
                obj = _events.update_status(obj)
            except _verdict.VerdictError:
                return Outcome("ignored")
        else:
            state = obj.get("state")
            obj = _events.sanitize_health(obj)
            if state not in ("online", "offline", "stopping"):
                return Outcome("ignored")
            obj["state"] = state
        try:
            at = _ts(obj["at"]) if isinstance(obj.get("at"), str) else datetime.now(timezone.utc)
        except ValueError:
            at = datetime.now(timezone.utc)
        return Outcome("update" if update else "status",
                       (obj.get("state"), json.dumps(obj, sort_keys=True), at, site, device))

    def _check_safe(self, it: Item) -> Outcome:
        import psycopg
        try:
            return self.check(it)
        except psycopg.Error:
            raise
        except Exception as e:  # noqa: BLE001 - one odd message never stops the worker
            log.exception("ingest %s: check failed on %s", self.client_id, it.topic)
            if it.topic.endswith("/verdict"):
                return self._quarantine(it, "rejected", f"check failed: {type(e).__name__}")
            return Outcome("ignored")

    def _write_each(self, batch: list[Item]) -> tuple[list[Outcome], set]:
        """After a non-transient database error: one message per transaction; one that still fails
        goes to the quarantine as `rejected` (so it is acknowledged and not re-sent forever)."""
        import psycopg
        outs: list[Outcome] = []
        inserted: set = set()
        for it in batch:
            try:
                o, ins = self._write([it])
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except psycopg.Error as e:
                self._conn.rollback()
                log.error("ingest %s: message on %s refused by the database (%s); quarantined",
                          self.client_id, it.topic, type(e).__name__)
                o = [self._quarantine(it, "rejected", f"database refused it: {type(e).__name__}")]
                if it.topic.endswith("/verdict"):
                    with self._conn.transaction():
                        self._conn.execute(
                            "INSERT INTO quarantine (topic, reason, detail, verdict_id, key_id, payload_sha256,"
                            " payload_size, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, NULL)"
                            " ON CONFLICT (topic, payload_sha256) DO UPDATE SET seen = quarantine.seen + 1",
                            o[0].row[:7])
                else:
                    o = [Outcome("ignored")]
                ins = set()
            outs += o
            inserted |= ins
        return outs, inserted

    # ------------------------------------------------------------ DB thread
    def _connect_db(self) -> None:
        if self._conn is not None and not self._conn.closed:
            return
        self._conn = _db.connect(self.dsn)
        if self.do_migrate:
            _db.migrate(self._conn)
            self._conn.commit()
        self._keys.clear()
        self.db_ready.set()

    def _drop_db(self) -> None:
        self.db_ready.clear()
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:  # noqa: BLE001
            pass
        self._conn = None

    def _write(self, batch: list[Item]) -> tuple[list[Outcome], set]:
        conn = self._conn
        outs = [self._check_safe(it) for it in batch]
        conn.commit()              # key lookups ran in a transaction of their own
        inserted: set = set()
        # One lock order for every worker (rows sorted by key): duplicates of the same verdicts on two
        # workers, and the status rows every worker writes, then wait on each other but never deadlock.
        rows = sorted((o.row for o in outs if o.kind == "verdict"), key=lambda r: r[0])
        q = sorted((o.row for o in outs if o.kind == "quarantine"), key=lambda r: (r[0], r[5]))
        with conn.transaction():
            with conn.cursor() as cur:
                if rows:
                    cur.executemany(
                        "INSERT INTO verdicts (verdict_id, site, device, result, reasons, started_at,"
                        " decided_at, key_id, signed, worker) VALUES (%s::uuid, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)"
                        " ON CONFLICT (verdict_id) DO NOTHING RETURNING verdict_id::text", rows, returning=True)
                    while True:
                        r = cur.fetchone()
                        if r:
                            inserted.add(r[0])
                        if not cur.nextset():
                            break
                if q:
                    cur.executemany(
                        "INSERT INTO quarantine (topic, reason, detail, verdict_id, key_id, payload_sha256,"
                        " payload_size, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
                        " ON CONFLICT (topic, payload_sha256) DO UPDATE SET seen = quarantine.seen + 1,"
                        " last_at = clock_timestamp()", q)
                _killpoint("before_commit", self.counts["batches"] + 1)
        # statuses: their own transaction (short row locks), newest per device only, in device order
        st: dict = {}
        up: dict = {}
        for o in outs:
            if o.kind == "status":
                key = (o.row[3], o.row[4])
                if key not in st or st[key][2] <= o.row[2]:
                    st[key] = o.row
            elif o.kind == "update":
                key = (o.row[3], o.row[4])
                if key not in up or up[key][2] <= o.row[2]:
                    up[key] = o.row
        if st or up:
            with conn.transaction():
                with conn.cursor() as cur:
                    for key in sorted(st):
                        cur.execute("UPDATE devices SET state = %s, status = coalesce(status, '{}'::jsonb) || %s::jsonb,"
                                    " status_at = %s, status_received_at = clock_timestamp() WHERE site = %s AND"
                                    " device = %s AND (status_at IS NULL OR status_at <= %s)", st[key] + (st[key][2],))
                    for key in sorted(up):
                        cur.execute("UPDATE devices SET update_status = %s::jsonb, update_at = %s"
                                    " WHERE site = %s AND device = %s AND (update_at IS NULL OR update_at <= %s)",
                                    up[key][1:] + (up[key][2],))
        return outs, inserted

    def _take(self) -> list[Item]:
        try:
            first = self._q.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        end = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_max:
            left = end - time.monotonic()
            try:
                batch.append(self._q.get(timeout=left) if left > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _db_loop(self) -> None:
        import psycopg
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._connect_db()
                delay = 0.2
                break
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                log.warning("ingest %s: PostgreSQL unreachable (%s); retry in %.1f s", self.client_id,
                            type(e).__name__, delay)
                self._drop_db()
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        while not self._stop.is_set():
            batch = self._take()
            if not batch:
                continue
            while not self._stop.is_set():
                try:
                    self._connect_db()
                    try:
                        outs, inserted = self._write(batch)
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        raise
                    except psycopg.Error as e:
                        log.warning("ingest %s: batch refused (%s); one message at a time", self.client_id,
                                    type(e).__name__)
                        self._conn.rollback()
                        outs, inserted = self._write_each(batch)
                    break
                except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                    self.counts["db_retries"] += 1
                    log.warning("ingest %s: PostgreSQL error (%s); batch of %d kept unacknowledged,"
                                " retry in %.1f s", self.client_id, type(e).__name__, len(batch), delay)
                    self._drop_db()
                    self._stop.wait(delay)
                    delay = min(delay * 2, 10.0)
            else:
                return                   # stopping: nothing acknowledged
            delay = 0.2
            committed = time.time()
            self._after_commit(batch, outs, inserted, committed)

    def _after_commit(self, batch: list[Item], outs: list[Outcome], inserted: set, committed: float) -> None:
        _killpoint("before_ack", self.counts["batches"] + 1)
        with self._ack_lock:        # paho's thread cannot start a new connection's generation meanwhile
            gen = self._gen
            for it in batch:
                if it.qos == 0:
                    continue
                if it.gen != gen:
                    self.counts["stale_acks_skipped"] += 1   # the broker re-sends these
                    continue
                self.client.ack(it.mid, it.qos)
                self.counts["acked"] += 1
        lat = []
        c = self.counts
        c["batches"] += 1
        c["received"] += len(batch)
        for o in outs:
            if o.kind == "verdict":
                if o.row[0] in inserted:
                    c["inserted"] += 1
                    lat.append(round((committed - o.decided) * 1000.0, 1))
                else:
                    c["duplicates"] += 1
            elif o.kind == "quarantine":
                c["quarantined"] += 1
            elif o.kind in ("status", "update"):
                c["statuses"] += 1
            else:
                c["ignored"] += 1
        if self.stats_file:
            with open(self.stats_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"t": committed, "worker": self.client_id, "n": len(batch),
                                    "inserted": len(lat), "lat_ms": lat}) + "\n")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "Ingest":
        self._thread = threading.Thread(target=self._db_loop, name="kyc-ingest-db", daemon=True)
        self._thread.start()
        p = Properties(PacketTypes.CONNECT)
        p.SessionExpiryInterval = int(self.session_expiry_s)
        p.ReceiveMaximum = int(self.receive_maximum)
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=p)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(15)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        self._drop_db()

    def run_forever(self, timeout: float = 0) -> None:
        end = time.monotonic() + timeout if timeout and timeout > 0 else None
        while not self._stop.is_set() and (end is None or time.monotonic() < end):
            self._stop.wait(0.5)


def default_client_id() -> str:
    return f"kyc-ingest-{socket.gethostname()}"[:64]


def run_ingest(args) -> int:
    import signal
    import sys
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    pw = None
    if args.password_file:
        pw = open(args.password_file, encoding="utf-8").read().strip()
    ing = Ingest(args.dsn, args.broker, client_id=args.client_id or default_client_id(), group=args.group,
                 prefix=args.prefix, session_expiry_s=args.session_expiry, receive_maximum=args.receive_maximum,
                 batch_max=args.batch, username=args.username or "", password=pw, ca_file=args.ca_file or "",
                 cert_file=args.cert_file or "", key_file=args.key_file or "", stats_file=args.stats_file,
                 migrate=not args.no_migrate, max_age_s=args.max_age if args.max_age > 0 else None)
    signal.signal(signal.SIGTERM, lambda *_: ing._stop.set())
    ing.start()
    print(f"kyc-edge verdicts ingest: {ing.client_id} -> $share/{ing.group}/{ing.prefix}/+/+/verdict",
          file=sys.stderr, flush=True)
    try:
        ing.run_forever(args.timeout)
    except KeyboardInterrupt:
        pass
    finally:
        ing.stop()
    print(json.dumps(ing.counts), flush=True)
    return 0


def run_migrate(args) -> int:
    conn = _db.connect(args.dsn)
    try:
        done = _db.migrate(conn)
        conn.commit()
        print(json.dumps({"applied": done, "schema_version": _db.schema_version(conn)}))
    finally:
        conn.close()
    return 0


__all__ = ["Ingest", "run_ingest", "run_migrate", "default_client_id"]
