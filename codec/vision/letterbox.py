"""The input preprocessing of the YOLO networks (YOLOv5s-seg, YOLO11n-pose): letterbox to a
square input on grey 114, as Ultralytics trained and evaluated them, or a stretch (ablation)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import Preprocessing, ResizeMode

PAD_VALUE = 114  # grey of Ultralytics' letterbox

__all__ = ["PAD_VALUE", "yolo_preprocess"]


def yolo_preprocess(
    image: np.ndarray, size: int, resize_mode: ResizeMode = ResizeMode.LETTERBOX
) -> tuple[torch.Tensor, Preprocessing]:
    """RGB uint8 (H, W, 3) -> (1, 3, S, S) float32 RGB / 255 and its record.

    Letterbox: the aspect ratio is kept, the long side scaled to S (bilinear), the image
    centred on grey 114 with Ultralytics' rounding of the padding (recorded as pad_x /
    pad_y). A fixed S x S input keeps the feature sizes the same for every image.
    ``ResizeMode.STRETCH`` resizes each axis to S instead."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    s = int(size)
    if resize_mode == ResizeMode.STRETCH:
        canvas = np.array(Image.fromarray(image).resize((s, s), Image.Resampling.BILINEAR))
        meta = Preprocessing(w, h, s, s, ResizeMode.STRETCH, s / w, s / h)
    elif resize_mode == ResizeMode.LETTERBOX:
        r = min(s / w, s / h)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        resized = (
            image
            if (nw, nh) == (w, h)
            else np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
        )
        left, top = round((s - nw) / 2 - 0.1), round((s - nh) / 2 - 0.1)
        canvas = np.full((s, s, 3), PAD_VALUE, np.uint8)
        canvas[top : top + nh, left : left + nw] = resized
        meta = Preprocessing(w, h, s, s, ResizeMode.LETTERBOX, nw / w, nh / h, left, top)
    else:
        raise ValueError(f"resize mode {ResizeMode(resize_mode).name} is not a YOLO preprocessing")
    x = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    return x.contiguous(), meta
