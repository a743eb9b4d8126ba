#!/usr/bin/env python3
"""Time NN part 1 and NN part 2 of a split network on one image.

  python -m tools.bench_split                                  # NanoDet, a COCO image from the assets
  python -m tools.bench_split --network fasterrcnn_resnet50_fpn --random-weights --runs 5
  python -m tools.bench_split --image photo.jpg --threads 1 --net-arg min_size=512

Each stage is run --warmup times, then --runs times; the median (and min/max)
per image is printed. Preprocessing (resize, normalise) is timed separately
and is in neither part. --random-weights builds the network without its
trained weights (for timing only; R-CNN networks accept it)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from codec.vision import DEFAULT_NETWORK, available_networks, get_network
from codec.vision.weights import assets_dir

DEFAULT_IMAGE = "coco/val2017-103/images/000000001000.jpg"  # under the shared assets folder


def time_stage(fn: Callable[[], object], runs: int, warmup: int) -> tuple[list[float], object]:
    """Call fn warmup + runs times; return the last `runs` durations (s) and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def parse_net_args(items: list[str]) -> dict[str, object]:
    """["min_size=512", "box_score_thresh=0.3"] -> {"min_size": 512, "box_score_thresh": 0.3}."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--net-arg expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _fmt(times: list[float]) -> str:
    ms = [1000 * t for t in times]
    return f"{statistics.median(ms):9.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default=DEFAULT_NETWORK, choices=available_networks())
    ap.add_argument("--image", type=Path, help=f"image file (default: <assets>/{DEFAULT_IMAGE})")
    ap.add_argument("--split", help="split point (default: the network's default)")
    ap.add_argument("--weights", help="local weights file instead of the default source")
    ap.add_argument("--random-weights", action="store_true", help="untrained weights (timing only)")
    ap.add_argument(
        "--net-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the network loader (repeatable), e.g. min_size=512",
    )
    ap.add_argument("--runs", type=int, default=10, help="timed runs per stage (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    if args.random_weights and args.weights:
        ap.error("give --weights or --random-weights, not both")
    try:
        net_kwargs = parse_net_args(args.net_arg)
    except ValueError as e:
        ap.error(str(e))

    from codec.pipeline import load_image

    image_path = args.image
    if image_path is None:
        root = assets_dir()
        if root is None:
            print(
                "error: no shared assets folder (set FCM_ASSETS) for the default image; give --image", file=sys.stderr
            )
            return 2
        image_path = root / DEFAULT_IMAGE
    image = load_image(image_path)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_weights:
        net_kwargs["pretrained"] = False
        torch.manual_seed(0)
    try:
        net = get_network(args.network, weights=args.weights, **net_kwargs)
    except TypeError as e:  # a loader that does not take one of the keywords
        print(f"error: {args.network} does not accept these options ({e})", file=sys.stderr)
        return 2
    split = args.split or net.default_split
    if split not in net.split_points:
        ap.error(f"unknown split point {split!r} for {net.name}; choose from {', '.join(net.split_points)}")

    with torch.no_grad():
        t_pre, (x, meta) = time_stage(lambda: net.preprocess(image), args.runs, args.warmup)
        t1, feats = time_stage(lambda: net.part1(x, split), args.runs, args.warmup)
        t2, dets = time_stage(lambda: net.part2(feats, split, meta), args.runs, args.warmup)

    h, w = image.shape[:2]
    weights = "random" if args.random_weights else f"sha256 {net.weights_sha256()[:16]}..."
    print(f"network {net.name}  split {split}  weights {weights}")
    print(f"image {image_path} ({w}x{h}) -> network input {meta.input_w}x{meta.input_h}")
    print(f"torch threads {torch.get_num_threads()}  runs {args.runs} after {args.warmup} warm-up")
    print("features: " + ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in feats.items()))
    print(f"detections {len(dets)}")
    print(f"preprocess {_fmt(t_pre)}")
    print(f"NN part 1  {_fmt(t1)}")
    print(f"NN part 2  {_fmt(t2)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
