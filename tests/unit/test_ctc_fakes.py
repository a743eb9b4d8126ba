"""A tiny split network, a tiny feature codec and a generated COCO dataset for the
CTC harness tests (imported by name, "test_ctc_fakes:...", also in worker
processes), plus tests of the fakes themselves."""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from codec.vision.base import Detections, NetworkId, Preprocessing, ResizeMode, ScaleInfo, SplitPoint
from ctc.codecs import CodecOutput, CodecType, raw_feature_bits
from ctc.complexity import count_stage
from ctc.errors import ConfigError

INPUT = 32
CATEGORIES = (1, 3, 62, 67)


class FakeNet:
    """Conv2d(3->4, 3x3, stride 2) as NN part 1; a Linear(4->4) over each cell as NN part 2,
    giving boxes around the strongest cells. Deterministic, CPU, a few kMACs."""

    name = "fake"
    network_id = NetworkId.CENTERNET_MBV3  # no rows in table 8.2: a fake may have any scales
    split_points = {"s": SplitPoint("s", 1, (ScaleInfo("f", 4, 2),))}
    default_split = "s"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            for p in (*self.conv.parameters(), *self.fc.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for p in (*self.conv.parameters(), *self.fc.parameters()):
            h.update(p.detach().numpy().tobytes())
        return h.hexdigest()

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Preprocessing]:
        h, w = image.shape[:2]
        small = np.array(Image.fromarray(image).resize((INPUT, INPUT), Image.BILINEAR))
        x = torch.from_numpy(small).permute(2, 0, 1).float().div(255).unsqueeze(0)
        return x, Preprocessing(w, h, INPUT, INPUT, ResizeMode.STRETCH, INPUT / w, INPUT / h)

    @torch.inference_mode()
    def part1(self, x: torch.Tensor, split: str) -> dict[str, torch.Tensor]:
        return {"f": self.conv(x)}

    @torch.inference_mode()
    def part2(self, features: dict[str, torch.Tensor], split: str, meta: Preprocessing) -> Detections:
        f = features["f"][0]  # (4, 16, 16)
        logits = self.fc(f.permute(1, 2, 0).reshape(-1, 4))  # (256, 4)
        scores, cls = torch.sigmoid(logits).max(1)
        top = scores.topk(10).indices
        cells = f.shape[-1]
        ys, xs = top // cells, top % cells
        cx, cy = (xs.float() + 0.5) * INPUT / cells, (ys.float() + 0.5) * INPUT / cells
        boxes = torch.stack([cx - 6, cy - 6, cx + 6, cy + 6], 1).clamp(0, INPUT).numpy()
        return Detections(
            meta.boxes_to_original(boxes), scores[top].double().numpy(), np.asarray(CATEGORIES)[cls[top].numpy()]
        )


def make_fake_network(name: str = "fake", weights: str | None = None) -> FakeNet:
    return FakeNet()


class FakeQuantCodec(CodecType):
    """Uniform scalar quantisation (step) + zlib: the counted bits are the compressed bytes."""

    type_name = "fake_quant"
    default_param = "step"

    def validate_params(self, params: dict) -> dict:
        step = params.get("step")
        if set(params) != {"step"} or not isinstance(step, (int, float)) or step <= 0:
            raise ConfigError(f"fake_quant needs step > 0, got {params!r}")
        return {"step": float(step)}

    def run(self, image, network, split, params) -> CodecOutput:
        t0 = time.perf_counter()
        with count_stage("nn_part1"):
            x, meta = network.preprocess(image)
            feats = network.part1(x, split)
        t1 = time.perf_counter()
        q = torch.round(feats["f"] / params["step"]).to(torch.int16)
        payload = zlib.compress(q.numpy().tobytes(), 9)
        t2 = time.perf_counter()
        rec = np.frombuffer(zlib.decompress(payload), dtype=np.int16).reshape(q.shape)
        dec = {"f": torch.from_numpy(rec.astype(np.float32) * params["step"])}
        t3 = time.perf_counter()
        with count_stage("nn_part2"):
            dets = network.part2(dec, split, meta)
        t4 = time.perf_counter()
        return CodecOutput(
            len(payload) * 8,
            dets,
            {"nn_part1": t1 - t0, "encode": t2 - t1, "decode": t3 - t2, "nn_part2": t4 - t3},
            raw_feature_bits(feats),
        )


def make_dataset(root: Path, n: int = 4) -> tuple[Path, Path]:
    """n generated images with coloured rectangles and their COCO instances json."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for i in range(n):
        w, h = 96 + 16 * i, 80
        arr = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        im = Image.fromarray(arr)
        draw = ImageDraw.Draw(im)
        for k in range(3):
            x0, y0 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
            bw, bh = int(rng.integers(12, 28)), int(rng.integers(12, 28))
            draw.rectangle([x0, y0, x0 + bw, y0 + bh], fill=tuple(int(c) for c in rng.integers(100, 255, 3)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + i,
                    "category_id": CATEGORIES[k],
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        name = f"{100 + i:012d}.png"
        im.save(images_dir / name)
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
    ann = root / "instances.json"
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES],
            }
        )
    )
    return images_dir, ann


FAKE_CONFIG = """
name: fake
dataset:
  name: fakeset
  images: images
  annotations: instances.json
network:
  name: fake
  factory: "test_ctc_fakes:make_fake_network"
anchors: [coarse]
codecs:
  - name: coarse
    type: "test_ctc_fakes:FakeQuantCodec"
    values: [0.8, 0.4, 0.2, 0.1]
  - name: fine
    type: "test_ctc_fakes:FakeQuantCodec"
    values: [0.3, 0.15, 0.03, 0.01]
  - name: uncompressed
    type: uncompressed
"""


def write_fake_config(root: Path, text: str = FAKE_CONFIG, n_images: int = 4) -> Path:
    make_dataset(root, n_images)
    path = root / "fake.yaml"
    path.write_text(text)
    return path


# -- tests of the fakes ------------------------------------------------------------------


def test_fake_network_is_deterministic_and_feature_dependent() -> None:
    net_a, net_b = FakeNet(), FakeNet()
    assert net_a.weights_sha256() == net_b.weights_sha256()
    image = (np.arange(80 * 96 * 3) % 251).astype(np.uint8).reshape(80, 96, 3)
    x, meta = net_a.preprocess(image)
    feats = net_a.part1(x, "s")
    assert feats["f"].shape == (1, 4, 16, 16)
    d1 = net_a.part2(feats, "s", meta)
    d2 = net_b.part2(net_b.part1(x, "s"), "s", meta)
    np.testing.assert_array_equal(d1.boxes, d2.boxes)
    assert len(d1) == 10 and set(d1.category_ids) <= set(CATEGORIES)
    assert (d1.boxes[:, 2] <= 96).all() and (d1.boxes[:, 3] <= 80).all()
    d3 = net_a.part2({"f": feats["f"] + 1.0}, "s", meta)
    assert not np.array_equal(d1.scores, d3.scores)


def test_fake_codec_counts_compressed_bytes() -> None:
    net = FakeNet()
    image = (np.arange(80 * 96 * 3) % 251).astype(np.uint8).reshape(80, 96, 3)
    codec = FakeQuantCodec()
    coarse = codec.run(image, net, "s", {"step": 0.8})
    fine = codec.run(image, net, "s", {"step": 0.01})
    assert coarse.bits % 8 == 0 and coarse.bits < fine.bits
    assert coarse.raw_feature_bits == 4 * 16 * 16 * 32
