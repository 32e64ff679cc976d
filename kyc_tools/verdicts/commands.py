"""`kyc-edge verdicts listen`: the operator's verdict listener (workstation side)."""
from __future__ import annotations

import argparse
import sys

from device import verdict as _verdict
from kyc_tools.verdicts.check import DEFAULT_MAX_AGE_S, DEFAULT_SKEW_S


def cmd_verdicts_listen(args) -> int:
    from kyc_tools.verdicts.listen import run_listen
    try:
        return run_listen(args)
    except _verdict.VerdictError as e:
        print(f"kyc-edge verdicts listen: {e.detail}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"kyc-edge verdicts listen: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2


def cmd_verdicts_start(args) -> int:
    from kyc_tools.verdicts.start import run_start
    try:
        return run_start(args)
    except (_verdict.VerdictError, ValueError, OSError, ConnectionError) as e:
        print(f"kyc-edge verdicts start: {getattr(e, 'detail', None) or e}", file=sys.stderr)
        return 2


def add_listen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--verify-key", action="append", metavar="KEY|FILE|DIR",
                   help="device public key (base64, PEM), a key file <device>.pub (binds the key to <device>), "
                        "or a directory of <device>.pub/.pem/.b64; repeatable")
    p.add_argument("--key-registry", action="append", metavar="FILE",
                   help="JSON/TOML table device = public key (or key file, or a list); binds each key to its device")
    p.add_argument("--topic", default="kyc/v1/+/+/verdict", help="subscription (default: %(default)s)")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--username", default="")
    p.add_argument("--password-file", default="")
    p.add_argument("--ca-file", default="")
    p.add_argument("--cert-file", default="")
    p.add_argument("--key-file", default="")
    p.add_argument("--client-id", default="", help="with --session-expiry: a persistent session (no verdict missed while away)")
    p.add_argument("--session-expiry", type=int, default=0, metavar="S")
    p.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_S, metavar="S",
                   help="reject (stale) a verdict decided more than S seconds ago (default %(default)s; 0 = off)")
    p.add_argument("--clock-skew", type=float, default=DEFAULT_SKEW_S, metavar="S",
                   help="allowed clock difference with the devices (default %(default)s)")
    p.add_argument("--allow-unbound", action="store_true",
                   help="accept Correlation Data on verdicts that do not sign it (devices older than the "
                        "signed binding); the ticket link of such verdicts is NOT authenticated")
    p.add_argument("--state", default="", metavar="FILE",
                   help="SQLite file of verdict_ids seen and nonces sent, kept across restarts "
                        "(default $XDG_STATE_HOME/kyc-edge/verdicts.sqlite)")
    p.add_argument("--count", type=int, default=0, help="exit after N verified verdicts")
    p.add_argument("--timeout", type=float, default=0, help="exit after S seconds (0 = run until Ctrl-C)")


def cmd_verdicts_ingest(args) -> int:
    from kyc_tools.verdicts.ingest import run_ingest
    return run_ingest(args)


def cmd_verdicts_migrate(args) -> int:
    from kyc_tools.verdicts.ingest import run_migrate
    return run_migrate(args)


def add_ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", required=True, help="postgresql://user@host:port/db (libpq DSN or URL)")
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--group", default="kyc-ingest", help="shared-subscription group (default: %(default)s)")
    p.add_argument("--client-id", default="", help="stable and unique per worker (persistent session); "
                   "default kyc-ingest-<hostname>")
    p.add_argument("--prefix", default="kyc/v1")
    p.add_argument("--session-expiry", type=int, default=3600, metavar="S",
                   help="broker keeps this worker's unacknowledged messages this long while it is away")
    p.add_argument("--receive-maximum", type=int, default=200, help="unacknowledged messages in flight")
    p.add_argument("--batch", type=int, default=200, help="messages per database transaction")
    p.add_argument("--username", default="")
    p.add_argument("--password-file", default="")
    p.add_argument("--ca-file", default="")
    p.add_argument("--cert-file", default="")
    p.add_argument("--key-file", default="")
    p.add_argument("--stats-file", default=None, help="append one JSON line per committed batch")
    p.add_argument("--no-migrate", action="store_true", help="do not apply schema migrations at start")
    p.add_argument("--max-age", type=float, default=7 * 86400.0, metavar="S",
                   help="freshness window: a verdict decided longer ago is quarantined `stale` "
                        "(needs kyc_tools.verdicts.check; 0 = off; default 7 days: boxes deliver late after an outage)")
    p.add_argument("--timeout", type=float, default=0, help="exit after S seconds (0 = until SIGTERM)")


def register(subparsers) -> None:
    verdicts = subparsers.add_parser("verdicts", help="operator-side verdict tools")
    vs = verdicts.add_subparsers(dest="verdicts_cmd", required=True)
    listen = vs.add_parser("listen", help="subscribe, verify signatures, dedup; flags forged/tampered verdicts")
    add_listen_args(listen)
    listen.set_defaults(func=cmd_verdicts_listen)
    st = vs.add_parser("start", help="send cmd/start with a fresh nonce recorded in the listener state "
                                     "(the verdict signs it; `listen` then accepts it once)")
    st.add_argument("--broker", required=True)
    st.add_argument("--device", required=True, metavar="SITE/DEVICE")
    st.add_argument("--prefix", default="kyc/v1")
    st.add_argument("--response-topic", default="")
    st.add_argument("--correlation", default="", help="Correlation Data (e.g. the ticket id)")
    st.add_argument("--state", default="", metavar="FILE", help="the listener's state file (see listen --state)")
    st.add_argument("--username", default="")
    st.add_argument("--password-file", default="")
    st.add_argument("--ca-file", default="")
    st.add_argument("--cert-file", default="")
    st.add_argument("--key-file", default="")
    st.set_defaults(func=cmd_verdicts_start, max_age=0, clock_skew=0)
    ing = vs.add_parser("ingest", help="MQTT 5 shared subscription -> PostgreSQL, exactly once; forgeries quarantined")
    add_ingest_args(ing)
    ing.set_defaults(func=cmd_verdicts_ingest)
    mig = vs.add_parser("migrate", help="apply the operator database's schema migrations")
    mig.add_argument("--dsn", required=True)
    mig.set_defaults(func=cmd_verdicts_migrate)
