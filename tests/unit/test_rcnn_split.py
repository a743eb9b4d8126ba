"""R-CNN FPN split networks: part2(part1(x)) must equal the unsplit torchvision
model exactly; the split point's shapes and the preprocessing record must match
what torchvision does. Random weights (pretrained=False), small inputs, CPU."""

from __future__ import annotations

import dataclasses
import os
import urllib.error

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import resize_boxes

from codec.vision import NetworkId, ResizeMode, get_network
from codec.vision.rcnn import (
    FPN_SPLIT_POINT,
    RcnnInputError,
    RcnnSplitNetwork,
    RcnnWeightsError,
    hub_checkpoint_path,
    load_rcnn,
)

# small network input: short side 96, long side <= 160 (CPU time)
SMALL = dict(
    min_size=96,
    max_size=160,
    box_score_thresh=0.0,  # random weights give ~uniform class scores; keep detections
    rpn_post_nms_top_n_test=50,
    box_detections_per_img=8,
)

VARIANTS = [
    ("fasterrcnn_resnet50_fpn", NetworkId.FASTER_RCNN_R50_FPN),
    ("fasterrcnn_resnet50_fpn_v2", NetworkId.FASTER_RCNN_R50_FPN_V2),
    ("maskrcnn_resnet50_fpn", NetworkId.MASK_RCNN_R50_FPN),
    ("maskrcnn_resnet50_fpn_v2", NetworkId.MASK_RCNN_R50_FPN_V2),
    ("keypointrcnn_resnet50_fpn", NetworkId.KEYPOINT_RCNN_R50_FPN),
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # these small convolutions are faster on one thread, and far faster when other
    # processes compete for the cores (OpenMP oversubscription)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _image(h: int = 150, w: int = 260, seed: int = 0) -> np.ndarray:
    """Smooth random RGB image (blocky noise upsampled), uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(coarse, 10, 0), 10, 1)[:h, :w])


def _random_net(name: str, seed: int = 0, **kw) -> RcnnSplitNetwork:
    torch.manual_seed(seed)
    return load_rcnn(name, pretrained=False, **{**SMALL, **kw})


def _reference(net: RcnnSplitNetwork, image: np.ndarray) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net.model([net.image_to_tensor(image)])[0]


def _split(net: RcnnSplitNetwork, image: np.ndarray):
    x, meta = net.preprocess(image)
    feats = net.part1(x, "fpn")
    return x, meta, feats


@pytest.fixture(scope="module")
def faster() -> RcnnSplitNetwork:
    return _random_net("fasterrcnn_resnet50_fpn")


@pytest.fixture(scope="module")
def default_sizes() -> RcnnSplitNetwork:
    # the real sizes: short side 800, long side <= 1333 (only its transform is run)
    torch.manual_seed(0)
    return load_rcnn("fasterrcnn_resnet50_fpn", pretrained=False)


@pytest.mark.parametrize("name,network_id", VARIANTS)
def test_split_equals_unsplit_model_exactly(name: str, network_id: NetworkId) -> None:
    net = _random_net(name)
    assert net.network_id == network_id
    assert net.default_split == "fpn"
    image = _image()
    ref = _reference(net, image)
    assert ref["boxes"].shape[0] > 0, "random weights must still give detections for a meaningful test"

    _, meta, feats = _split(net, image)
    out = net.part2_raw(feats, "fpn", meta)
    assert set(out) == set(ref)
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
    if "masks" in ref:
        assert ref["masks"].shape[-2:] == (150, 260)
    if "keypoints" in ref:
        assert ref["keypoints"].shape[1:] == (17, 3)

    det = net.part2(feats, "fpn", meta)
    assert len(det) == ref["boxes"].shape[0]
    assert np.array_equal(det.boxes, ref["boxes"].numpy())
    assert np.array_equal(det.scores, ref["scores"].numpy())
    assert np.array_equal(det.category_ids, ref["labels"].numpy())
    assert det.category_ids.min() >= 1 and det.category_ids.max() <= 90
    if "masks" in ref:
        assert np.array_equal(det.extra["masks"], ref["masks"][:, 0].numpy())
    if "keypoints" in ref:
        assert np.array_equal(det.extra["keypoints"], ref["keypoints"].numpy())
        assert np.array_equal(det.extra["keypoints_scores"], ref["keypoints_scores"].numpy())
    # boxes are in original-image pixels
    assert det.boxes[:, [0, 2]].max() <= 260 and det.boxes[:, [1, 3]].max() <= 150
    coco = det.to_coco(image_id=7)
    assert coco[0]["image_id"] == 7 and coco[0]["category_id"] == int(det.category_ids[0])


def test_features_match_split_point_shapes_and_strides(faster: RcnnSplitNetwork) -> None:
    # 150x260 -> scale 160/260 (long side bound) -> resized 92x160 -> padded 96x160;
    # the pool level needs ceil division: 96/64 = 1.5, 160/64 = 2.5
    x, meta, feats = _split(faster, _image())
    assert RcnnSplitNetwork.resized_size(meta) == (92, 160)
    assert tuple(x.shape) == (1, 3, 96, 160)
    assert (meta.input_h, meta.input_w) == (96, 160)
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    expected = FPN_SPLIT_POINT.shapes(meta.input_h, meta.input_w)
    assert expected == {
        "0": (256, 24, 40),
        "1": (256, 12, 20),
        "2": (256, 6, 10),
        "3": (256, 3, 5),
        "pool": (256, 2, 3),
    }
    for name, t in feats.items():
        assert t.dtype == torch.float32
        assert tuple(t.shape) == (1, *expected[name])
    assert [s.stride for s in FPN_SPLIT_POINT.scales] == [4, 8, 16, 32, 64]
    assert all(s.channels == 256 for s in FPN_SPLIT_POINT.scales)


@pytest.mark.parametrize("orig_hw", [(480, 640), (427, 640), (640, 427), (333, 500), (375, 500), (100, 3000), (7, 5)])
def test_preprocessing_record_matches_torchvision_transform(
    orig_hw: tuple[int, int], default_sizes: RcnnSplitNetwork
) -> None:
    net = default_sizes
    h, w = orig_hw
    image = _image(h, w, seed=h + w)
    x, meta = net.preprocess(image)
    with torch.no_grad():
        image_list, _ = net.model.transform([net.image_to_tensor(image)])
    resized = tuple(image_list.image_sizes[0])
    assert torch.equal(x, image_list.tensors)
    assert meta.resize_mode == ResizeMode.SHORT_SIDE
    assert (meta.orig_h, meta.orig_w) == (h, w)
    assert (meta.input_h, meta.input_w) == tuple(x.shape[-2:])
    assert meta.input_h % 32 == 0 and meta.input_w % 32 == 0
    assert 0 <= meta.input_h - resized[0] < 32 and 0 <= meta.input_w - resized[1] < 32
    assert (meta.pad_x, meta.pad_y) == (0, 0)
    assert min(resized) == 800 or max(resized) <= 1333
    # the decoder derives the resized size from the record alone, also after a
    # float32 round trip of the scales (as a container may store them)
    assert RcnnSplitNetwork.resized_size(meta) == resized
    meta32 = dataclasses.replace(meta, scale_x=float(np.float32(meta.scale_x)), scale_y=float(np.float32(meta.scale_y)))
    assert RcnnSplitNetwork.resized_size(meta32) == resized
    # boxes in resized-image pixels map back like torchvision's postprocess
    rng = np.random.default_rng(1)
    rh, rw = resized
    pts = rng.uniform(0, 1, (50, 4)) * np.array([rw, rh, rw, rh])
    boxes = np.concatenate([np.minimum(pts[:, :2], pts[:, 2:]), np.maximum(pts[:, :2], pts[:, 2:])], 1)
    boxes = np.concatenate([boxes, [[0, 0, rw, rh]]]).astype(np.float32)
    tv = resize_boxes(torch.from_numpy(boxes), [rh, rw], [h, w]).numpy()
    ours = meta.boxes_to_original(boxes)
    np.testing.assert_allclose(ours, tv, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(ours[-1], [0, 0, w, h], atol=1e-9)


def test_float32_record_gives_identical_detections(faster: RcnnSplitNetwork) -> None:
    image = _image(97, 181, seed=3)
    ref = _reference(faster, image)
    _, meta, feats = _split(faster, image)
    meta32 = dataclasses.replace(meta, scale_x=float(np.float32(meta.scale_x)), scale_y=float(np.float32(meta.scale_y)))
    out = faster.part2_raw(feats, "fpn", meta32)
    assert ref["boxes"].shape[0] > 0
    for key in ref:
        assert torch.equal(out[key], ref[key]), key


def test_part2_rejects_bad_features_and_split(faster: RcnnSplitNetwork) -> None:
    x, meta, feats = _split(faster, _image())
    missing = {k: v for k, v in feats.items() if k != "pool"}
    with pytest.raises(RcnnInputError, match="scales"):
        faster.part2(missing, "fpn", meta)
    wrong = dict(feats)
    wrong["1"] = wrong["1"][:, :, :-1]
    with pytest.raises(RcnnInputError, match="'1' has shape"):
        faster.part2(wrong, "fpn", meta)
    with pytest.raises(RcnnInputError, match="split point"):
        faster.part1(x, "neck")
    with pytest.raises(RcnnInputError, match="split point"):
        faster.part2(feats, "backbone", meta)
    bad_meta = dataclasses.replace(meta, scale_x=meta.scale_x * 2)
    with pytest.raises(RcnnInputError, match="resized size"):
        faster.part2(feats, "fpn", bad_meta)
    with pytest.raises(RcnnInputError, match="RGB uint8"):
        faster.preprocess(_image().astype(np.float32))


def test_weights_sha256_tracks_the_weights(faster: RcnnSplitNetwork) -> None:
    sha = faster.weights_sha256()
    assert len(sha) == 64 and int(sha, 16) >= 0
    same_seed = _random_net("fasterrcnn_resnet50_fpn", seed=0)
    assert same_seed.weights_sha256() == sha
    other_seed = _random_net("fasterrcnn_resnet50_fpn", seed=1)
    assert other_seed.weights_sha256() != sha


def test_local_weights_file_and_hub_cache_file_give_the_same_network(
    tmp_path, monkeypatch, faster: RcnnSplitNetwork
) -> None:
    path = tmp_path / "faster.pth"
    torch.save(faster.model.state_dict(), path)
    from_file = load_rcnn("fasterrcnn_resnet50_fpn", weights=str(path), **SMALL)
    assert from_file.weights_sha256() == faster.weights_sha256()

    # the file put where torchvision's weights mechanism looks: no download needed
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cached = hub_checkpoint_path("fasterrcnn_resnet50_fpn")
    os.makedirs(os.path.dirname(cached))
    os.link(path, cached)
    from_hub = load_rcnn("fasterrcnn_resnet50_fpn", **SMALL)
    assert from_hub.weights_sha256() == faster.weights_sha256()

    # torchvision's pretrained builder (FrozenBatchNorm, eps 0) and the local-file
    # path build the same network: identical outputs
    image = _image(seed=5)
    ref = _reference(faster, image)
    for net in (from_file, from_hub):
        _, meta, feats = _split(net, image)
        out = net.part2_raw(feats, "fpn", meta)
        for key in ref:
            assert torch.equal(out[key], ref[key]), key


def test_bad_local_weights_raise_clear_error(tmp_path) -> None:
    with pytest.raises(RcnnWeightsError, match="not found"):
        load_rcnn("fasterrcnn_resnet50_fpn", weights=str(tmp_path / "nope.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(RcnnWeightsError, match="does not fit"):
        load_rcnn("fasterrcnn_resnet50_fpn", weights=str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RcnnWeightsError, match="cannot read"):
        load_rcnn("fasterrcnn_resnet50_fpn", weights=str(garbage))


def test_missing_weights_without_network_give_clear_error(tmp_path, monkeypatch) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = hub_checkpoint_path("maskrcnn_resnet50_fpn")
    assert expected.startswith(str(hub / "checkpoints"))
    with pytest.raises(RcnnWeightsError) as info:
        load_rcnn("maskrcnn_resnet50_fpn")
    msg = str(info.value)
    assert len(calls) == 1 and calls[0].endswith(os.path.basename(expected))
    assert "--weights PATH" in msg
    assert os.path.basename(expected) in msg and str(hub / "checkpoints") in msg
    assert "name resolution" in msg
    assert "\n" not in msg


def test_get_network_builds_rcnn() -> None:
    torch.manual_seed(0)
    net = get_network("keypointrcnn_resnet50_fpn", pretrained=False, **SMALL)
    assert isinstance(net, RcnnSplitNetwork)
    assert net.name == "keypointrcnn_resnet50_fpn"
    assert net.network_id == NetworkId.KEYPOINT_RCNN_R50_FPN
    assert net.split_points["fpn"].split_id == 1
    with pytest.raises(ValueError, match="unknown R-CNN network"):
        load_rcnn("retinanet_resnet50_fpn", pretrained=False)


def test_bench_split_tool_times_an_rcnn(tmp_path, capsys) -> None:
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location(
        "bench_split", os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench_split.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_net_args(["min_size=64", "box_score_thresh=0.5", "fixed_size=[64, 96]"]) == {
        "min_size": 64,
        "box_score_thresh": 0.5,
        "fixed_size": [64, 96],
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench.parse_net_args(["min_size"])

    image = tmp_path / "im.png"
    Image.fromarray(_image(64, 128)).save(image)
    # 64x128 -> scale min(64/64, 96/128) = 0.75 -> 48x96 -> padded 64x96
    argv = ["--network", "fasterrcnn_resnet50_fpn", "--random-weights", "--image", str(image),
            "--net-arg", "min_size=64", "--net-arg", "max_size=96", "--runs", "2", "--warmup", "1",
            "--threads", "1"]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "-> network input 96x64" in out
    assert "features: 0 (256, 16, 24), 1 (256, 8, 12), 2 (256, 4, 6), 3 (256, 2, 3), pool (256, 1, 2)" in out
    assert "torch threads 1  runs 2 after 1 warm-up" in out
    part1_ms = float(out.split("NN part 1")[1].split("ms")[0])
    part2_ms = float(out.split("NN part 2")[1].split("ms")[0])
    assert part1_ms > 0 and part2_ms > 0


def test_offline_forbids_torchvision_downloads(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("FCM_OFFLINE=1 must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("FCM_OFFLINE", "1")
    with pytest.raises(RcnnWeightsError, match="FCM_OFFLINE=1 forbids downloading") as info:
        load_rcnn("fasterrcnn_resnet50_fpn")
    assert "--weights PATH" in str(info.value) and "\n" not in str(info.value)
