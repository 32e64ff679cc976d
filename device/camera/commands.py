"""`kyc-edge camera probe|bench` (registered by device/cli.py) and `bench_camera(args)` for
`kyc-edge bench`. Output is JSON on stdout; no frame is ever written anywhere."""
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


def bench_camera(args) -> dict:
    """For `kyc-edge bench camera`: args.config, args.frames (replay this instead), args.limit."""
    from device.camera.bench import replay_cfg, run_bench
    cfg = _config(getattr(args, "config", None))
    if cfg is None:
        raise SystemExit(2)
    cam = cfg.camera
    if getattr(args, "frames", None):
        cam = replay_cfg(cam, args.frames, pace=getattr(args, "pace", None) or "fast")
    loads = getattr(args, "load_ms", None) or (0.0, 30.0)
    return run_bench(cam, seconds=getattr(args, "seconds", None) or 3.0, loads_ms=loads,
                     max_frames=getattr(args, "limit", 0) or 0)


def _cmd(args) -> int:
    cfg = _config(args.config)
    if cfg is None:
        return 2
    if args.action == "probe":
        cam = cfg.camera
        if args.backend:
            cam = config_mod.replace(cam, backend=args.backend)
        if args.replay:
            cam = config_mod.replace(cam, **{"backend": "replay", "replay.path": args.replay})
        out = probe(cam, args.seconds)
        print(json.dumps(out, indent=2))
        return 0 if out.get("ok") else 1
    print(json.dumps(bench_camera(args), indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("camera", help="camera probe / capture benchmark (JSON; frames never saved)")
    p.add_argument("action", choices=("probe", "bench"))
    p.add_argument("--config", "-c", help=f"config file (default {config_mod.DEFAULT_PATH}, else defaults)")
    p.add_argument("--backend", choices=("auto", "picamera2", "v4l2", "replay"), help="override camera.backend")
    p.add_argument("--replay", help="probe: replay this file/folder instead")
    p.add_argument("--frames", help="bench: replay this video / image folder instead of the camera")
    p.add_argument("--pace", choices=("fast", "realtime"), default="fast", help="bench replay pace")
    p.add_argument("--seconds", type=float, default=3.0, help="per probe / per bench row")
    p.add_argument("--load-ms", type=float, nargs="*", default=[0.0, 30.0], dest="load_ms",
                   help="simulated inference per frame, one bench row each")
    p.add_argument("--limit", type=int, default=0, help="bench: at most this many frames per row")
    p.set_defaults(func=_cmd)


def main(argv=None) -> int:  # `python -m device.camera.commands ...` before the lead wires it
    ap = argparse.ArgumentParser(prog="kyc-edge")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
