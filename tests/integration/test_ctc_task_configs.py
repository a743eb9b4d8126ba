"""End to end, one test per task: the bundled coco128-seg (YOLOv5s-seg, mask AP) and kp130-pose
(YOLO11n-pose, keypoint AP) configs on 1 image with 4 rate points per anchor (the cheapest, at
vvenc's faster preset), through `fcm_ctc run`: real network, real VVC, real container, AP through
pycocotools. Skipped, saying why, where the network's weights cannot be found or fetched."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from codec.files import assets_path
from ctc.cli import main
from ctc.coco_eval import evaluate_detections

REPO = Path(__file__).resolve().parents[2]
ASSETS = assets_path()

pytestmark = [pytest.mark.needs_ffmpeg, pytest.mark.needs_assets]


def _vvc_available() -> bool:
    try:
        from codec.inner.vvc import ffmpeg_supports_vvc

        return ffmpeg_supports_vvc()
    except Exception:
        return False


def _one_image_config(tmp_path: Path, name: str) -> tuple[Path, dict]:
    data = yaml.safe_load((REPO / "ctc" / "configs" / f"{name}.yaml").read_text())
    data["dataset"]["limit"] = 1
    for c in data["codecs"]:
        if c["name"] in ("image_anchor", "feature_anchor"):
            c["values"] = c["values"][:4]  # the 4 lowest rates: a BD curve, the fewest encodes
            c["options"]["preset"] = "faster"
        if c["type"] == "learned_e2e":
            c["values"] = c["values"][:4]
    cfg = tmp_path / f"{name}-1.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg, data


def _check_task_run(tmp_path: Path, capsys, name: str, network, task: str, label: str) -> dict:
    cfg, data = _one_image_config(tmp_path, name)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    learned = [c["name"] for c in data["codecs"] if c["type"] == "learned_e2e"]
    n_jobs = 11 + 4 * len(learned)  # 4 + 4 anchor points, 2 bypass, uncompressed, 4 per learned codec
    assert f"1 images, {n_jobs} jobs: 0 cached, {n_jobs} computed" in printed
    primary = data["metric"]["primary"]
    assert f"BD-rate vs anchors, {label}" in printed

    rows = {(r["codec"], r["point"]): r for r in csv.DictReader((out / "summary.csv").open())}
    assert len(rows) == n_jobs
    for r in rows.values():
        for m in (f"{task}_map50", f"{task}_map", "map50", "map"):
            assert 0.0 <= float(r[m]) <= 1.0, (m, r)
        assert float(r[f"{task}_map"]) <= float(r[f"{task}_map50"])

    # the uncompressed line is the network's own figure on this image, through pycocotools
    from ctc.runner import load_rgb, select_images

    ds = yaml.safe_load(cfg.read_text())["dataset"]
    images = ds["images"].replace("${assets}", str(ASSETS))
    annotations = ds["annotations"].replace("${assets}", str(ASSETS))
    (item,) = select_images(images, annotations, limit=1)
    x, meta = network.preprocess(load_rgb(item.path))
    dets = network.part2(network.part1(x, "neck"), "neck", meta).to_coco(item.image_id)
    direct = evaluate_detections(dets, annotations, [item.image_id], iou_type=task)
    ref = rows[("uncompressed", "ref")]
    assert float(ref[f"{task}_map"]) == pytest.approx(direct["map"], abs=1e-6)
    assert float(ref[f"{task}_map50"]) == pytest.approx(direct["map50"], abs=1e-6)
    assert float(ref[f"{task}_map"]) > 0.2  # a task the network does well on this image
    # lossless float32 bypass: the same detections, the same figures
    for m in (f"{task}_map", f"{task}_map50", "map", "map50"):
        assert rows[("bypass", "float32")][m] == ref[m]
    assert float(rows[("feature_anchor", "qp35")]["bpp"]) > float(rows[("feature_anchor", "qp44")]["bpp"])

    # BD-rate and near-lossless rates per task metric, the primary first in the printed table
    bd = list(csv.DictReader((out / "bd_rate.csv").open()))
    assert {r["metric"] for r in bd} == set(data["metric"]["report"])
    assert {(r["codec"], r["anchor"]) for r in bd if r["metric"] == primary} == {
        ("feature_anchor", "image_anchor"),
        ("image_anchor", "feature_anchor"),
        *((c, a) for c in learned for a in ("image_anchor", "feature_anchor")),
    }
    for c in learned:  # the learned codec's rate grows with its quality index
        bpps = [float(rows[(c, f"phi{phi}")]["bpp"]) for phi in range(4)]
        assert bpps == sorted(bpps) and bpps[0] > 0, bpps
    for r in bd:  # a figure, or the reason there is none
        assert r["bd_rate_pchip"] not in ("", "nan") or r["note"]
    nl = list(csv.DictReader((out / "near_lossless.csv").open()))
    assert {r["metric"] for r in nl} == set(data["metric"]["report"])
    assert {float(r["reference_map"]) for r in nl if r["metric"] == f"{task}_map"} == {float(ref[f"{task}_map"])}
    cttc = list(csv.DictReader((out / "cttc" / "feature_anchor.csv").open()))
    end = sorted(float(r["end_accuracy"]) for r in cttc)  # the primary metric, in %
    assert end == pytest.approx(sorted(100 * float(r[primary]) for k, r in rows.items() if k[0] == "feature_anchor"))
    html = (out / "report.html").read_text()
    assert label in html
    tables = capsys.readouterr().out
    assert main(["tables", str(out)]) == 0
    tables = capsys.readouterr().out
    assert f"{label} (%)" in tables
    point_dets = json.loads((out / "detections" / "feature_anchor" / "qp35.json").read_text())

    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert f"{n_jobs} jobs: {n_jobs} cached, 0 computed" in capsys.readouterr().out
    return {"rows": rows, "detections": point_dets}


@pytest.mark.skipif(not (ASSETS / "coco" / "coco128").is_dir(), reason=f"assets not found at {ASSETS}")
@pytest.mark.skipif(not _vvc_available(), reason="ffmpeg with libvvenc and the vvc decoder not available")
def test_segmentation_config_end_to_end(tmp_path: Path, capsys, yolov5_seg) -> None:
    got = _check_task_run(tmp_path, capsys, "coco128-seg", yolov5_seg, "segm", "mask mAP@0.5")
    dets = got["detections"]
    assert dets and all(set(d["segmentation"]) == {"size", "counts"} for d in dets)


@pytest.mark.skipif(
    not (ASSETS / "coco" / "train2017-kp130").is_dir(), reason=f"train2017-kp130 not found under {ASSETS}"
)
@pytest.mark.skipif(not _vvc_available(), reason="ffmpeg with libvvenc and the vvc decoder not available")
def test_keypoint_config_end_to_end(tmp_path: Path, capsys, yolo11n_pose) -> None:
    got = _check_task_run(tmp_path, capsys, "kp130-pose", yolo11n_pose, "keypoints", "keypoint mAP@[.5:.95]")
    dets = got["detections"]
    assert dets and all(len(d["keypoints"]) == 17 * 3 and d["category_id"] == 1 for d in dets)
