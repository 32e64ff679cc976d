"""Measurements for issue 20 (fleet integrity, operator checks): the cost of `check()` with the
persistent SQLite state, and a 5.2 MB inline update (pages + chunks verified) at 400 msg/s through a
stand-in device. Run: PYTHONPATH=. KYC_EDGE_MODEL_DIR=models/store python tests/measure_fleet_integrity.py"""
import json, os, statistics, sys, tempfile, time, shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from device import verdict as V
from device.fleet import manifest as mf
from kyc_tools.fleet.commands import build_bundle, sign_bundle
from kyc_tools.fleet.rollout import FleetClient
from kyc_tools.verdicts.check import KeyRing, Policy, SeenStore, check
from tests.brokers import Mosquitto
from tests.test_fleet_e2e import Dev, variant, SITE
from tests.test_verdict import make

out = {}
tmp = Path(tempfile.mkdtemp())
# 1. operator-side check, with the persistent store (fsync per accepted verdict)
s = V.Signer.load_or_create(tmp / "k")
ring = KeyRing()
ring.add(s.public_key, "counter-0001")
store = SeenStore(tmp / "seen.db")
now = time.time()
msgs = [json.dumps(s.sign(make(device="counter-0001", site="site-0001", started_at=now - 6, decided_at=now))) for _ in range(300)]
ts = []
for m in msgs:
    t = time.perf_counter()
    r = check(m, topic="kyc/v1/site-0001/counter-0001/verdict", ring=ring, policy=Policy(), seen=store, nonces=store)
    ts.append((time.perf_counter() - t) * 1000)
    assert r.status == "ok"
ts.sort()
out["check_ok_with_sqlite_state_ms"] = {"n": len(ts), "median": round(statistics.median(ts), 3), "p95": round(ts[int(0.95 * len(ts))], 3)}
ts = []
for m in msgs[:100]:
    t = time.perf_counter()
    r = check(m, topic="kyc/v1/site-0001/counter-0001/verdict", ring=ring, policy=Policy(), seen=store)
    ts.append((time.perf_counter() - t) * 1000)
    assert r.status == "duplicate"
out["check_duplicate_ms_median"] = round(statistics.median(ts), 3)
store.close()
# 2. inline update, 5.2 MB, at 400 msg/s, stand-in device (real agent + link + mosquitto)
factory = tmp / "factory"
factory.mkdir()
shutil.copyfile(Path(os.environ.get("KYC_EDGE_MODEL_DIR", "models/store")) / "face_detection_short_range.tflite", factory / "face_detection_short_range.tflite")
key, pub, _ = mf.keygen(tmp / "fk")
with Mosquitto(tmp / "mq") as broker:
    d = Dev(tmp, broker, "m1", pub.read_text().strip(), factory, fleet="max_bundle_bytes = 100000000", download_timeout_s=120)
    d.start()
    try:
        with FleetClient(broker.url) as fc:
            fc.wait_for(lambda: fc.status.get(d.key, {}).get("state") == "online", 30)
            b = tmp / "b2"
            build_bundle(variant(factory, b / "src", 5_000_000), b, 2, vectors=False)
            env = sign_bundle(b, str(key), ["*"])
            size = env["manifest"]["artifacts"][0]["size"]
            t0 = time.monotonic()
            n = fc.publish(env, b / "artifacts", f"{SITE}/m1", rate=400)
            ok = fc.wait_for(lambda: fc.updates.get(d.key, {}).get("state") in ("applied", "failed"), 120)
            out["inline_update"] = {"bytes": size, "messages": n, "pages": len(env["manifest"]["artifacts"][0]["pages"]),
                                    "manifest_bytes": len(json.dumps(env)), "rate_msg_s": 400,
                                    "state": fc.updates[d.key]["state"], "publish_to_applied_s": round(time.monotonic() - t0, 2)}
    finally:
        d.stop()
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps(out, indent=1))
