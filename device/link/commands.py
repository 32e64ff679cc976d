"""`kyc-edge keys show`: the box's verdict-signing public key, for enrolment at the operator.

`keys show` reads the config given as `--config` or `--state-dir`.
"""
from __future__ import annotations

import json
import sys

from device import verdict as _verdict


def _config(args):
    if getattr(args, "state_dir", None) and not getattr(args, "config", None):
        return None
    from device import config as _config
    return _config.load(getattr(args, "config", None)) if getattr(args, "config", None) else _config.load()


def _state_dir(args, cfg=None) -> str:
    if getattr(args, "state_dir", None):
        return args.state_dir
    return (cfg or _config(args)).device.state_dir


def cmd_keys_show(args) -> int:
    try:
        cfg = _config(args)
        signer = _verdict.Signer.load_or_create(_state_dir(args, cfg))
    except Exception as e:  # noqa: BLE001 - one line for the operator
        print(f"kyc-edge keys show: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        rec = {"alg": "Ed25519", "key_id": signer.key_id, "public_key": signer.public_key_b64}
        if cfg is not None:            # what `kyc-edge fleet enrol` registers at the operator
            rec.update(site=cfg.device.site, device=cfg.device.id)
        print(json.dumps(rec))
    elif args.format == "pem":
        from device.ed25519 import serialization
        sys.stdout.write(signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    else:
        print(signer.public_key_b64)
        print(f"key_id {signer.key_id}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    keys = subparsers.add_parser("keys", help="the device's verdict-signing key")
    ks = keys.add_subparsers(dest="keys_cmd", required=True)
    show = ks.add_parser("show", help="print the Ed25519 public key (creates the key on first use)")
    show.add_argument("--config", "-c", default=None, help="config file (default /etc/kyc-edge/config.toml)")
    show.add_argument("--state-dir", default=None, help="override device.state_dir")
    show.add_argument("--format", choices=("b64", "json", "pem"), default="b64")
    show.set_defaults(func=cmd_keys_show)
