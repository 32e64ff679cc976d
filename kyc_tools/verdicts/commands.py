"""`kyc-edge verdicts listen`: the operator's verdict listener (workstation side)."""
from __future__ import annotations

import argparse
import sys

from device import verdict as _verdict


def cmd_verdicts_listen(args) -> int:
    from kyc_tools.verdicts.listen import run_listen
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
    verdicts = subparsers.add_parser("verdicts", help="operator-side verdict tools")
    vs = verdicts.add_subparsers(dest="verdicts_cmd", required=True)
    listen = vs.add_parser("listen", help="subscribe, verify signatures, dedup; flags forged/tampered verdicts")
    add_listen_args(listen)
    listen.set_defaults(func=cmd_verdicts_listen)
