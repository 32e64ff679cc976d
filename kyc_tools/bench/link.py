"""`kyc-edge bench link`: reliability and cost of the verdict link against a real mosquitto.

  1. broker_kills: N verdicts produced at --rate/s while the broker (persistence on) is killed
     --kills times at random moments (--kill-signal KILL|TERM) and restarted on the same port.
     A persistent-session subscriber verifies signatures and deduplicates by verdict_id.
     Figures: lost, raw duplicates, duplicates after dedup, order kept, forged.
  2. publisher_kill: the publisher (outbox + Link) runs in a child process that is SIGKILLed
     mid-run and restarted; every verdict_id the child reported as stored must arrive.
  3. latency: build / sign / outbox.put cost per verdict (median, p95), idle and under load.

Needs mosquitto (scripts/setup installs it). Loopback only. Returns a dict (JSON-able).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from device import config as _config
from device import verdict as _verdict
from device import wiring
from device.localbroker import LocalBroker


# ---------------------------------------------------------------- broker
def _Broker(workdir: Path) -> LocalBroker:
    """The bench's broker: persistent (sessions and queued messages survive a kill), unlimited queue."""
    return LocalBroker(workdir, "allow_anonymous true\nmax_queued_messages 0\n", persistence=True)


# ---------------------------------------------------------------- helpers
REPLAY_WINDOW_S = [None]      # --replay-window override (None = config default)


def _cfg(state: Path, url: str) -> _config.Config:
    extra = {} if REPLAY_WINDOW_S[0] is None else {"mqtt.replay_window_s": REPLAY_WINDOW_S[0]}
    return _config.replace(_config.Config(), **extra, **{
        "device.id": "bench-dev", "device.site": "bench", "device.state_dir": str(state),
        "mqtt.url": url, "mqtt.reconnect_min_s": 0.05, "mqtt.reconnect_max_s": 0.5,
        "mqtt.connect_timeout_s": 2.0, "mqtt.max_inflight": 20, "mqtt.keepalive_s": 10})


def _verdict_for(i: int) -> dict:
    now = time.time()
    return _verdict.build(
        device="bench-dev", site="bench", result="pass" if i % 3 else "fail",
        reasons=[] if i % 3 else ["face_mismatch"],
        scores={"liveness": 0.97, "spoof": 0.02, "similarity": 0.71 if i % 3 else 0.12, "threshold": 0.4},
        card={"type": "resident", "expired": False}, models={"detector": "blazeface-short-1"},
        timings_ms={"total": 4321.0, "seq": float(i)}, started_at=now - 4.3, decided_at=now)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "p95": round(_pct(xs, 0.95), 3),
            "max": round(max(xs), 3), "n": len(xs)} if xs else {}


class _Collector:
    def __init__(self):
        self.first_seen: list[str] = []
        self.delivered: list[str] = []      # ids handed to the application (after dedup)
        self.raw = 0
        self.bad = 0
        self.lock = threading.Lock()

    def __call__(self, rec) -> None:
        with self.lock:
            self.raw += 1
            if rec.status == "ok":
                self.first_seen.append(rec.verdict["verdict_id"])
                self.delivered.append(rec.verdict["verdict_id"])
            elif rec.status in ("forged", "invalid"):
                self.bad += 1

    def seen(self) -> set[str]:
        with self.lock:
            return set(self.first_seen)


def _subscriber(url: str, signer, coll: _Collector, name: str):
    from kyc_tools.verdicts.listen import Listener
    lst = Listener(url, [signer.public_key_b64], coll, topic="kyc/v1/bench/bench-dev/verdict",
                   client_id=name, session_expiry_s=3600).start()
    if not lst.wait_subscribed(10):
        raise RuntimeError("bench subscriber could not subscribe")
    time.sleep(1.2)    # let mosquitto autosave the persistent session before the first kill
    return lst


def _wait_all(coll: _Collector, ids: list[str], timeout: float) -> bool:
    end = time.monotonic() + timeout
    want = set(ids)
    while time.monotonic() < end:
        if want <= coll.seen():
            return True
        time.sleep(0.05)
    return False


def _order_kept(first_seen: list[str], ids: list[str]) -> bool:
    idx = {v: i for i, v in enumerate(ids)}
    seq = [idx[v] for v in first_seen if v in idx]
    return all(a < b for a, b in zip(seq, seq[1:]))


# ---------------------------------------------------------------- 1. broker kills
def bench_broker_kills(work: Path, n: int, kills: int, rate: float, sig: int, seed: int) -> dict:
    from device.link.outbox import Outbox
    rnd = random.Random(seed)
    bdir, state = work / "broker1", work / "state1"
    bdir.mkdir()
    broker = _Broker(bdir)
    broker.start()
    signer = wiring.signer(state)
    coll = _Collector()
    lst = _subscriber(broker.url, signer, coll, "bench-sub-1")
    outbox = Outbox(state / "outbox.db", max_rows=n + 100)
    link = wiring.link(_cfg(state, broker.url), outbox, signer=signer).start()
    if not link.wait_connected(10):
        raise RuntimeError("link did not connect")
    # kill points are verdict indices (random, spread over the run), so every kill lands while
    # verdicts are being produced however fast this machine is today
    plan = sorted(rnd.sample(range(max(1, n // 50), max(2, n - n // 50)), min(kills, max(0, n - 2 * (n // 50)))))
    produced = [0]
    done_kills = []

    def killer() -> None:
        t0 = time.monotonic()
        for at in plan:
            while produced[0] < at:
                time.sleep(0.002)
            broker.kill(sig)
            time.sleep(rnd.uniform(0.02, 0.3))
            broker.start()
            done_kills.append(round(time.monotonic() - t0, 3))

    kt = threading.Thread(target=killer, daemon=True)
    ids: list[str] = []
    sign_put: list[float] = []
    t0 = time.monotonic()
    kt.start()
    for i in range(n):
        v = _verdict_for(i)
        a = time.perf_counter()
        outbox.put(signer.sign(v))
        sign_put.append((time.perf_counter() - a) * 1000)
        link.kick()
        ids.append(v["verdict_id"])
        produced[0] = i + 1
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    kt.join()
    produced_s = time.monotonic() - t0
    complete = _wait_all(coll, ids, 60)
    drain_s = time.monotonic() - t0
    end = time.monotonic() + 10
    while outbox.depth() and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.5)   # late duplicates
    link.stop()
    lst.stop()
    broker.kill(signal.SIGTERM)
    seen = coll.seen()
    res = {
        "verdicts": n, "broker_kills": len(done_kills), "kill_signal": signal.Signals(sig).name,
        "received_unique": len(seen & set(ids)), "lost": len(set(ids) - seen),
        "duplicates_raw": lst.dedup.duplicates,
        "duplicates_after_dedup": len(coll.delivered) - len(set(coll.delivered)),
        "order_kept": _order_kept(coll.first_seen, ids), "forged_or_invalid": coll.bad,
        "outbox_depth_end": outbox.depth(), "complete": complete,
        "produce_s": round(produced_s, 2), "all_delivered_s": round(drain_s, 2),
        "link_stats": dict(link.stats), "sign_put_ms_under_load": _stats(sign_put),
    }
    outbox.close()
    return res


# ---------------------------------------------------------------- 2. publisher kill -9
def _child(argv: list[str]) -> int:
    """Publisher process: store verdicts start..n-1 (print each id once stored), drain, exit."""
    from device.link.outbox import Outbox
    p = argparse.ArgumentParser()
    p.add_argument("--state"), p.add_argument("--url"), p.add_argument("--n", type=int)
    p.add_argument("--start", type=int), p.add_argument("--rate", type=float)
    a = p.parse_args(argv)
    state = Path(a.state)
    signer = wiring.signer(state)
    outbox = Outbox(state / "outbox.db", max_rows=a.n + 100)
    link = wiring.link(_cfg(state, a.url), outbox, signer=signer).start()
    t0 = time.monotonic()
    for i in range(a.start, a.n):
        v = _verdict_for(i)
        outbox.put(signer.sign(v))
        link.kick()
        sys.stdout.write(f"{i} {v['verdict_id']}\n")
        sys.stdout.flush()
        time.sleep(max(0.0, t0 + (i - a.start + 1) / a.rate - time.monotonic()))
    end = time.monotonic() + 60
    while outbox.depth() and time.monotonic() < end:
        time.sleep(0.05)
    sys.stdout.write(f"DRAINED {outbox.depth()}\n")
    sys.stdout.flush()
    link.stop()
    return 0


def bench_publisher_kill(work: Path, n: int, rate: float, seed: int) -> dict:
    rnd = random.Random(seed + 1)
    bdir, state = work / "broker2", work / "state2"
    bdir.mkdir()
    broker = _Broker(bdir)
    broker.start()
    signer = wiring.signer(state)
    coll = _Collector()
    lst = _subscriber(broker.url, signer, coll, "bench-sub-2")
    reported: list[tuple[int, str]] = []
    from kyc_tools import paths
    env = paths.child_env()

    def spawn(start: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "kyc_tools.bench.link", "--child", "--state", str(state),
                                 "--url", broker.url, "--n", str(n), "--start", str(start), "--rate", str(rate)],
                                stdout=subprocess.PIPE, text=True, env=env)

    def reader(proc: subprocess.Popen, out: list) -> None:
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                out.append((int(parts[0]), parts[1]))
            elif parts and parts[0] == "DRAINED":
                out.append((-1, parts[1]))

    kill_after = rnd.randint(int(0.2 * n), int(0.8 * n))
    first: list = []
    p1 = spawn(0)
    r1 = threading.Thread(target=reader, args=(p1, first), daemon=True)
    r1.start()
    end = time.monotonic() + 120
    while len(first) < kill_after and p1.poll() is None and time.monotonic() < end:
        time.sleep(0.002)
    os.kill(p1.pid, signal.SIGKILL)
    p1.wait()
    r1.join(5)
    killed_at = len(first)
    reported += [x for x in first if x[0] >= 0]
    resume = (max(i for i, _ in reported) + 1) if reported else 0
    second: list = []
    p2 = spawn(resume)
    r2 = threading.Thread(target=reader, args=(p2, second), daemon=True)
    r2.start()
    p2.wait(180)
    r2.join(5)
    reported += [x for x in second if x[0] >= 0]
    drained = [x for x in second if x[0] == -1]
    ids = [v for _, v in reported]
    complete = _wait_all(coll, ids, 60)
    time.sleep(0.3)
    lst.stop()
    broker.kill(signal.SIGTERM)
    seen = coll.seen()
    from device.link.outbox import Outbox
    ob = Outbox(state / "outbox.db", max_rows=n + 100)
    left = ob.depth()
    ob.close()
    return {
        "verdicts": n, "killed_after_reported": killed_at, "resumed_at_index": resume,
        "reported_stored": len(ids), "lost": len(set(ids) - seen),
        "stored_but_unreported_delivered": len(seen - set(ids)),
        "duplicates_raw": lst.dedup.duplicates,
        "duplicates_after_dedup": len(coll.delivered) - len(set(coll.delivered)),
        "order_kept": _order_kept(coll.first_seen, ids), "forged_or_invalid": coll.bad,
        "child_drained": bool(drained) and drained[0][1] == "0", "outbox_depth_end": left,
        "complete": complete,
    }


# ---------------------------------------------------------------- 3. latency (idle)
def bench_latency(work: Path, n: int) -> dict:
    from device.link.outbox import Outbox
    state = work / "state3"
    signer = wiring.signer(state)
    ob = Outbox(state / "outbox.db", max_rows=n + 10)
    b, s, p, sp = [], [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        v = _verdict_for(i)
        t1 = time.perf_counter()
        signed = signer.sign(v)
        t2 = time.perf_counter()
        ob.put(signed)
        t3 = time.perf_counter()
        b.append((t1 - t0) * 1000)
        s.append((t2 - t1) * 1000)
        p.append((t3 - t2) * 1000)
        sp.append((t3 - t1) * 1000)
    fs = []                                   # the disk's own floor: append 1.2 KB + fdatasync
    fd = os.open(state / "fsync.probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(min(n, 100)):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 1200)
            os.fdatasync(fd)
            fs.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        (state / "fsync.probe").unlink()
    mode = ob._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = ob._db.execute("PRAGMA synchronous").fetchone()[0]
    ob.close()
    return {"n": n, "build_ms": _stats(b), "sign_ms": _stats(s), "outbox_put_ms": _stats(p),
            "sign_plus_put_ms": _stats(sp), "fdatasync_baseline_ms": _stats(fs),
            "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "journal_mode": mode, "synchronous": sync,
            "target_median_ms": 5.0, "meets_target": statistics.median(sp) < 5.0}


# ---------------------------------------------------------------- entry points
def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verdicts", type=int, default=1000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--rate", type=float, default=100.0, help="verdicts per second produced")
    p.add_argument("--kill-signal", choices=("KILL", "TERM"), default="KILL")
    p.add_argument("--publisher-verdicts", type=int, default=1000)
    p.add_argument("--latency-n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="0 = random")
    p.add_argument("--only", choices=("all", "broker", "publisher", "latency"), default="all")
    p.add_argument("--workdir", default="", help="keep the run's files here (default: a temp dir, removed)")
    p.add_argument("--replay-window", type=float, default=None,
                   help="override mqtt.replay_window_s (0 shows what a broker crash loses without replay)")


def run(args) -> dict:
    g = lambda k, d: getattr(args, k, d) if getattr(args, k, None) is not None else d  # noqa: E731
    # names used by device/cli.py's shared `bench` parser: --count, --broker-kills
    if getattr(args, "count", 0) and getattr(args, "verdicts", None) is None:
        args.verdicts = args.publisher_verdicts = args.count
    if getattr(args, "broker_kills", None) is not None and getattr(args, "kills", None) is None:
        args.kills = args.broker_kills
    seed = g("seed", 0) or random.randrange(1, 2**31)
    only = g("only", "all")
    keep = g("workdir", "")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="kyc-bench-link-"))
    work.mkdir(parents=True, exist_ok=True)
    sig = signal.SIGKILL if g("kill_signal", "KILL") == "KILL" else signal.SIGTERM
    REPLAY_WINDOW_S[0] = getattr(args, "replay_window", None)
    out: dict = {"seed": seed, "mosquitto": shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                 "replay_window_s": _cfg(work, "mqtt://127.0.0.1:1").mqtt.replay_window_s}
    try:
        if only in ("all", "latency"):
            out["latency"] = bench_latency(work, g("latency_n", 300))
        if only in ("all", "broker"):
            out["broker_kills"] = bench_broker_kills(work, g("verdicts", 1000), g("kills", 20),
                                                     g("rate", 100.0), sig, seed)
        if only in ("all", "publisher"):
            out["publisher_kill"] = bench_publisher_kill(work, g("publisher_verdicts", 1000),
                                                         g("rate", 100.0), seed)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    ok = True
    for k in ("broker_kills", "publisher_kill"):
        r = out.get(k)
        if r:
            ok &= r["lost"] == 0 and r["duplicates_after_dedup"] == 0 and r["order_kept"] and r["forged_or_invalid"] == 0
    if "latency" in out:
        ok &= out["latency"]["meets_target"]
    out["pass"] = bool(ok)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    p = argparse.ArgumentParser(prog="kyc-edge bench link")
    add_args(p)
    res = run(p.parse_args(argv))
    print(json.dumps(res, indent=2))
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
