"""Adds the workstation verbs to `kyc-edge` (entry point group kyc_edge.commands)."""
from __future__ import annotations

import json
import sys


def _bench(args) -> int:
    target = args.target or "frame"
    if target == "frame":
        from kyc_tools.bench.frame import bench_frames as run
    elif target == "cardreader":
        from kyc_tools.bench.cardreader import bench_cardreader as run
    elif target == "link":
        from kyc_tools.bench.link import run
    elif target == "fleet":
        from kyc_tools.bench.fleet import run
    elif target == "chaos":
        from kyc_tools.bench.chaos import run
    elif target == "memory":
        from kyc_tools.bench.memory import run
    else:
        from kyc_tools.bench.camera import bench_camera as run
    print(json.dumps(run(args), indent=2))
    return 0


def _fuzz(args) -> int:
    from kyc_tools.fuzz import main
    return main(args.rest)


def register(sub) -> None:
    s = sub.add_parser("bench", help="benchmarks; print JSON")
    s.add_argument("target", nargs="?", choices=("frame", "cardreader", "link", "camera", "fleet", "chaos", "memory"),
                   default="frame")
    s.add_argument("--config", "-c", help="config file (camera bench)")
    s.add_argument("--frames", help="frames for the per-frame / camera bench (DIR or VIDEO)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--model-set", choices=("float", "int8"), default="int8",
                   help="model set (default int8, the config default; roles without an int8 build use float)")
    s.add_argument("--models-dir")
    s.add_argument("--limit", type=int, default=0, help="at most this many frames / iterations (0 = all)")
    s.add_argument("--vs-mediapipe", action="store_true")
    s.add_argument("--precisions", help="frame bench: also time every model stage at these precisions in the same run, "
                   "e.g. float,weight_only,full_int8,mixed (JSON block `precision`; mixed = scripts/build-models static_mixed)")
    s.add_argument("--variants-dir", help="where the weight-only / full-int8 candidates are (default models/build/work, "
                   "as scripts/build-models leaves them)")
    s.add_argument("--count", type=int, default=0, help="iterations for cardreader/link benches")
    s.add_argument("--broker-kills", type=int, default=20)
    s.add_argument("--pace", choices=("fast", "realtime"), default="fast", help="camera bench replay pace")
    s.add_argument("--seconds", type=float, default=3.0, help="camera bench: per row")
    s.add_argument("--load-ms", type=float, nargs="*", default=[0.0, 30.0], dest="load_ms",
                   help="camera bench: simulated inference per frame, one row each")
    from kyc_tools.bench import fleet as _fleet_bench
    _fleet_bench.add_args(s)
    s.add_argument("--short", action="store_true", help="chaos: the CI subset of the faults")
    s.add_argument("--only", nargs="*", help="chaos: run only these fault ids")
    s.add_argument("--no-tmpfs", action="store_true", help="chaos: do not mount a tmpfs state dir (skips disk faults)")
    s.set_defaults(func=_bench)

    ev = sub.add_parser("eval", help="accuracy evaluations; print JSON")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    from kyc_tools.eval import commands_liveness, commands_match
    commands_match.register_eval(ev_sub)
    commands_liveness.register_eval(ev_sub)
    from kyc_tools.eval import masks
    masks.register_eval(ev_sub)

    from kyc_tools.fleet import commands as fleet_commands
    fleet_commands.register(sub)
    from kyc_tools.verdicts import commands as verdict_commands
    verdict_commands.register(sub)

    s = sub.add_parser("fuzz", help="fuzz the card-frame and record parsers (args after -- go to the fuzzer)")
    s.add_argument("rest", nargs="*")
    s.set_defaults(func=_fuzz)


if __name__ == "__main__":
    sys.exit(0)
