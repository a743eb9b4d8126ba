"""torchvision R-CNN FPN detectors split at the FPN outputs.

NN part 1 is the ResNet-50 body plus the FPN (image -> five 256-channel maps at
strides 4, 8, 16, 32, 64, named as torchvision names them: '0', '1', '2', '3',
'pool'); NN part 2 is the RPN, the ROI heads and the mapping back to
original-image pixels. part2(part1(x)) reproduces the unsplit torchvision
model bit for bit: both halves call the model's own modules in the order of
``GeneralizedRCNN.forward``.

The decoder has no image, so the sizes the RPN and ROI heads need (the resized,
unpadded image size) come from the Preprocessing record: round(orig * scale).
"""

from __future__ import annotations

import http.client
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision.models.detection as tvdet
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from .base import (
    Detections,
    Features,
    NetworkId,
    Preprocessing,
    ResizeMode,
    ScaleInfo,
    SplitPoint,
    state_dict_sha256,
)
from .weights import WeightsUnavailableError, offline

FPN_SPLIT = "fpn"
FPN_SPLIT_ID = 1  # split_id of "fpn" for every R-CNN network id (bitstream_spec.md, table "split_id")
FPN_CHANNELS = 256

FPN_SPLIT_POINT = SplitPoint(
    name=FPN_SPLIT,
    split_id=FPN_SPLIT_ID,
    scales=(
        ScaleInfo("0", FPN_CHANNELS, 4),
        ScaleInfo("1", FPN_CHANNELS, 8),
        ScaleInfo("2", FPN_CHANNELS, 16),
        ScaleInfo("3", FPN_CHANNELS, 32),
        ScaleInfo("pool", FPN_CHANNELS, 64),
    ),
)


class RcnnWeightsError(WeightsUnavailableError):
    """The weights of an R-CNN network cannot be obtained or do not fit the network."""


class RcnnInputError(ValueError):
    """An input to preprocess / part1 / part2 does not fit the network."""


@dataclass(frozen=True)
class _Variant:
    network_id: NetworkId
    builder: Callable[..., nn.Module]
    weights_enum: Any  # torchvision WeightsEnum subclass; its DEFAULT is used for pretrained
    # v1 models are trained with frozen BatchNorm; torchvision sets eps to 0 for their COCO_V1 weights
    frozen_bn_eps: float | None


_VARIANTS: dict[str, _Variant] = {
    "fasterrcnn_resnet50_fpn": _Variant(
        NetworkId.FASTER_RCNN_R50_FPN,
        tvdet.fasterrcnn_resnet50_fpn,
        tvdet.FasterRCNN_ResNet50_FPN_Weights,
        0.0,
    ),
    "fasterrcnn_resnet50_fpn_v2": _Variant(
        NetworkId.FASTER_RCNN_R50_FPN_V2,
        tvdet.fasterrcnn_resnet50_fpn_v2,
        tvdet.FasterRCNN_ResNet50_FPN_V2_Weights,
        None,
    ),
    "maskrcnn_resnet50_fpn": _Variant(
        NetworkId.MASK_RCNN_R50_FPN,
        tvdet.maskrcnn_resnet50_fpn,
        tvdet.MaskRCNN_ResNet50_FPN_Weights,
        0.0,
    ),
    "maskrcnn_resnet50_fpn_v2": _Variant(
        NetworkId.MASK_RCNN_R50_FPN_V2,
        tvdet.maskrcnn_resnet50_fpn_v2,
        tvdet.MaskRCNN_ResNet50_FPN_V2_Weights,
        None,
    ),
    "keypointrcnn_resnet50_fpn": _Variant(
        NetworkId.KEYPOINT_RCNN_R50_FPN,
        tvdet.keypointrcnn_resnet50_fpn,
        tvdet.KeypointRCNN_ResNet50_FPN_Weights,
        0.0,
    ),
}

RCNN_NETWORK_NAMES: tuple[str, ...] = tuple(_VARIANTS)


def hub_checkpoint_path(name: str) -> str:
    """Where torchvision's weights mechanism caches the default weights of `name`."""
    variant = _variant(name)
    url = variant.weights_enum.DEFAULT.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _variant(name: str) -> _Variant:
    if name not in _VARIANTS:
        raise ValueError(f"unknown R-CNN network {name!r}; choose one of {', '.join(_VARIANTS)}")
    return _VARIANTS[name]


def _freeze_batchnorm(module: nn.Module, eps: float) -> None:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d(eps), as torchvision's
    pretrained v1 builders do, so that a local state dict gives the same network."""
    for child_name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, child_name, frozen)
        else:
            _freeze_batchnorm(child, eps)


def _build_untrained(variant: _Variant, num_classes: int, **kw) -> nn.Module:
    kw.setdefault("num_classes", num_classes)
    model = variant.builder(weights=None, weights_backbone=None, **kw)
    if variant.frozen_bn_eps is not None:
        with torch.no_grad():
            _freeze_batchnorm(model, variant.frozen_bn_eps)
    return model


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise RcnnWeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a bad file
        raise RcnnWeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}") from e
    # accept a plain state dict or a training checkpoint {"model": state_dict, ...}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RcnnWeightsError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def _load_local(variant: _Variant, name: str, path: str, num_classes: int, **kw) -> nn.Module:
    state_dict = _read_state_dict(path)
    model = _build_untrained(variant, num_classes, **kw)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RcnnWeightsError(
            f"weights file {path} does not fit {name}: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return model


def _load_pretrained(variant: _Variant, name: str, progress: bool, **kw) -> nn.Module:
    cached = hub_checkpoint_path(name)
    had_file = os.path.isfile(cached)
    if not had_file and offline():
        raise RcnnWeightsError(
            f"FCM_OFFLINE=1 forbids downloading the {name} weights; pass --weights PATH or put "
            f"{os.path.basename(cached)} into {os.path.dirname(cached)}"
        )
    try:
        # torchvision's own mechanism: sha256-checked download into the torch hub cache
        return variant.builder(weights=variant.weights_enum.DEFAULT, progress=progress, **kw)
    except (OSError, RuntimeError, http.client.HTTPException) as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        if had_file:
            raise RcnnWeightsError(
                f"cannot load the cached {name} weights {cached} ({reason}); delete the file to "
                f"download it again or pass --weights PATH"
            ) from e
        raise RcnnWeightsError(
            f"cannot download the {name} weights ({reason}); pass --weights PATH or put "
            f"{os.path.basename(cached)} into {os.path.dirname(cached)}"
        ) from e


class RcnnSplitNetwork:
    """A torchvision R-CNN FPN model cut at the FPN outputs (split point "fpn")."""

    tasks: tuple[str, ...] = ("bbox",)  # Mask / Keypoint R-CNN's outputs stay in Detections.extra

    def __init__(self, name: str, model: nn.Module, device: str = "cpu") -> None:
        variant = _variant(name)
        self.name = name
        self.network_id: NetworkId = variant.network_id
        self.split_points: dict[str, SplitPoint] = {FPN_SPLIT: FPN_SPLIT_POINT}
        self.default_split = FPN_SPLIT
        self.device = torch.device(device)
        # a torchvision GeneralizedRCNN (backbone, rpn, roi_heads, transform); Any because
        # nn.Module's attribute typing cannot express its submodules
        self.model: Any = model.to(self.device).eval()
        self._sha256: str | None = None

    # -- identity ---------------------------------------------------------
    def weights_sha256(self) -> str:
        """network_weights_hash of the model's state dict (codec.vision.base.state_dict_sha256):
        the same weights give the same hash whether loaded from the hub cache or a file."""
        if self._sha256 is None:
            self._sha256 = state_dict_sha256(self.model.state_dict())
        return self._sha256

    # -- image -> network input -------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Preprocessing]:
        """RGB uint8 (H, W, 3) -> normalised, resized (short side min_size, long
        side <= max_size), zero-padded to a multiple of 32: (1, 3, h, w)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RcnnInputError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        orig_h, orig_w = int(image.shape[0]), int(image.shape[1])
        if orig_h < 1 or orig_w < 1:
            raise RcnnInputError(f"empty image {image.shape}")
        x = self.image_to_tensor(image)
        with torch.no_grad():
            image_list, _ = self.model.transform([x])
        resized_h, resized_w = image_list.image_sizes[0]
        tensor = image_list.tensors
        meta = Preprocessing(
            orig_w=orig_w,
            orig_h=orig_h,
            input_w=int(tensor.shape[-1]),
            input_h=int(tensor.shape[-2]),
            resize_mode=ResizeMode.SHORT_SIDE,
            scale_x=resized_w / orig_w,
            scale_y=resized_h / orig_h,
        )
        return tensor, meta

    def image_to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> float (3, H, W) in [0, 1]: the unsplit model's input."""
        return torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1).float() / 255.0

    # -- NN part 1 ----------------------------------------------------------
    def part1(self, x: torch.Tensor, split: str) -> Features:
        """Backbone + FPN: (1, 3, h, w) -> {'0','1','2','3','pool'} (1, 256, h/s, w/s)."""
        self._check_split(split)
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise RcnnInputError(f"expected a (1, 3, H, W) input, got {tuple(x.shape)}")
        with torch.no_grad():
            features = self.model.backbone(x.to(self.device))
        return OrderedDict((k, features[k]) for k in FPN_SPLIT_POINT.scale_names())

    # -- NN part 2 ----------------------------------------------------------
    def part2_raw(self, features: Features, split: str, meta: Preprocessing) -> dict[str, torch.Tensor]:
        """RPN + ROI heads + postprocess: torchvision's output dict for one image
        (boxes in original-image pixels; masks / keypoints for those variants)."""
        self._check_split(split)
        feats = self._check_features(features, meta)
        image_sizes = [self.resized_size(meta)]
        # the RPN's anchor generator only reads the padded batch shape, dtype and device
        # of images.tensors: an expanded zero-size-in-memory tensor stands in for the image
        dummy = torch.zeros((), dtype=feats["0"].dtype, device=self.device).expand(1, 3, meta.input_h, meta.input_w)
        images = ImageList(dummy, image_sizes)
        with torch.no_grad():
            proposals, _ = self.model.rpn(images, feats)
            detections, _ = self.model.roi_heads(feats, proposals, images.image_sizes)
            detections = self.model.transform.postprocess(detections, images.image_sizes, [(meta.orig_h, meta.orig_w)])
        return detections[0]

    def part2(self, features: Features, split: str, meta: Preprocessing) -> Detections:
        """NN part 2 -> Detections in original-image pixels. torchvision's 91-index
        labels are COCO category ids. extra: "masks" (N, H, W) float mask
        probabilities; "keypoints" (N, K, 3) (x, y, visibility), "keypoints_scores" (N, K)."""
        out = self.part2_raw(features, split, meta)
        extra: dict[str, np.ndarray] = {}
        if "masks" in out:
            extra["masks"] = out["masks"][:, 0].cpu().numpy()
        if "keypoints" in out:
            extra["keypoints"] = out["keypoints"].cpu().numpy()
            extra["keypoints_scores"] = out["keypoints_scores"].cpu().numpy()
        return Detections(
            boxes=out["boxes"].cpu().numpy(),
            scores=out["scores"].cpu().numpy(),
            category_ids=out["labels"].cpu().numpy().astype(np.int64),
            extra=extra,
        )

    # -- helpers -------------------------------------------------------------
    @staticmethod
    def resized_size(meta: Preprocessing) -> tuple[int, int]:
        """(h, w) of the resized, unpadded image, derived from the record alone."""
        h = int(round(meta.orig_h * meta.scale_y))
        w = int(round(meta.orig_w * meta.scale_x))
        if not (1 <= h <= meta.input_h and 1 <= w <= meta.input_w):
            raise RcnnInputError(
                f"preprocessing record gives a resized size {h}x{w} outside the input {meta.input_h}x{meta.input_w}"
            )
        return h, w

    def _check_split(self, split: str) -> None:
        if split not in self.split_points:
            raise RcnnInputError(f"unknown split point {split!r} for {self.name}; choose {FPN_SPLIT!r}")

    def _check_features(self, features: Features, meta: Preprocessing) -> OrderedDict[str, torch.Tensor]:
        names = FPN_SPLIT_POINT.scale_names()
        if set(features) != set(names):
            raise RcnnInputError(f"expected feature scales {names}, got {sorted(features)}")
        expected = FPN_SPLIT_POINT.shapes(meta.input_h, meta.input_w)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for k in names:
            t = features[k]
            if t.ndim != 4 or t.shape[0] != 1 or tuple(t.shape[1:]) != expected[k]:
                raise RcnnInputError(f"feature {k!r} has shape {tuple(t.shape)}, expected (1, *{expected[k]})")
            out[k] = t.to(device=self.device, dtype=torch.float32)
        return out


def load_rcnn(
    name: str,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    device: str = "cpu",
    progress: bool = False,
    **kw,
) -> RcnnSplitNetwork:
    """Build a split R-CNN FPN network.

    weights=PATH loads a local state dict; otherwise pretrained=True uses
    torchvision's default COCO weights (sha256-checked download into the torch
    hub cache, RcnnWeightsError when impossible) and pretrained=False gives a
    random initialisation of the same architecture. Other keyword arguments go
    to the torchvision builder (min_size, max_size, box_score_thresh, ...).
    """
    variant = _variant(name)
    default_weights = variant.weights_enum.DEFAULT
    num_classes = len(default_weights.meta["categories"])
    if weights is not None:
        model = _load_local(variant, name, os.fspath(weights), num_classes, **kw)
    elif pretrained:
        model = _load_pretrained(variant, name, progress, **kw)
    else:
        model = _build_untrained(variant, num_classes, **kw)
    return RcnnSplitNetwork(name, model, device=device)


__all__ = [
    "FPN_SPLIT",
    "FPN_SPLIT_POINT",
    "RCNN_NETWORK_NAMES",
    "RcnnInputError",
    "RcnnSplitNetwork",
    "RcnnWeightsError",
    "hub_checkpoint_path",
    "load_rcnn",
]
