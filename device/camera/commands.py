"""`kyc-edge camera probe` (registered by device/cli.py); the capture benchmark is
`kyc-edge bench camera` (kyc_tools). Output is JSON on stdout; no frame is ever written anywhere."""
from __future__ import annotations

import argparse
import json
import sys
import time

from device import config as config_mod
from device.errors import CameraError


def _config(path: str | None) -> config_mod.Config | None:
    try:
        if path is None and not config_mod.DEFAULT_PATH.exists():
            return config_mod.Config()
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return None


def probe(cam_cfg, seconds: float = 2.0) -> dict:
    """Open the configured camera (auto picks like the daemon), pull frames for `seconds`."""
    from device.camera import open_source
    try:
        src = open_source(cam_cfg)
    except CameraError as e:
        return {"ok": False, "reason": e.reason, "detail": e.detail}
    with src:
        t0, n, shape = time.monotonic(), 0, None
        while time.monotonic() - t0 < seconds:
            try:
                f = src.read(1.0)
            except CameraError as e:
                return {"ok": False, "reason": e.reason, "detail": e.detail, "source": src.describe()}
            if f is not None:
                n, shape = n + 1, f.rgb.shape
                del f
        el = time.monotonic() - t0
        out = {"ok": n > 0, "source": src.describe(), "frames": n, "fps": round(n / el, 1),
               "size": f"{shape[1]}x{shape[0]}" if shape else None, "dropped": src.dropped,
               "health": src.health, "status": src.status_text}
        if getattr(src, "actual", None):
            out["driver"] = src.actual
        if getattr(src, "applied_controls", None):
            out["controls"] = {k: str(v) for k, v in src.applied_controls.items()}
    return out


def _cmd(args) -> int:
    cfg = _config(args.config)
    if cfg is None:
        return 2
    cam = cfg.camera
    if args.backend:
        cam = config_mod.replace(cam, backend=args.backend)
    if args.replay:
        cam = config_mod.replace(cam, **{"backend": "replay", "replay.path": args.replay})
    out = probe(cam, args.seconds)
    print(json.dumps(out, indent=2))
    return 0 if out.get("ok") else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("camera", help="camera probe (JSON; frames never saved)")
    p.add_argument("action", choices=("probe",))
    p.add_argument("--config", "-c", help=f"config file (default {config_mod.DEFAULT_PATH}, else defaults)")
    p.add_argument("--backend", choices=("auto", "picamera2", "v4l2", "replay"), help="override camera.backend")
    p.add_argument("--replay", help="probe: replay this file/folder instead")
    p.add_argument("--seconds", type=float, default=3.0, help="how long to probe")
    p.set_defaults(func=_cmd)


def main(argv=None) -> int:  # `python -m device.camera.commands ...` before the lead wires it
    ap = argparse.ArgumentParser(prog="kyc-edge")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
