"""The CTC per task: metric names, the task check of a config, what a job result keeps of
masks and keypoints, mask and keypoint AP of a rate point, and a whole run of a fake
segmentation network (generated data, no assets, no ffmpeg)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_ctc_fakes import FAKE_CONFIG, FakeNet, make_dataset

from codec.vision.base import Detections
from ctc.config import load_config, parse_config
from ctc.errors import ConfigError, DatasetError, JobError
from ctc.metrics import aggregate_point
from ctc.runner import detections_to_coco, run_ctc, stored_detections
from ctc.tasks import METRICS, metric_label, metric_name, metric_task, tasks_of

# -- names ---------------------------------------------------------------------------------


def test_metric_names_keep_the_box_names_and_prefix_the_other_tasks() -> None:
    assert METRICS[:3] == ("map50", "map", "map75")  # the box figures, named as always
    assert set(METRICS[3:]) == {f"{t}_{k}" for t in ("segm", "keypoints") for k in ("map50", "map", "map75")}
    assert [metric_task(m) for m in ("map50", "map_small", "segm_map", "keypoints_map_large")] == [
        "bbox",
        "bbox",
        "segm",
        "keypoints",
    ]
    assert metric_name("bbox", "map_large") == "map_large" and metric_name("segm", "map50") == "segm_map50"
    assert metric_label("map50") == "mAP@0.5"  # unchanged in every existing output
    assert metric_label("segm_map50") == "mask mAP@0.5"
    assert metric_label("keypoints_map") == "keypoint mAP@[.5:.95]"
    assert tasks_of(["keypoints_map", "segm_map50"]) == ("bbox", "segm", "keypoints")
    assert tasks_of(["map50"]) == tasks_of([]) == ("bbox",)
    with pytest.raises(ValueError, match="unknown task"):
        metric_name("depth", "map")


# -- the config check ------------------------------------------------------------------------


def _config(network: str, primary: str, report: list[str] | None = None) -> dict:
    return {
        "dataset": {"images": "images", "annotations": "a.json"},
        "network": {"name": network},
        "metric": {"primary": primary, **({"report": report} if report else {})},
        "anchors": ["image_anchor"],
        "codecs": [{"name": "image_anchor", "type": "image_anchor", "values": [47, 42, 37, 32]}],
    }


def test_task_metrics_must_be_tasks_of_the_network(tmp_path: Path) -> None:
    cfg = parse_config(_config("yolov5s_seg", "segm_map50", ["segm_map", "map50"]), tmp_path, tmp_path)
    assert cfg.primary_metric == "segm_map50" and cfg.report_metrics == ("segm_map50", "segm_map", "map50")
    assert cfg.tasks == ("bbox", "segm")
    cfg = parse_config(_config("yolo11n_pose", "keypoints_map"), tmp_path, tmp_path)
    assert cfg.report_metrics == ("keypoints_map", "map50", "map") and cfg.tasks == ("bbox", "keypoints")
    # checked at load, from the networks' task table: nothing is built or run
    bad = [
        ("nanodet", "segm_map50", None, "'segm_map50' is segm AP, but network 'nanodet' returns no masks"),
        ("nanodet", "map50", ["keypoints_map"], "network 'nanodet' returns no keypoints"),
        ("yolov5s_seg", "keypoints_map50", None, "returns no keypoints .its tasks: bbox, segm"),
        ("yolo11n_pose", "map50", ["map", "segm_map"], "network 'yolo11n_pose' returns no masks"),
        ("maskrcnn_resnet50_fpn", "segm_map", None, "returns no masks"),
        ("yolov5s_seg", "mask_map50", None, "metric.primary: 'mask_map50' is not one of"),
        ("yolov5s_seg", "map50", ["segm_ap"], "metric.report: expected a list drawn from"),
    ]
    for network, primary, report, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_config(_config(network, primary, report), tmp_path, tmp_path)


def test_a_config_file_with_a_task_the_network_lacks_fails_at_load(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "ctc" / "configs" / "quick.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("primary: map50", "primary: segm_map50"))
    with pytest.raises(ConfigError, match="bad.yaml: metric: 'segm_map50' is segm AP, but network 'nanodet'"):
        load_config(bad, tmp_path)
    from ctc.cli import main

    assert main(["run", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()  # refused before anything was written or run


# -- what a job result keeps -----------------------------------------------------------------


def _detections(h: int = 40, w: int = 60, masks: bool = True, keypoints: bool = True) -> Detections:
    boxes = np.array([[2.0, 3.0, 20.5, 30.25], [30.0, 5.0, 58.0, 39.0]])
    m = np.zeros((2, h, w), bool)
    m[0, 3:30, 2:20] = True
    m[1, 5:39, 30:58] = True
    m[1, 10:20, 40:50] = False  # a hole: not a box
    kp = np.random.default_rng(0).random((2, 17, 3)) * [w, h, 1]
    return Detections(
        boxes, np.array([0.9, 0.4]), np.array([1, 62]), masks=m if masks else None, keypoints=kp if keypoints else None
    )


def test_results_keep_masks_and_keypoints_and_give_back_the_coco_results() -> None:
    det = _detections()
    stored = stored_detections(det, (40, 60))
    assert set(stored) == {"detections", "masks", "mask_size", "keypoints"}
    assert stored["mask_size"] == [40, 60] and all(isinstance(c, str) for c in stored["masks"])
    assert len(stored["keypoints"]) == 2 and len(stored["keypoints"][0]) == 51
    stored = json.loads(json.dumps(stored))  # as the cache holds it
    coco = detections_to_coco(stored, 7, ("bbox", "segm", "keypoints"))
    assert coco == det.to_coco(7)  # the very results fcm_dec --detections writes
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode(coco[1]["segmentation"])
    np.testing.assert_array_equal(decoded.astype(bool), det.masks[1])
    # box AP alone reads boxes only (the result's extra fields stay out of the box results)
    assert detections_to_coco(stored, 7) == [
        {k: v for k, v in d.items() if k not in ("segmentation", "keypoints")} for d in det.to_coco(7)
    ]


def test_a_boxes_only_result_is_as_before() -> None:
    det = _detections(masks=False, keypoints=False)
    stored = stored_detections(det, (40, 60))
    # the form every cached NanoDet result has: [x, y, w, h, score, category_id] per detection
    assert stored == {"detections": [[*d["bbox"], d["score"], d["category_id"]] for d in det.to_coco(0)]}
    assert set(stored_detections(_detections(keypoints=False), (40, 60))) == {"detections", "masks", "mask_size"}
    with pytest.raises(JobError, match="image 3: the result holds no masks"):
        detections_to_coco(stored, 3, ("bbox", "segm"))
    with pytest.raises(JobError, match="image 3: the result holds no keypoints"):
        detections_to_coco(stored, 3, ("bbox", "keypoints"))
    with pytest.raises(JobError, match="masks of size"):
        stored_detections(_detections(), (41, 60))


def test_job_keys_do_not_depend_on_the_tasks() -> None:
    """A job's key is what it was before tasks existed (a cached NanoDet result keeps its key;
    the tasks a config measures never enter it: a result holds everything the network returns)."""
    from ctc.config import NetworkConfig
    from ctc.runner import job_key

    key = job_key(
        "image_anchor",
        None,
        {"qp": 32, "preset": "faster"},
        "ff 7",
        NetworkConfig("nanodet", "neck"),
        "ab" * 32,
        "neck",
        "cd" * 32,
        {"codec": "0.1.0", "container": "2.1", "ctc": "2"},
        {"python": "3.11.0", "torch": "2.4.1"},
        1,
    )
    assert key == "2de993a99c22027fac7fdf413ec5fd94760b9d44d7e55d5eb70e935339d99294"  # as computed before


# -- mask and keypoint AP of a rate point ----------------------------------------------------


def _ground_truth(tmp_path: Path) -> Path:
    """Two 40x60 images; a person with 17 keypoints and a category-62 object with a polygon each."""
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i in (1, 2):
        images.append({"id": i, "file_name": f"{i}.png", "width": 60, "height": 40})
        kp = np.concatenate([rng.random((17, 2)) * [18, 27] + [2, 3], np.full((17, 1), 2)], 1)
        anns.append(
            {
                "id": 2 * i,
                "image_id": i,
                "category_id": 1,
                "bbox": [2, 3, 18, 27],
                "area": 18 * 27,
                "iscrowd": 0,
                "segmentation": [[2, 3, 20, 3, 20, 30, 2, 30]],
                "keypoints": kp.reshape(-1).tolist(),
                "num_keypoints": 17,
            }
        )
        anns.append(
            {
                "id": 2 * i + 1,
                "image_id": i,
                "category_id": 62,
                "bbox": [30, 5, 28, 34],
                "area": 28 * 34,
                "iscrowd": 0,
                "segmentation": [[30, 5, 58, 5, 58, 39, 30, 39]],
                "num_keypoints": 0,
                "keypoints": [0] * 51,
            }
        )
    cats = [{"id": 1, "name": "person", "keypoints": [f"k{k}" for k in range(17)]}, {"id": 62, "name": "chair"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _result(det: Detections) -> dict:
    return {
        "bits": 800,
        "pixels": 2400,
        "raw_feature_bits": 3200,
        **stored_detections(det, (40, 60)),
        "timings": dict.fromkeys(("nn_part1", "encode", "decode", "nn_part2"), 0.0),
        "macs": dict.fromkeys(("nn_part1", "encode", "decode", "nn_part2"), 0),
    }


def test_a_point_measures_mask_and_keypoint_ap_beside_box_ap(tmp_path: Path) -> None:
    gt = _ground_truth(tmp_path)
    anns = json.loads(gt.read_text())["annotations"]
    det = _detections(keypoints=False)
    seg = [(i, _result(det)) for i in (1, 2)]
    pr, dets = aggregate_point("c", "t", "p", None, None, seg, gt, ("bbox", "segm"))
    keys = ("map", "map50", "map75", "map_small", "map_medium", "map_large")
    assert set(pr.task_metrics) == {metric_name("segm", k) for k in keys}
    # the person's mask is its box exactly; the chair's has a hole of 100 of 952 pixels (IoU 0.895)
    assert pr.metric("segm_map50") == pytest.approx(1.0) and pr.metric("map50") == pytest.approx(1.0)
    assert 0.5 < pr.metric("segm_map") < pr.metric("map")
    assert "segmentation" in dets[0] and "keypoints" not in dets[0]
    # box AP only: the same boxes, no task figures, no key a boxes-only run would not have
    pr_box, dets_box = aggregate_point("c", "t", "p", None, None, seg, gt)
    assert pr_box.task_metrics == {} and pr_box.map == pr.map and "segmentation" not in dets_box[0]
    with pytest.raises(KeyError, match="'segm_map50' was not measured"):
        pr_box.metric("segm_map50")

    pose = []
    for i in (1, 2):  # one person, keypoints as the ground truth's (OKS 1), then shifted by 3 px
        person = next(a for a in anns if a["image_id"] == i and a["category_id"] == 1)
        kp = np.asarray(person["keypoints"], float).reshape(1, 17, 3) + [3.0 * (i == 2), 0, 0]
        pose.append((i, _result(Detections(det.boxes[:1], det.scores[:1], np.array([1]), keypoints=kp))))
    pr, dets = aggregate_point("c", "t", "p", None, None, pose, gt, ("bbox", "keypoints"))
    assert set(pr.task_metrics) == {metric_name("keypoints", k) for k in keys}
    assert pr.metric("keypoints_map50") == pytest.approx(1.0)
    assert 0.5 < pr.metric("keypoints_map") < 1.0  # the shifted person fails the strict OKS thresholds
    assert pr.metric("keypoints_map_small") == -1.0  # keypoint AP has no small range
    assert len(dets) == 2 and len(dets[0]["keypoints"]) == 51


# -- a whole run of a segmentation network ---------------------------------------------------


class FakeSegNet(FakeNet):
    """FakeNet with instance masks: each box filled, at the original image size."""

    name = "fake_seg"
    tasks = ("bbox", "segm")

    def part2(self, features, split, meta) -> Detections:
        det = super().part2(features, split, meta)
        h, w = meta.orig_h, meta.orig_w
        masks = np.zeros((len(det), h, w), bool)
        for m, (x1, y1, x2, y2) in zip(masks, det.boxes.round().astype(int)):
            m[max(y1, 0) : y2, max(x1, 0) : x2] = True
        return Detections(det.boxes, det.scores, det.category_ids, masks=masks)


def make_fake_seg_network(name: str = "fake_seg", weights: str | None = None) -> FakeSegNet:
    return FakeSegNet()


def _seg_dataset(root: Path) -> None:
    make_dataset(root, 3)
    ann = root / "instances.json"
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    ann.write_text(json.dumps(data))


def _seg_config(primary: str = "segm_map50", factory: str = "test_ctc_tasks:make_fake_seg_network") -> str:
    return FAKE_CONFIG.replace('factory: "test_ctc_fakes:make_fake_network"', f'factory: "{factory}"').replace(
        "anchors: [coarse]", f"metric: {{primary: {primary}, report: [segm_map50, segm_map, map50]}}\nanchors: [coarse]"
    )


def test_a_segmentation_run_reports_mask_ap_per_point_bd_and_near_lossless(tmp_path: Path) -> None:
    from ctc.report import build_report
    from ctc.tables import markdown_tables

    _seg_dataset(tmp_path)
    (tmp_path / "fake.yaml").write_text(_seg_config())
    cfg = load_config(tmp_path / "fake.yaml")
    run_ctc(cfg, tmp_path / "run")
    report = build_report(tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "summary.csv").open()))
    assert len(rows) == 9 and all(0 <= float(r["segm_map50"]) <= 1 and "keypoints_map" not in r for r in rows)
    assert list(rows[0]).index("segm_map50") > list(rows[0]).index("map_large")  # after the box columns
    ref = next(r for r in rows if r["codec"] == "uncompressed")
    # the fake's masks are its boxes: mask AP is box AP (up to the rounding of box to pixels)
    assert float(ref["segm_map50"]) == pytest.approx(float(ref["map50"]), abs=0.05)
    bd = list(csv.DictReader((tmp_path / "run" / "bd_rate.csv").open()))
    assert {r["metric"] for r in bd} == {"segm_map50", "segm_map", "map50"}
    nl = list(csv.DictReader((tmp_path / "run" / "near_lossless.csv").open()))
    assert {r["metric"] for r in nl} == {"segm_map50", "segm_map", "map50"}
    assert {float(r["reference_map"]) for r in nl if r["metric"] == "segm_map50"} == {float(ref["segm_map50"])}
    assert "BD-rate vs anchors, mask mAP@0.5" in report.bd_table()
    assert "mask mAP50" in report.table().splitlines()[0]
    text = markdown_tables(tmp_path / "run")
    assert "point: bpp / mAP@0.5 (%) / mAP@[.5:.95] (%) / mask mAP@0.5 (%) / mask mAP@[.5:.95] (%)" in text
    html = (tmp_path / "run" / "report.html").read_text()
    assert "mask mAP@0.5 vs bpp" in html and "COCO box mAP, mask mAP over the whole set" in html
    cttc = list(csv.DictReader((tmp_path / "run" / "cttc" / "coarse.csv").open()))
    coarse = [100 * float(r["segm_map50"]) for r in rows if r["codec"] == "coarse"]  # the primary metric
    assert sorted(float(r["end_accuracy"]) for r in cttc) == pytest.approx(sorted(coarse))
    dets = json.loads(next((tmp_path / "run" / "detections" / "coarse").glob("*.json")).read_text())
    assert dets and all("segmentation" in d for d in dets)


def test_a_factory_network_without_the_task_is_refused_before_any_job(tmp_path: Path) -> None:
    _seg_dataset(tmp_path)
    (tmp_path / "fake.yaml").write_text(_seg_config(factory="test_ctc_fakes:make_fake_network"))
    cfg = load_config(tmp_path / "fake.yaml")  # a factory network: its tasks are known once built
    with pytest.raises(ConfigError, match="network 'fake' returns no masks .its tasks: bbox"):
        run_ctc(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "cache.sqlite").exists()


def test_annotations_without_masks_are_refused_before_any_job(tmp_path: Path) -> None:
    make_dataset(tmp_path, 2)  # boxes only
    (tmp_path / "fake.yaml").write_text(_seg_config())
    with pytest.raises(DatasetError, match="instances.json: annotations without a mask"):
        run_ctc(load_config(tmp_path / "fake.yaml"), tmp_path / "run")
    assert not (tmp_path / "run" / "cache.sqlite").exists()
