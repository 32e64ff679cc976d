"""`kyc-edge verdicts ingest` on a real PostgreSQL (private initdb cluster) and a real mosquitto:
exactly one row per verdict after duplicates and worker SIGKILLs mid-batch, forged / unenrolled /
misattributed verdicts quarantined, retained status into `devices`, `fleet status --dsn`, and a
PostgreSQL outage survived with nothing acknowledged meanwhile."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kyc_tools.bench.simbox import SimBox, forged_payload
from tests.brokers import Mosquitto, Sub

REPO = Path(__file__).resolve().parents[1]
BROKER_CONF = "allow_anonymous true\nmax_queued_messages 100000\n"


def _db():
    from kyc_tools.verdicts import db
    return db


def wait(pred, timeout=30.0, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = pred()
        if r:
            return r
        time.sleep(step)
    return pred()


def q1(dsn, sql, *args):
    import psycopg
    with psycopg.connect(dsn) as c:
        return c.execute(sql, args).fetchall()


def enrol(dsn, *boxes):
    db = _db()
    with db.connect(dsn) as c:
        db.migrate(c)
        c.commit()
        for b in boxes:
            site, dev, kid, pub = db.parse_key_record(b.key_record())
            db.enrol(c, site, dev, kid, pub)


class Worker:
    """`kyc-edge verdicts ingest` as its own process (so it can be SIGKILLed)."""

    def __init__(self, tmp: Path, broker_url: str, dsn: str, cid: str, env: dict | None = None, batch: int = 10):
        self.tmp, self.args = tmp, [sys.executable, "-m", "device.cli", "verdicts", "ingest", "--dsn", dsn,
                                    "--broker", broker_url, "--client-id", cid, "--batch", str(batch),
                                    "--stats-file", str(tmp / f"{cid}.stats.jsonl")]
        self.cid = cid
        self.n = 0
        self.start(env)

    def start(self, env: dict | None = None) -> None:
        self.n += 1
        self.err = self.tmp / f"{self.cid}.{self.n}.err"
        self.out = self.tmp / f"{self.cid}.{self.n}.out"
        e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.p = subprocess.Popen(self.args, env=e, stdout=open(self.out, "wb"), stderr=open(self.err, "wb"))

    def wait_subscribed(self, timeout=30) -> bool:
        return bool(wait(lambda: b"subscribed" in self.err.read_bytes() or self.p.poll() is not None, timeout)) \
            and self.p.poll() is None

    def stop(self) -> dict:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(20)
        text = self.out.read_text().strip().splitlines()
        return json.loads(text[-1]) if text else {}


def test_exactly_one_row_per_verdict_after_duplicates_and_worker_kills(tmp_path, pg_dsn):
    b = Mosquitto(tmp_path, BROKER_CONF).start()
    boxes = [SimBox(b.url, tmp_path / f"box{i}", "shop-1", f"counter-{i}") for i in range(3)]
    enrol(pg_dsn, *boxes)
    # w1 dies with rows inserted but not committed (batch 3); w2 with a batch committed but not
    # acknowledged (batch 2): the broker re-sends both batches when they come back.
    w1 = Worker(tmp_path, b.url, pg_dsn, "ingest-1", {"KYC_EDGE_INGEST_KILL_AT": "before_commit:3"})
    w2 = Worker(tmp_path, b.url, pg_dsn, "ingest-2", {"KYC_EDGE_INGEST_KILL_AT": "before_ack:2"})
    try:
        assert w1.wait_subscribed() and w2.wait_subscribed()
        for box in boxes:
            box.start()
        for _ in range(60):
            for box in boxes:
                box.decide()
            time.sleep(0.005)
        assert wait(lambda: w1.p.poll() is not None and w2.p.poll() is not None, 60), "kill points not reached"
        assert w1.p.returncode == -signal.SIGKILL and w2.p.returncode == -signal.SIGKILL
        w1.start()
        w2.start()
        sent = {vid: p for box in boxes for vid, p in box.sent.items()}
        assert len(sent) == 180
        assert wait(lambda: q1(pg_dsn, "SELECT count(*) FROM verdicts")[0][0] >= 180, 90)
        # at-least-once from the other side too: every verdict published again, straight to the broker
        pub = Sub(b.port, "kyc/v1/none")
        for vid, payload in list(sent.items())[:40]:
            site, dev = json.loads(payload)["verdict"]["site"], json.loads(payload)["verdict"]["device"]
            pub.publish(f"kyc/v1/{site}/{dev}/verdict", payload, qos=1)
        time.sleep(2.0)
        rows = q1(pg_dsn, "SELECT verdict_id::text, count(*) OVER () FROM verdicts")
        assert sorted(r[0] for r in rows) == sorted(sent)          # none lost, none extra, one row each
        assert q1(pg_dsn, "SELECT count(*) FROM quarantine")[0][0] == 0
        pub.close()
        c1, c2 = w1.stop(), w2.stop()
        # the re-sent (already committed) batch and the re-published copies were seen and dropped
        assert c1["duplicates"] + c2["duplicates"] >= 40
        # every row verifies again from what was stored
        from device import verdict as V
        keys = [box.signer.public_key for box in boxes]
        for (signed,) in q1(pg_dsn, "SELECT signed FROM verdicts LIMIT 20"):
            V.verify(signed, keys)
    finally:
        for w in (w1, w2):
            if w.p.poll() is None:
                w.p.kill()
                w.p.wait()
        for box in boxes:
            box.stop()
        b.stop()


@pytest.fixture
def ingest_env(tmp_path, pg_dsn):
    from kyc_tools.verdicts.ingest import Ingest
    b = Mosquitto(tmp_path, BROKER_CONF).start()
    ing = Ingest(pg_dsn, b.url, client_id="ingest-t", batch_wait_s=0.01).start()
    assert ing.subscribed.wait(60) and ing.db_ready.wait(60)
    yield b, ing, pg_dsn
    ing.stop()
    b.stop()


def test_forged_unenrolled_and_misattributed_verdicts_are_quarantined(tmp_path, ingest_env):
    b, ing, dsn = ingest_env
    good, other, stranger = (SimBox(b.url, tmp_path / n, "shop-1", n) for n in ("counter-a", "counter-b", "counter-x"))
    enrol(dsn, good, other)                       # counter-x never enrolled
    for box in (good, other, stranger):
        box.start()
    pub = Sub(b.port, "kyc/v1/none")
    try:
        ok_id = good.decide("pass")
        stranger_id = stranger.decide("pass")     # a real signature, but by a key nobody enrolled
        assert wait(lambda: q1(dsn, "SELECT count(*) FROM verdicts")[0][0] == 1
                    and q1(dsn, "SELECT count(*) FROM quarantine")[0][0] == 1, 60)
        # tampered: good's own signed fail, turned into a pass
        pub.publish("kyc/v1/shop-1/counter-a/verdict", forged_payload(good, result="pass", reasons=[]), qos=1)
        # other's genuine verdict replayed on good's topic (site/device in the verdict say counter-b)
        vid_b = other.decide("fail")
        assert wait(lambda: q1(dsn, "SELECT count(*) FROM verdicts WHERE verdict_id = %s", vid_b)[0][0] == 1, 60)
        pub.publish("kyc/v1/shop-1/counter-a/verdict", other.sent[vid_b], qos=1)
        # a verdict genuinely signed by counter-b's key but claiming to be counter-a's
        from kyc_tools.bench.simbox import fake_verdict
        s = other.signer.sign(fake_verdict("shop-1", "counter-a", result="pass"))
        pub.publish("kyc/v1/shop-1/counter-a/verdict", json.dumps(s).encode(), qos=1)
        # counter-a's own key, on its own topic, but the verdict names counter-b
        s = good.signer.sign(fake_verdict("shop-1", "counter-b", result="pass"))
        pub.publish("kyc/v1/shop-1/counter-a/verdict", json.dumps(s).encode(), qos=1)
        # garbage and a schema violation
        pub.publish("kyc/v1/shop-1/counter-a/verdict", b"\xff not json", qos=1)
        bad = json.loads(good.sent[ok_id])
        bad["verdict"]["name"] = "Jane Doe"       # unknown field: the closed schema refuses it
        pub.publish("kyc/v1/shop-1/counter-a/verdict", json.dumps(bad).encode(), qos=1)
        assert wait(lambda: q1(dsn, "SELECT count(*) FROM quarantine")[0][0] >= 7, 60)
        reasons = sorted(r[0] for r in q1(dsn, "SELECT reason FROM quarantine"))
        assert reasons == sorted(["unknown_key", "forged", "wrong_device_key", "wrong_device_key",
                                  "topic_mismatch", "invalid", "invalid"])
        ids = {r[0] for r in q1(dsn, "SELECT verdict_id::text FROM verdicts")}
        assert ids == {ok_id, vid_b} and stranger_id not in ids
        # privacy: a payload that is not a schema-valid verdict is kept as a hash only
        kept = q1(dsn, "SELECT payload FROM quarantine WHERE reason = 'invalid'")
        assert all(p is None for (p,) in kept)
        assert "Jane" not in json.dumps([list(r) for r in q1(dsn, "SELECT * FROM quarantine")], default=str)

        # enrolment is what admits a key: after `fleet enrol`, counter-x's new verdicts go in
        rec = tmp_path / "x.json"
        rec.write_text(json.dumps(stranger.key_record()))
        r = subprocess.run([sys.executable, "-m", "device.cli", "fleet", "enrol", "--dsn", dsn, "--key", str(rec)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["result"] == "enrolled"
        r2 = subprocess.run([sys.executable, "-m", "device.cli", "fleet", "enrol", "--dsn", dsn, "--key",
                             json.dumps(good.key_record()), "--site", "shop-1", "--device", "counter-x"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert r2.returncode == 2 and "differs" in r2.stderr       # record names counter-a
        time.sleep(2.1)                                            # the worker's negative key cache
        x2 = stranger.decide("pass")
        assert wait(lambda: q1(dsn, "SELECT count(*) FROM verdicts WHERE verdict_id = %s", x2)[0][0] == 1, 60)
        assert q1(dsn, "SELECT count(*) FROM verdicts WHERE verdict_id = %s", stranger_id)[0][0] == 0
    finally:
        pub.close()
        for box in (good, other, stranger):
            box.stop()


def test_status_into_devices_and_fleet_status_from_the_database(tmp_path, ingest_env, capsys):
    b, ing, dsn = ingest_env
    boxes = [SimBox(b.url, tmp_path / f"c{i}", "shop-2", f"counter-{i}", health={"bundle_version": 3,
                    "models": {"detector": "face_detection_short_range@1a2b3c4d"}}) for i in range(2)]
    enrol(dsn, *boxes)
    unknown = SimBox(b.url, tmp_path / "u", "shop-2", "counter-u")        # not enrolled: no devices row
    for box in boxes + [unknown]:
        box.start()
    try:
        for box in boxes:
            box.decide("pass")
        boxes[0].decide("fail")
        assert wait(lambda: q1(dsn, "SELECT count(*) FROM devices WHERE state = 'online'")[0][0] == 2
                    and q1(dsn, "SELECT count(*) FROM verdicts")[0][0] == 3, 60)
        boxes[0].link.publish_update_status({"state": "applied", "bundle_version": 3, "target_version": 3})
        assert wait(lambda: q1(dsn, "SELECT count(*) FROM devices WHERE update_status IS NOT NULL")[0][0] == 1, 60)
        # the retained status may predate the last verdict's delivery (depth 1): the box's next status,
        # as its periodic timer would send it, must reach the devices table with the drained outbox
        boxes[0].link.publish_status()
        from kyc_tools.fleet.operator import fleet_rows
        from kyc_tools.verdicts import db

        def drained():
            with db.connect(dsn) as c:
                return {r["device"]: r for r in fleet_rows(c)}["counter-0"]["outbox_depth"] == 0
        assert wait(drained, 60)
        boxes[1].stop()
        assert wait(lambda: q1(dsn, "SELECT state FROM devices WHERE device = 'counter-1'")[0][0] != "online", 60)
        from kyc_tools.fleet.operator import fleet_rows
        from kyc_tools.verdicts import db
        with db.connect(dsn) as c:
            rows = {r["device"]: r for r in fleet_rows(c)}
            stale = {r["device"]: r for r in fleet_rows(c, stale_after_s=0.0)}
        assert set(rows) == {"counter-0", "counter-1"}
        r0 = rows["counter-0"]
        assert r0["state"] == "online" and r0["verdicts"] == 2 and r0["pass_rate"] == 0.5
        assert r0["outbox_depth"] == 0 and r0["bundle_version"] == 3 and r0["update"]["state"] == "applied"
        assert r0["models"] == {"detector": "face_detection_short_range@1a2b3c4d"}
        assert rows["counter-1"]["state"] == "offline" and rows["counter-1"]["pass_rate"] == 1.0
        assert stale["counter-0"]["state"] == "stale"
        from device import cli
        assert cli.main(["fleet", "status", "--dsn", dsn, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [r["device"] for r in out] == ["counter-0", "counter-1"]
        assert cli.main(["fleet", "status", "--dsn", dsn]) == 0
        table = capsys.readouterr().out
        assert "shop-2/counter-0" in table and "online" in table and "50%" in table
    finally:
        for box in boxes[:1] + [unknown]:
            box.stop()


def test_postgres_outage_nothing_acknowledged_meanwhile(tmp_path):
    from tests import pg
    from kyc_tools.verdicts.ingest import Ingest
    if not pg.available():
        pytest.skip("postgresql not installed")
    cluster = pg.Postgres().start()
    b = Mosquitto(tmp_path, BROKER_CONF).start()
    box = SimBox(b.url, tmp_path / "box", "shop-3", "counter-1")
    ing = None
    try:
        enrol(cluster.dsn, box)
        ing = Ingest(cluster.dsn, b.url, client_id="ingest-o", batch_wait_s=0.01).start()
        assert ing.subscribed.wait(60)
        box.start()
        for _ in range(10):
            box.decide()
        assert wait(lambda: q1(cluster.dsn, "SELECT count(*) FROM verdicts")[0][0] == 10, 60)
        cluster.stop()                               # PostgreSQL goes away
        acked = ing.counts["acked"]
        for _ in range(20):
            box.decide()
        assert wait(lambda: ing.counts["db_retries"] >= 2, 60)
        time.sleep(1.0)
        assert ing.counts["acked"] == acked          # nothing acknowledged while the DB is down
        cluster.start()
        assert wait(lambda: q1(cluster.dsn, "SELECT count(*) FROM verdicts")[0][0] == 30, 90)
        assert sorted(r[0] for r in q1(cluster.dsn, "SELECT verdict_id::text FROM verdicts")) == sorted(box.sent)
        assert wait(lambda: ing.counts["acked"] >= acked + 20, 30)
    finally:
        if ing is not None:
            ing.stop()
        box.stop()
        b.stop()
        cluster.close()


def test_freshness_window_and_nonce_binding(tmp_path, ingest_env):
    """With the shared operator check (kyc_tools.verdicts.check): an old verdict is `stale`, a nonce
    binding admits exactly one verdict per issued nonce, an unissued nonce is `unbound`."""
    pytest.importorskip("kyc_tools.verdicts.check")
    import hashlib
    from device import verdict as V
    from kyc_tools.bench.simbox import fake_verdict
    b, ing, dsn = ingest_env
    box = SimBox(b.url, tmp_path / "n", "shop-4", "counter-1")
    enrol(dsn, box)
    pub = Sub(b.port, "kyc/v1/none")
    topic = "kyc/v1/shop-4/counter-1/verdict"
    try:
        nonce = os.urandom(16).hex()
        h = hashlib.sha256(nonce.encode()).hexdigest()
        import psycopg
        with psycopg.connect(dsn) as c:
            c.execute("INSERT INTO issued_nonces (sha256, site, device) VALUES (%s, 'shop-4', 'counter-1')", (h,))

        def signed(**kw):
            v = fake_verdict("shop-4", "counter-1", result="pass", **({"now": kw.pop("now")} if "now" in kw else {}))
            if kw.get("binding"):
                v["binding"] = kw["binding"]
            return box.signer.sign(v)
        first = signed(binding={"kind": "nonce", "sha256": h})
        second = signed(binding={"kind": "nonce", "sha256": h})
        unissued = signed(binding={"kind": "nonce", "sha256": "ab" * 32})
        old = signed(now=time.time() - 8 * 86400)
        for s in (first, second, unissued, old):
            pub.publish(topic, json.dumps(s).encode(), qos=1)
        assert wait(lambda: q1(dsn, "SELECT count(*) FROM quarantine")[0][0] == 3, 60)
        assert {r[0] for r in q1(dsn, "SELECT verdict_id::text FROM verdicts")} == {first["verdict"]["verdict_id"]}
        got = dict(q1(dsn, "SELECT verdict_id, reason FROM quarantine"))
        assert got == {second["verdict"]["verdict_id"]: "replayed", unissued["verdict"]["verdict_id"]: "unbound",
                       old["verdict"]["verdict_id"]: "stale"}
        V.verify(first, [box.signer.public_key])
    finally:
        pub.close()
        box.stop()


def test_broker_loss_mid_ingest_nothing_acknowledged_meanwhile_then_resumed_with_back_off(tmp_path, pg_dsn):
    """The broker goes away while a batch is between receipt and commit (held by a table lock of
    ours: a real PostgreSQL lock wait). The batch commits while the broker is down: none of its
    messages may be acknowledged (not then, and not on the next connection: their packet ids belong
    to the lost one), so the restarted broker (persistence on) re-sends them and they are dropped
    as duplicates. paho reconnects with back-off (0.2 s doubling: each failed attempt waits at least
    twice as long as the one before), the session resumes, and every verdict is one row: those
    held, and those the box kept in its outbox while the broker was down.

    The box comes back after the worker has re-subscribed, on purpose: mosquitto (2.0.11 here) does
    not restore `$share/...` subscriptions from its persistence file (plain ones it does), so a
    verdict that reaches a restarted broker before any worker has re-subscribed is acknowledged to
    the box with 0x10 "No matching subscribers" and dropped. That window is not the worker's to
    close; README "Operator side at fleet scale / Deployment / Broker restarts" says what it means."""
    import psycopg
    from kyc_tools.verdicts.ingest import Ingest
    b = Mosquitto(tmp_path, BROKER_CONF, persistence=True).start()
    box = SimBox(b.url, tmp_path / "box", "shop-5", "counter-1")
    enrol(pg_dsn, box)
    ing = Ingest(pg_dsn, b.url, client_id="ingest-b", batch_wait_s=0.01)
    fails: list[float] = []                       # paho's failed (re)connection attempts, as they happen
    ing.client.on_connect_fail = lambda client, userdata: fails.append(time.monotonic())
    got: list[str] = []                           # verdict messages the worker's client received
    deliver = ing.client.on_message

    def on_message(client, userdata, msg):
        if msg.topic.endswith("/verdict"):
            got.append(msg.topic)
        deliver(client, userdata, msg)
    ing.client.on_message = on_message
    lock = box2 = None
    rows = lambda: q1(pg_dsn, "SELECT count(*) FROM verdicts")[0][0]      # noqa: E731
    try:
        ing.start()
        assert ing.subscribed.wait(60) and ing.db_ready.wait(60)
        box.start()
        for _ in range(10):
            box.decide()
        assert wait(lambda: rows() == 10 and ing.counts["acked"] >= 10, 60)
        # the next verdicts are received, and their batch is held before its commit
        lock = psycopg.connect(pg_dsn)
        lock.execute("LOCK TABLE verdicts IN SHARE MODE")        # inserts wait; reads go on
        for _ in range(10):
            box.decide()
        assert wait(lambda: q1(pg_dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                               " AND query LIKE 'INSERT INTO verdicts%%'")[0][0] == 1, 60), "batch not held"
        assert wait(lambda: len(got) == 20, 60)                  # all ten at the worker, none committed
        assert rows() == 10
        acked, received, connects = ing.counts["acked"], ing.counts["received"], ing.counts["connects"]
        assert connects == 1

        b.stop()                                                  # the broker goes away mid-ingest
        assert wait(lambda: not ing.connected.is_set(), 30)
        box.stop()
        box2 = SimBox(b.url, tmp_path / "box", "shop-5", "counter-1")   # the same box (key, outbox), offline
        for _ in range(10):
            box2.decide()                                         # kept in the box's outbox meanwhile
        lock.rollback()                                           # the held batch commits now
        lock.close()
        lock = None
        assert wait(lambda: ing.counts["inserted"] == 20, 60), "held verdicts not committed"
        assert rows() == 20
        assert wait(lambda: len(fails) >= 3, 60), "no reconnection attempts"
        assert ing.counts["acked"] == acked                       # nothing acknowledged while the broker is down
        assert wait(lambda: ing.counts["stale_acks_skipped"] == ing.counts["received"] - received, 30), ing.counts
        assert not ing.connected.is_set() and ing.counts["connects"] == connects
        # back-off: paho waits 0.2 s before the first attempt, doubling after each failure; a loaded
        # machine can only make the gaps longer, so these are lower bounds
        gaps = [t1 - t0 for t0, t1 in zip(fails, fails[1:])]
        for i, g in enumerate(gaps[:4]):
            assert g >= 0.9 * 0.2 * 2 ** (i + 1), (i, gaps)

        assert ing.counts["acked"] == acked
        ing.subscribed.clear()                                    # set again by the next SUBACK
        b.start()                                                 # same port, its persisted sessions
        assert wait(lambda: ing.connected.is_set() and ing.counts["connects"] == connects + 1, 60)
        assert wait(lambda: ing.subscribed.is_set(), 60)
        # what was committed but never acknowledged comes back from the broker and is dropped
        assert wait(lambda: ing.counts["duplicates"] >= 10, 60), ing.counts
        box2.start()                                              # the box is back: its outbox drains
        assert wait(lambda: rows() == 30, 90), (rows(), box2.outbox.depth(), ing.counts)
        sent = {**box.sent, **box2.sent}
        assert len(sent) == 30
        assert sorted(r[0] for r in q1(pg_dsn, "SELECT verdict_id::text FROM verdicts")) == sorted(sent)
        assert q1(pg_dsn, "SELECT count(*) FROM quarantine")[0][0] == 0
        held = ing.counts["stale_acks_skipped"]
        assert wait(lambda: ing.counts["acked"] >= acked + held + 10 and box2.outbox.depth() == 0, 60), ing.counts
        assert ing.counts["duplicates"] == 10 and ing.counts["inserted"] == 30, ing.counts
    finally:
        if lock is not None:
            lock.close()
        ing.stop()
        for x in (box, box2):
            if x is not None:
                try:
                    x.stop()
                except Exception:  # noqa: BLE001 - already stopped
                    pass
        b.stop()


def test_verdicts_reaching_a_restarted_broker_before_any_worker_resubscribed_are_not_lost(tmp_path, pg_dsn):
    from kyc_tools.verdicts.ingest import Ingest
    b = Mosquitto(tmp_path, BROKER_CONF, persistence=True).start()
    box = SimBox(b.url, tmp_path / "box", "shop-6", "counter-1")
    enrol(pg_dsn, box)
    rows = lambda: q1(pg_dsn, "SELECT count(*) FROM verdicts")[0][0]      # noqa: E731
    ing = Ingest(pg_dsn, b.url, client_id="ingest-r", batch_wait_s=0.01).start()
    try:
        assert ing.subscribed.wait(60) and ing.db_ready.wait(60)
        box.start()
        for _ in range(5):
            box.decide()
        assert wait(lambda: rows() == 5, 60)
        ing.stop()                                   # the worker goes (its persistent session stays)
        for _ in range(5):
            box.decide()                             # queued in the worker's session: the documented path
        assert wait(lambda: box.outbox.depth() == 0, 60)
        b.stop()
        b.start()                                    # the broker restarts while no worker is connected
        for _ in range(5):
            box.decide()
        # mosquitto does not restore the $share subscription: PUBACK 0x10 No matching subscribers.
        # The box keeps those five and says so, instead of counting them delivered; the replayed
        # copies of the ten before (its replay window after the broker vanished) reached nobody
        # either, so they are pending again too: sent once more later, dropped as copies.
        assert wait(lambda: "verdict_no_subscribers" in box.link.alarms, 60)
        assert wait(lambda: box.outbox.depth() >= 5, 30) and box.outbox.depth() <= 15, box.outbox.depth()
        assert rows() == 5                           # nothing of the restart window reached PostgreSQL
        ing = Ingest(pg_dsn, b.url, client_id="ingest-r", batch_wait_s=0.01).start()
        assert ing.subscribed.wait(60)
        assert wait(lambda: rows() >= 10, 60)        # the session's queue survived the restart
        assert wait(lambda: rows() == 15, 60), rows()    # and the five kept ones were sent again
        assert wait(lambda: box.outbox.depth() == 0 and "verdict_no_subscribers" not in box.link.alarms, 30), \
            (box.outbox.depth(), box.link.alarms, box.link.drain.denied)
    finally:
        ing.stop()
        box.stop()
        b.stop()
