"""TOML config -> frozen dataclasses.

Every field carries its own doc, type and range, so one engine validates everything, the
README reference is generated from the same source (`kyc-edge check-config --reference`), and
an error names the key, the value and what was expected, one line each.

This module imports nothing from the biometric side: link/ and fleet/ depend on it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import urlsplit

from device import ids

from device.camera import backends as camera_backends   # the backends' declarations (stdlib only)
from device.options import opt

DEFAULT_PATH = Path("/etc/kyc-edge/config.toml")


class ConfigError(Exception):
    """One or more problems; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------- sections
@dataclass(frozen=True)
class DeviceConfig:
    id: str = opt("counter-0001", "Device ID; the MQTT topic segment and the verdict's `device`.")
    site: str = opt("site-0001", "Site (shop) ID; the MQTT topic segment and the verdict's `site`.")
    state_dir: str = opt("/var/lib/kyc-edge", "Where keys, the outbox, bundles and counters live (systemd StateDirectory).")
    groups: tuple[str, ...] = opt((), "Fleet groups this device belongs to (for group update topics).")


@dataclass(frozen=True)
class _CameraCore:
    backend: str = opt("auto", "Frame source.")
    width: int = opt(1280, "Capture width in pixels.", lo=64, hi=4096)
    height: int = opt(720, "Capture height in pixels.", lo=64, hi=4096)
    fps: int = opt(30, "Capture rate asked of the camera.", lo=1, hi=240)
    stall_s: float = opt(2.0, "No frame for this long marks the camera `stalled` and reopens it.", lo=0.1, hi=60)
    lost_s: float = opt(10.0, "No frame for this long (counted from the last frame, like stall_s) marks the camera `lost`; a running session fails with `camera_lost`, reopening goes on.", lo=0.5, hi=600)
    reopen_backoff_max_s: float = opt(30.0, "Ceiling of the exponential back-off between reopen attempts.", lo=0.1, hi=600)
    reopen_backoff_min_s: float = opt(0.25, "First delay before reopening a failed camera; doubles per failed attempt up to reopen_backoff_max_s.", lo=0.01, hi=60)


def _camera_config_class() -> type:
    """[camera]: the common keys, `backend` with one choice per backend, and one section per backend,
    each declared by its module in device/camera/backends/ (KEY, DOC, Options)."""
    found = camera_backends.backends()
    ann: dict[str, Any] = {"backend": str}
    ns: dict[str, Any] = {"__module__": __name__, "__qualname__": "CameraConfig", "__annotations__": ann,
                          "backend": opt("auto", "Frame source.", choices=camera_backends.choices())}
    for key, mod in found.items():
        ann[key] = mod.Options
        ns[key] = opt(mod.Options, mod.DOC, factory=True)
    return dataclass(frozen=True)(type("CameraConfig", (_CameraCore,), ns))


CameraConfig = _camera_config_class()


def _rebuild_camera() -> None:
    global CameraConfig
    CameraConfig = _camera_config_class()
    _HINTS.clear()


camera_backends.on_change(_rebuild_camera)


def __getattr__(name: str):
    # ReplayCameraConfig, V4L2CameraConfig, ...: a backend's section, by the old class names
    if name.endswith("CameraConfig"):
        mod = camera_backends.backends().get(name[:-len("CameraConfig")].lower())
        if mod is not None:
            return mod.Options
    raise AttributeError(name)


@dataclass(frozen=True)
class ReaderConfig:
    port: str = opt("/dev/ttyUSB0", "Serial port of the ID-card reader (pyserial URL also allowed).")
    baud: int = opt(115200, "Baud rate.", choices=(115200, 57600, 38400, 19200, 9600))
    timeout_s: float = opt(1.0, "Reply timeout of one command.", lo=0.05, hi=30)
    retries: int = opt(2, "Retries of a command after a timeout or a corrupt reply.", lo=0, hi=10)
    poll_s: float = opt(0.3, "Card-presence polling interval.", lo=0.02, hi=10)
    photo_decoder: str = opt("auto", "How the chip photo is decoded: `wlt` (vendor library), `bmp`, `jpeg`, or `auto` (by magic bytes).",
                             choices=("auto", "wlt", "bmp", "jpeg"))
    wlt_library: str = opt("", "Path to the vendor's libwlt2bmp.so (needed for WLT photos).")
    photo_max_side: int = opt(2048, "A JPEG / JPEG 2000 / BMP chip photo whose header claims a wider or taller image is refused (`card_read_failed`) before decoding.", lo=64, hi=16384)
    photo_max_pixels: int = opt(2_000_000, "Pixel-count cap checked from the photo header before decoding (bounds the decoder's memory: 3 bytes per pixel).", lo=4096, hi=268_435_456)
    presence_debounce: int = opt(2, "Consecutive presence polls that must agree before card_present() changes.", lo=1, hi=10)
    reconnect_backoff_max_s: float = opt(5.0, "Ceiling of the back-off between reopen attempts after the reader vanished.", lo=0.05, hi=300)


@dataclass(frozen=True)
class ModelsConfig:
    dir: str = opt("", "Installed model directory (empty = $KYC_EDGE_MODEL_DIR or <state_dir>/models).")
    set: str = opt("int8", "Model set: `int8` = the int8 builds of scripts/build-models listed in the manifest (roles without one stay float); `float` = float models only.", choices=("float", "int8"))
    detector: str = opt("short_range", "BlazeFace variant; `full_range` for cameras mounted far back.",
                        choices=("short_range", "full_range"))
    threads: int = opt(1, "Inference threads per model.", lo=1, hi=8)


@dataclass(frozen=True)
class MatchConfig:
    threshold: float = opt(0.43, "Cosine similarity at or above which live face and card photo match. Default: FAR <= 1e-3 on LFW folds 1-5 card-style and plain pairs with the FaceMesh-aligned path (FAR=1e-3 points since the 0.97 template scale: card-style 0.409, plain 0.414); recalibrate on own chip photos (docs/match.md).", lo=-1, hi=1)
    top_k: int = opt(3, "Best-quality live frames whose embeddings are averaged.", lo=1, hi=16)
    embed_ahead: bool = opt(True, "Embed the top-k, first and last crops during capture on a second thread, so the decision after the last challenge is a comparison (docs/performance.md, P3). Off: all embedding at the decision, on the frame thread (a one-core board).")
    second_embedder: bool = opt(True, "Also embed with the second model (dlib ResNet, CC0; role embedder2: built by scripts/build-dlib-embedder, its int8 build by scripts/build-models) and fuse its calibrated cosine with MobileFaceNet's at score level; `threshold` then applies to the fused score. On by default since the int8 build (LFW folds 1-5, the int8 set: card-style 98.40 -> 99.10 %, plain 99.27 -> 99.57 %; +4 ms per call, +15 MB; docs/match.md). Without the model file the daemon matches with MobileFaceNet alone, logs a warning and raises the second_embedder_missing alarm. Read when the models are loaded (daemon start): a reload does not load or drop the model.")
    fusion_weight: float = opt(0.3, "Weight of the second embedder's calibrated score in the fused similarity (1 - weight for MobileFaceNet's); 0.3: chosen on LFW folds 1-3 (docs/match.md).", lo=0, hi=1)
    second_top_k: int = opt(2, "Best live frames the second embedder sees (its model's batch is 2: one call for 2).", lo=1, hi=16)


@dataclass(frozen=True)
class QualityConfig:
    min_face_px: int = opt(80, "Minimum face box width in frame pixels.", lo=16, hi=2000)
    max_yaw_deg: float = opt(25.0, "Largest |yaw| for a match frame (MobileFaceNet holds up to ~25 deg: on the blink video, genuine >= 0.63 and impostor <= 0.13 at 21-24 deg).", lo=0, hi=90)
    max_pitch_deg: float = opt(20.0, "Largest |pitch| for a match frame.", lo=0, hi=90)
    min_sharpness: float = opt(30.0, "Minimum variance of the Laplacian on the inner aligned face (112x112 crop; sharp LFW faces: 1st percentile 50, median 160; Gaussian blur sigma 1.5: median 26).", lo=0, hi=100000)
    min_brightness: float = opt(40.0, "Minimum mean grey level of the aligned face.", lo=0, hi=255)
    max_brightness: float = opt(220.0, "Maximum mean grey level of the aligned face.", lo=0, hi=255)
    min_ear: float = opt(0.18, "Eyes count as open above this eye aspect ratio.", lo=0, hi=1)
    max_covered: float = opt(0.9, "Share of the lower face (mouth, chin) unlike the upper face's skin at or above which the face counts as covered (`face_covered`: a mask); a lower face without a mouth's structure counts as covered too (device/vision/occlusion.py). 1 turns the whole check off. Measured by `kyc-edge eval mask`.", lo=0, hi=1)


@dataclass(frozen=True)
class LivenessConfig:
    challenges: tuple[str, ...] = opt(("blink", "turn_left", "turn_right"), "Challenge pool drawn from at random.")
    count: int = opt(2, "Challenges per session.", lo=0, hi=6)
    challenge_timeout_s: float = opt(8.0, "Time allowed for each challenge.", lo=0.5, hi=120)
    face_lost_s: float = opt(1.5, "Face may be out of view this long before `face_lost`.", lo=0.05, hi=60)
    multiple_faces_grace_s: float = opt(1.5, "A second face in view: the customer gets the `one_face_only` hint at once and has this long to clear the view before `multiple_faces`; meanwhile nothing counts (challenges paused, no match frame) and a match frame taken after it must confirm the identity. 0 = fail at the first second face.", lo=0, hi=10)
    turn_yaw_deg: float = opt(18.0, "Yaw a head turn must reach.", lo=5, hi=80)
    blink_min_s: float = opt(0.04, "Shortest eye closure that counts as a blink.", lo=0, hi=2)
    blink_max_s: float = opt(1.5, "Longest eye closure that counts as a blink.", lo=0.05, hi=10)
    prompt_pause_min_s: float = opt(0.5, "Shortest random pause before each challenge prompt (replay resistance: a recording cannot be timed to the prompts).", lo=0, hi=10)
    prompt_pause_max_s: float = opt(1.5, "Longest random pause before each challenge prompt.", lo=0, hi=10)
    response_window_s: float = opt(4.0, "The response must begin within this time after its prompt (else `challenge_timeout`); 0 = no window.", lo=0, hi=60)
    response_min_latency_s: float = opt(0.12, "A turn already under way this soon after its prompt began before it (`response_too_early`).", lo=0, hi=2)
    pad_threshold: float = opt(0.35, "Fused passive real-score below which the session is `spoof_suspected` (0.35: chosen for pad_fusion logit4 on replay-attack train, video BPCER <= 5 % and frame BPCER <= 3 %; docs/liveness.md; use 0.5 with mean2).", lo=0, hi=1)
    pad_enabled: bool = opt(True, "Run the passive anti-spoofing models.")
    pad_fusion: str = opt("logit4", "Passive score: `logit4` = MiniFASNet V2 2.7 + V1SE 4.0 + both on the face box, log-odds fused (calibrated on replay-attack train, docs/liveness.md); `mean2` = the upstream two-model mean.", choices=("mean2", "logit4"))
    identity_threshold: float = opt(0.35, "Start/end embeddings must be at least this similar (`identity_changed`).", lo=-1, hi=1)


@dataclass(frozen=True)
class SessionConfig:
    capture_timeout_s: float = opt(30.0, "Whole face-capture phase.", lo=1, hi=600)
    face_wait_s: float = opt(10.0, "Time for a face to appear after the card is read.", lo=0.5, hi=120)
    start_ttl_s: float = opt(120.0, "A `start` command's response topic and correlation data apply to a session that begins within this time.", lo=1, hi=3600)
    hold_still_s: float = opt(3.0, "After the challenges, time allowed for one frame to pass the quality gate if none has yet (`quality_too_low`).", lo=0, hi=30)


@dataclass(frozen=True)
class MqttConfig:
    url: str = opt("mqtt://127.0.0.1:1883", "Broker URL: mqtt://host:port or mqtts://host:port.")
    prefix: str = opt("kyc/v1", "Topic prefix; topics are <prefix>/<site>/<device>/...")
    protocol: str = opt("5", "MQTT protocol version; `3.1.1` for old brokers.", choices=("5", "3.1.1"))
    username: str = opt("", "Username (empty = none).")
    password_file: str = opt("", "File holding the password (kept out of the config).")
    ca_file: str = opt("", "CA certificate for TLS.")
    cert_file: str = opt("", "Client certificate for TLS.")
    key_file: str = opt("", "Client key for TLS.")
    keepalive_s: int = opt(30, "MQTT keepalive.", lo=5, hi=3600)
    message_expiry_s: int = opt(86400, "MQTT 5 Message Expiry of verdicts.", lo=0, hi=31_536_000)
    connect_timeout_s: float = opt(10.0, "How long start-up waits for the broker before going READY degraded.", lo=0, hi=600)
    reconnect_min_s: float = opt(0.5, "First delay before reconnecting to the broker (doubles up to reconnect_max_s, with jitter).", lo=0.01, hi=600)
    reconnect_max_s: float = opt(30.0, "Ceiling of the reconnect back-off.", lo=0.05, hi=3600)
    max_inflight: int = opt(20, "Verdicts published but not yet acknowledged (PUBACK) at a time.", lo=1, hi=1000)
    status_interval_s: float = opt(60.0, "Republish the retained health status this often (0 = only on change/reconnect).", lo=0, hi=86400)
    replay_window_s: float = opt(10.0, "After an unexpected disconnect, verdicts the broker acknowledged this recently are sent again (a crashed broker can lose acknowledged messages; subscribers deduplicate).", lo=0, hi=3600)


@dataclass(frozen=True)
class OutboxConfig:
    max_rows: int = opt(10000, "Outbox capacity; when full new sessions are refused (`outbox_full`).", lo=1, hi=10_000_000)
    path: str = opt("", "SQLite outbox file (empty = <state_dir>/outbox.sqlite).")


@dataclass(frozen=True)
class StorageConfig:
    reserve_bytes: int = opt(20_000_000, "Free space the state directory must keep: below it new sessions are refused (`storage_low` in status, a `refused` event) instead of a full disk losing a verdict.", lo=0, hi=10_000_000_000_000)
    ballast_bytes: int = opt(1_000_000, "A file of this size is kept in the state directory and deleted when a verdict cannot be stored for lack of space, so the verdict of a session that filled the disk still gets written (0 = none).", lo=0, hi=1_000_000_000)
    check_interval_s: float = opt(30.0, "While idle, re-check free space and writability this often (also before every session).", lo=0.1, hi=3600)


@dataclass(frozen=True)
class PrivacyConfig:
    card_number_hmac_key_file: str = opt("", "Per-deployment key file; with it the verdict carries HMAC-SHA256 of the card number, without it nothing.")


@dataclass(frozen=True)
class FleetConfig:
    public_keys: tuple[str, ...] = opt((), "Fleet Ed25519 public keys (base64 or file paths) trusted for update manifests.")
    max_bundle_bytes: int = opt(200_000_000, "Largest bundle accepted before download.", lo=1, hi=10_000_000_000)
    crash_loop_restarts: int = opt(3, "Restarts within the window after a switch that trigger a rollback.", lo=1, hi=100)
    crash_loop_window_s: float = opt(300.0, "Crash-loop window.", lo=1, hi=86400)
    download_timeout_s: float = opt(300.0, "A bundle download (URL or inline chunks) not complete after this long fails as `truncated`.", lo=1, hi=86400)
    min_free_bytes: int = opt(50_000_000, "Free space that must remain in the state directory after staging a bundle (else `disk_full`).", lo=0, hi=10_000_000_000_000)
    clock_skew_s: float = opt(300.0, "Tolerance applied to a manifest's not_before / expires window.", lo=0, hi=86400)
    software_root: str = opt("", "Root of the A/B software slots (`base/`, `slots/{a,b}`, `current`); the .deb sets /opt/kyc-edge. Empty: software bundles are refused (`software_unsupported`).")


@dataclass(frozen=True)
class DisplayConfig:
    enabled: bool = opt(False, "The daemon sends session events to the customer display (device/display) over `socket` and takes its consent answers back.")
    listen: str = opt("127.0.0.1", "Address the display page is served on (the kiosk browser opens it); keep it local.")
    port: int = opt(8765, "TCP port of the display page.", lo=1, hi=65535)
    socket: str = opt("/run/kyc-edge-display/display.sock", "Unix socket between the daemon and the display process (events out, consent back).")
    language: str = opt("zh", "Language the screens start in (a toggle on screen switches).", choices=("zh", "en"))
    voice: bool = opt(True, "Speak each prompt once when it appears (pre-rendered by scripts/setup with espeak-ng).")
    voice_dir: str = opt("/var/lib/kyc-edge-display/voice", "Pre-rendered prompt audio (the display unit's StateDirectory; the daemon's state dir is 0700, so not there); `kyc-edge display voices` fills it.")
    result_hold_s: float = opt(8.0, "How long the result screen stays before the idle screen.", lo=1, hi=120)


@dataclass(frozen=True)
class ConsentConfig:
    required: bool = opt(True, "After the card is read, wait for the customer's separate consent (display button or operator `cmd/consent`) before any frame is analysed; `false` only where consent is taken outside the box (and for tests, benches and evaluations that drive sessions with nobody at the counter).")
    timeout_s: float = opt(60.0, "No answer within this time ends the session (`consent_timeout`).", lo=1, hi=3600)
    notice_version: str = opt("notice-2025-06", "Version token of the notice shown; a consent must name it.")
    notice_zh: str = opt("本柜台将采集您的人脸图像，仅用于与您身份证芯片照片进行比对，以核验您的身份。比对在本机完成，图像不会保存或传出，比对结束后立即删除。您可以拒绝，并选择不使用人脸识别的其他核验方式。", "Notice text in Chinese.")
    notice_en: str = opt("This counter takes pictures of your face only to compare them with the photo on your ID card's chip and so confirm who you are. The comparison runs on this device; no picture is stored or sent, and all are deleted when it ends. You may decline and choose a check without a face scan.", "Notice text in English.")
    guardian_age: int = opt(14, "Card holders younger than this need a guardian's consent (the verdict flags it).", lo=0, hi=30)


@dataclass(frozen=True)
class LogConfig:
    level: str = opt("info", "Log level.", choices=("debug", "info", "warning", "error"))
    target: str = opt("auto", "`journald` under systemd, else `stderr`; `auto` picks.", choices=("auto", "journald", "stderr"))


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = opt(DeviceConfig, "Identity and state.", factory=True)
    camera: CameraConfig = opt(lambda: CameraConfig(), "Camera.", factory=True)
    reader: ReaderConfig = opt(ReaderConfig, "ID-card reader.", factory=True)
    models: ModelsConfig = opt(ModelsConfig, "Models.", factory=True)
    match: MatchConfig = opt(MatchConfig, "Face match.", factory=True)
    quality: QualityConfig = opt(QualityConfig, "Live-frame quality gate.", factory=True)
    liveness: LivenessConfig = opt(LivenessConfig, "Liveness.", factory=True)
    session: SessionConfig = opt(SessionConfig, "Session timeouts.", factory=True)
    mqtt: MqttConfig = opt(MqttConfig, "MQTT link.", factory=True)
    outbox: OutboxConfig = opt(OutboxConfig, "Durable verdict outbox.", factory=True)
    storage: StorageConfig = opt(StorageConfig, "State-directory space and writability checks.", factory=True)
    privacy: PrivacyConfig = opt(PrivacyConfig, "Privacy.", factory=True)
    fleet: FleetConfig = opt(FleetConfig, "Fleet updates.", factory=True)
    log: LogConfig = opt(LogConfig, "Logging.", factory=True)
    display: DisplayConfig = opt(DisplayConfig, "Customer display (device/display).", factory=True)
    consent: ConsentConfig = opt(ConsentConfig, "Separate consent before the face check.", factory=True)


# ---------------------------------------------------------------- engine
def _describe(tp: Any, meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp)
    if get_origin(tp) is tuple:
        name = "a list of " + {str: "strings"}.get(get_args(tp)[0], "values")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        name = f"{name} in {lo:g}..{hi:g}"
    return name or str(tp)


def _check_value(key: str, tp: Any, meta: dict, value: Any, problems: list[str]) -> Any:
    want = _describe(tp, meta)
    bad = f"config: {key} = {value!r}: expected {want}"
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(bad)
            return None
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(bad)
            return None
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(bad)
            return None
        value = float(value)
        if not math.isfinite(value):      # nan passes every lo/hi comparison: refuse it outright
            problems.append(bad + " (finite)")
            return None
    elif tp is str:
        if not isinstance(value, str):
            problems.append(bad)
            return None
    elif get_origin(tp) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(bad)
            return None
        value = tuple(value)
    if meta.get("choices") and value not in meta["choices"]:
        problems.append(bad)
        return None
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            problems.append(bad)
            return None
    return value


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"config: {prefix.rstrip('.') or 'root'} = {data!r}: expected a table")
        return cls()
    known = {f.name: f for f in fields(cls)}
    for k in data:
        if k not in known:
            problems.append(f"config: {prefix}{k}: unknown key (known: {', '.join(sorted(known))})")
    kwargs = {}
    hints = _hints(cls)
    for name, f in known.items():
        if name not in data:
            continue
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key + ".", problems)
        else:
            v = _check_value(key, tp, dict(f.metadata), data[name], problems)
            if v is not None:
                kwargs[name] = v
    return cls(**kwargs)


_HINTS: dict[type, dict] = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        import typing
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _cross_checks(cfg: Config, problems: list[str]) -> None:
    lv = cfg.liveness
    from device.challenge_names import CHALLENGES as allowed
    for c in lv.challenges:
        if c not in allowed:
            problems.append(f"config: liveness.challenges = {list(lv.challenges)!r}: expected names from {sorted(allowed)}")
            break
    if lv.count > len(set(lv.challenges)):
        problems.append(f"config: liveness.count = {lv.count}: expected at most the {len(set(lv.challenges))} distinct challenges in liveness.challenges")
    if lv.prompt_pause_min_s > lv.prompt_pause_max_s:
        problems.append(f"config: liveness.prompt_pause_min_s = {lv.prompt_pause_min_s}: expected at most liveness.prompt_pause_max_s ({lv.prompt_pause_max_s})")
    if lv.blink_min_s >= lv.blink_max_s:
        problems.append(f"config: liveness.blink_min_s = {lv.blink_min_s}: expected less than liveness.blink_max_s ({lv.blink_max_s})")
    q = cfg.quality
    if q.min_brightness >= q.max_brightness:
        problems.append(f"config: quality.min_brightness = {q.min_brightness}: expected less than quality.max_brightness ({q.max_brightness})")
    if cfg.camera.lost_s <= cfg.camera.stall_s:
        problems.append(f"config: camera.lost_s = {cfg.camera.lost_s}: expected more than camera.stall_s ({cfg.camera.stall_s})")
    if not all(c.isalnum() or c in "._-" for c in cfg.consent.notice_version) or not cfg.consent.notice_version:
        problems.append(f"config: consent.notice_version = {cfg.consent.notice_version!r}: expected a token of letters, digits . _ -")
    _check_mqtt(cfg, problems)
    _check_names(cfg, problems)


def _check_mqtt(cfg: Config, problems: list[str]) -> None:
    url = cfg.mqtt.url
    try:
        u = urlsplit(url)
        port = u.port                  # ValueError when out of 0..65535 or not a number
    except ValueError:
        u, port = None, None
    if u is None or u.scheme not in ("mqtt", "mqtts") or not u.hostname or port is None or not 1 <= port <= 65535 \
            or u.path not in ("", "/") or u.query or u.fragment or not url.isascii():
        problems.append(f"config: mqtt.url = {url!r}: expected mqtt://host:port or mqtts://host:port (port 1..65535)")
    if not ids.is_prefix(cfg.mqtt.prefix):
        problems.append(f"config: mqtt.prefix = {cfg.mqtt.prefix!r}: expected topic levels of letters, digits, "
                        "'.', '_', '-' separated by '/' (no wildcards, no empty level, no leading '$' or '/')")


def _check_names(cfg: Config, problems: list[str]) -> None:
    """device.id, device.site and device.groups go into topics and the signed verdict: the same
    pattern as the verdict schema (device/ids.py), so check-config accepts exactly what it does."""
    want = "expected 1-64 ASCII letters, digits, '.', '_', '-', starting with a letter or digit, no run of 9 digits"
    for key in ("id", "site"):
        v = getattr(cfg.device, key)
        if not ids.is_name(v):
            problems.append(f"config: device.{key} = {v!r}: {want}")
    if cfg.device.site in ids.RESERVED_SITES:
        problems.append(f"config: device.site = {cfg.device.site!r}: reserved for fleet-wide topics")
    for g in cfg.device.groups:
        if not ids.is_name(g):
            problems.append(f"config: device.groups = {list(cfg.device.groups)!r}: each group: {want}")
            break


def from_dict(data: dict) -> Config:
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    if not problems:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def load(path: str | os.PathLike | None = None) -> Config:
    p = Path(path) if path else DEFAULT_PATH
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"config: cannot read {p}: {e.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"config: {p}: not valid TOML: {e}"]) from None
    return from_dict(data)


def replace(cfg: Any, **changes: Any) -> Any:
    """Nested replace: replace(cfg, **{"camera.replay.path": "x"})."""
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            cfg = dataclasses.replace(cfg, **{head: replace(getattr(cfg, head), **{rest: value})})
        else:
            cfg = dataclasses.replace(cfg, **{head: value})
    return cfg


def to_dict(cfg: Any) -> dict:
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def reference(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, default, expected, doc) rows for the README config reference."""
    rows = []
    hints = _hints(cls)
    inst = cls()
    for f in fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += reference(tp, f"{prefix}{f.name}.")
        else:
            default = getattr(inst, f.name)
            rows.append((prefix + f.name, repr(list(default) if isinstance(default, tuple) else default),
                         _describe(tp, dict(f.metadata)), f.metadata["doc"]))
    return rows


def example_toml() -> str:
    """A complete, commented config with every key at its default (systemd/config.example.toml)."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, tuple):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    out = ["# kyc-edge configuration. Every key, at its default; delete what you do not change.",
           "# Validate with: kyc-edge check-config /etc/kyc-edge/config.toml", ""]

    def section(cls: type, name: str) -> None:
        hints = _hints(cls)
        inst = cls()
        scalars = [f for f in fields(cls) if not dataclasses.is_dataclass(hints[f.name])]
        if name:
            out.append(f"[{name}]")
        for f in scalars:
            out.append(f"# {f.metadata['doc']} Expected: {_describe(hints[f.name], dict(f.metadata))}.")
            out.append(f"{f.name} = {val(getattr(inst, f.name))}")
        out.append("")
        for f in fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                section(hints[f.name], f"{name}.{f.name}" if name else f.name)

    section(Config, "")
    return "\n".join(out).rstrip() + "\n"


def state_dir(cfg: Config) -> Path:
    return Path(cfg.device.state_dir)


def outbox_path(cfg: Config) -> Path:
    """outbox.path, else <state_dir>/outbox.sqlite."""
    return Path(cfg.outbox.path) if cfg.outbox.path else state_dir(cfg) / "outbox.sqlite"


def models_dir(cfg: Config) -> Path:
    """models.dir, else $KYC_EDGE_MODEL_DIR, else <state_dir>/models (device.models.find_model_dir)."""
    from device.models import find_model_dir
    return find_model_dir(configured=cfg.models.dir, fallback=state_dir(cfg) / "models")
