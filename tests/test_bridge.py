"""Shop-to-region bridging with scripts/mosquitto-bridge.conf.example on two real mosquittos: the
bridge (TLS, its own client certificate and password, a regional ACL) is cut and restored while the
boxes publish, and every verdict reaches the regional ingest (PostgreSQL) exactly once; commands
cross the other way."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from kyc_tools.bench.simbox import SimBox
from tests.brokers import Mosquitto, Sub, client_tls_context, make_pki
from tests.netcut import Relay
from tests.test_ingest import enrol, q1, wait

REPO = Path(__file__).resolve().parents[1]
REGION_ACL = """user bridge-shop-1
topic write kyc/v1/shop-1/#
topic read kyc/v1/shop-1/+/cmd/#
topic read kyc/v1/_fleet/#
user ingest
topic read kyc/v1/#
user operator
topic readwrite kyc/v1/#
"""


def bridge_conf(pki, relay_port: int, password: str) -> str:
    text = (REPO / "scripts" / "mosquitto-bridge.conf.example").read_text()
    cert, key = pki.client("bridge-shop-1")
    for a, b in (("region.example.net:8883", f"127.0.0.1:{relay_port}"),
                 ("/etc/mosquitto/bridge/region-ca.crt", str(pki.ca_cert)),
                 ("/etc/mosquitto/bridge/bridge-shop-0001.crt", str(cert)),
                 ("/etc/mosquitto/bridge/bridge-shop-0001.key", str(key)),
                 ("CHANGE-ME-see-region-passwd", password),
                 ("shop-0001", "shop-1"), ("restart_timeout 1 30", "restart_timeout 1 2")):
        assert a in text, a
        text = text.replace(a, b)
    return text


def test_bridge_cut_and_restored_every_verdict_arrives_once(tmp_path, pg_dsn):
    from kyc_tools.verdicts.ingest import Ingest
    pki = make_pki(tmp_path / "pki", ["bridge-shop-1", "ingest", "operator"])
    for d in ("region", "shop"):
        (tmp_path / d).mkdir()
    region = Mosquitto.secure(tmp_path / "region", pki, acl=REGION_ACL, persistence=True,
                              passwords={"bridge-shop-1": "pw-bridge", "ingest": "pw-ingest", "operator": "pw-op"})
    region.extra_conf += "max_queued_messages 100000\n"
    region.start()
    relay = Relay(region.port).start()
    shop = Mosquitto(tmp_path / "shop", "allow_anonymous true\nmax_queued_messages 100000\n" +
                     bridge_conf(pki, relay.port, "pw-bridge"), persistence=True).start()
    boxes = [SimBox(shop.url, tmp_path / f"b{i}", "shop-1", f"counter-{i}") for i in range(3)]
    enrol(pg_dsn, *boxes)
    ing = Ingest(pg_dsn, region.url, client_id="ingest-region", username="ingest", password="pw-ingest",
                 tls_context=client_tls_context(pki, "ingest"), batch_wait_s=0.01).start()
    stop = threading.Event()
    try:
        assert ing.subscribed.wait(15) and ing.db_ready.wait(15)
        for b in boxes:
            b.start()
        assert wait(lambda: relay.connections >= 1, 15), shop.log_text()[-800:]

        def publish():
            while not stop.is_set() and sum(len(b.sent) for b in boxes) < 300:
                for b in boxes:
                    b.decide()
                time.sleep(0.02)
        t = threading.Thread(target=publish)
        t.start()
        assert wait(lambda: q1(pg_dsn, "SELECT count(*) FROM verdicts")[0][0] >= 20, 30)
        relay.cut()                                     # the shop's uplink goes down mid-stream
        n_cut = q1(pg_dsn, "SELECT count(*) FROM verdicts")[0][0]
        time.sleep(3.0)
        during = sum(len(b.sent) for b in boxes)
        assert q1(pg_dsn, "SELECT count(*) FROM verdicts")[0][0] <= n_cut + 5   # nothing crosses
        relay.restore()
        t.join(60)
        sent = sorted(v for b in boxes for v in b.sent)
        assert len(sent) == 300 and during > n_cut + 30       # verdicts were made while cut
        assert wait(lambda: q1(pg_dsn, "SELECT count(*) FROM verdicts")[0][0] >= 300, 60)
        time.sleep(1.0)
        assert sorted(r[0] for r in q1(pg_dsn, "SELECT verdict_id::text FROM verdicts")) == sent
        assert q1(pg_dsn, "SELECT count(*) FROM quarantine")[0][0] == 0
        assert relay.connections >= 2                          # the bridge reconnected by itself
        assert wait(lambda: q1(pg_dsn, "SELECT count(*) FROM devices WHERE state = 'online'")[0][0] == 3, 15)
        # commands come in: the operator publishes at the region, a box's command topic at the shop gets it
        shop_sub = Sub(shop.port, "kyc/v1/shop-1/counter-0/cmd/#")
        op = Sub(region.port, "kyc/v1/none", tls_context=client_tls_context(pki, "operator"),
                 username="operator", password="pw-op")
        op.publish("kyc/v1/shop-1/counter-0/cmd/ping", b"{}", qos=1)
        op.publish("kyc/v1/shop-2/counter-0/verdict", b"{}", qos=1)      # other sites do not come in
        assert shop_sub.wait_for(lambda: len(shop_sub.on("/cmd/ping")) == 1, 10)
        op.close()
        shop_sub.close()
    finally:
        stop.set()
        ing.stop()
        for b in boxes:
            b.stop()
        shop.stop()
        relay.stop()
        region.stop()
