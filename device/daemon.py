"""`kyc-edge run`: lifecycle only. Wires the parts, tells systemd how it is, runs sessions.

Start-up order, each step shown in systemd's STATUS=: state dir and keys -> outbox -> broker link
(connects in the background) -> models -> camera -> card reader -> broker (bounded wait) -> READY=1.
A broker that is still down after mqtt.connect_timeout_s does not block READY: the counter serves
customers and verdicts wait in the durable outbox (STATUS says so).

Signals: SIGTERM/SIGINT abort a running session (its verdict says `aborted`), flush, exit 0 within 5 s.
SIGHUP re-reads the config; an invalid file keeps the old config and logs why.
Watchdog: WATCHDOG=1 at half of WATCHDOG_USEC from the main loop, only while it is healthy (the
camera's capture/recovery thread made progress recently).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from device import config as config_mod
from device import logs, memory
from device.errors import CardError, KycError
from device.notify import Notifier

log = logging.getLogger("kyc_edge.daemon")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
EXIT_RESTART = 75    # = device.fleet.software.EXIT_RESTART: switched software slot, restart me (Restart=)


class StartupRefused(Exception):
    """A start-up fault a restart cannot fix (read-only state dir, corrupt signing key, unreadable
    password file): one clear line and EXIT_CONFIG, which the unit's RestartPreventExitStatus=2
    keeps from becoming a restart loop."""


class Daemon:
    def __init__(self, config_path: str | None, *, env=os.environ):
        self.config_path = config_path
        self.notifier = Notifier(env)
        self.cfg: config_mod.Config | None = None
        self._stop = threading.Event()
        self._term = False          # set by the SIGTERM/SIGINT handler; the loop turns it into _stop
        self._reload = False
        self.session = None
        self.started = time.monotonic()
        self.camera = self.reader = self.vision = self.link = self.outbox = self.signer = None
        self.agent = None
        self.base_cfg: config_mod.Config | None = None
        self.boot_guard: dict | None = None
        self.reader_state = "starting"
        self.pending_start = None                # device.link.props.StartRequest from cmd/start
        self.store = None                        # device.store.VerdictStore
        self.storage_state: str | None = None    # None | storage_low | storage_unwritable
        from device.clock import RELEASE_FLOOR
        self.clock_floor = RELEASE_FLOOR           # raised at start by the outbox's last write (device/clock.py)
        self._next_storage_check = 0.0
        self._abort_session = False              # set by cmd/abort (link thread), read per frame
        self.hmac_key: bytes | None = None
        self.verdicts = 0
        self.exit_code = EXIT_OK
        from device.display.consent import ConsentBox
        self.consent_box = ConsentBox()          # the display's buttons and cmd/consent answer here
        self.display = None                      # device.display.client.DisplayClient when enabled

    # ------------------------------------------------------------------ status
    def status(self, text: str) -> None:
        self.notifier.status(text)
        log.info("status: %s", text)

    def health(self) -> dict:
        cam = self.camera
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "camera": getattr(cam, "health", "closed") if cam else "closed",
            "reader": self.reader_state,
            "session": "active" if self.session is not None else "idle",
            "outbox_depth": self.outbox.depth() if self.outbox else 0,
            "outbox_full": bool(self.outbox and self.outbox.full()),
            "models": dict(self.vision.versions) if self.vision else {},
            "verdicts": self.verdicts,
            "bundle_version": self.agent.bundle_version if self.agent else 0,
            "software_version": _software_version(),
            "storage": self.storage_state or "ok",
        }

    def healthy(self) -> bool:
        """Main-loop health for the watchdog: a hung camera recovery stops the watchdog."""
        cam = self.camera
        if cam is None:
            return True
        progress = getattr(cam, "progress", None)
        if progress is None:
            return True
        limit = max(10.0, 3 * self.cfg.camera.reopen_backoff_max_s)
        return time.monotonic() - progress < limit

    def tick(self) -> None:
        """Called from the main loop and once per session frame."""
        if self.healthy():
            self.notifier.watchdog()

    # ------------------------------------------------------------------ signals
    def _on_term(self, signum, frame) -> None:
        # The handler runs on the main thread between two bytecodes, possibly inside self._stop.wait()
        # while that holds the Event's (non-reentrant) lock: Event.set() here would then wait for itself
        # forever (seen once: a daemon that ignored SIGTERM until SIGKILL). Only a plain attribute is
        # written here; the main loop and the session's abort check read it.
        self._term = True

    def _on_hup(self, signum, frame) -> None:
        self._reload = True

    def _reload_config(self) -> None:
        self._reload = False
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as e:
            for line in e.problems:
                log.error("reload refused, keeping the old config: %s", line)
            self.status("ready; config reload refused (see log)")
            return
        from device.fleet import slots
        try:
            merged = slots.merged_config(new, slots.active_bundle(new.device.state_dir))
        except config_mod.ConfigError as e:
            for line in e.problems:
                log.error("reload refused (with the update bundle's config patch): %s", line)
            return
        old = self.cfg
        restart_needed = [s for s in _RESTART_SECTIONS if getattr(merged, s) != getattr(old, s)]
        # settings that need a restart are not applied by SIGHUP: the running identity, topics,
        # camera, reader, models and broker stay what they were until the process restarts
        keep = {s: getattr(old, s) for s in restart_needed}
        keep_base = {s: getattr(self.base_cfg, s) for s in restart_needed}
        self.base_cfg = dataclasses.replace(new, **keep_base)
        self.cfg = new = dataclasses.replace(merged, **keep)
        logs.setup(new.log.level, new.log.target)
        if new.match != old.match or new.quality != old.quality or new.liveness != old.liveness \
                or new.session != old.session:
            log.info("config reloaded: thresholds, liveness and session settings take effect next session")
        if restart_needed:
            log.warning("config reloaded; sections %s need a restart to take effect (not applied)",
                        ",".join(restart_needed))
        self.status("ready; config reloaded")

    # ------------------------------------------------------------------ commands from MQTT
    def on_command(self, name: str, payload: dict, props=None) -> None:
        if self.agent is not None and self.agent.on_command(name, payload, props):
            return
        if name == "start":
            self._on_start(payload, props)
        elif name == "abort":
            self.pending_start = None            # cmd/abort also cancels a start not yet begun
            if self.session is not None:
                self._abort_session = True
        elif name == "consent":      # the operator answers for the customer: {"notice_version", "answer"?}
            answer = payload.get("answer", "agree")
            self.consent_box.offer(answer if isinstance(answer, str) else "", "operator",
                                   payload.get("notice_version"), payload.get("session_id"))

    def _on_start(self, payload: dict, props) -> None:
        """cmd/start: validated before anything is kept (device/link/props.py). Refused with a
        `refused` event: a bad one (`bad_command`), and one arriving while a session runs or while
        an earlier start is still pending (`session_running`): the first start binds the session,
        a later one never re-binds it (docs/mqtt.md)."""
        from device.link import props as props_mod
        try:
            req = props_mod.parse_start(payload, props)
        except props_mod.BadStart as e:
            log.warning("cmd/start refused: %s", e.detail)
            self._publish_event({"event": "refused", "reason": "bad_command"})
            return
        pending = self.pending_start
        if self.session is not None or (
                pending is not None and time.monotonic() - pending.t <= self.cfg.session.start_ttl_s):
            log.warning("cmd/start refused: %s", "a session is running" if self.session is not None
                        else "an earlier start is pending (send cmd/abort to cancel it)")
            self._publish_event({"event": "refused", "reason": "session_running"})
            return
        self.pending_start = req
        log.info("start command received; it applies to the next session")

    # ------------------------------------------------------------------ start-up
    def _start(self) -> int:
        from device import store as store_mod
        from device import wiring

        cfg = self.cfg
        state = Path(cfg.device.state_dir)
        _prepare_state_dir(state)
        self.status("loading keys")
        self.signer = _load_signer(state)
        if cfg.privacy.card_number_hmac_key_file:
            try:
                self.hmac_key = Path(cfg.privacy.card_number_hmac_key_file).read_bytes().strip()
            except OSError as e:
                log.error("privacy.card_number_hmac_key_file unreadable (%s): verdicts carry no card number hash",
                          e.strerror)
        # fleet: count this start against a fresh switch (crash-loop rollback) before loading anything
        from device.fleet import slots
        self.boot_guard = slots.boot_guard(state, cfg.fleet)
        if self.boot_guard and self.boot_guard.get("action") == "rolled_back":
            log.error("fleet: rolled back to bundle %s (%s)", self.boot_guard.get("bundle_version"),
                      self.boot_guard.get("reason"))
        self.factory_models = config_mod.models_dir(cfg)
        bundle = slots.active_bundle(state)
        self.cfg = cfg = slots.merged_config(self.base_cfg, bundle)
        self.model_dir = slots.model_dir(bundle, self.factory_models)
        outbox_file = config_mod.outbox_path(cfg)       # [outbox] path, else <state_dir>/outbox.sqlite
        from device import clock as clock_mod
        self.clock_floor = clock_mod.floor(clock_mod.last_write(outbox_file))   # before opening it writes
        try:
            self.outbox, recovery = wiring.outbox(cfg)
        except (OSError, sqlite3.Error) as e:
            raise StartupRefused(f"state: cannot open {outbox_file} for writing ({_why(e)})") from None
        self.link = wiring.link(cfg, self.outbox, health=self.health, on_command=self.on_command, signer=self.signer)
        if recovery is not None:
            self._alarm("outbox_recovered", True)
        self.store = wiring.verdict_store(self.signer, self.outbox, state, alarm=self._alarm, kick=self.link.kick)
        store_mod.ensure_ballast(state, cfg.storage.ballast_bytes, cfg.storage.reserve_bytes)
        self._check_storage(force=True)
        _check_password_file(cfg)
        self._start_fleet(state)    # before the link starts, so no update command can arrive unseen
        self.link.start()
        if cfg.display.enabled:
            from device.display.client import DisplayClient
            self.display = DisplayClient(cfg.display.socket, on_answer=self.consent_box.offer).start()

        self.status("loading models")
        self.vision = wiring.vision(cfg, self.model_dir)
        # the second embedder is optional: without its file MobileFaceNet alone decides (a warning was
        # logged); the fleet sees it as an alarm, since the box's match is then the weaker one
        self._alarm("second_embedder_missing", cfg.match.second_embedder and self.vision.embedder2 is None)

        memory.release_file_pages()    # before the camera and reader add theirs: this is the start-up's peak
        self.status("opening camera")
        self.camera = wiring.camera(cfg)

        self.status("opening card reader")
        self.reader = wiring.reader(cfg)
        if cfg.reader.photo_decoder == "auto" and not cfg.reader.wlt_library:
            # auto without a WLT library: BMP/JPEG photos decode, a real card's WLT photo cannot
            log.warning("reader.photo_decoder = 'auto' but reader.wlt_library is not set: cards whose chip "
                        "photo is WLT (all resident cards) will fail with photo_decoder_unavailable")
            self._alarm("photo_decoder_wlt_missing", True)
        try:
            self.reader.open()          # photo_decoder_unavailable raises here, at start-up
            self.reader_state = "ok"
        except CardError as e:
            if e.reason != "reader_unavailable":
                raise
            # unplugged at boot: serve anyway, card_present() keeps reconnecting (hot-plug)
            self.reader_state = "unavailable"
            log.warning("card reader not there yet (%s); will keep trying", cfg.reader.port)

        self.status("waiting for broker")
        if not self.link.wait_connected(cfg.mqtt.connect_timeout_s):
            log.warning("broker not reachable after %.0f s; serving anyway, verdicts queue in the outbox",
                        cfg.mqtt.connect_timeout_s)
        return EXIT_OK

    # ------------------------------------------------------------------ fleet updates
    def _start_fleet(self, state: Path) -> None:
        """The update agent gets what it needs from the biometric side as callables (import rule)."""
        from device.fleet.agent import UpdateAgent
        from device.selftest import bundle_self_test, canned_verification
        self.agent = UpdateAgent(
            self.base_cfg, state, publish_status=self.link.publish_update_status,
            self_test=bundle_self_test(self.base_cfg, self.base_cfg.models.threads),
            health_probe=lambda: canned_verification(self.vision, self.cfg),
            apply=self._apply_bundle, factory_models=self.factory_models, software=self._software_updater())

    def _software_updater(self):
        """Software A/B slots (device/fleet/software.py) when fleet.software_root is set (the .deb)."""
        if not self.base_cfg.fleet.software_root:
            return None
        from device.fleet.software import EXIT_RESTART as code, SoftwareUpdater
        assert code == EXIT_RESTART

        def restart() -> None:
            self.exit_code = EXIT_RESTART
            self._stop.set()
        return SoftwareUpdater(self.base_cfg.fleet.software_root, config_path=self.config_path,
                               request_restart=restart)

    def _apply_bundle(self, bundle_dir: Path | None) -> None:
        """Hot swap between sessions (the agent calls this from poll(), on the main loop)."""
        from device import wiring
        from device.fleet import slots
        new_cfg = slots.merged_config(self.base_cfg, bundle_dir)
        model_dir = slots.model_dir(bundle_dir, self.factory_models)
        vision = wiring.vision(new_cfg, model_dir)          # raises: the agent rolls back
        self.vision, self.cfg, self.model_dir = vision, new_cfg, model_dir
        log.info("fleet: pipeline swapped to bundle %s", getattr(self.agent, "bundle_version", "?"))

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        try:
            self.cfg = self.base_cfg = config_mod.load(self.config_path)
        except config_mod.ConfigError as e:
            import sys
            for line in e.problems:
                print(line, file=sys.stderr)
            return EXIT_CONFIG
        logs.setup(self.cfg.log.level, self.cfg.log.target)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.status("starting")
        try:
            self._start()
        except StartupRefused as e:
            log.error("start-up refused: %s", e)
            self.status("start-up refused (see log)")
            self._shutdown()
            return EXIT_CONFIG
        except KycError as e:
            log.error("start-up failed: %s", e)
            self.status(f"start-up failed: {e.reason}")
            self._shutdown()
            return EXIT_CONFIG if e.reason == "photo_decoder_unavailable" else EXIT_FAIL
        except Exception:  # noqa: BLE001 - a bug at start-up: say so, exit non-zero, systemd restarts
            log.exception("start-up failed unexpectedly")
            self.status("start-up failed: internal_error")
            self._shutdown()
            return EXIT_FAIL
        before = memory.resident_file_mb()
        memory.release_file_pages()     # the start-up's code, now dead (device/memory.py)
        self.notifier.ready(self._ready_text())
        log.info("ready (resident file pages %.1f -> %.1f MB)", before or 0.0, memory.resident_file_mb() or 0.0)
        try:
            self._loop()
        finally:
            self._shutdown()
        return self.exit_code

    def _ready_text(self) -> str:
        link = "broker connected" if self.link.connected else "broker unreachable, outbox queueing"
        return f"ready; {link}; camera {self.camera.health}; outbox {self.outbox.depth()}"

    def _loop(self) -> None:
        card_consumed = False
        last_status = 0.0
        while not self._stopping():
            self.tick()
            if self._reload:
                self._reload_config()
            if self.agent is not None:
                self.agent.poll(session_active=self.session is not None)
            now = time.monotonic()
            self._check_storage()
            if now - last_status > 5.0:
                last_status = now
                self.notifier.status(self._ready_text())
            try:
                present = self.reader.card_present()
                self.reader_state = "ok"
            except CardError as e:
                self.reader_state = e.reason
                present = False
            if present and not card_consumed:
                card_consumed = True
                self._run_session()
            elif not present:
                card_consumed = False
            self._stop.wait(self.cfg.reader.poll_s)

    def _stopping(self) -> bool:
        if self._term:
            self._stop.set()
        return self._stop.is_set()

    def _run_session(self) -> None:
        from device.session import Session

        if self.outbox.full():
            log.error("outbox full: session refused (outbox_full); verdicts are waiting for the broker")
            self._publish_event({"event": "refused", "reason": "outbox_full"})
            return
        if self._check_storage(force=True):
            log.error("session refused (%s): the state directory cannot safely take a verdict",
                      self.storage_state)
            self._publish_event({"event": "refused", "reason": self.storage_state})
            return
        if self._check_clock():
            self._publish_event({"event": "refused", "reason": "clock_unsynced"})
            return
        start = self.pending_start
        self.pending_start = None
        if start and time.monotonic() - start.t > self.cfg.session.start_ttl_s:
            start = None
        binding = start.binding if start else None
        self._abort_session = False
        cfg = self.cfg
        stored: list[str] = []

        def sink(v: dict) -> None:
            signed = self.store.sign_or_fallback(v, device=cfg.device.id, site=cfg.device.site, binding=binding)
            self.store.put(signed, response_topic=start.response_topic if start else None,
                           correlation=start.correlation if start else None)
            stored.append(signed["verdict"]["verdict_id"])
            self.verdicts += 1

        self.session = Session(cfg, reader=self.reader, camera=self.camera, vision=self.vision, sink=sink,
                               events=self._publish_event, tick=self.tick,
                               should_abort=lambda: self._stopping() or self._abort_session,
                               hmac_key=self.hmac_key, binding=binding,
                               consent=self.consent_box.wait if self.cfg.consent.required else None)
        try:
            v = self.session.run()
            log.info("verdict %s: %s %s", v["verdict_id"], v["result"], ",".join(v["reasons"]) or "-",
                     extra={"session_id": v["verdict_id"], "reason": ",".join(v["reasons"])})
        except Exception as e:  # noqa: BLE001 - storing a verdict is never skipped silently
            if stored:
                log.error("session ended with an error after its verdict was stored: %s", type(e).__name__)
            else:
                self._store_fallback(e, start, cfg)
        finally:
            self.session = None

    def _store_fallback(self, e: Exception, start, cfg) -> None:
        """The session ended without a stored verdict (a schema-invalid verdict is a bug): a
        signed internal_error verdict takes its place, and `verdict_invalid` is raised in status."""
        from device.link.outbox import OutboxFull
        log.error("session could not build or store its verdict (%s: %s): storing an internal_error verdict",
                  type(e).__name__, getattr(e, "detail", "") or "-")
        self._alarm("verdict_invalid", True)
        vid = getattr(self.session, "session_id", None) or None
        try:
            v = self.store.fallback(None, device=cfg.device.id, site=cfg.device.site, verdict_id=vid,
                                    binding=start.binding if start else None)
            self.store.put(self.signer.sign(v), response_topic=start.response_topic if start else None,
                           correlation=start.correlation if start else None)
            self.verdicts += 1
            self._publish_event({"event": "verdict", "result": "fail", "verdict_id": v["verdict_id"],
                                 "reason": "internal_error"})
        except OutboxFull:
            log.error("outbox full: the internal_error verdict could not be stored either")
        except KycError as e2:
            log.critical("no verdict could be stored for this session: %s", e2)

    # ------------------------------------------------------------------ storage
    def _alarm(self, name: str, on: bool) -> None:
        link = self.link
        if link is None:
            return
        changed = (name in link.alarms) != on
        (link.alarms.add if on else link.alarms.discard)(name)
        if changed:
            link.publish_status()

    def _check_clock(self) -> str | None:
        """A wall clock before device.clock's floor (no RTC, NTP not synced yet, or gone backwards across a
        reboot): card expiry, age and verdict times would be wrong, so the session is refused."""
        from device import clock as clock_mod
        from device.verdict import rfc3339
        problem = clock_mod.problem(time.time(), self.clock_floor)
        if problem and "clock_unsynced" not in (self.link.alarms if self.link else ()):
            log.error("clock: the wall clock reads %s, before %s (release, or the outbox's last write): "
                      "sessions are refused until it is synchronised (clock_unsynced)",
                      rfc3339(time.time()), rfc3339(self.clock_floor))
        elif not problem and self.link is not None and "clock_unsynced" in self.link.alarms:
            log.info("clock: synchronised; sessions resume")
        self._alarm("clock_unsynced", problem is not None)
        return problem

    def _check_storage(self, force: bool = False) -> str | None:
        """Free space and writability of the state directory (at start, before every session,
        every storage.check_interval_s); sets `storage_low` / `storage_unwritable` in status."""
        from device import store as store_mod
        now = time.monotonic()
        if not force and now < self._next_storage_check:
            return self.storage_state
        self._next_storage_check = now + self.cfg.storage.check_interval_s
        state = Path(self.cfg.device.state_dir)
        problem = store_mod.check(state, self.cfg.storage.reserve_bytes)
        if problem != self.storage_state:
            if problem:
                log.error("state directory %s: %s (reserve %d bytes); new sessions are refused", state, problem,
                          self.cfg.storage.reserve_bytes)
            else:
                log.info("state directory %s: storage ok again", state)
            self.storage_state = problem
            if self.link is not None:
                self.link.publish_status()
        for name in ("storage_low", "storage_unwritable"):
            self._alarm(name, problem == name)
        if problem is None:
            if self.store is not None and self.store.unstored:
                self.store.retry()
            store_mod.ensure_ballast(state, self.cfg.storage.ballast_bytes, self.cfg.storage.reserve_bytes)
        return problem

    def _publish_event(self, event: dict) -> None:
        if event.get("event") == "consent" and event.get("session_id"):
            self.consent_box.arm(event["session_id"], event.get("notice_version", ""))
        if self.display is not None:
            self.display.send(event)
        try:
            self.link.publish_session_event(event)
        except KycError as e:
            log.warning("session event dropped: %s", e)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.agent is not None:
            self.agent.close()
        for name in ("camera", "reader"):
            part = getattr(self, name)
            if part is not None:
                try:
                    part.close()
                except Exception as e:  # noqa: BLE001 - closing must not stop the rest
                    log.warning("closing %s: %s", name, type(e).__name__)
        if self.display is not None:
            self.display.stop()
        if self.link is not None:
            self.link.stop("stopping")
        if self.outbox is not None:
            self.outbox.close()


_RESTART_SECTIONS = ("device", "camera", "reader", "models", "mqtt", "outbox", "storage", "privacy", "fleet")


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _prepare_state_dir(state: Path) -> None:
    from device import store as store_mod
    try:
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
    except OSError as e:
        raise StartupRefused(f"state: cannot create or use device.state_dir {state} ({_why(e)}); "
                             "check its owner and mount (systemd StateDirectory=)") from None
    err = store_mod.probe(state)
    if store_mod.no_space(err):
        # a full disk is not fatal: the ballast makes room to open the outbox, sessions are refused
        # (storage_low) until space comes back, and the counter keeps its status and queue
        freed = store_mod.release_ballast(state)
        log.error("state: device.state_dir %s is full%s; new sessions will be refused (storage_low)", state,
                  f" (released {freed} bytes of ballast)" if freed else "")
    elif err is not None:
        raise StartupRefused(f"state: device.state_dir {state} is not writable ({os.strerror(err)}: read-only "
                             "mount or owner); verdicts cannot be stored")


def _load_signer(state: Path):
    from device import wiring
    from device.verdict import KEY_FILE, VerdictError
    try:
        return wiring.signer(state)
    except (ValueError, TypeError, VerdictError) as e:
        raise StartupRefused(f"state: the signing key {state / KEY_FILE} is corrupt or truncated "
                             f"({type(e).__name__}); move it aside to make a new key at the next start "
                             "(the operator must then trust the new public key: kyc-edge keys show)") from None
    except OSError as e:
        raise StartupRefused(f"state: cannot read or create the signing key {state / KEY_FILE} ({_why(e)})") from None


def _check_password_file(cfg) -> None:
    if cfg.mqtt.username and cfg.mqtt.password_file:
        try:
            Path(cfg.mqtt.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StartupRefused(f"config: mqtt.password_file {cfg.mqtt.password_file}: cannot read ({_why(e)})") from None


def _software_version() -> str:
    from device import __version__
    return __version__

