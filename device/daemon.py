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

import logging
import os
import signal
import threading
import time
from pathlib import Path

from device import config as config_mod
from device import logs
from device.errors import CardError, KycError
from device.notify import Notifier

log = logging.getLogger("kyc_edge.daemon")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
EXIT_RESTART = 75    # = device.fleet.software.EXIT_RESTART: switched software slot, restart me (Restart=)


class Daemon:
    def __init__(self, config_path: str | None, *, env=os.environ):
        self.config_path = config_path
        self.notifier = Notifier(env)
        self.cfg: config_mod.Config | None = None
        self._stop = threading.Event()
        self._reload = False
        self.session = None
        self.started = time.monotonic()
        self.camera = self.reader = self.vision = self.link = self.outbox = self.signer = None
        self.agent = None
        self.base_cfg: config_mod.Config | None = None
        self.boot_guard: dict | None = None
        self.reader_state = "starting"
        self.pending_start: tuple | None = None   # (response_topic, correlation, t) from cmd/start
        self._abort_session = False              # set by cmd/abort (link thread), read per frame
        self.hmac_key: bytes | None = None
        self.verdicts = 0
        self.exit_code = EXIT_OK

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
            "cpu_temp_c": _cpu_temp(),
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
        self._stop.set()

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
        self.base_cfg, self.cfg = new, merged
        new = merged
        logs.setup(new.log.level, new.log.target)
        if new.match != old.match or new.quality != old.quality or new.liveness != old.liveness \
                or new.session != old.session:
            log.info("config reloaded: thresholds, liveness and session settings take effect next session")
        restart_needed = [s for s in ("device", "camera", "reader", "models", "mqtt")
                          if getattr(new, s) != getattr(old, s)]
        if restart_needed:
            log.warning("config reloaded; sections %s need a restart to take effect", ",".join(restart_needed))
        self.status("ready; config reloaded")

    # ------------------------------------------------------------------ commands from MQTT
    def on_command(self, name: str, payload: dict, props=None) -> None:
        if self.agent is not None and self.agent.on_command(name, payload, props):
            return
        if name == "start":
            rt = getattr(props, "ResponseTopic", None) if props is not None else None
            corr = getattr(props, "CorrelationData", None) if props is not None else None
            self.pending_start = (rt, corr, time.monotonic())
            log.info("start command received; it applies to the next session")
        elif name == "abort" and self.session is not None:
            self._abort_session = True

    # ------------------------------------------------------------------ start-up
    def _start(self) -> int:
        from device.link.mqtt import Link
        from device.link.outbox import Outbox
        from device.verdict import Signer

        cfg = self.cfg
        state = Path(cfg.device.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        self.status("loading keys")
        self.signer = Signer.load_or_create(state)
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
        self.outbox = Outbox(state / "outbox.sqlite", cfg.outbox.max_rows)
        self.link = Link(cfg, self.outbox, health=self.health, on_command=self.on_command, signer=self.signer)
        self._start_fleet(state)    # before the link starts, so no update command can arrive unseen
        self.link.start()

        self.status("loading models")
        from device.vision.suite import VisionSuite
        self.vision = VisionSuite.create(cfg, self.model_dir)

        self.status("opening camera")
        from device.camera import open_source
        self.camera = open_source(cfg.camera)

        self.status("opening card reader")
        from device.cardreader.reader import CardReader
        self.reader = CardReader(cfg.reader)
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
        from device.fleet import slots
        from device.vision.suite import VisionSuite
        new_cfg = slots.merged_config(self.base_cfg, bundle_dir)
        model_dir = slots.model_dir(bundle_dir, self.factory_models)
        vision = VisionSuite.create(new_cfg, model_dir)     # raises: the agent rolls back
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
        self.notifier.ready(self._ready_text())
        log.info("ready")
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
        while not self._stop.is_set():
            self.tick()
            if self._reload:
                self._reload_config()
            if self.agent is not None:
                self.agent.poll(session_active=self.session is not None)
            now = time.monotonic()
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

    def _run_session(self) -> None:
        from device.session import Session

        if self.outbox.full():
            log.error("outbox full: session refused (outbox_full); verdicts are waiting for the broker")
            self._publish_event({"event": "refused", "reason": "outbox_full"})
            return
        start = self.pending_start
        self.pending_start = None
        if start and time.monotonic() - start[2] > self.cfg.session.start_ttl_s:
            start = None
        self._abort_session = False

        def sink(v: dict) -> None:
            signed = self.signer.sign(v)
            self.outbox.put(signed, response_topic=start[0] if start else None,
                            correlation=start[1] if start else None)
            self.link.kick()
            self.verdicts += 1

        self.session = Session(self.cfg, reader=self.reader, camera=self.camera, vision=self.vision, sink=sink,
                               events=self._publish_event, tick=self.tick,
                               should_abort=lambda: self._stop.is_set() or self._abort_session,
                               hmac_key=self.hmac_key)
        try:
            v = self.session.run()
            log.info("verdict %s: %s %s", v["verdict_id"], v["result"], ",".join(v["reasons"]) or "-",
                     extra={"session_id": v["verdict_id"], "reason": ",".join(v["reasons"])})
        except KycError as e:   # outbox full or an invalid verdict: nothing was published
            log.error("session could not store its verdict: %s", e)
        finally:
            self.session = None

    def _publish_event(self, event: dict) -> None:
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
        if self.link is not None:
            self.link.stop("stopping")
        if self.outbox is not None:
            self.outbox.close()


def _software_version() -> str:
    from device import __version__
    return __version__


def _cpu_temp() -> float | None:
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None
