"""`kyc-edge eval match` argument parsing; the work is in kyc_tools/eval/match.py."""
from __future__ import annotations

import argparse
import sys


def register_eval(subparsers) -> None:
    p = subparsers.add_parser("match", help="1:1 face match on LFW-style pairs (JSON on stdout)",
                              description="Run detect -> align -> embed -> cosine over pairs; print one JSON object.")
    p.add_argument("--pairs", required=True, help="CSV with columns fold,img1,img2,same")
    p.add_argument("--images", required=True, help="directory holding the pair images")
    p.add_argument("--folds", default="1-5", help="folds to use, e.g. 1-5 or 1,3 (default 1-5)")
    p.add_argument("--card-style", action="store_true",
                   help="turn each pair's first image into a chip-like photo (102x126, JPEG <= 1,024 bytes)")
    p.add_argument("--plot", help="write a DET curve (PNG) with the FAR=1e-3 operating point")
    p.add_argument("--model", help="embedder model: file name in the model dir(s) or a path (default mobilefacenet.tflite)")
    p.add_argument("--detector-model", help="detector model file name or path (default by --detector)")
    p.add_argument("--detector", choices=("short_range", "full_range"), default="short_range")
    p.add_argument("--models-dir", help="model directory (default $KYC_EDGE_MODEL_DIR; in a checkout models/store; $KYC_EDGE_MODEL_MIRROR; $KYC_EDGE_SHARED/models)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--card-restore", choices=("none", "bilateral", "nlmeans"), default="none",
                   help="with --card-style: clean up the decoded chip photo before alignment (kyc_tools/eval/restore.py)")
    p.add_argument("--flip-tta", action="store_true", help="embed each face with its mirror (2 calls per pair)")
    p.add_argument("--align", choices=("mesh", "blazeface"), default="mesh",
                   help="mesh: FaceMesh 5 points on both sides, card with its mirror, as the device (default); blazeface: the old 4-point path")
    p.add_argument("--threshold", type=float, help="also report TAR/FAR at this threshold (e.g. match.threshold)")
    p.add_argument("--second-embedder", action=argparse.BooleanOptionalAction, default=None,
                   help="also embed with the second model (dlib ResNet, embedder2) and fuse the scores as the device does "
                        "with match.second_embedder; `components` has each embedder's own figures (default: as "
                        "match.second_embedder, on; off with --align blazeface)")
    p.add_argument("--second-model", help="second embedder file name or path (default dlib_resnet_v1_int8.tflite "
                                          "when --model is an int8 build, else dlib_resnet_v1.tflite)")
    p.add_argument("--fusion-weight", type=float, help="weight of the second embedder's score (default match.fusion_weight)")
    p.add_argument("--limit", type=int, default=0, help="at most this many pairs, spread over the file (0 = all)")
    p.set_defaults(func=cmd_eval_match)


def cmd_eval_match(args) -> int:
    from kyc_tools.eval import common
    from kyc_tools.eval.match import run_match_eval
    from device.errors import KycError
    try:
        out = run_match_eval(args)
    except (FileNotFoundError, ValueError, KycError) as e:
        print(f"eval match: {e}", file=sys.stderr)
        return 2
    common.emit_json(out)
    return 0
