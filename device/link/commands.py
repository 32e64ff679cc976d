"""CLI pieces for the lead's device/cli.py:

    register(subparsers)   adds  `kyc-edge keys show`  and
                                 `kyc-edge verdicts listen --broker URL --verify-key KEY|DIR [--topic ...]`
    bench_link(args) -> dict     for `kyc-edge bench link` (see device/link/bench.py for options;
                                 add_bench_link_args(parser) adds them)

Each subcommand sets `func(args) -> int` via set_defaults. `keys show` reads the config given
as `args.config` (if the top-level parser defines it) or `--state-dir`.
"""
from __future__ import annotations

import argparse
import json
import sys

from device import verdict as _verdict


def _state_dir(args) -> str:
    if getattr(args, "state_dir", None):
        return args.state_dir
    from device import config as _config
    cfg = _config.load(getattr(args, "config", None)) if getattr(args, "config", None) else _config.load()
    return cfg.device.state_dir


def cmd_keys_show(args) -> int:
    try:
        signer = _verdict.Signer.load_or_create(_state_dir(args))
    except Exception as e:  # noqa: BLE001 - one line for the operator
        print(f"kyc-edge keys show: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps({"alg": "Ed25519", "key_id": signer.key_id, "public_key": signer.public_key_b64}))
    elif args.format == "pem":
        from cryptography.hazmat.primitives import serialization
        sys.stdout.write(signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    else:
        print(signer.public_key_b64)
        print(f"key_id {signer.key_id}", file=sys.stderr)
    return 0


def cmd_verdicts_listen(args) -> int:
    from device.link.listen import run_listen
    try:
        return run_listen(args)
    except _verdict.VerdictError as e:
        print(f"kyc-edge verdicts listen: {e.detail}", file=sys.stderr)
        return 2


def add_listen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--verify-key", action="append", required=True, metavar="KEY|DIR",
                   help="device public key (base64, PEM, or a file), or a directory of *.pub/*.pem/*.b64; repeatable")
    p.add_argument("--topic", default="kyc/v1/+/+/verdict", help="subscription (default: %(default)s)")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--username", default="")
    p.add_argument("--password-file", default="")
    p.add_argument("--ca-file", default="")
    p.add_argument("--cert-file", default="")
    p.add_argument("--key-file", default="")
    p.add_argument("--client-id", default="", help="with --session-expiry: a persistent session (no verdict missed while away)")
    p.add_argument("--session-expiry", type=int, default=0, metavar="S")
    p.add_argument("--count", type=int, default=0, help="exit after N verified verdicts")
    p.add_argument("--timeout", type=float, default=0, help="exit after S seconds (0 = run until Ctrl-C)")


def register(subparsers) -> None:
    keys = subparsers.add_parser("keys", help="the device's verdict-signing key")
    ks = keys.add_subparsers(dest="keys_cmd", required=True)
    show = ks.add_parser("show", help="print the Ed25519 public key (creates the key on first use)")
    show.add_argument("--config", "-c", default=None, help="config file (default /etc/kyc-edge/config.toml)")
    show.add_argument("--state-dir", default=None, help="override device.state_dir")
    show.add_argument("--format", choices=("b64", "json", "pem"), default="b64")
    show.set_defaults(func=cmd_keys_show)

    verdicts = subparsers.add_parser("verdicts", help="operator-side verdict tools")
    vs = verdicts.add_subparsers(dest="verdicts_cmd", required=True)
    listen = vs.add_parser("listen", help="subscribe, verify signatures, dedup; flags forged/tampered verdicts")
    add_listen_args(listen)
    listen.set_defaults(func=cmd_verdicts_listen)


def add_bench_link_args(p: argparse.ArgumentParser) -> None:
    from device.link.bench import add_args
    add_args(p)


def bench_link(args) -> dict:
    from device.link.bench import run
    return run(args)
