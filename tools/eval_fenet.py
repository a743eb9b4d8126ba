"""Accuracy of a FENet/DRNet weights file on a labelled COCO set: uncompressed, the
representation ceiling (FENet -> DRNet without quantisation) and every quality
index through the real container path (bpp = container bits / original pixels).

    python -m tools.eval_fenet --weights codec/models/weights/fenet_nanodet_neck.pt --dataset val2017-103
    python -m tools.eval_fenet --weights runs/fenet/f.pt --dataset val2017-103 --phis 0,3,5 --json out.json
    python -m tools.eval_fenet --weights codec/models/weights/fenet_yolov5s_seg_neck.pt --dataset coco128

The network is the one the weights were trained for (their record's "network" and "split");
for a network with instance masks (YOLOv5s-seg) the mask mAPs are measured beside the box mAPs.

The figures of the issue's ceiling criterion (>= 99.5 % of the uncompressed mAP@0.5) come from here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from codec.models.fenet import load_fenet
from codec.training import data as tdata
from codec.training import dev as tdev
from codec.vision import get_network
from tools.train_fenet import DEV_SETS, ceiling_eval, container_eval

LABELS = {"map50": "mAP@0.5", "map": "mAP", "segm_map50": "mask mAP@0.5", "segm_map": "mask mAP"}


def _figures(m: dict, keys: list[str], ref: dict | None = None) -> str:
    """'mAP@0.5 0.3512 (98.10 %)  mAP ...': each figure, relative to `ref` where given."""
    cells = []
    for k in keys:
        rel = f" ({100 * m[k] / ref[k]:.2f} %)" if ref is not None and ref[k] > 0 else ""
        cells.append(f"{LABELS[k]} {m[k]:.4f}{rel}")
    return "  ".join(cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--dataset", default="val2017-103", choices=sorted(DEV_SETS))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--phis", default=None, help="quality indices (default: all); 'none' for the ceiling only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, digest = load_fenet(args.weights)
    record = json.loads(Path(args.weights).with_suffix(".json").read_text())
    split = record.get("split", "neck")
    net = get_network(record.get("network", "nanodet"))
    sp = net.split_points[split]
    root = tdata.assets_dir()
    imgs, ann = DEV_SETS[args.dataset]
    if not (root / ann).is_file():
        print(f"error: {args.dataset} not found under {root} (set FCM_ASSETS)", file=sys.stderr)
        return 2
    t0 = time.time()
    dev = tdev.coco_dev_set(net, split, root / imgs, root / ann, args.limit, args.dataset)
    ref = tdev.evaluate_uncompressed(dev, net, split)
    keys = [k for k in ("map50", "map", "segm_map50", "segm_map") if k in ref]
    out = {
        "weights": str(args.weights),
        "sha256": digest,
        "network": net.name,
        "split": split,
        "dataset": args.dataset,
        "images": len(dev),
        "uncompressed": {k: round(ref[k], 5) for k in keys},
    }
    # the ceiling at the top quality index: y through its gain and inverse gain, unrounded
    top = model.cfg.num_qualities - 1
    out["ceiling"] = {"phi": top, **ceiling_eval(model, dev, net, sp, top)}
    for k in keys:
        out["ceiling"][f"relative_{k}"] = round(out["ceiling"][k] / ref[k], 5) if ref[k] > 0 else None
    print(f"{args.dataset} ({len(dev)} images), {net.name}: uncompressed " + _figures(ref, keys))
    print(f"ceiling (no quantisation, gains of phi {top}): " + _figures(out["ceiling"], keys, ref))
    if args.phis != "none":
        phis = [int(v) for v in args.phis.split(",")] if args.phis else list(range(model.cfg.num_qualities))
        out["per_phi"] = container_eval(model, dev, net, sp, phis)
        for phi, r in out["per_phi"].items():
            print(f"phi {phi}: bpp {r['bpp']:.4f}  " + _figures(r, keys, ref))
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
