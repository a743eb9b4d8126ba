"""The Python API (codec.api, at the package top level): the README's examples run as
written, with the real NanoDet; the calls' options and errors; importing codec stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import codec
from codec import api
from codec.bitstream import NetworkId
from codec.errors import EncodeError, InputError

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_api_blocks() -> list[str]:
    """The ```python blocks of the README's "API" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## API\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_has_api_examples():
    blocks = readme_api_blocks()
    assert len(blocks) >= 2 and all("import codec" in b for b in blocks)
    assert all(f"codec.{name}(" in "".join(blocks) for name in ("encode", "decode", "run_task", "load_network"))


@pytest.mark.needs_assets
@pytest.mark.needs_ffmpeg
def test_the_readme_api_examples_run(nanodet, assets, tmp_path, monkeypatch, capsys):
    src = assets / "coco/val2017-103/images"
    monkeypatch.chdir(tmp_path)
    Path("000000001000.jpg").symlink_to(src / "000000001000.jpg")
    Path("images").mkdir()
    for name in sorted(p.name for p in src.iterdir())[1:3]:
        (Path("images") / name).symlink_to(src / name)
    monkeypatch.setitem(api._NETWORKS, ("nanodet", None), nanodet)  # the session's NanoDet, loaded once
    namespace: dict = {}
    for block in readme_api_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert namespace["enc"].bitstream[:4] == b"FCMB"
    assert "image id 1000" in out and "{'p3': (1, 128, 52, 52), 'p4': (1, 128, 26, 26), 'p5': (1, 128, 13, 13)}" in out
    assert namespace["results"] and {r["image_id"] for r in namespace["results"]} == {1000}
    assert "anchor parameter qp must be an integer in 0..63, got 70" in out
    coco = namespace["coco"]
    assert {r["image_id"] for r in coco} == {int(p.stem) for p in Path("images").iterdir()}
    assert sorted(p.name for p in Path("out").iterdir()) == sorted(p.stem + ".bin" for p in Path("images").iterdir())


class ToyNet:
    """A deterministic split network without weights, under a network id without rows in table 8.2."""

    name = "toy"
    network_id = NetworkId.CENTERNET_MBV3
    default_split = "neck"

    def __init__(self):
        from codec.vision.base import ScaleInfo, SplitPoint

        self.split_points = {"neck": SplitPoint("neck", 1, (ScaleInfo("p3", 3, 8),))}

    def weights_sha256(self) -> str:
        return "ab" * 32

    def preprocess(self, image):
        import torch

        from codec.vision.base import Preprocessing, ResizeMode

        h, w = image.shape[:2]
        x = torch.from_numpy(np.asarray(Image.fromarray(image).resize((16, 16)), dtype=np.float32) / 255)
        return x.permute(2, 0, 1)[None], Preprocessing(w, h, 16, 16, ResizeMode.STRETCH, 16 / w, 16 / h)

    def part1(self, x, split):
        import torch

        return {"p3": torch.nn.functional.avg_pool2d(x, 8)}

    def part2(self, features, split, meta):
        from codec.vision.base import Detections

        m = float(features["p3"].mean())
        return Detections(np.array([[1.0, 1.0, 1 + 10 * m, 1 + 10 * m]]), np.array([m]), np.array([1]))


def test_encode_decode_run_task_with_an_array_and_a_file(tmp_path):
    net = ToyNet()
    image = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    enc = codec.encode(image, network=net, mode="bypass", bypass_dtype="float32", image_id=7)
    assert enc.image_info.image_id == 7 and enc.image_info.source_name is None
    assert enc.bpp == pytest.approx(8 * len(enc.bitstream) / (32 * 24))
    dec = codec.decode(enc.bitstream, network=net)
    assert dec.image_id == 7 and np.array_equal(dec.features["p3"].numpy(), enc.features["p3"].numpy())
    dets = codec.run_task(enc.bitstream, network=net)
    assert dets.to_coco(dec.image_id)[0]["image_id"] == 7
    # an image file: its name gives the image id and the source name; the same features as the array
    path = tmp_path / "000000000042.png"
    Image.fromarray(image).save(path)
    from_file = codec.encode(path, network=net, mode="bypass", params={"bypass_dtype": "float32"})
    assert (from_file.image_info.image_id, from_file.image_info.source_name) == (42, "000000000042.png")
    assert codec.decode(from_file.bitstream).features["p3"].numpy().tobytes() == dec.features["p3"].numpy().tobytes()
    plain = codec.encode(path, network=net, mode="bypass", bypass_dtype="float32", image_info=False)
    assert plain.image_info is None and len(from_file.bitstream) - len(plain.bitstream) == 11 + 11 + 16
    (tmp_path / "x.bin").write_bytes(from_file.bitstream)
    assert codec.decode(tmp_path / "x.bin").image_id == 42


def test_bad_calls_fail_before_anything_loads(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a network was loaded")

    monkeypatch.setattr(api, "load_network", no_network)
    with pytest.raises(EncodeError, match="qp must be an integer in 0..63, got 70"):
        codec.encode(tmp_path / "missing.jpg", mode="anchor", qp=70)
    with pytest.raises(EncodeError, match="mode anchor has no parameter phi"):
        codec.encode(tmp_path / "missing.jpg", phi=2)
    with pytest.raises(EncodeError, match="given twice"):
        codec.encode(tmp_path / "missing.jpg", params={"qp": 30}, qp=31)
    with pytest.raises(InputError, match="image not found"):
        codec.encode(tmp_path / "missing.jpg", qp=30)
    with pytest.raises(InputError, match="bitstream file not found"):
        codec.decode(tmp_path / "missing.bin")


def test_image_id_from_name_is_one_explicit_rule():
    rule = codec.image_id_from_name
    assert rule("val2017/000000001000.jpg") == 1000 and rule("000000001000_qp37.bin") == 1000
    assert rule("000000001000.jpg.bin") == 1000 and rule("7") == 7
    for name in ("qp37_000000001000.bin", "img2.png", "2024-05-01.jpg", ".bin", "photo.jpg"):
        assert rule(name) is None, name


def test_networks_load_once_per_name_and_weights(monkeypatch):
    from codec import vision

    built = []
    monkeypatch.setattr(api, "_NETWORKS", {})
    monkeypatch.setattr(vision, "get_network", lambda name, weights=None: built.append((name, weights)) or object())
    a = codec.load_network("nanodet")
    assert codec.load_network("nanodet") is a and codec.load_network("nanodet", "w.pt") is not a
    assert built == [("nanodet", None), ("nanodet", "w.pt")]
    assert api.DEFAULT_NETWORK == vision.DEFAULT_NETWORK


def test_public_functions_are_documented():
    for name in codec.__all__:
        if name != "__version__":
            assert (getattr(codec, name).__doc__ or "").strip(), name
    for name in ("encode", "decode", "run_task"):
        doc = getattr(codec, name).__doc__
        assert "Args:" in doc and "Returns:" in doc and "Example::" in doc, name


def test_importing_codec_loads_neither_torch_nor_numpy():
    code = "import sys, codec; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_network_tasks_match_the_networks():
    from codec.vision import NETWORK_TASKS, available_networks, nanodet, rcnn, yolo11_pose, yolov5_seg

    assert set(NETWORK_TASKS) == set(available_networks())
    assert NETWORK_TASKS["nanodet"] == nanodet.NanoDet.tasks == ("bbox",)
    assert NETWORK_TASKS["yolov5s_seg"] == yolov5_seg.YoloV5Seg.tasks == ("bbox", "segm")
    assert NETWORK_TASKS["yolo11n_pose"] == yolo11_pose.Yolo11Pose.tasks == ("bbox", "keypoints")
    assert all(v == rcnn.RcnnSplitNetwork.tasks == ("bbox",) for k, v in NETWORK_TASKS.items() if "rcnn" in k)


def test_split_point_names_match_the_networks():
    from codec.vision import SPLIT_POINT_NAMES, available_networks, check_split_point, nanodet, yolo11_pose, yolov5_seg
    from codec.vision.rcnn import FPN_SPLIT

    assert SPLIT_POINT_NAMES["nanodet"] == tuple(nanodet.SPLIT_POINTS)
    assert SPLIT_POINT_NAMES["yolov5s_seg"] == tuple(yolov5_seg.SPLIT_POINTS)
    assert SPLIT_POINT_NAMES["yolo11n_pose"] == tuple(yolo11_pose.SPLIT_POINTS)
    assert set(SPLIT_POINT_NAMES) == set(available_networks())
    assert all(v == (FPN_SPLIT,) for k, v in SPLIT_POINT_NAMES.items() if "rcnn" in k)
    check_split_point("nanodet", "backbone")
    with pytest.raises(ValueError, match="has no split point 'fpn'; choose one of neck, backbone"):
        check_split_point("nanodet", "fpn")
