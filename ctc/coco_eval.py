"""COCO box, mask and keypoint mAP of detection results, through pycocotools (quiet).

Results use the COCO results format: one dict per detection with ``image_id``, ``category_id``
(COCO category id, not a 0-based class index), ``bbox`` = [x, y, w, h] in original-image pixels and
``score``, plus ``segmentation`` (an RLE {"size": [h, w], "counts": str}) for mask AP, or
``keypoints`` ([x, y, v] per keypoint of the category, flat) for keypoint AP;
``codec.vision.base.Detections.to_coco(image_id)`` produces it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CocoEvalError", "IOU_TYPES", "METRIC_KEYS", "evaluate_detections", "evaluate_detections_per_class"]

# Keys returned by evaluate_detections, in COCOeval.stats order (indices 0..5).
METRIC_KEYS: tuple[str, ...] = ("map", "map50", "map75", "map_small", "map_medium", "map_large")
IOU_TYPES = ("bbox", "segm", "keypoints")  # box AP, mask AP, keypoint (OKS) AP


class CocoEvalError(ValueError):
    """Detection results or image ids that do not fit the annotation file."""


@functools.lru_cache(maxsize=4)
def _load_ground_truth(path: str, _mtime_ns: int, _size: int) -> Any:
    # mtime and size are part of the cache key so an edited file is reloaded.
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def _ground_truth(annotation_file: str | os.PathLike) -> Any:
    path = Path(annotation_file)
    if not path.is_file():
        raise CocoEvalError(f"annotation file not found: {path}")
    st = path.stat()
    try:
        return _load_ground_truth(str(path.resolve()), st.st_mtime_ns, st.st_size)
    except (ValueError, KeyError, TypeError) as exc:
        raise CocoEvalError(f"cannot read COCO annotations from {path}: {exc}") from exc


def _clean_result(r: Mapping[str, Any], index: int, iou_type: str = "bbox") -> dict[str, Any]:
    """A fresh, plain-python copy of one result (pycocotools mutates the dicts it is given).
    For mask AP it keeps the RLE and leaves the box out: pycocotools' loadRes would otherwise
    replace the segmentation by the box's polygon."""
    try:
        image_id = int(r["image_id"])
        category_id = int(r["category_id"])
        bbox = [float(v) for v in r["bbox"]]
        score = float(r["score"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CocoEvalError(f"result {index}: need image_id, category_id, bbox [x, y, w, h] and score ({exc})") from exc
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise CocoEvalError(f"result {index}: bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0")
    if not math.isfinite(score):
        raise CocoEvalError(f"result {index}: score must be finite")
    if iou_type == "bbox":
        return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}
    if iou_type == "keypoints":
        try:
            kpts = [float(v) for v in r["keypoints"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CocoEvalError(f"result {index}: keypoint AP needs keypoints [x, y, v, ...] ({exc})") from exc
        if not kpts or len(kpts) % 3 or not all(math.isfinite(v) for v in kpts):
            raise CocoEvalError(f"result {index}: keypoints must be finite numbers, three per keypoint")
        # the box stays: pycocotools then takes the result's area from it, as for Ultralytics' results
        return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "keypoints": kpts, "score": score}
    seg = r.get("segmentation")
    try:
        size = [int(v) for v in seg["size"]]  # type: ignore[index]
        counts = seg["counts"]  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as exc:
        raise CocoEvalError(f"result {index}: mask AP needs a segmentation RLE {{'size', 'counts'}} ({exc})") from exc
    if len(size) != 2 or not isinstance(counts, (str, bytes)):
        raise CocoEvalError(f"result {index}: segmentation must be an RLE with size [h, w] and string counts")
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": size, "counts": counts},
        "score": score,
    }


def evaluate_detections(
    results: list[dict],
    annotation_file: str | os.PathLike,
    image_ids: list[int] | None = None,
    iou_type: str = "bbox",
) -> dict[str, float]:
    """Box AP (``iou_type="bbox"``), mask AP (``"segm"``: the results' RLE masks against the
    annotations' polygons and crowd RLEs) or keypoint AP (``"keypoints"``: object keypoint
    similarity with COCO's per-keypoint sigmas) of ``results`` against the annotation file,
    restricted to ``image_ids`` if given (default: every image of the annotation file; results
    for other images are dropped).

    Returns {"map": AP@[.5:.95], "map50", "map75", "map_small", "map_medium", "map_large",
    "n_images"}, AP in [0, 1] with 100 detections per image (keypoints: 20, COCO's keypoint
    setting), as COCOeval.stats. As in pycocotools, a value is -1.0 when the evaluated images have
    no ground truth in that area range; keypoint AP has no small range, so its "map_small" is
    always -1.0. Empty results give 0.0 for every AP.
    """
    return _evaluate(results, annotation_file, image_ids, iou_type)[0]


def evaluate_detections_per_class(
    results: list[dict],
    annotation_file: str | os.PathLike,
    image_ids: list[int] | None = None,
    iou_type: str = "bbox",
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The figures of evaluate_detections, and per category of the annotation file that has
    ground truth in the evaluated images: {"category_id", "name", "n_gt", "map", "map50"}
    (AP@[.5:.95] and AP@0.5 over all areas, 100 detections per image, from the same
    evaluation: the mean over recall of COCOeval's precision, as its summary does)."""
    import numpy as np

    stats, ev, gt, eval_ids = _evaluate(results, annotation_file, image_ids, iou_type, keep=True)
    rows = []
    for cat_id in gt.getCatIds():
        n_gt = len(gt.getAnnIds(imgIds=eval_ids, catIds=[cat_id], iscrowd=False))
        if n_gt == 0:
            continue
        if ev is None:  # no detections at all
            ap = ap50 = 0.0
        else:
            k_eval = list(ev.params.catIds).index(cat_id)
            prec = ev.eval["precision"][:, :, k_eval, 0, -1]  # (iou thresholds, recall), area all, 100 dets
            valid = prec[prec > -1]
            ap = float(np.mean(valid)) if valid.size else 0.0
            valid50 = prec[0][prec[0] > -1]
            ap50 = float(np.mean(valid50)) if valid50.size else 0.0
        name = gt.loadCats([cat_id])[0].get("name", str(cat_id))
        rows.append({"category_id": int(cat_id), "name": name, "n_gt": n_gt, "map": ap, "map50": ap50})
    return stats, rows


def _evaluate(
    results: list[dict],
    annotation_file: str | os.PathLike,
    image_ids: list[int] | None = None,
    iou_type: str = "bbox",
    keep: bool = False,
) -> Any:
    """(figures, COCOeval or None when there are no results, ground truth, image ids) if `keep`."""
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise CocoEvalError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    gt = _ground_truth(annotation_file)
    known_images = set(gt.getImgIds())
    if image_ids is None:
        eval_ids = sorted(known_images)
    else:
        eval_ids = sorted({int(i) for i in image_ids})
        if not eval_ids:
            raise CocoEvalError("image_ids is empty")
        unknown = [i for i in eval_ids if i not in known_images]
        if unknown:
            raise CocoEvalError(f"{len(unknown)} image ids not in {annotation_file}: {unknown[:5]}")

    cleaned = [_clean_result(r, k, iou_type) for k, r in enumerate(results)]
    not_in_file = sorted({r["image_id"] for r in cleaned} - known_images)
    if not_in_file:
        raise CocoEvalError(f"results for image ids not in {annotation_file}: {not_in_file[:5]}")
    known_cats = set(gt.getCatIds())
    bad_cats = sorted({r["category_id"] for r in cleaned} - known_cats)
    if bad_cats:
        raise CocoEvalError(f"results use category ids not in {annotation_file}: {bad_cats[:5]}")
    wanted = set(eval_ids)
    cleaned = [r for r in cleaned if r["image_id"] in wanted]
    if iou_type == "segm":
        eval_anns = gt.loadAnns(gt.getAnnIds(imgIds=eval_ids))
        if any(not a.get("segmentation") for a in eval_anns):
            raise CocoEvalError(f"{annotation_file} has annotations without a mask (segmentation): no mask AP")
        sizes = {i["id"]: [int(i["height"]), int(i["width"])] for i in gt.loadImgs(sorted(wanted))}
        wrong = [r["image_id"] for r in cleaned if r["segmentation"]["size"] != sizes[r["image_id"]]]
        if wrong:
            raise CocoEvalError(f"masks of image {wrong[0]} are not the image's size {sizes[wrong[0]]}")
    if iou_type == "keypoints":
        eval_anns = gt.loadAnns(gt.getAnnIds(imgIds=eval_ids))
        if not any(a.get("num_keypoints", 0) > 0 for a in eval_anns):
            raise CocoEvalError(f"{annotation_file} has no keypoint annotations on these images: no keypoint AP")
        n_kpts = {c["id"]: len(c.get("keypoints") or []) for c in gt.loadCats(gt.getCatIds())}
        wrong = [r for r in cleaned if len(r["keypoints"]) != 3 * n_kpts[r["category_id"]]]
        if wrong:
            raise CocoEvalError(
                f"results of category {wrong[0]['category_id']} need {n_kpts[wrong[0]['category_id']]} keypoints, "
                f"got {len(wrong[0]['keypoints']) // 3}"
            )

    out: dict[str, float] = {}
    ev = None
    if not cleaned:
        out.update({k: 0.0 for k in METRIC_KEYS})
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(cleaned)
            ev = COCOeval(gt, dt, iouType=iou_type)
            ev.params.imgIds = eval_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        if iou_type == "keypoints":  # stats: AP, AP50, AP75, AP medium, AP large (no small range)
            out.update({"map": ev.stats[0], "map50": ev.stats[1], "map75": ev.stats[2]})
            out.update({"map_small": -1.0, "map_medium": ev.stats[3], "map_large": ev.stats[4]})
            out = {k: float(v) for k, v in out.items()}
        else:
            out.update({k: float(v) for k, v in zip(METRIC_KEYS, ev.stats[: len(METRIC_KEYS)], strict=True)})
    out["n_images"] = len(eval_ids)
    return (out, ev, gt, eval_ids) if keep else (out,)
