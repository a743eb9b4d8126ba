"""evaluate_detections on real COCO val2017 annotations (a handful of images)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codec.files import assets_path
from ctc.coco_eval import METRIC_KEYS, CocoEvalError, evaluate_detections

ASSETS = assets_path()
ANNOTATIONS = ASSETS / "coco" / "val2017-103" / "annotations" / "instances_val2017_103.json"

pytestmark = [
    pytest.mark.needs_assets,
    pytest.mark.skipif(not ANNOTATIONS.is_file(), reason=f"COCO annotations not found at {ANNOTATIONS}"),
]

IMAGE_IDS = [1000, 1268, 1584, 1761, 2006]  # 57 boxes over many categories and all three sizes


@pytest.fixture(scope="module")
def dataset() -> dict:
    return json.loads(ANNOTATIONS.read_text())


@pytest.fixture(scope="module")
def gt_results(dataset) -> list[dict]:
    """Ground truth of IMAGE_IDS turned into detections with score 1.0."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in dataset["annotations"]
        if a["image_id"] in IMAGE_IDS
    ]


def test_ground_truth_as_results_gives_map_1(gt_results):
    assert len(gt_results) > 20
    out = evaluate_detections(gt_results, ANNOTATIONS, image_ids=IMAGE_IDS)
    for key in METRIC_KEYS:
        assert out[key] == pytest.approx(1.0), key
    assert out["n_images"] == len(IMAGE_IDS)


def test_shifted_boxes_lower_map_as_iou_predicts(gt_results):
    # Shifting every box right by 20 % of its width gives IoU = 0.8 / 1.2 = 2/3 for every box:
    # a true positive at IoU thresholds 0.50 ... 0.65 (4 of 10), a miss at 0.70 ... 0.95.
    shifted = [
        dict(r, bbox=[r["bbox"][0] + 0.2 * r["bbox"][2], r["bbox"][1], r["bbox"][2], r["bbox"][3]]) for r in gt_results
    ]
    out = evaluate_detections(shifted, ANNOTATIONS, image_ids=IMAGE_IDS)
    assert out["map"] == pytest.approx(0.4)
    assert out["map50"] == pytest.approx(1.0)
    assert out["map75"] == pytest.approx(0.0)


def test_category_mismatch_gives_zero(dataset, gt_results):
    present = {r["category_id"] for r in gt_results}
    absent = sorted({c["id"] for c in dataset["categories"]} - present)
    wrong = [dict(r, category_id=absent[0]) for r in gt_results]
    out = evaluate_detections(wrong, ANNOTATIONS, image_ids=IMAGE_IDS)
    for key in METRIC_KEYS:
        assert out[key] == 0.0, key


def test_default_is_all_images_of_the_file(dataset, gt_results):
    # Perfect on 5 images, nothing on the other 98: recall, and so AP, drops well below 1.
    out = evaluate_detections(gt_results, ANNOTATIONS)
    assert out["n_images"] == len(dataset["images"]) == 103
    assert 0.0 < out["map"] < 0.2


def test_image_ids_restrict_evaluation_and_drop_other_results(gt_results):
    first, rest = IMAGE_IDS[:2], IMAGE_IDS[2:]
    # results for all five images, but the rest are shifted (worse): restricted to the first two,
    # only their perfect results count.
    mixed = [
        r if r["image_id"] in first else dict(r, bbox=[r["bbox"][0] + 0.2 * r["bbox"][2], *r["bbox"][1:]])
        for r in gt_results
    ]
    assert evaluate_detections(mixed, ANNOTATIONS, image_ids=first)["map"] == pytest.approx(1.0)
    assert evaluate_detections(mixed, ANNOTATIONS, image_ids=rest)["map"] == pytest.approx(0.4)
    both = evaluate_detections(mixed, ANNOTATIONS, image_ids=IMAGE_IDS)["map"]
    assert 0.4 < both < 1.0


def test_missing_detections_lower_recall(gt_results):
    # Dropping every other box of the ground truth halves recall: AP must fall but stay > 0.
    half = gt_results[::2]
    out = evaluate_detections(half, ANNOTATIONS, image_ids=IMAGE_IDS)
    assert 0.2 < out["map"] < 0.9
    assert out["map"] == pytest.approx(out["map50"])  # the boxes that are there are exact


def test_empty_results_give_zeros():
    out = evaluate_detections([], ANNOTATIONS, image_ids=IMAGE_IDS)
    assert {k: out[k] for k in METRIC_KEYS} == {k: 0.0 for k in METRIC_KEYS}
    assert out["n_images"] == len(IMAGE_IDS)


def test_results_are_not_mutated(gt_results):
    before = json.dumps(gt_results)
    evaluate_detections(gt_results, ANNOTATIONS, image_ids=IMAGE_IDS)
    assert json.dumps(gt_results) == before


def test_evaluation_is_quiet(gt_results, capsys):
    evaluate_detections(gt_results, ANNOTATIONS, image_ids=IMAGE_IDS)
    assert capsys.readouterr().out == ""


def test_unknown_image_ids_are_rejected(gt_results):
    with pytest.raises(CocoEvalError, match="image ids not in"):
        evaluate_detections(gt_results, ANNOTATIONS, image_ids=[1000, 123456789])
    bad = [dict(gt_results[0], image_id=123456789)]
    with pytest.raises(CocoEvalError, match="results for image ids not in"):
        evaluate_detections(bad, ANNOTATIONS)


def test_unknown_category_id_is_rejected(gt_results):
    # 0 is a typical 0-based class index, not a COCO category id
    with pytest.raises(CocoEvalError, match=r"category ids not in .*\[0\]"):
        evaluate_detections([dict(gt_results[0], category_id=0)], ANNOTATIONS)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_id": 1000, "category_id": 1, "bbox": [0, 0, 10], "score": 0.5},
        {"image_id": 1000, "category_id": 1, "bbox": [0, 0, -1, 10], "score": 0.5},
        {"image_id": 1000, "category_id": 1, "bbox": [0, 0, 10, 10]},
    ],
    ids=["three-numbers", "negative-width", "no-score"],
)
def test_malformed_results_are_rejected(bad):
    with pytest.raises(CocoEvalError, match="result 0"):
        evaluate_detections([bad], ANNOTATIONS)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(CocoEvalError, match="annotation file not found"):
        evaluate_detections([], tmp_path / "missing.json")


# -- mask AP (iou_type="segm") on coco128, whose annotations have polygons and crowd RLEs ------

COCO128 = ASSETS / "coco" / "coco128" / "annotations" / "instances_train2017.json"
SEGM_IMAGE_IDS = [9, 25, 30, 34, 36, 42, 49, 61]


@pytest.fixture(scope="module")
def gt_mask_results() -> list[dict]:
    """Non-crowd ground truth of SEGM_IMAGE_IDS as results with RLE masks, score 1.0."""
    if not COCO128.is_file():
        pytest.skip(f"coco128 annotations not found at {COCO128}")
    from pycocotools.coco import COCO

    gt = COCO(str(COCO128))
    out = []
    for a in gt.loadAnns(gt.getAnnIds(imgIds=SEGM_IMAGE_IDS, iscrowd=False)):
        rle = gt.annToRLE(a)
        counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        seg = {"size": list(rle["size"]), "counts": counts}
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "score": 1.0,
                "segmentation": seg,
            }
        )
    return out


def test_ground_truth_masks_give_mask_map_1_and_boxes_alone_do_not(gt_mask_results):
    assert len(gt_mask_results) > 20
    segm = evaluate_detections(gt_mask_results, COCO128, SEGM_IMAGE_IDS, iou_type="segm")
    assert segm["map"] == pytest.approx(1.0) and segm["n_images"] == len(SEGM_IMAGE_IDS)
    assert evaluate_detections(gt_mask_results, COCO128, SEGM_IMAGE_IDS)["map"] == pytest.approx(1.0)
    # the box's own mask (a filled rectangle) is a poor instance mask
    from pycocotools import mask as mask_utils

    boxes_as_masks = []
    for r in gt_mask_results:
        h, w = r["segmentation"]["size"]
        rle = mask_utils.frPyObjects(np.array([r["bbox"]], dtype=np.float64), h, w)[0]
        boxes_as_masks.append(dict(r, segmentation={"size": [h, w], "counts": rle["counts"].decode()}))
    assert evaluate_detections(boxes_as_masks, COCO128, SEGM_IMAGE_IDS, iou_type="segm")["map"] < 0.6


def test_mask_ap_needs_masks_of_the_image_size(gt_mask_results):
    no_mask = [{k: v for k, v in r.items() if k != "segmentation"} for r in gt_mask_results]
    with pytest.raises(CocoEvalError, match="segmentation RLE"):
        evaluate_detections(no_mask, COCO128, SEGM_IMAGE_IDS, iou_type="segm")
    wrong = [dict(r, segmentation=dict(r["segmentation"], size=[10, 10])) for r in gt_mask_results]
    with pytest.raises(CocoEvalError, match="not the image's size"):
        evaluate_detections(wrong, COCO128, SEGM_IMAGE_IDS, iou_type="segm")
    with pytest.raises(CocoEvalError, match="iou_type"):
        evaluate_detections(gt_mask_results, COCO128, iou_type="mask")
    # val2017-103 has boxes only
    on_val = [dict(r, image_id=1000, category_id=1) for r in gt_mask_results[:1]]
    with pytest.raises(CocoEvalError, match="without a mask"):
        evaluate_detections(on_val, ANNOTATIONS, [1000], iou_type="segm")


def test_per_class_ap_averages_to_the_overall_map(dataset, gt_results):
    from ctc.coco_eval import evaluate_detections_per_class

    # half the classes found exactly, the others shifted (IoU 2/3) or missing
    cats = sorted({r["category_id"] for r in gt_results})
    found, shifted = set(cats[::3]), set(cats[1::3])
    results = [r for r in gt_results if r["category_id"] in found]
    results += [
        dict(r, bbox=[r["bbox"][0] + 0.2 * r["bbox"][2], *r["bbox"][1:]])
        for r in gt_results
        if r["category_id"] in shifted
    ]
    stats, rows = evaluate_detections_per_class(results, ANNOTATIONS, image_ids=IMAGE_IDS)
    assert stats == evaluate_detections(results, ANNOTATIONS, image_ids=IMAGE_IDS)
    by = {r["category_id"]: r for r in rows}
    assert set(by) == set(cats)  # the classes with ground truth in these images
    n_gt = {c: sum(1 for a in dataset["annotations"] if a["image_id"] in IMAGE_IDS and a["category_id"] == c)
            for c in cats}  # fmt: skip
    assert all(by[c]["n_gt"] == n_gt[c] for c in cats) and by[1]["name"] == "person"
    for c in cats:
        expected = (1.0, 1.0) if c in found else (0.4, 1.0) if c in shifted else (0.0, 0.0)
        assert (by[c]["map"], by[c]["map50"]) == pytest.approx(expected, abs=1e-9), c
    # COCO's overall figure is the mean over the classes
    assert stats["map"] == pytest.approx(sum(r["map"] for r in rows) / len(rows), abs=1e-12)
    assert stats["map50"] == pytest.approx(sum(r["map50"] for r in rows) / len(rows), abs=1e-12)
    _, empty = evaluate_detections_per_class([], ANNOTATIONS, image_ids=IMAGE_IDS)
    assert len(empty) == len(cats) and all(r["map"] == r["map50"] == 0.0 for r in empty)


# -- keypoint AP (iou_type="keypoints") on train2017-kp130's person keypoints -----------------

KP130 = ASSETS / "coco" / "train2017-kp130" / "annotations" / "person_keypoints_train2017_kp130.json"


@pytest.fixture(scope="module")
def gt_keypoint_results() -> list[dict]:
    """Non-crowd person annotations with keypoints as results (v -> 1.0), score 1.0."""
    if not KP130.is_file():
        pytest.skip(f"train2017-kp130 annotations not found at {KP130}")
    data = json.loads(KP130.read_text())
    out = []
    for a in data["annotations"]:
        if a["iscrowd"] or a["num_keypoints"] == 0:
            continue
        kp = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        kp[:, 2] = 1.0
        out.append({"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0,
                    "keypoints": kp.reshape(-1).tolist()})  # fmt: skip
    return out


def test_ground_truth_keypoints_give_keypoint_map_1_and_moved_ones_do_not(gt_keypoint_results):
    ids = sorted({r["image_id"] for r in gt_keypoint_results})
    assert len(gt_keypoint_results) > 100 and len(ids) > 40
    kp = evaluate_detections(gt_keypoint_results, KP130, ids, iou_type="keypoints")
    assert kp["map"] == pytest.approx(1.0) and kp["map50"] == pytest.approx(1.0)
    assert kp["map_small"] == -1.0 and kp["n_images"] == len(ids)  # COCO's keypoint AP has no small range
    # every keypoint 8 px off along x (unlabelled keypoints, at 0, 0 there, are not scored)
    moved = []
    for r in gt_keypoint_results:
        k = np.asarray(r["keypoints"]).reshape(17, 3)
        k[:, 0] += 8.0
        moved.append(dict(r, keypoints=k.reshape(-1).tolist()))
    moved_ap = evaluate_detections(moved, KP130, ids, iou_type="keypoints")["map"]
    assert 0.2 < moved_ap < 0.95
    # the boxes did not move: box AP (over every person, with keypoints or not) is unaffected
    box_ap = evaluate_detections(gt_keypoint_results, KP130, ids)["map"]
    assert evaluate_detections(moved, KP130, ids)["map"] == box_ap < 1.0


def test_keypoint_ap_needs_keypoints_of_the_category(gt_keypoint_results):
    ids = sorted({r["image_id"] for r in gt_keypoint_results})
    no_kp = [{k: v for k, v in r.items() if k != "keypoints"} for r in gt_keypoint_results]
    with pytest.raises(CocoEvalError, match="keypoint AP needs keypoints"):
        evaluate_detections(no_kp, KP130, ids, iou_type="keypoints")
    short = [dict(r, keypoints=r["keypoints"][:48]) for r in gt_keypoint_results]
    with pytest.raises(CocoEvalError, match="need 17 keypoints, got 16"):
        evaluate_detections(short, KP130, ids, iou_type="keypoints")
    with pytest.raises(CocoEvalError, match="three per keypoint"):
        evaluate_detections([dict(gt_keypoint_results[0], keypoints=[1.0, 2.0])], KP130, ids, iou_type="keypoints")
    with pytest.raises(CocoEvalError, match="no keypoint annotations"):
        evaluate_detections([], ANNOTATIONS, IMAGE_IDS, iou_type="keypoints")
