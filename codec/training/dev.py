"""Dev sets and their evaluation while a learned codec trains.

Two kinds of dev set:

* ``heldout`` (the default): the training images left out of training
  (:func:`codec.training.data.split_train_images`), with pseudo-labels: the
  uncompressed network's own detections with score >= ``pseudo_score`` are the
  ground truth. mAP@0.5 against them measures how much of the uncompressed
  output the codec keeps (1.0 = the same boxes), needs no labels and never
  touches the sets results are reported on. A network whose detections carry
  instance masks (YOLOv5s-seg) gets its masks as pseudo-labels too, and the
  evaluation adds the mask mAP (``segm_map50``, ``segm_map``) beside the box one.
* a labelled COCO set (e.g. ``val2017-103``): mAP@0.5 against its annotations.
  Choosing checkpoints on it and reporting on it is tuning on the test set, so
  the trainers use it only when asked to.

Two evaluations:

* :func:`evaluate_transform`: the ceiling, FENet -> DRNet (or MSFF -> MSFR)
  without quantisation;
* :func:`evaluate_container`: the real path of ``fcm_enc`` / ``fcm_dec``: the mode
  encoder with the weights being trained (written to a temporary weights file),
  the container, its parser, the mode decoder (bit-exact fixed point), NN part 2.
  The rate is the container's bpp (bits over original-image pixels).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec.vision.base import Features, Preprocessing


@dataclass
class DevImage:
    image_id: int
    features: Features  # NN part 1 output, (1, C, H, W) float32 per scale
    prep: Preprocessing
    pixels: int  # original image pixels (the bpp denominator)


@dataclass
class DevSet:
    name: str
    annotation_file: Path
    images: list[DevImage]
    tmpdir: tempfile.TemporaryDirectory | None = None  # owns a pseudo-label file
    masks: bool = False  # the ground truth has instance masks: evaluate() adds the mask mAP

    def __len__(self) -> int:
        return len(self.images)


def _features(net, split: str, image: np.ndarray) -> tuple[Features, Preprocessing]:
    with torch.inference_mode():
        x, prep = net.preprocess(image)
        feats = net.part1(x, split)
    return {k: v.clone() for k, v in feats.items()}, prep


def coco_dev_set(
    net, split: str, images_dir: Path, annotation_file: Path, limit: int | None = None, name: str = "coco"
) -> DevSet:
    """A labelled COCO set (images sorted by id; the first `limit`). For a network that returns
    instance masks, on annotations that have them, evaluate() adds the mask mAP."""
    from codec.pipeline import load_image

    meta = json.loads(Path(annotation_file).read_text())
    infos = sorted(meta["images"], key=lambda i: i["id"])[:limit]
    images = []
    for info in infos:
        image = load_image(Path(images_dir) / info["file_name"])
        feats, prep = _features(net, split, image)
        images.append(DevImage(int(info["id"]), feats, prep, int(image.shape[0] * image.shape[1])))
    masks = "segm" in getattr(net, "tasks", ()) and any("segmentation" in a for a in meta.get("annotations", []))
    return DevSet(name, Path(annotation_file), images, masks=masks)


def heldout_dev_set(net, split: str, root: Path, files: list[str], pseudo_score: float = 0.3) -> DevSet:
    """Held-out training images with the uncompressed detections (score >= pseudo_score)
    as ground truth, written to a COCO annotation file in a temporary folder."""
    from codec.pipeline import load_image
    from codec.vision.nanodet import COCO80_TO_COCO91

    images: list[DevImage] = []
    gt_images: list[dict] = []
    annotations: list[dict] = []
    masks = False
    for k, rel in enumerate(files):
        image = load_image(Path(root) / rel)
        feats, prep = _features(net, split, image)
        h, w = image.shape[:2]
        images.append(DevImage(k + 1, feats, prep, h * w))
        gt_images.append({"id": k + 1, "width": w, "height": h, "file_name": rel})
        with torch.inference_mode():
            dets = net.part2(feats, split, prep)
        for r in dets.to_coco(k + 1):
            if r["score"] >= pseudo_score and r["bbox"][2] > 0 and r["bbox"][3] > 0:
                ann = {
                    "id": len(annotations) + 1,
                    "image_id": k + 1,
                    "category_id": r["category_id"],
                    "bbox": r["bbox"],
                    "area": r["bbox"][2] * r["bbox"][3],
                    "iscrowd": 0,
                }
                if "segmentation" in r:  # the mask's area, as COCO's annotations give it
                    from pycocotools import mask as mask_utils

                    rle = r["segmentation"]
                    ann["segmentation"] = rle
                    ann["area"] = float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))
                    masks = True
                annotations.append(ann)
    tmp = tempfile.TemporaryDirectory(prefix="fcm-dev-")
    path = Path(tmp.name) / "pseudo_labels.json"
    categories = [{"id": int(c), "name": str(c)} for c in COCO80_TO_COCO91]
    path.write_text(json.dumps({"images": gt_images, "annotations": annotations, "categories": categories}))
    return DevSet(f"heldout{len(files)}-pseudo{pseudo_score:g}", path, images, tmp, masks)


def evaluate(dev: DevSet, net, split: str, decode: Callable[[DevImage], tuple[Features, int]]) -> dict:
    """mAP of NN part 2 on `decode`'s features; `decode` returns (features, bits)."""
    from ctc.coco_eval import evaluate_detections

    results, bits, pixels = [], 0, 0
    for img in dev.images:
        feats, b = decode(img)
        with torch.inference_mode():
            dets = net.part2(feats, split, img.prep)
        results += dets.to_coco(img.image_id)
        bits += b
        pixels += img.pixels
    ids = [i.image_id for i in dev.images]
    m = evaluate_detections(results, dev.annotation_file, ids)
    out = {"map50": m["map50"], "map": m["map"], "bpp": bits / pixels}
    if dev.masks:
        seg = evaluate_detections(results, dev.annotation_file, ids, iou_type="segm")
        out.update(segm_map50=seg["map50"], segm_map=seg["map"])
    return out


def evaluate_uncompressed(dev: DevSet, net, split: str) -> dict:
    return evaluate(dev, net, split, lambda img: (img.features, 0))


def evaluate_transform(dev: DevSet, net, split: str, reconstruct: Callable[[Features], Features]) -> dict:
    """The ceiling: `reconstruct` maps features to their unquantised reconstruction."""

    def decode(img: DevImage) -> tuple[Features, int]:
        with torch.no_grad():
            return reconstruct(img.features), 0

    return evaluate(dev, net, split, decode)


def evaluate_container(
    dev: DevSet, net, split: str, encode: Callable[[DevImage], bytes], decode: Callable[[bytes], Features]
) -> dict:
    """The real container path: `encode` gives the container bytes, `decode` parses and decodes them."""

    def run(img: DevImage) -> tuple[Features, int]:
        data = encode(img)
        return decode(data), 8 * len(data)

    return evaluate(dev, net, split, run)
