"""`kyc-edge fleet ...`: the fleet manager's commands (run on a workstation, not on the box).

    fleet keygen --out DIR
    fleet bundle --models DIR [--config FILE] --out BUNDLE --version N [--min-daemon-version V] [--no-vectors]
    fleet software-bundle --out BUNDLE --version N [--source DIR] [--wheel W ...]
    fleet sign BUNDLE --key KEY [--target T ...] [--valid-days D] [--url-base URL] [--allow-downgrade]
    fleet publish BUNDLE --broker URL --target T [--target T ...] [--canary-count N] [--abort-failure-rate R]
    fleet status --broker URL                 (from the retained status topics)
    fleet status --dsn postgresql://...       (from the operator database; kyc_tools/fleet/operator.py)
    fleet enrol --dsn postgresql://... --key KEYS_SHOW_JSON

Self-test vectors need a TFLite runtime; `fleet bundle` computes them in a subprocess
(`python -m device.selftest compute`) so device.fleet never imports the biometric side.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from device import config as config_mod
from device.fleet import manifest as mf
from device.fleet import slots

UNSIGNED = "manifest.unsigned.json"
SIGNED = "manifest.signed.json"


def _mqtt_args(s, required: bool = True) -> None:
    s.add_argument("--broker", required=required, help="mqtt://host:port or mqtts://host:port")
    s.add_argument("--prefix", default="kyc/v1")
    s.add_argument("--username")
    s.add_argument("--password-file")
    s.add_argument("--ca-file")
    s.add_argument("--cert-file")
    s.add_argument("--key-file")


def _client(a):
    from kyc_tools.fleet.rollout import FleetClient
    pw = Path(a.password_file).read_text().strip() if a.password_file else None
    return FleetClient(a.broker, a.prefix, username=a.username, password=pw, ca_file=a.ca_file,
                       cert_file=a.cert_file, key_file=a.key_file)


def cmd_keygen(a) -> int:
    try:
        key, pub, kid = mf.keygen(a.out)
    except FileExistsError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(f"fleet key {kid}\n  private: {key} (keep offline, mode 0600)\n  public:  {pub} "
          f"(put its content in every device's fleet.public_keys)")
    return 0


def load_patch(path: str) -> dict:
    p = Path(path)
    text = p.read_text()
    data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    if not isinstance(data, dict):
        raise ValueError("config patch must be a table/object")
    return data


def compute_vectors(models: Path, names: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "device.selftest", "compute", "--models", str(models)]
    for n in names:
        cmd += ["--only", n]
    from kyc_tools import paths
    env = paths.child_env()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if r.returncode:
        raise RuntimeError(f"computing self-test vectors failed: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout)


def build_bundle(models: Path, out: Path, version: int, patch: dict | None = None,
                 min_daemon_version: str | None = None, vectors: bool = True,
                 config_complete: bool = False) -> dict:
    """BUNDLE/artifacts/<files> + BUNDLE/manifest.unsigned.json. Returns the unsigned part."""
    if patch:
        slots.merge_config(config_mod.Config(), patch)          # ConfigError on a bad patch
    files = sorted(p for p in Path(models).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{models}: no files")
    art = out / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    arts = []
    for f in files:
        shutil.copyfile(f, art / f.name)
        arts.append({"name": f.name, "sha256": slots_sha(art / f.name), "size": (art / f.name).stat().st_size})
    body = {"bundle_version": int(version), "artifacts": arts}
    if patch:
        body["config_patch"] = patch
    if config_complete:
        body["config_complete"] = True       # the patch replaces the fleet config layer (no stacking)
    if min_daemon_version:
        body["min_daemon_version"] = min_daemon_version
    tfl = [f.name for f in files if f.suffix == ".tflite"]
    if vectors and tfl:
        body["vectors"] = compute_vectors(art, tfl)
    (out / UNSIGNED).write_text(json.dumps(body, indent=1, sort_keys=True))
    return body


def slots_sha(p: Path) -> str:
    from device.models import sha256_file
    return sha256_file(p)


def sign_bundle(bundle: Path, key_path: str, targets: list[str], *, valid_days: float = 7.0,
                url_base: str | None = None, allow_downgrade: bool = False, version: int | None = None) -> dict:
    body = json.loads((bundle / UNSIGNED).read_text())
    arts = []
    for a in body["artifacts"]:
        a = {k: a[k] for k in ("name", "sha256", "size")}
        if url_base:
            a["url"] = url_base.rstrip("/") + "/" + a["name"]
        else:
            a.update(mf.inline_fields((bundle / "artifacts" / a["name"]).read_bytes()))
        arts.append(a)
    m = mf.make_manifest(bundle_version=version or body["bundle_version"], artifacts=arts,
                         targets=targets or ["*"], config_patch=body.get("config_patch"),
                         config_complete=bool(body.get("config_complete")),
                         min_daemon_version=body.get("min_daemon_version"), vectors=body.get("vectors"),
                         valid_s=valid_days * 86400, allow_downgrade=allow_downgrade,
                         kind=body.get("kind"), software_version=body.get("software_version"))
    env = mf.sign(m, mf.load_private_key(key_path))
    (bundle / SIGNED).write_text(json.dumps(env, sort_keys=True))
    return env


def build_wheel(source: Path, out: Path) -> Path:
    """Our own wheel, built from a source tree (pip wheel, no dependencies, no network)."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("kyc_edge-*.whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    new = sorted(set(out.glob("kyc_edge-*.whl")) - before) or sorted(out.glob("kyc_edge-*.whl"))
    if r.returncode or not new:
        raise RuntimeError(f"building the kyc-edge wheel failed: {r.stderr.strip()[-400:]}")
    return new[-1]


def build_software_bundle(out: Path, version: int, *, source: Path | None = None,
                          wheels: list[Path] = (), min_daemon_version: str | None = None) -> dict:
    """A software bundle: BUNDLE/artifacts/*.whl (our kyc_edge wheel, plus any dependency wheel
    that changes) + BUNDLE/manifest.unsigned.json with kind=software and software_version."""
    art = out / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    files = [Path(w) for w in wheels]
    if source is not None:
        files.append(build_wheel(Path(source), art))
    arts, sw = [], None
    for f in files:
        if f.parent.resolve() != art.resolve():
            shutil.copyfile(f, art / f.name)
        name = f.name
        if name.startswith("kyc_edge-"):
            sw = name.split("-")[1]
        arts.append({"name": name, "sha256": slots_sha(art / name), "size": (art / name).stat().st_size})
    if sw is None:
        raise ValueError("a software bundle needs a kyc_edge wheel (--source or --wheel)")
    body = {"bundle_version": int(version), "artifacts": arts, "kind": "software", "software_version": sw}
    if min_daemon_version:
        body["min_daemon_version"] = min_daemon_version
    (out / UNSIGNED).write_text(json.dumps(body, indent=1, sort_keys=True))
    return body


def cmd_software_bundle(a) -> int:
    try:
        body = build_software_bundle(Path(a.out), a.version, source=Path(a.source) if a.source else None,
                                     wheels=[Path(w) for w in a.wheel or []], min_daemon_version=a.min_daemon_version)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"fleet software-bundle: {e}", file=sys.stderr)
        return 2
    print(f"software bundle v{body['bundle_version']} (kyc-edge {body['software_version']}) in {a.out}: "
          f"{len(body['artifacts'])} wheels, {sum(x['size'] for x in body['artifacts'])} bytes")
    return 0


def cmd_bundle(a) -> int:
    try:
        patch = load_patch(a.config) if a.config else None
        body = build_bundle(Path(a.models), Path(a.out), a.version, patch, a.min_daemon_version, not a.no_vectors,
                            config_complete=a.config_complete)
    except config_mod.ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, tomllib.TOMLDecodeError) as e:
        print(f"fleet bundle: {e}", file=sys.stderr)
        return 2
    print(f"bundle v{body['bundle_version']} in {a.out}: {len(body['artifacts'])} artifacts, "
          f"{sum(x['size'] for x in body['artifacts'])} bytes, {len(body.get('vectors', []))} self-test vectors")
    return 0


def cmd_sign(a) -> int:
    try:
        env = sign_bundle(Path(a.bundle), a.key, a.target or ["*"], valid_days=a.valid_days,
                          url_base=a.url_base, allow_downgrade=a.allow_downgrade, version=a.version)
    except (OSError, ValueError, mf.FleetError) as e:
        print(f"fleet sign: {e}", file=sys.stderr)
        return 2
    m = env["manifest"]
    print(f"signed v{m['bundle_version']} nonce {m['nonce']} key {env['sig']['key_id']} targets {','.join(m['targets'])} "
          f"-> {Path(a.bundle) / SIGNED}")
    return 0


def cmd_publish(a) -> int:
    from kyc_tools.fleet.rollout import staged_rollout
    bundle = Path(a.bundle)
    env = json.loads((bundle / SIGNED).read_text())
    with _client(a) as fc:
        res = staged_rollout(fc, env, bundle / "artifacts", a.target, canary_count=a.canary_count,
                             abort_failure_rate=a.abort_failure_rate, min_reports=a.min_reports,
                             expect=a.expect, timeout=a.timeout, settle_s=a.settle, rate=a.rate,
                             log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(res, indent=1))
    return 0 if res["result"] == "completed" and not res["failed"] else 1


def cmd_status(a) -> int:
    if a.dsn:
        from kyc_tools.fleet.operator import cmd_status_db
        return cmd_status_db(a)
    if not a.broker:
        print("kyc-edge fleet status: give --broker URL (retained topics) or --dsn DSN (operator database)",
              file=sys.stderr)
        return 2
    with _client(a) as fc:
        fc.settle(a.wait)
        rows = fc.table()
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'DEVICE':32s} {'ONLINE':9s} {'BUNDLE':>6s} {'LAST UPDATE':28s} {'TARGET':>6s} {'OUTBOX':>6s} "
          f"{'REJECTED':>8s}")
    for r in rows:
        print(f"{r['device']:32s} {str(r['online']):9s} {str(r['bundle_version']):>6s} {r['update']:28s} "
              f"{str(r['target_version']):>6s} {str(r['outbox_depth']):>6s} {str(r['rejected']):>8s}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("fleet", help="fleet manager: keys, signed bundles, staged rollout, status")
    sub = p.add_subparsers(dest="fleet_command", required=True)

    s = sub.add_parser("keygen", help="new Ed25519 fleet signing key pair")
    s.add_argument("--out", required=True, help="directory for fleet_signing.key / fleet_signing.pub")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("bundle", help="collect models (+ config patch), hashes and self-test vectors")
    s.add_argument("--models", required=True, help="directory of model files to ship (overlaid on the device's)")
    s.add_argument("--config", help="TOML/JSON config patch merged over each device's config")
    s.add_argument("--out", required=True)
    s.add_argument("--version", type=int, required=True, help="bundle_version (monotonic)")
    s.add_argument("--min-daemon-version")
    s.add_argument("--config-complete", action="store_true",
                   help="the --config patch is the whole fleet config layer: it replaces earlier bundles' "
                        "patches instead of merging onto them (default: merge)")
    s.add_argument("--no-vectors", action="store_true", help="skip self-test vectors (no TFLite runtime here)")
    s.set_defaults(func=cmd_bundle)

    s = sub.add_parser("software-bundle", help="a signed-update bundle of the daemon's own code (wheels)")
    s.add_argument("--out", required=True)
    s.add_argument("--version", type=int, required=True, help="bundle_version (monotonic build number)")
    s.add_argument("--source", help="kyc-edge source tree to build the wheel from (default: none, use --wheel)")
    s.add_argument("--wheel", action="append", help="a wheel to ship (kyc_edge-*.whl and/or changed dependencies)")
    s.add_argument("--min-daemon-version")
    s.set_defaults(func=cmd_software_bundle)

    s = sub.add_parser("sign", help="sign the bundle's manifest (fresh nonce and validity window)")
    s.add_argument("bundle")
    s.add_argument("--key", required=True)
    s.add_argument("--target", action="append", help="*, group:NAME or DEVICE_ID (repeatable; default *)")
    s.add_argument("--valid-days", type=float, default=7.0)
    s.add_argument("--url-base", help="devices download artifacts from URL_BASE/<name> (default: inline over MQTT)")
    s.add_argument("--allow-downgrade", action="store_true")
    s.add_argument("--version", type=int, help="override bundle_version")
    s.set_defaults(func=cmd_sign)

    s = sub.add_parser("publish", help="staged rollout: first --target is the canary, then widen")
    s.add_argument("bundle")
    _mqtt_args(s)
    s.add_argument("--target", action="append", required=True, help="*, group:NAME or SITE/DEVICE; in order")
    s.add_argument("--canary-count", type=int, default=1, help="APPLIED reports needed before widening")
    s.add_argument("--abort-failure-rate", type=float, default=0.2)
    s.add_argument("--min-reports", type=int, default=1, help="final reports before the abort rule applies")
    s.add_argument("--expect", type=int, default=0, help="devices expected in total (0: wait until quiet)")
    s.add_argument("--timeout", type=float, default=600.0)
    s.add_argument("--settle", type=float, default=3.0)
    s.add_argument("--rate", type=float, default=200.0, help="inline chunk messages per second (the device link queues 64 commands; too fast -> truncated)")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("status", help="table of devices: from the retained status topics (--broker) "
                       "or the operator database (--dsn)")
    _mqtt_args(s, required=False)
    s.add_argument("--wait", type=float, default=1.5, help="seconds to collect retained messages")
    s.add_argument("--json", action="store_true")
    s.add_argument("--dsn", help="read the operator database that `kyc-edge verdicts ingest` fills")
    s.add_argument("--stale-after", type=float, default=180.0, metavar="S",
                   help="--dsn: an online box with no status for S seconds is shown stale")
    s.add_argument("--window", type=float, default=24.0, metavar="H", help="--dsn: verdict counts over H hours")
    s.set_defaults(func=cmd_status)

    from kyc_tools.fleet import operator
    operator.register(sub)
