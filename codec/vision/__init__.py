"""Split vision networks: NN part 1 at the encoder, NN part 2 at the decoder."""

from __future__ import annotations

from .base import (
    Detections,
    Features,
    NetworkId,
    Preprocessing,
    ResizeMode,
    ScaleInfo,
    SplitNetwork,
    SplitPoint,
)

# name -> (module, factory); imported lazily so that a missing optional
# dependency of one network does not break the others.
_REGISTRY: dict[str, tuple[str, str]] = {
    "nanodet": ("codec.vision.nanodet", "load_nanodet"),
    "fasterrcnn_resnet50_fpn": ("codec.vision.rcnn", "load_rcnn"),
    "fasterrcnn_resnet50_fpn_v2": ("codec.vision.rcnn", "load_rcnn"),
    "maskrcnn_resnet50_fpn": ("codec.vision.rcnn", "load_rcnn"),
    "maskrcnn_resnet50_fpn_v2": ("codec.vision.rcnn", "load_rcnn"),
    "keypointrcnn_resnet50_fpn": ("codec.vision.rcnn", "load_rcnn"),
}

NETWORK_NAMES_BY_ID: dict[NetworkId, str] = {
    NetworkId.NANODET: "nanodet",
    NetworkId.FASTER_RCNN_R50_FPN: "fasterrcnn_resnet50_fpn",
    NetworkId.FASTER_RCNN_R50_FPN_V2: "fasterrcnn_resnet50_fpn_v2",
    NetworkId.MASK_RCNN_R50_FPN: "maskrcnn_resnet50_fpn",
    NetworkId.MASK_RCNN_R50_FPN_V2: "maskrcnn_resnet50_fpn_v2",
    NetworkId.KEYPOINT_RCNN_R50_FPN: "keypointrcnn_resnet50_fpn",
}

DEFAULT_NETWORK = "nanodet"


def available_networks() -> list[str]:
    return sorted(_REGISTRY)


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
    "NETWORK_NAMES_BY_ID",
    "NetworkId",
    "Preprocessing",
    "ResizeMode",
    "ScaleInfo",
    "SplitNetwork",
    "SplitPoint",
    "available_networks",
    "get_network",
]
