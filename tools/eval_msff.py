"""Accuracy of MSFF/MSFR weights files (vvc_msff) on a dev set: uncompressed, the
representation ceiling (MSFF -> MSFR with every channel, no quantisation) and each QP
through the real container path (bpp = container bits / original pixels), with the kept
channels of the truncation table. Several weights files are compared on the same images.

    python -m tools.eval_msff --weights codec/models/weights/msff_nanodet_neck.pt runs/msff/m.pt
    python -m tools.eval_msff --weights runs/msff/m.pt --dev val2017-103 --qps 22,32,42 --json out.json

The default dev set is the 64 held-out training images with the uncompressed
detections as pseudo-labels (the set the trainers choose checkpoints on), so that
comparing candidate weights does not tune on a report set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from codec.models.msff import load_msff
from codec.training import common
from codec.training import data as tdata
from codec.training import dev as tdev
from codec.vision import get_network
from tools.train_msff import ceiling_eval, container_eval


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", nargs="+", required=True)
    ap.add_argument("--dev", default="heldout", choices=("heldout", *common.DEV_SETS))
    ap.add_argument("--holdout", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--qps", default="22,27,32,37,42,47")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = get_network("nanodet")
    sp = net.split_points["neck"]
    root = tdata.assets_dir()
    t0 = time.time()
    if args.dev == "heldout":
        files = tdata.list_images(root / "train-images")
        _, held = tdata.split_train_images(files, args.holdout, 0)
        dev = tdev.heldout_dev_set(net, "neck", root / "train-images", held[: args.limit])
    else:
        imgs, ann = common.DEV_SETS[args.dev]
        if not (root / ann).is_file():
            print(f"error: {args.dev} not found under {root} (set FCM_ASSETS)", file=sys.stderr)
            return 2
        dev = tdev.coco_dev_set(net, "neck", root / imgs, root / ann, args.limit, args.dev)
    ref = tdev.evaluate_uncompressed(dev, net, "neck")
    print(f"{dev.name} ({len(dev)} images): uncompressed mAP@0.5 {ref['map50']:.4f}  mAP {ref['map']:.4f}")
    qps = [int(q) for q in args.qps.split(",")]
    results = []
    for w in args.weights:
        model, _, digest = load_msff(w)
        ceiling = ceiling_eval(model, dev, net, sp)
        per_qp = container_eval(model, dev, net, sp, qps)
        results.append({"weights": w, "sha256": digest, "ceiling": ceiling, "per_qp": per_qp})
        print(f"{w}: ceiling mAP@0.5 {ceiling['map50']:.4f} ({100 * ceiling['map50'] / ref['map50']:.1f} %)")
        for qp, r in per_qp.items():
            print(f"  qp {qp:>2} kept {r['kept']:>3}: {r['bpp']:.4f} bpp  mAP@0.5 {r['map50']:.4f}  mAP {r['map']:.4f}")
    out = {"dev": dev.name, "images": len(dev), "uncompressed": ref, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
