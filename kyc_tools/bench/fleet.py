"""`kyc-edge bench fleet --devices N`: the operator side at fleet scale, on one machine.

  * N simulated boxes (kyc_tools.bench.simbox.SimBox: a real device.link.mqtt.Link + Outbox + its own
    Ed25519 signing key and MQTT client each), many per process (--box-procs processes), each with a
    real device.fleet.agent.UpdateAgent (admission, staging, slots journal) on its command topics;
  * one mosquitto (persistence on), a private PostgreSQL (initdb in a temp dir) unless --dsn, and
    --workers `kyc-edge verdicts ingest` processes on one shared subscription;
  * every box enrolled (`fleet enrol` path: db.enrol), then V verdicts each, at random times over
    --duration seconds, plus forged ones (signed by keys nobody enrolled) on real device topics;
  * during the run one worker is SIGKILLed (restarted 3 s later with the same client id) and the
    broker is restarted once;
  * reported: sent, rows, lost, duplicate rows, quarantined, throughput, decision->commit latency
    p50/p99 (from the workers' per-batch commit records), CPU seconds and peak RSS of broker, workers,
    PostgreSQL and box processes;
  * then a staged rollout over the same agents with a small real bundle (canary 1 %, 10 %, all),
    --fail-rate of the agents failing their self-test, aborting above --abort-rate; reported: the
    time per stage, where it stopped, and how many agents are left on the old bundle (rollout view and
    the operator database's devices table).
"""
from __future__ import annotations

import json
import os
import queue
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kyc_tools import paths as tool_paths

REPO = tool_paths.checkout() or Path.cwd()    # PYTHONPATH for the box and worker processes
CLK = os.sysconf("SC_CLK_TCK")
BOXES_PER_PROC = 100


# =================================================================== box process
def boxes_main(spec_path: str) -> int:
    """One process hosting many boxes. Commands on stdin (one per line): publish, stop.
    Events on stdout (JSON lines): keys, connected, published."""
    from device.fleet.agent import UpdateAgent
    from kyc_tools.bench.simbox import SimBox
    import logging
    logging.basicConfig(level=logging.ERROR)
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    boxes, agents = [], []
    for b in spec["boxes"]:
        holder: dict = {}

        def self_test(bundle_dir, fail=b["fail"]):
            if fail:
                raise RuntimeError("bench: this agent is made to fail its self-test")

        def on_command(name, payload, props, h=holder):
            a = h.get("agent")
            if a is not None:
                a.on_command(name, payload, props)

        box = SimBox(spec["url"], root / b["device"], b["site"], b["device"], on_command=on_command,
                     health_fn=lambda h=holder: {"bundle_version": h["agent"].bundle_version} if "agent" in h else {},
                     **{"fleet.public_keys": (spec["fleet_pub"],), "device.groups": tuple(b["groups"]),
                        "models.dir": spec["factory"], "fleet.download_timeout_s": 120.0,
                        "mqtt.connect_timeout_s": 30.0, "mqtt.reconnect_max_s": 5.0})
        agent = UpdateAgent(box.cfg, box.state, publish_status=box.link.publish_update_status,
                            self_test=self_test, factory_models=spec["factory"])
        holder["agent"] = agent
        boxes.append(box)
        agents.append(agent)
    print(json.dumps({"event": "keys", "records": [b.key_record() for b in boxes]}), flush=True)
    for b in boxes:
        b.start()
    stop = threading.Event()

    def poller():
        while not stop.is_set():
            for a in agents:
                a.poll(False)
            stop.wait(0.3)
    threading.Thread(target=poller, daemon=True).start()
    end = time.monotonic() + 60
    while time.monotonic() < end and not all(b.link.connected for b in boxes):
        time.sleep(0.1)
    print(json.dumps({"event": "connected", "n": sum(b.link.connected for b in boxes)}), flush=True)

    def publish():
        rnd = random.Random(spec["seed"])
        plan = sorted((rnd.uniform(0, spec["duration"]), i) for i in range(len(boxes))
                      for _ in range(spec["verdicts"]))
        t0 = time.monotonic()
        for at, i in plan:
            d = t0 + at - time.monotonic()
            if d > 0:
                time.sleep(d)
            boxes[i].decide()
        ids = [v for b in boxes for v in b.sent]
        Path(spec["sent_file"]).write_text(json.dumps(ids))
        print(json.dumps({"event": "published", "n": len(ids), "s": round(time.monotonic() - t0, 2)}), flush=True)

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "publish":
            threading.Thread(target=publish, daemon=True).start()
        elif cmd == "depth":
            print(json.dumps({"event": "depth", "n": sum(b.outbox.depth() for b in boxes)}), flush=True)
        elif cmd == "stop":
            break
    stop.set()
    for a in agents:
        a.close()
    for b in boxes:
        b.stop()
    return 0


# =================================================================== measurement helpers
class Sampler:
    """CPU seconds and peak RSS per role, sampled from /proc every `period` s (pids may change)."""

    def __init__(self, period: float = 0.5):
        self.period = period
        self.roles: dict[str, callable] = {}
        self.cpu: dict[str, dict[int, float]] = {}
        self.rss: dict[str, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def watch(self, role: str, pids_fn) -> None:
        self.roles[role] = pids_fn
        self.cpu.setdefault(role, {})
        self.rss.setdefault(role, 0.0)

    @staticmethod
    def _read(pid: int) -> tuple[float, float] | None:
        try:
            st = Path(f"/proc/{pid}/stat").read_text()
            f = st.rsplit(")", 1)[1].split()
            cpu = (int(f[11]) + int(f[12])) / CLK
            rss = 0.0
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024.0
            return cpu, rss
        except (OSError, IndexError, ValueError):
            return None

    def sample(self) -> None:
        for role, fn in self.roles.items():
            try:
                pids = list(fn())
            except Exception:  # noqa: BLE001
                pids = []
            for pid in pids:
                r = self._read(pid)
                if r:
                    self.cpu[role][pid] = r[0]
                    self.rss[role] = max(self.rss[role], r[1])

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def start(self) -> "Sampler":
        self._t.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._t.join(2)
        self.sample()
        return {role: {"cpu_s": round(sum(self.cpu[role].values()), 1), "processes": len(self.cpu[role]),
                       "peak_rss_mb_per_process": round(self.rss[role], 1)} for role in self.roles}


def children_of(ppid: int) -> list[int]:
    out = [ppid]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                f = (p / "stat").read_text().rsplit(")", 1)[1].split()
                if int(f[1]) == ppid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _poll(read, done, timeout: float, step: float = 0.5):
    """read() until done(value) or `timeout` s have passed; the last value read (at least one read)."""
    end = time.monotonic() + timeout
    while True:
        v = read()
        if done(v) or time.monotonic() >= end:
            return v
        time.sleep(step)


def _count(conn, sql: str) -> int:
    n = conn.execute(sql).fetchone()[0]
    conn.commit()                  # a fresh snapshot for the next read
    return n


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))], 1)


class BoxProc:
    def __init__(self, spec: dict, tmp: Path, n: int):
        self.spec_path = tmp / f"boxes-{n}.json"
        self.spec_path.write_text(json.dumps(spec))
        self.err = open(tmp / f"boxes-{n}.err", "wb")
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.p = subprocess.Popen([sys.executable, "-m", "kyc_tools.bench.fleet", "boxes", str(self.spec_path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env)
        self.q: "queue.Queue[dict | None]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                continue
        self.q.put(None)

    def send(self, cmd: str) -> None:
        self.p.stdin.write((cmd + "\n").encode())
        self.p.stdin.flush()

    def wait_event(self, name: str, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            try:
                e = self.q.get(timeout=max(0.01, left))
            except queue.Empty:
                e = None
            if e is None:
                raise TimeoutError(f"box process: no '{name}' event (exit code {self.p.poll()})")
            if e.get("event") == name:
                return e


# =================================================================== controller
def run(args) -> dict:
    from device import localbroker
    from device import verdict as _verdict
    from device.fleet import manifest as mf
    from kyc_tools.bench.simbox import fake_verdict
    from kyc_tools.fleet.commands import SIGNED, build_bundle, sign_bundle
    from kyc_tools.fleet.rollout import FleetClient, staged_rollout
    from kyc_tools.verdicts import db as _db
    import paho.mqtt.client as mqtt

    n_dev = int(args.devices)
    v_each = int(args.count or 3)
    n_workers = int(args.workers)
    # paho's loop uses select(), which takes no descriptor >= 1024; a box holds ~8 (socket, socket pair,
    # SQLite + WAL + shm twice), so at most BOXES_PER_PROC boxes share one process.
    n_procs = int(args.box_procs) or -(-n_dev // BOXES_PER_PROC)
    n_procs = max(1, min(n_procs, n_dev))
    duration = float(args.duration)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # clean up brokers, workers, PostgreSQL
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="kyc-bench-fleet-", dir=args.state_dir or None))
    log = (lambda s: print(f"[bench fleet] {s}", file=sys.stderr, flush=True))
    rnd = random.Random(args.seed)
    out: dict = {"devices": n_dev, "verdicts_per_device": v_each, "workers": n_workers, "box_procs": n_procs,
                 "duration_s": duration, "cpu_count": os.cpu_count()}

    pg = None
    if args.dsn:
        dsn = args.dsn
    else:
        from kyc_tools.verdicts.localpg import Postgres
        pg = Postgres().start()
        dsn = pg.dsn
    class Broker(localbroker.LocalBroker):
        def conf_text(self) -> str:        # persistence saved every 5 s and at shutdown (not per change)
            return super().conf_text().replace("persistence false\n", f"persistence true\npersistence_location {self.dir}/\n"
                                               "autosave_interval 5\n")
    broker = Broker(tmp, "allow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 100\n").start()
    workers: dict[str, subprocess.Popen] = {}
    procs: list[BoxProc] = []
    sampler = Sampler()
    try:
        conn = _db.connect(dsn)
        _db.migrate(conn)
        conn.commit()

        # ---- fleet key, factory "models", a small real bundle
        fkey, fpub, _ = mf.keygen(tmp / "fleetkey")
        factory = tmp / "factory"
        factory.mkdir()
        (factory / "thresholds.bin").write_bytes(os.urandom(1024))
        src = tmp / "bundle-src"
        src.mkdir()
        (src / "thresholds.bin").write_bytes(os.urandom(2048))
        bundle = tmp / "bundle-v2"
        build_bundle(src, bundle, 2, None, vectors=False)
        sign_bundle(bundle, str(fkey), ["*"])
        env = json.loads((bundle / SIGNED).read_text())

        # ---- boxes: groups for the stages, 3 % made to fail their self-test
        names = [f"counter-{i:04d}" for i in range(n_dev)]
        order = names[:]
        rnd.shuffle(order)
        n_canary = max(1, round(n_dev * 0.01))
        n_wave = max(n_canary + 1, round(n_dev * 0.10))
        canary, wave = set(order[:n_canary]), set(order[:n_wave])
        failing = set(rnd.sample(names, max(1, round(n_dev * args.fail_rate))))
        specs = [{"site": f"shop-{i // 10:03d}", "device": d,
                  "groups": (["canary"] if d in canary else []) + (["wave"] if d in wave else []),
                  "fail": d in failing} for i, d in enumerate(names)]
        # ---- ingest workers
        def start_worker(i: int) -> None:
            cid = f"ingest-{i}"
            e = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            workers[cid] = subprocess.Popen(
                [sys.executable, "-m", "device.cli", "verdicts", "ingest", "--dsn", dsn, "--broker", broker.url,
                 "--client-id", cid, "--no-migrate", "--stats-file", str(tmp / f"{cid}.stats.jsonl")],
                stdout=open(tmp / f"{cid}.{time.monotonic_ns()}.out", "wb"),
                stderr=open(tmp / f"{cid}.err", "ab"), env=e)
        for i in range(n_workers):
            start_worker(i)

        end = time.monotonic() + 120
        while time.monotonic() < end and not all(
                b"subscribed" in (tmp / f"ingest-{i}.err").read_bytes() for i in range(n_workers)):
            time.sleep(0.2)
        t = time.monotonic()
        for k in range(n_procs):
            part = specs[k::n_procs]
            procs.append(BoxProc({"url": broker.url, "root": str(tmp / "boxes"), "boxes": part,
                                  "fleet_pub": fpub.read_text().strip(), "factory": str(factory),
                                  "verdicts": v_each, "duration": duration, "seed": args.seed + k,
                                  "sent_file": str(tmp / f"sent-{k}.json")}, tmp, k))
        records = []
        for p in procs:
            records += p.wait_event("keys", 600)["records"]
        for r in records:                                # explicit enrolment, one key per box
            site, dev, kid, pub = _db.parse_key_record(r)
            _db.enrol(conn, site, dev, kid, pub)
        out["enrolled"] = len(records)
        conn.commit()

        sampler.watch("broker", lambda: [broker.proc.pid] if broker.proc else [])
        sampler.watch("ingest_workers", lambda: [w.pid for w in workers.values() if w.poll() is None])
        if pg is not None:
            sampler.watch("postgresql", lambda: children_of(pg.proc.pid) if pg.proc else [])
        sampler.watch("box_processes", lambda: [p.p.pid for p in procs if p.p.poll() is None])
        sampler.start()
        for p in procs:
            p.wait_event("connected", 300)
        out["setup_s"] = round(time.monotonic() - t, 1)
        time.sleep(3.0)                                  # workers subscribed (persistent sessions)
        log(f"{n_dev} boxes connected and enrolled in {out['setup_s']} s; publishing")

        # ---- publish; faults in the middle
        t_pub = time.time()
        for p in procs:
            p.send("publish")
        # forged verdicts on real device topics, signed by keys nobody enrolled
        n_forged = max(1, n_dev // 100)
        fc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-forger", protocol=mqtt.MQTTv5)
        fc.connect("127.0.0.1", broker.port)
        fc.loop_start()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        rogue = _verdict.Signer(Ed25519PrivateKey.generate())
        for i in range(n_forged):
            s = specs[rnd.randrange(n_dev)]
            fc.publish(f"kyc/v1/{s['site']}/{s['device']}/verdict",
                       json.dumps(rogue.sign(fake_verdict(s["site"], s["device"], result="pass"))), qos=1)
        time.sleep(0.5)
        fc.loop_stop()
        fc.disconnect()
        faults = {}
        time.sleep(duration * 0.3)
        victim = "ingest-1" if n_workers > 1 else "ingest-0"
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        faults["worker_sigkill_at_s"] = round(time.time() - t_pub, 1)
        log(f"SIGKILL {victim}")
        time.sleep(3.0)
        start_worker(int(victim.split("-")[1]))
        faults["worker_restarted_at_s"] = round(time.time() - t_pub, 1)
        time.sleep(max(0.0, duration * 0.6 - (time.time() - t_pub)))
        broker.stop()
        broker.start()
        faults["broker_restarted_at_s"] = round(time.time() - t_pub, 1)
        log("broker restarted")
        out["faults"] = faults
        for p in procs:
            p.wait_event("published", duration * 4 + 600)
        sent: set = set()
        for k in range(n_procs):
            sent |= set(json.loads((tmp / f"sent-{k}.json").read_text()))
        rows = _poll(lambda: _count(conn, "SELECT count(*) FROM verdicts"), lambda n: n >= len(sent),
                     args.drain_timeout)
        t_done = time.time()
        ids = {r[0] for r in conn.execute("SELECT verdict_id::text FROM verdicts").fetchall()}
        dup_rows = conn.execute("SELECT count(*) - count(DISTINCT verdict_id) FROM verdicts").fetchone()[0]
        quarantined = conn.execute("SELECT count(*), coalesce(sum(seen), 0) FROM quarantine").fetchone()
        conn.commit()
        lat, commits = [], []
        for f in tmp.glob("ingest-*.stats.jsonl"):
            for line in f.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue                      # a line cut by SIGKILL
                lat += r["lat_ms"]
                if r["inserted"]:
                    commits.append(r["t"])
        t_last = max(commits) if commits else t_done
        out["verdicts"] = {
            "sent": len(sent), "rows": rows, "lost": len(sent - ids), "extra_rows": len(ids - sent),
            "duplicate_rows": dup_rows, "forged_published": n_forged, "quarantined": quarantined[0],
            "quarantine_deliveries": int(quarantined[1]),
            "throughput_per_s": round(len(ids & sent) / max(1e-6, t_last - t_pub), 1),
            "publish_to_last_commit_s": round(t_last - t_pub, 1),
            "e2e_decision_to_commit_ms": {"p50": pct(lat, 0.50), "p99": pct(lat, 0.99), "max": pct(lat, 1.0),
                                          "n": len(lat)},
        }
        log(f"verdicts: {out['verdicts']}")

        # ---- staged rollout over the same agents
        t_r = time.monotonic()
        with FleetClient(broker.url) as flc:
            res = staged_rollout(flc, env, bundle / "artifacts", ["group:canary", "group:wave", "*"],
                                 canary_count=n_canary, abort_failure_rate=args.abort_rate, min_reports=1,
                                 expect=n_dev, stage_expect=[n_canary, n_wave, n_dev], timeout=args.rollout_timeout,
                                 settle_s=3.0, rate=200.0, log=log)
            # an abort stops further stages; what was already published still finishes: settle
            def busy():
                return [d for d, u in flc.results(2).items() if u.get("state") not in ("applied", "failed", "rolled_back")]
            end = time.monotonic() + 120
            while busy() and time.monotonic() < end:
                time.sleep(0.5)
            settled = flc.results(2)
        t_settled = time.monotonic() - t_r
        applied = sum(u.get("state") == "applied" for u in settled.values())
        on_new = _poll(lambda: _count(conn, "SELECT count(*) FROM devices WHERE (update_status->>'bundle_version')::int = 2"),
                       lambda n: n >= applied, 30)          # update/status into the database (ingest workers)
        fail_reasons: dict = {}
        for r in res["failed"].values():
            fail_reasons[r] = fail_reasons.get(r, 0) + 1
        out["rollout"] = {
            "stages": [f"canary 1% ({n_canary})", f"10% ({n_wave})", f"all ({n_dev})"],
            "made_to_fail": len(failing), "failing_in_canary": len(failing & canary),
            "failing_in_10pct": len(failing & wave), "abort_failure_rate": args.abort_rate,
            "result": res["result"], "stages_published": res["stages_published"], "stage_s": res["stage_s"],
            "applied": len(res["applied"]), "failed": len(res["failed"]), "failed_reasons": fail_reasons,
            "in_progress_at_abort": len(res["in_progress"]),
            "applied_after_settling": applied, "left_on_old_bundle": n_dev - applied,
            "on_new_bundle_in_db": on_new, "left_on_old_bundle_in_db": n_dev - on_new,
            "settled_s": round(t_settled, 1),
        }
        log(f"rollout: {out['rollout']}")
        # rows a box holds back (a replayed copy that reached no subscriber during the broker restart is
        # pending again, docs/mqtt.md) go out on its next retry: give them the drain timeout, then count
        def depth() -> int:
            for p in procs:
                p.send("depth")
            return sum(p.wait_event("depth", 60)["n"] for p in procs)
        out["outbox_depth_at_end"] = _poll(depth, lambda n: n == 0, args.drain_timeout)
    finally:
        out["resources"] = sampler.stop() if sampler._t.is_alive() else {}
        wc = {"duplicates_dropped": 0, "inserted": 0, "acked": 0, "stale_acks_skipped": 0}
        for cid, w in workers.items():
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for cid, w in workers.items():
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        for f in tmp.glob("ingest-*.out"):
            lines = f.read_text().strip().splitlines()
            if lines:
                try:
                    c = json.loads(lines[-1])
                except ValueError:
                    continue
                wc["duplicates_dropped"] += c.get("duplicates", 0)
                for k in ("inserted", "acked", "stale_acks_skipped"):
                    wc[k] += c.get(k, 0)
        out["workers_final_counts"] = wc
        for p in procs:
            try:
                p.send("stop")
            except OSError:
                pass
        for p in procs:
            try:
                p.p.wait(120)
            except subprocess.TimeoutExpired:
                p.p.kill()
        broker.stop()
        if pg is not None:
            pg.close()
        if not args.keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            out["dir"] = str(tmp)
    return out


def add_args(s) -> None:
    g = s.add_argument_group("fleet bench (target fleet)")
    g.add_argument("--devices", type=int, default=100, help="simulated boxes (default %(default)s)")
    g.add_argument("--workers", type=int, default=4, help="ingest worker processes")
    g.add_argument("--box-procs", type=int, default=0, help="processes hosting the boxes (default: one per "
                   f"{BOXES_PER_PROC} boxes; paho's select() takes no file descriptor >= 1024)")
    g.add_argument("--duration", type=float, default=20.0, help="seconds over which the verdicts are made")
    g.add_argument("--dsn", help="use this PostgreSQL (default: a private initdb cluster)")
    g.add_argument("--fail-rate", type=float, default=0.03, help="agents made to fail their self-test")
    g.add_argument("--abort-rate", type=float, default=0.02, help="rollout abort threshold (failure rate)")
    g.add_argument("--rollout-timeout", type=float, default=300.0)
    g.add_argument("--drain-timeout", type=float, default=120.0)
    g.add_argument("--seed", type=int, default=16)
    g.add_argument("--state-dir", help="parent dir for the boxes' state (default: $TMPDIR)")
    g.add_argument("--keep", action="store_true", help="keep the work dir (logs, stats)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "boxes":
        sys.exit(boxes_main(sys.argv[2]))
    sys.exit(2)
