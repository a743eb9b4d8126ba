"""The split-network interface: NN part 1 (image -> multi-scale features) and
NN part 2 (features -> detections). The preprocessing record that the container
carries (so the decoder can map boxes back without the image) and the network ids
live in codec.bitstream, which needs no torch; they are re-exported here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from codec.bitstream.ids import NetworkId, ResizeMode
from codec.bitstream.preprocessing import Preprocessing

from .split import ScaleInfo, SplitPoint

__all__ = [
    "Detections",
    "Features",
    "NetworkId",
    "Preprocessing",
    "ResizeMode",
    "ScaleInfo",
    "SplitNetwork",
    "SplitPoint",
    "state_dict_sha256",
]


@dataclass
class Detections:
    """Detections in original-image pixels: boxes as (x1, y1, x2, y2); for instance
    segmentation networks also one binary mask per detection at the original image size, for
    keypoint networks the keypoints of each detection as (x, y, confidence)."""

    boxes: np.ndarray  # (N, 4) float
    scores: np.ndarray  # (N,) float
    category_ids: np.ndarray  # (N,) int, COCO category ids (1..90)
    extra: dict = field(default_factory=dict)  # network-specific outputs (R-CNN: mask probabilities, keypoints)
    masks: np.ndarray | None = None  # (N, orig_h, orig_w) bool instance masks, or None (boxes only)
    keypoints: np.ndarray | None = None  # (N, K, 3) float: x, y in original pixels, confidence in [0, 1]

    def __post_init__(self) -> None:
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[0] != len(self.scores)):
            raise ValueError(f"masks must be (N, H, W) with N = {len(self.scores)}, got {self.masks.shape}")
        kp = self.keypoints
        if kp is not None and (kp.ndim != 3 or kp.shape[0] != len(self.scores) or kp.shape[2] != 3):
            raise ValueError(f"keypoints must be (N, K, 3) with N = {len(self.scores)}, got {kp.shape}")

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def masks_rle(self) -> list[dict]:
        """The masks as COCO run-length encodings ({"size": [h, w], "counts": str})."""
        if self.masks is None:
            return []
        from pycocotools import mask as mask_utils

        # pycocotools wants (H, W, N) in Fortran order: each mask column-major
        rles = mask_utils.encode(np.asfortranarray(self.masks.transpose(1, 2, 0), dtype=np.uint8))
        return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO results: one dict per detection with image_id, category_id, bbox [x, y, w, h]
        and score, plus "segmentation" (RLE) when the detections carry masks, and "keypoints"
        [x1, y1, v1, x2, ...] when they carry keypoints (v: the keypoint's confidence, as
        Ultralytics' COCO export writes it; pycocotools' keypoint AP uses x and y only)."""
        out = []
        for (x1, y1, x2, y2), s, c in zip(self.boxes, self.scores, self.category_ids):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(c),
                    "bbox": [
                        round(float(x1), 3),
                        round(float(y1), 3),
                        round(float(x2 - x1), 3),
                        round(float(y2 - y1), 3),
                    ],
                    "score": round(float(s), 5),
                }
            )
        for r, rle in zip(out, self.masks_rle()):
            r["segmentation"] = rle
        if self.keypoints is not None:
            for r, kp in zip(out, self.keypoints):
                r["keypoints"] = [round(float(v), 3 if k % 3 < 2 else 5) for k, v in enumerate(kp.reshape(-1))]
        return out


Features = dict[str, torch.Tensor]  # scale name -> (1, C, H, W) float32


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """network_weights_hash (bitstream_spec.md, section 5.2), byte for byte: SHA-256 over,
    for each tensor in ascending order of its name (Unicode code points), the name in
    UTF-8, then its shape as ASCII text "(d0, d1, ...)" (one dimension: "(d0,)", none:
    "()"), then its values converted to IEEE float32, little-endian, in C order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode("utf-8"))
        h.update(str(tuple(t.shape)).encode("ascii"))
        h.update(t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


class SplitNetwork(Protocol):
    """A vision network cut in two at a named split point."""

    name: str  # e.g. "nanodet"
    network_id: NetworkId
    split_points: dict[str, SplitPoint]
    default_split: str

    def weights_sha256(self) -> str:
        """sha256 (hex) of the weights in use; the container records it."""
        ...

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Preprocessing]:
        """RGB uint8 (H, W, 3) -> (1, 3, h, w) network input and its record."""
        ...

    def part1(self, x: torch.Tensor, split: str) -> Features:
        """NN part 1: network input -> ordered multi-scale features."""
        ...

    def part2(self, features: Features, split: str, meta: Preprocessing) -> Detections:
        """NN part 2: features -> detections in original-image pixels."""
        ...
