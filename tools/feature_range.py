"""The quantisation range of the MPEG feature anchor (mode mpeg_anchor): the minimum and the
maximum of the uncompressed NN part 1 features over a set of images, as the MPEG FCM
platform's anchor scripts compute one (min, max) per dataset (its MIN_MAX_DATASET).

    python -m tools.feature_range --dataset val2017-103            # print it
    python -m tools.feature_range --dataset coco128 --network yolov5s_seg   # another network's neck
    python -m tools.feature_range --images DIR --record nanodet/neck  # and record it for fcm_enc

``--record KEY`` writes the range, the image set (count and the sha256 of the sorted file
names and bytes), the network's weights hash and this command into
codec/modes/mpeg_anchor_ranges.json, where the encoder finds the default range of a split
point. The CTC configs give the range of the set they evaluate (MPEG's procedure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from codec.files import assets_path

DATASETS = {
    "val2017-103": "coco/val2017-103/images",
    "coco128": "coco/coco128/images",
    "train2017-kp130": "coco/train2017-kp130/images",
    "train-images": "train-images",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def image_files(root: Path) -> list[Path]:
    """The images under `root` (sub-folders included), sorted by relative path."""
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.relative_to(root))


def set_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())  # names and contents
    return h.hexdigest()


def feature_range(network, split: str, files: list[Path]) -> tuple[float, float]:
    """(min, max) in float32 over every sample of every scale of every image's features."""
    import torch

    from codec.pipeline import load_image

    lo, hi = np.inf, -np.inf
    with torch.inference_mode():
        for f in files:
            img = load_image(f)
            x, _ = network.preprocess(img)
            feats = network.part1(x, split)
            for t in feats.values():
                a = t.detach().cpu().numpy().astype(np.float32)
                lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return float(np.float32(lo)), float(np.float32(hi))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=sorted(DATASETS), help="an image set of the assets folder")
    src.add_argument("--images", help="a folder of images")
    ap.add_argument("--network", default="nanodet")
    ap.add_argument("--split", default=None, help="split point (default: the network's)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--record", default=None, metavar="KEY", help="record the range under KEY (e.g. nanodet/neck)")
    args = ap.parse_args(argv)

    from codec.modes import mpeg_anchor
    from codec.vision import get_network

    root = assets_path() / DATASETS[args.dataset] if args.dataset else Path(args.images)
    if not root.is_dir():
        print(f"error: image folder not found: {root}", file=sys.stderr)
        return 2
    files = image_files(root)[: args.limit]
    if not files:
        print(f"error: no images in {root}", file=sys.stderr)
        return 2
    net = get_network(args.network)
    split = args.split or net.default_split
    lo, hi = feature_range(net, split, files)
    print(json.dumps({"network": args.network, "split": split, "images": len(files), "min": lo, "max": hi}))
    if args.record:
        sp = net.split_points[split]
        ranges = mpeg_anchor.recorded_ranges() if mpeg_anchor.RANGES_FILE.is_file() else {}
        ranges[args.record] = {
            "split": split,
            "scales": mpeg_anchor.scales_signature(sp),
            "min": lo,
            "max": hi,
            "images": {"folder": args.dataset or root.name, "count": len(files), "sha256": set_digest(files)},
            "network_weights_sha256": net.weights_sha256(),
            "command": "python -m tools.feature_range " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        }
        mpeg_anchor.RANGES_FILE.write_text(json.dumps(ranges, indent=2) + "\n", encoding="utf-8")
        print(f"recorded {args.record} in {mpeg_anchor.RANGES_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
