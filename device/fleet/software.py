"""Software updates of the daemon itself: signed wheel bundles into A/B venv slots, self-test,
atomic `current` switch, restart through systemd, automatic rollback.

Layout under `fleet.software_root` (the .deb: /opt/kyc-edge; tests: a tmp dir):

    base/             the venv the .deb built at install time from its wheelhouse: every pinned
                      dependency, and the packaged kyc-edge, which the boot guard below runs from.
                      Owned by root; the service cannot change it.
    slots/            owned by the kyc-edge user (the unit's only writable path under /opt):
      a/ b/           complete venvs. Each is `python -m venv --without-pip` of base's interpreter
                      with one `.pth` line that appends base's site-packages *after* the slot's own:
                      the bundle's wheels (our kyc_edge wheel, and any dependency wheel the bundle
                      carries) are pip-installed into the slot itself, so the slot really runs the
                      new code, while unchanged dependencies (numpy, OpenCV, LiteRT: 100+ MB) are
                      shared with base instead of copied. SOFTWARE.json + READY are written last.
      current -> a    relative symlink, replaced by rename(2) + directory fsync.
      software.json   the journal: staged slot, trial (switch on probation), pending report.
    current -> slots/current   static (root-owned) link; the unit's ExecStart is
                      /opt/kyc-edge/current/bin/kyc-edge, which resolves to the live slot.

Flow: `SoftwareUpdater.submit` (command thread, via the UpdateAgent hook) checks the window,
nonce, version (downgrade refused unless the signed manifest says allow_downgrade) and sizes;
a worker thread downloads (URL or inline chunks, the agent's code), verifies every sha256, builds
the inactive slot (`pip install --no-index --no-deps` from the bundle only) and runs the new slot's
self-test in a subprocess of the *new* interpreter (`python -m device.selftest software`: import,
version, config check, model load, one synthetic frame through the pipeline) -> STAGED.
`poll(session_active=False)` (main loop, never during a session) journals the trial, switches
`current` and asks the daemon to exit with EXIT_RESTART (75); systemd (`Restart=on-failure`)
starts the new slot. `guard()` runs before every start (the unit's ExecStartPre, from base, so a
new slot that cannot even import is still counted) and rolls `current` back after
`fleet.crash_loop_restarts` starts within `fleet.crash_loop_window_s` of the switch. The new
daemon's first idle poll runs the health probe; pass -> APPLIED (committed), fail -> `current`
back and EXIT_RESTART into the old slot -> ROLLED_BACK(health_probe_failed).

Imports only stdlib and device.config / device.fleet (import rule): the self-test is a subprocess.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from device import __version__ as RUNNING_VERSION
from device import config as config_mod
from device.fleet import fetch
from device.fleet import manifest as mf
from device.fleet.admission import WHEEL as _WHEEL
from device.fleet.journal import Journal, Staged
from device.fleet.manifest import FleetError
from device.fleet.slots import disk_error, fsync_dir, point_current, write_atomic

log = logging.getLogger("kyc_edge.fleet.software")

SLOTS = ("a", "b")
EXIT_RESTART = 75           # the daemon exits with this to be restarted into the new slot (EX_TEMPFAIL)
JOURNAL = "software.json"
BASE_PTH = "_kyc_edge_base.pth"


# ------------------------------------------------------------------ layout
def clean_env() -> dict:
    """Environment for slot processes: no PYTHONPATH/PYTHONHOME, so only the slot's code runs."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                                                             "VIRTUAL_ENV", "PIP_TARGET", "PIP_PREFIX")}


def current_slot(root: str | os.PathLike) -> str | None:
    try:
        t = os.readlink(Path(root) / "slots" / "current")
    except OSError:
        return None
    return t if t in SLOTS else None


def slot_dir(root: str | os.PathLike, slot: str) -> Path:
    return Path(root) / "slots" / slot


def slot_info(root: str | os.PathLike, slot: str | None) -> dict:
    if slot is None:
        return {}
    d = slot_dir(root, slot)
    try:
        if not (d / "READY").is_file():
            return {}
        info = json.loads((d / "SOFTWARE.json").read_text())
        return info if isinstance(info, dict) and (d / "bin" / "python").exists() else {}
    except (OSError, ValueError):
        return {}


def is_complete(root: str | os.PathLike, slot: str | None) -> bool:
    return bool(slot_info(root, slot))


def other(slot: str | None) -> str:
    return "b" if slot == "a" else "a"


def read_journal(root: str | os.PathLike) -> dict:
    try:
        st = json.loads((Path(root) / "slots" / JOURNAL).read_text())
        return st if isinstance(st, dict) else {}
    except (OSError, ValueError):
        return {}


def write_journal(root: str | os.PathLike, st: dict) -> None:
    (Path(root) / "slots").mkdir(parents=True, exist_ok=True)
    write_atomic(Path(root) / "slots" / JOURNAL, json.dumps(st, sort_keys=True).encode())


def load_journal(root: str | os.PathLike) -> Journal:
    return Journal.from_dict(read_journal(root))


def save_journal(root: str | os.PathLike, j: Journal) -> None:
    write_journal(root, j.to_dict())


def switch(root: str | os.PathLike, slot: str) -> None:
    """Atomically point <root>/slots/current at <slot> (a complete slot only)."""
    root = Path(root)
    if slot not in SLOTS or not is_complete(root, slot):
        raise ValueError(f"software slot {slot!r} is not complete")
    point_current(root / "slots", slot)


def _base_python(root: Path) -> Path:
    return root / "base" / "bin" / "python"


def _site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise FileNotFoundError(f"{venv}: no site-packages")
    return found[0]


def _system_site(venv: Path) -> bool:
    try:
        text = (venv / "pyvenv.cfg").read_text()
    except OSError:
        return False
    return bool(re.search(r"^include-system-site-packages\s*=\s*true", text, re.M | re.I))


def build_slot(root: str | os.PathLike, slot: str, wheels: list[Path], info: dict, *,
               timeout: float = 600.0) -> Path:
    """(Re)build slots/<slot> from base's interpreter + `wheels` (pip, offline, no deps resolved:
    the bundle is exactly what gets installed). Raises FleetError(install_failed) or OSError.
    The slot is built at its final path (venv scripts carry absolute paths); until READY is written
    it is incomplete and never switched to, and `current` never names the slot being built."""
    root = Path(root)
    if slot == current_slot(root):
        raise ValueError("refusing to build into the current software slot")
    d = slot_dir(root, slot)
    base = root / "base"
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    cmd = [str(_base_python(root)), "-m", "venv", "--without-pip"]
    if _system_site(base.resolve()):
        cmd.append("--system-site-packages")      # Pi: python3-picamera2 from apt
    r = subprocess.run(cmd + [str(d)], capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode:
        raise FleetError("install_failed", f"venv: {r.stderr.strip()[-200:]}")
    (_site_packages(d) / BASE_PTH).write_text(str(_site_packages(base.resolve())) + "\n")
    r = subprocess.run([str(d / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps",
                        "--ignore-installed", "--disable-pip-version-check", "--no-warn-script-location",
                        "--no-cache-dir", *[str(w) for w in wheels]],
                       capture_output=True, text=True, env=env, timeout=timeout, cwd=str(d))
    if r.returncode:
        raise FleetError("install_failed", f"pip: {r.stderr.strip()[-300:]}")
    (d / "SOFTWARE.json").write_text(json.dumps(info, sort_keys=True))
    with open(d / "READY", "w") as fh:
        fh.write(info["version"] + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(d)
    return d


def self_test(root: str | os.PathLike, slot: str, config_path: str | None, version: str, *,
              timeout: float = 300.0) -> str:
    """Run the new slot's own self-test with its own interpreter; FleetError(self_test_failed)."""
    d = slot_dir(root, slot)
    cmd = [str(d / "bin" / "python"), "-m", "device.selftest", "software", "--expect-version", version]
    if config_path:
        cmd += ["--config", str(config_path)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=str(d))
    except subprocess.TimeoutExpired:
        raise FleetError("self_test_failed", f"slot {slot}: self-test timed out") from None
    if r.returncode:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or [f"exit {r.returncode}"]
        raise FleetError("self_test_failed", f"slot {slot}: {tail[0][:200]}")
    return r.stdout.strip()


# ------------------------------------------------------------------ boot guard (ExecStartPre)
def guard(root: str | os.PathLike, fcfg: Any, now: float | None = None) -> dict | None:
    """Run before every start of the daemon. Counts starts while a switch is on probation and
    rolls `current` back to the previous slot after `crash_loop_restarts` starts within
    `crash_loop_window_s`; repairs a `current` that names an incomplete slot."""
    now = time.time() if now is None else now
    root = Path(root)
    if not root.is_dir():
        return None
    j = load_journal(root)
    trial = j.trial
    cur = current_slot(root)

    def rollback(reason: str, to: str | None) -> dict:
        rep = {"state": "rolled_back", "reason": reason,
               "target_version": trial.bundle_version if trial else None,
               "target_software_version": trial.version if trial else None}
        if to is not None and is_complete(root, to):
            switch(root, to)
        j.roll_back(rep, drop_staged=True, repair=trial is None)
        save_journal(root, j)
        log.error("software: rolled back to slot %s (%s)", to, reason)
        return {"action": "rolled_back", "to": to, **rep}

    if os.path.lexists(root / "slots" / "current") and not is_complete(root, cur):
        alt = (trial.from_slot if trial else None) or other(cur)
        if is_complete(root, alt):
            return rollback("slot_invalid", alt)
        return None
    step = j.boot(cur, now, float(fcfg.crash_loop_window_s), int(fcfg.crash_loop_restarts))
    if step is None:
        return None
    if step == "crash_loop":
        return rollback("crash_loop", trial.from_slot)
    if step == "not_switched":              # journaled, switch never happened (power cut)
        j.abandon()
        step = "cleared"
    save_journal(root, j)
    if step == "counted":
        return {"action": "counted", "restarts": len(j.trial.boots)}
    return {"action": step}


# ------------------------------------------------------------------ the updater
class _SwJob:
    def __init__(self, m: dict, env: dict, d: Path, spool: Any):
        self.m, self.envelope, self.dir, self.spool = m, env, d, spool
        self.t_queued = time.monotonic()


class SoftwareUpdater:
    """Plugged into UpdateAgent(software=...); the agent routes manifests with kind=software here."""

    def __init__(self, root: str | os.PathLike, *, config_path: str | None,
                 request_restart: Callable[[], Any], running_version: str = RUNNING_VERSION,
                 self_test: Callable[[str, str], Any] | None = None):
        self.root = Path(root)
        self.config_path = config_path
        self.request_restart = request_restart
        self.running_version = running_version
        self._self_test = self_test or (lambda slot, version: globals()["self_test"](
            self.root, slot, self.config_path, version))
        self.agent: Any = None
        self._jobs: "queue.Queue[_SwJob | None]" = queue.Queue()
        self._staged: Staged | None = None
        self._reported = False
        self._restarting = False
        self._worker: threading.Thread | None = None
        for p in (self.root / "slots").glob(".stage-*"):
            shutil.rmtree(p, ignore_errors=True)
        s = load_journal(self.root).staged
        if s and s.slot != current_slot(self.root) and is_complete(self.root, s.slot) \
                and slot_info(self.root, s.slot).get("version") == s.version:
            self._staged = s            # self-tested before a restart / power cut: switch it in

    def attach(self, agent: Any) -> None:
        self.agent = agent
        self._worker = threading.Thread(target=self._work, name="kyc-fleet-software", daemon=True)
        self._worker.start()

    def close(self) -> None:
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(2)

    @property
    def fcfg(self):
        return self.agent.fcfg

    def _report(self, state: str, m: dict | None, *, reason: str | None = None, detail: str = "",
                target_software: str | None = None, target_version: int | None = None) -> None:
        st = {"state": state, "reason": reason, "kind": "software",
              "software_version": self.running_version}
        tv = m["bundle_version"] if m else target_version
        ts = (m or {}).get("software_version", target_software)
        if ts:
            st["target_software_version"] = ts
        if state in ("failed", "rolled_back", "applied"):
            j = load_journal(self.root)
            j.last = {"state": state, "reason": reason, "target_version": tv, "target_software_version": ts}
            save_journal(self.root, j)
        self.agent._report(state, tv, reason=reason, detail=detail,
                           **{k: v for k, v in st.items() if k not in ("state", "reason")})

    # -------------------------------------------------------------- command thread
    def submit(self, m: dict, env: dict) -> None:
        a = self.agent
        with a._lock:
            dup = a._active.get(m["nonce"])
            if dup is not None and dup.envelope == env:
                return
            try:
                supported = self.root.is_dir() and (self.root / "base").exists()
                a.admit(m, free_paths=(self.root,) if supported else (), software_supported=supported,
                        software_version=self.running_version,
                        staged_software=self._staged.version if self._staged else None)
                d = a.bdir / ".incoming" / m["nonce"]
                spool = fetch.Spool(d, m["artifacts"], a._stop)
            except FleetError as e:
                self._report("failed", m, reason=e.reason, detail=e.detail)
                return
            except OSError as e:
                self._report("failed", m, reason="disk_full" if disk_error(e) else "internal_error",
                             detail=str(e.strerror))
                return
            job = _SwJob(m, env, d, spool)
            a._active[m["nonce"]] = job      # inline chunks are routed by the agent's _on_chunk
        self._report("queued", m)
        self._jobs.put(job)

    # -------------------------------------------------------------- worker
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._process(job)
            except FleetError as e:
                self._report("failed", job.m, reason=e.reason, detail=e.detail)
            except OSError as e:
                self._report("failed", job.m, reason="disk_full" if disk_error(e) else "internal_error",
                             detail=f"{type(e).__name__}: {e.strerror}")
            except Exception as e:  # noqa: BLE001
                if isinstance(e, fetch.Stopping):
                    log.info("software: %s abandoned: agent closing", mf.short_id(job.m))
                else:
                    log.exception("software: update failed")
                    self._report("failed", job.m, reason="internal_error", detail=type(e).__name__)
            finally:
                shutil.rmtree(job.dir, ignore_errors=True)
                with self.agent._lock:
                    self.agent._active.pop(job.m["nonce"], None)

    def _trial_open(self) -> bool:
        return load_journal(self.root).on_probation

    def _process(self, job: _SwJob) -> None:
        m, a = job.m, self.agent
        deadline = job.t_queued + self.fcfg.download_timeout_s
        while self._trial_open():                      # the rollback slot must stay intact
            if a._stop.wait(0.1):
                return
        self._report("downloading", m)
        files = fetch.fetch(m, job.spool, job.dir, deadline, a._stop)
        self._report("verifying", m)
        fetch.verify(m, files)
        slot = other(current_slot(self.root))
        self._staged = None
        j = load_journal(self.root)
        j.unstage()                                    # committed: a new stage ends its window
        save_journal(self.root, j)
        info = {"version": m["software_version"], "bundle_version": m["bundle_version"], "nonce": m["nonce"]}
        try:
            build_slot(self.root, slot, [files[x["name"]] for x in m["artifacts"]], info)
        except FleetError:
            shutil.rmtree(slot_dir(self.root, slot), ignore_errors=True)
            raise
        try:
            self._self_test(slot, m["software_version"])
        except FleetError:
            shutil.rmtree(slot_dir(self.root, slot), ignore_errors=True)
            raise
        except Exception as e:  # noqa: BLE001
            shutil.rmtree(slot_dir(self.root, slot), ignore_errors=True)
            raise FleetError("self_test_failed", f"{type(e).__name__}: {str(e)[:200]}") from None
        staged = Staged(slot, m["software_version"], bundle_version=m["bundle_version"])
        j = load_journal(self.root)
        j.stage(staged)
        save_journal(self.root, j)
        self._staged = staged
        self._report("staged", m)

    # -------------------------------------------------------------- main loop
    def poll(self, session_active: bool) -> None:
        if not self._reported:
            self._reported = True
            self._report_start()
        if session_active or self._restarting:
            return
        j = load_journal(self.root)
        if j.probation_in(current_slot(self.root)):
            self._probe_and_commit(j)
            return
        s = self._staged
        if s is not None:
            self._staged = None
            self._switch(s)

    def _report_start(self) -> None:
        j = load_journal(self.root)
        rep = j.take_report()
        if rep:
            save_journal(self.root, j)
            self._report(rep["state"], None, reason=rep.get("reason"),
                         target_software=rep.get("target_software_version"), target_version=rep.get("target_version"))

    def _switch(self, s: Staged) -> None:
        slot = s.slot
        cur = current_slot(self.root)
        if slot == cur or not is_complete(self.root, slot):
            return
        j = load_journal(self.root)
        j.begin_trial(slot, s.version, from_slot=cur, from_version=self.running_version, now=time.time(),
                      bundle_version=s.bundle_version)
        save_journal(self.root, j)
        switch(self.root, slot)
        log.warning("software: switched to slot %s (%s); restarting (exit %d)", slot, s.version, EXIT_RESTART)
        self._restarting = True
        self.request_restart()

    def _probe_and_commit(self, j: Journal) -> None:
        trial = j.trial
        m = {"bundle_version": trial.bundle_version, "software_version": trial.version}
        try:
            if trial.version != self.running_version:
                raise RuntimeError(f"running {self.running_version}, slot says {trial.version}")
            self.agent.health_probe()
        except Exception as e:  # noqa: BLE001
            to = trial.from_slot
            rep = {"state": "rolled_back", "reason": "health_probe_failed", "target_version": m["bundle_version"],
                   "target_software_version": m["software_version"]}
            if to and is_complete(self.root, to):
                switch(self.root, to)
            j.roll_back(rep)
            save_journal(self.root, j)
            log.error("software: health probe failed (%s: %s); back to slot %s", type(e).__name__, str(e)[:200], to)
            self._restarting = True
            self.request_restart()
            return
        j.commit(time.time())
        save_journal(self.root, j)
        self._report("applied", m)


# ------------------------------------------------------------------ CLI (ExecStartPre, the .deb)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.fleet.software")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("guard", help="boot guard: count this start, roll back a crash loop (ExecStartPre)")
    g.add_argument("--config")
    g.add_argument("--root", help="override fleet.software_root")
    i = sub.add_parser("init", help="build the first slot from a wheel directory and point current at it")
    i.add_argument("--root", required=True)
    i.add_argument("--wheels", required=True, help="directory holding kyc_edge-<version>-*.whl")
    i.add_argument("--slot", choices=SLOTS, help="default: the slot `current` does not name")
    s = sub.add_parser("status", help="print the slots and the journal as JSON")
    s.add_argument("--root", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if a.cmd == "guard":
        # never blocks a start: whatever goes wrong here is logged and the daemon starts anyway
        # (an invalid config is then reported by the daemon itself, exit 2)
        try:
            cfg = config_mod.load(a.config) if a.config else config_mod.Config()
            root = a.root or cfg.fleet.software_root
            print(json.dumps(guard(root, cfg.fleet) if root else None))
        except Exception as e:  # noqa: BLE001
            log.error("software boot guard failed, starting anyway: %s: %s", type(e).__name__, str(e)[:200])
            print("null")
        return 0
    if a.cmd == "init":
        wheels = sorted(Path(a.wheels).glob("kyc_edge-*.whl"))
        if not wheels:
            print(f"no kyc_edge wheel in {a.wheels}", file=sys.stderr)
            return 2
        ver = _WHEEL.match(wheels[-1].name).group(2)
        a.slot = a.slot or other(current_slot(a.root))
        write_journal(a.root, {})           # a package install/upgrade starts a fresh journal
        build_slot(a.root, a.slot, [wheels[-1]], {"version": ver, "bundle_version": 0, "nonce": "package"})
        switch(a.root, a.slot)
        if not os.path.lexists(Path(a.root) / "current"):
            os.symlink("slots/current", Path(a.root) / "current")
        print(json.dumps({"slot": a.slot, "version": ver}))
        return 0
    root = Path(a.root)
    print(json.dumps({"current": current_slot(root), "slots": {s: slot_info(root, s) for s in SLOTS},
                      "journal": read_journal(root)}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
