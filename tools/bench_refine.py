"""Encoder-side refinement (``--refine N``) of learned_e2e (its latents) or of vvc_msff (its
fused tensor, through the real VVC round trip; ``--mode vvc_msff``): rate and accuracy against
the same codec model without it, on the held-out training images (the dev set of the
training programme: images no model was trained on, the uncompressed detections as
pseudo-labels; never the evaluation sets) or on a labelled set.

Every point goes through the real container path (``pipeline.encode_features`` with the
mode's parameters, ``pipeline.decode_bitstream``, NN part 2); bits are the containers'
sizes. Prints per refinement setting and phi: bpp, mAP@0.5, mAP@[.5:.95] and the encoding
time per image, then the BD-rate (mAP@0.5, pchip on the rate-accuracy front) of each
setting against ``--refine 0``; ``--json`` writes all of it.

    python -m tools.bench_refine --steps 0,20 --limit 64 --json docs/refine/heldout64.json
    python -m tools.bench_refine --mode vvc_msff --steps 0,10 --qps 32,37,42,47 --limit 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from codec.modes import learned_e2e, vvc_msff
from tools.bd_points import front, parse_points


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="0,20", help="refinement steps to compare, comma-separated (first: reference)")
    ap.add_argument("--mode", default="learned_e2e", choices=("learned_e2e", "vvc_msff"))
    ap.add_argument("--phis", default="0,1,2,3,4,5", help="learned_e2e: quality indices")
    ap.add_argument("--qps", default="22,27,32,37,42,47", help="vvc_msff: QPs")
    ap.add_argument("--preset", default=None, help="vvc_msff: VVenC preset (default: the mode's)")
    ap.add_argument("--dataset", default="heldout", help="heldout (default), or a labelled set: val2017-103, coco128")
    ap.add_argument("--limit", type=int, default=64, help="images (the first of the set)")
    ap.add_argument("--network", default="nanodet")
    ap.add_argument("--codec-model", default=None, help="the mode's codec model (default: the split point's)")
    ap.add_argument("--lr", type=float, default=None,
                    help=f"the refinement's first step size (fcm_enc --refine-lr; default learned_e2e "
                         f"{learned_e2e.REFINE_LR}, vvc_msff {vvc_msff.REFINE_LR})")  # fmt: skip
    ap.add_argument("--rate-weight", type=float, default=None,
                    help="vvc_msff: --refine-rate-weight (default: the mode's)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here")
    ap.add_argument(
        "--results", type=Path, default=None, help="report a --json file of an earlier run (nothing is measured)"
    )
    ap.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="NAME=BPP:MAP50,...",
        help="another codec's rate points on the same images (mAP@0.5 in %%, e.g. from an fcm_ctc table): "
        "every setting's BD-rate against it too; repeatable",
    )
    args = ap.parse_args(argv)
    try:
        args.steps_list = [int(v) for v in args.steps.split(",")]
        args.phi_list = [int(v) for v in (args.phis if args.mode == "learned_e2e" else args.qps).split(",")]
    except ValueError:
        ap.error("--steps, --phis and --qps take comma-separated integers")
    mode = learned_e2e if args.mode == "learned_e2e" else vvc_msff
    args.rate_param = "phi" if args.mode == "learned_e2e" else "qp"
    args.default_lr, args.max_lr = mode.REFINE_LR, mode.REFINE_MAX_LR
    if args.rate_weight is not None and args.mode != "vvc_msff":
        ap.error("--rate-weight is vvc_msff's (learned_e2e's objective has its own rate term)")
    if len(args.steps_list) < 2 or min(args.steps_list) < 0:
        ap.error("--steps needs a reference and at least one other setting, each >= 0")
    if args.limit < 1:
        ap.error("--limit must be at least 1")
    if args.lr is not None and not 0 < args.lr <= args.max_lr:
        ap.error(f"--lr must be in (0, {args.max_lr}]")
    args.versus_points = {}
    for v in args.versus:
        try:
            name, points = parse_points(v)
        except ValueError as e:
            ap.error(f"--versus {e}")
        args.versus_points[name] = points
    if args.json is not None:  # before hours of measuring, not after
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            ap.error(f"--json {args.json}: {e.strerror}")
        if not args.json.parent.is_dir():
            ap.error(f"--json {args.json}: {args.json.parent} is not a directory")
    return args


def measure(args: argparse.Namespace) -> tuple[dict[str, dict], int, dict] | None:
    """Every setting and phi through the container path: (results, images, uncompressed figures)."""
    import torch

    from codec import pipeline
    from codec.training import common
    from codec.training import data as tdata
    from codec.training import dev as tdev
    from codec.vision import get_network

    torch.set_num_threads(args.threads)
    net = get_network(args.network)
    split = net.default_split
    root = tdata.assets_dir()
    t0 = time.time()
    if args.dataset == "heldout":
        images_root = root / "train-images"
        _, held = tdata.split_train_images(tdata.list_images(images_root), 64, 0)  # the training programme's
        dev_set = tdev.heldout_dev_set(net, split, images_root, held[: args.limit])
    elif args.dataset in common.DEV_SETS:
        imgs, ann = common.DEV_SETS[args.dataset]
        dev_set = tdev.coco_dev_set(net, split, root / imgs, root / ann, args.limit, args.dataset)
    else:
        print(f"error: unknown --dataset {args.dataset!r}", file=sys.stderr)
        return None
    ref = tdev.evaluate_uncompressed(dev_set, net, split)
    print(f"{args.dataset}: {len(dev_set)} images, uncompressed mAP@0.5 {100 * ref['map50']:.2f} "
          f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    results: dict[str, dict] = {}
    for steps in args.steps_list:
        per_phi = {}
        for phi in args.phi_list:
            params = {args.rate_param: phi, "refine": steps or None}
            if args.preset:
                params["preset"] = args.preset
            if steps and args.rate_weight is not None:
                params["refine_rate_weight"] = args.rate_weight
            if steps and args.lr is not None:
                params["refine_lr"] = args.lr
            if args.codec_model:
                params["codec_model"] = args.codec_model
            enc_s: list[float] = []

            def encode(img, params=params, enc_s=enc_s) -> bytes:
                t = time.perf_counter()
                data = pipeline.encode_features(img.features, net, split, img.prep, args.mode, params)
                enc_s.append(time.perf_counter() - t)
                return data

            r = tdev.evaluate_container(
                dev_set, net, split, encode, lambda data: pipeline.decode_bitstream(data, net).features
            )
            per_phi[str(phi)] = {
                "bpp": round(r["bpp"], 6),
                "map50": round(r["map50"], 5),
                "map": round(r["map"], 5),
                "encode_s_per_image": round(sum(enc_s) / len(enc_s), 3),
            }
            v = per_phi[str(phi)]
            print(f"refine {steps:4d} {args.rate_param} {phi}: {v['bpp']:.4f} bpp  mAP@0.5 {100 * v['map50']:6.2f}  "
                  f"mAP {100 * v['map']:6.2f}  encode {v['encode_s_per_image']:.2f} s/image", flush=True)  # fmt: skip
        results[str(steps)] = per_phi
    return results, len(dev_set), ref


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ctc.bd_rate import BDError, bd_rate

    if args.results is not None:
        try:
            earlier = json.loads(args.results.read_text())
            results, n_images, ref = earlier["results"], earlier["images"], earlier["uncompressed"]
            args.dataset = earlier["dataset"]
            if earlier.get("mode", "learned_e2e") != args.mode:
                raise ValueError(f"it measured mode {earlier.get('mode', 'learned_e2e')}, not {args.mode} (--mode)")
            if args.lr is None:  # files before --lr were all measured at the default
                args.lr = float(earlier.get("refine_lr", args.default_lr))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: --results {args.results}: {e}", file=sys.stderr)
            return 2
        missing = [str(n) for n in args.steps_list if str(n) not in results]
        if missing:
            print(f"error: --results {args.results} has no refine {', '.join(missing)}", file=sys.stderr)
            return 2
    else:
        measured = measure(args)
        if measured is None:
            return 2
        results, n_images, ref = measured
    base = args.steps_list[0]
    r_x, r_y = front([(v["bpp"], 100 * v["map50"]) for v in results[str(base)].values()])
    bd: dict[str, float | None] = {}
    for steps in args.steps_list[1:]:
        t_x, t_y = front([(v["bpp"], 100 * v["map50"]) for v in results[str(steps)].values()])
        try:
            bd[str(steps)] = round(bd_rate(r_x, r_y, t_x, t_y), 2)
            print(f"BD-rate (mAP@0.5, pchip) of refine {steps} against refine {base}: {bd[str(steps)]:+.2f} %")
        except BDError as e:
            bd[str(steps)] = None
            print(f"BD-rate of refine {steps} against refine {base}: not defined ({e})")
    versus: dict[str, dict[str, float | None]] = {}
    for name, pts in args.versus_points.items():
        a_x, a_y = front(pts)
        versus[name] = {}
        for steps in args.steps_list:
            t_x, t_y = front([(v["bpp"], 100 * v["map50"]) for v in results[str(steps)].values()])
            try:
                versus[name][str(steps)] = round(bd_rate(a_x, a_y, t_x, t_y), 2)
                print(f"BD-rate (mAP@0.5, pchip) of refine {steps} against {name}: {versus[name][str(steps)]:+.2f} %")
            except BDError as e:
                versus[name][str(steps)] = None
                print(f"BD-rate of refine {steps} against {name}: not defined ({e})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": "python -m tools.bench_refine " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "mode": args.mode,
                    "dataset": args.dataset,
                    "images": n_images,
                    "refine_lr": args.default_lr if args.lr is None else args.lr,
                    "refine_rate_weight": args.rate_weight,
                    "uncompressed": {k: round(v, 5) for k, v in ref.items()},
                    "results": results,
                    "bd_rate_map50_vs_refine_" + str(base): bd,
                    "versus": {n: {"points": args.versus_points[n], "bd_rate_map50": b} for n, b in versus.items()},
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
