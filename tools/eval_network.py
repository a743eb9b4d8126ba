#!/usr/bin/env python3
"""Uncompressed task accuracy of a split network on a COCO-format set:
image -> NN part 1 -> NN part 2 -> detections -> pycocotools mAP.

  python -m tools.eval_network --dataset coco128
  python -m tools.eval_network --dataset val2017-103
  python -m tools.eval_network --images DIR --annotations instances.json [--limit N]
  python -m tools.eval_network --dataset coco128 --net-arg normalisation=rgb255     # ablations
  python -m tools.eval_network --dataset val2017-103 --net-arg resize_mode=letterbox
  python -m tools.eval_network --network yolov5s_seg --dataset coco128      # box and mask AP
  python -m tools.eval_network --network yolo11n_pose --dataset train2017-kp130  # box and keypoint AP

Prints mAP@[.5:.95] and mAP@0.5 (the numbers in README.md come from this): box AP, mask AP too
for a network whose detections carry masks (the annotations need segmentations), keypoint AP
(pycocotools' OKS AP, 20 detections per image) for one whose detections carry keypoints (the
annotations need keypoints: person_keypoints files)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from codec.vision import DEFAULT_NETWORK, available_networks, get_network, networks_help
from codec.vision.weights import assets_dir

DATASETS = {
    "coco128": ("coco/coco128/images", "coco/coco128/annotations/instances_train2017.json"),
    "val2017-103": ("coco/val2017-103/images", "coco/val2017-103/annotations/instances_val2017_103.json"),
    # person keypoints of 130 train2017 images (pose networks saw them in training: optimistic)
    "train2017-kp130": (
        "coco/train2017-kp130/images",
        "coco/train2017-kp130/annotations/person_keypoints_train2017_kp130.json",
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default=DEFAULT_NETWORK, choices=available_networks(), help=networks_help())
    ap.add_argument("--weights", help="local weights file instead of the default source")
    ap.add_argument("--split", help="split point (default: the network's default)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), help="a set from the shared assets")
    ap.add_argument("--images", type=Path, help="image folder (with --annotations)")
    ap.add_argument("--annotations", type=Path, help="COCO instances json")
    ap.add_argument("--limit", type=int, help="first N images only")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--save", type=Path, help="write the detections (COCO results json)")
    ap.add_argument(
        "--net-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the network loader (repeatable), e.g. resize_mode=letterbox",
    )
    args = ap.parse_args(argv)

    from codec.pipeline import load_image
    from ctc.coco_eval import CocoEvalError, evaluate_detections

    if args.dataset:
        root = assets_dir()
        if root is None:
            print("error: no shared assets folder (set FCM_ASSETS) for --dataset", file=sys.stderr)
            return 2
        images, annotations = (root / p for p in DATASETS[args.dataset])
    elif args.images and args.annotations:
        images, annotations = args.images, args.annotations
    else:
        ap.error("give --dataset or both --images and --annotations")
    if args.threads:
        torch.set_num_threads(args.threads)
    net_kwargs = {}
    for item in args.net_arg:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--net-arg needs KEY=VALUE, got {item!r}")
        net_kwargs[key] = value
    try:
        net = get_network(args.network, weights=args.weights, **net_kwargs)
    except (TypeError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = args.split or net.default_split
    meta = json.loads(Path(annotations).read_text())
    infos = sorted(meta["images"], key=lambda i: i["id"])[: args.limit]
    results: list[dict] = []
    t1 = t2 = 0.0
    for info in tqdm(infos, desc=f"{net.name}/{split}", unit="img", file=sys.stderr):
        image = load_image(Path(images) / info["file_name"])
        start = time.perf_counter()
        x, pre = net.preprocess(image)
        feats = net.part1(x, split)
        mid = time.perf_counter()
        dets = net.part2(feats, split, pre)
        t1 += mid - start
        t2 += time.perf_counter() - mid
        results += dets.to_coco(info["id"])
    ids = [i["id"] for i in infos]
    m = evaluate_detections(results, annotations, ids)
    segm, no_segm = None, ""
    if results and "segmentation" in results[0]:
        try:
            segm = evaluate_detections(results, annotations, ids, iou_type="segm")
        except CocoEvalError as e:  # a set with boxes only (val2017-103)
            no_segm = str(e)
    kpts, no_kpts = None, ""
    if results and "keypoints" in results[0]:
        try:
            kpts = evaluate_detections(results, annotations, ids, iou_type="keypoints")
        except CocoEvalError as e:  # a set without keypoints
            no_kpts = str(e)
    if args.save:
        args.save.write_text(json.dumps(results))
    n = len(infos)
    extra = "  " + " ".join(args.net_arg) if args.net_arg else ""
    print(f"network {net.name}  split {split}  weights sha256 {net.weights_sha256()[:16]}...{extra}")
    print(f"images {n} from {images}")
    print(f"mAP@[.5:.95] {m['map']:.4f}   mAP@0.5 {m['map50']:.4f}   mAP@0.75 {m['map75']:.4f}")
    if segm is not None:
        print(f"mask mAP@[.5:.95] {segm['map']:.4f}   mAP@0.5 {segm['map50']:.4f}   mAP@0.75 {segm['map75']:.4f}")
    elif no_segm:
        print(f"mask mAP: none ({no_segm})")
    if kpts is not None:
        print(f"keypoint mAP@[.5:.95] {kpts['map']:.4f}   mAP@0.5 {kpts['map50']:.4f}   mAP@0.75 {kpts['map75']:.4f}")
    elif no_kpts:
        print(f"keypoint mAP: none ({no_kpts})")
    print(
        f"NN part 1 {1000 * t1 / n:.1f} ms/img (incl. preprocessing)   "
        f"NN part 2 {1000 * t2 / n:.1f} ms/img (incl. NMS, masks, keypoints)   threads {torch.get_num_threads()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
