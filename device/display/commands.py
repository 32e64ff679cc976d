"""`kyc-edge display serve` (the customer display process) and `kyc-edge display voices`."""
from __future__ import annotations

import sys
from pathlib import Path


def _cfg(args):
    from device import config as config_mod
    try:
        return config_mod.load(args.config) if args.config else config_mod.from_dict({})
    except config_mod.ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        raise SystemExit(2)


def cmd_serve(args) -> int:
    from device import logs
    from device.display.server import serve
    cfg = _cfg(args)
    logs.setup(cfg.log.level, cfg.log.target)
    return serve(cfg, port=args.port, socket_path=args.socket)


def cmd_voices(args) -> int:
    from device.display.server import voice_dir
    from device.display.voice import render
    out = Path(args.out) if args.out else voice_dir(_cfg(args))
    try:
        made = render(out)
    except (RuntimeError, OSError) as e:
        print(f"kyc-edge display voices: {e}", file=sys.stderr)
        return 2
    print(f"display voices: {len(made)} prompts in {out}")
    return 0


def register(sub) -> None:
    d = sub.add_parser("display", help="the customer display (counter screen)")
    ds = d.add_subparsers(dest="display_cmd", required=True)
    s = ds.add_parser("serve", help="serve the counter page and its event stream")
    s.add_argument("--config", "-c", help="config file (default: built-in defaults)")
    s.add_argument("--port", type=int, help="override display.port (0 = any free port)")
    s.add_argument("--socket", help="override display.socket")
    s.set_defaults(func=cmd_serve)
    v = ds.add_parser("voices", help="pre-render the spoken prompts with espeak-ng")
    v.add_argument("--config", "-c")
    v.add_argument("--out", help="directory (default: display.voice_dir)")
    v.set_defaults(func=cmd_voices)
