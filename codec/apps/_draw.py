"""Detections drawn on an image (boxes, class names, scores) with Pillow."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from codec.vision.base import Detections

_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


@lru_cache(maxsize=1)
def coco_category_names() -> tuple[str, ...]:
    """COCO category id (0..90) -> name ("N/A" for the unused ids)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"])


def category_name(category_id: int) -> str:
    names = coco_category_names()
    return names[category_id] if 0 <= category_id < len(names) else f"class {category_id}"


def draw_detections(image: np.ndarray, dets: Detections, score_thr: float) -> bytes:
    """PNG bytes of `image` with the detections scoring >= score_thr (masks, when the
    detections have them, as translucent fills under the boxes)."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if dets.masks is not None and dets.masks.shape[1:] == (im.height, im.width):
        out = np.asarray(im, dtype=np.float32).copy()
        for mask, score, cid in zip(dets.masks, dets.scores, dets.category_ids):
            if score >= score_thr:
                out[mask] = 0.55 * out[mask] + 0.45 * np.asarray(_COLOURS[int(cid) % len(_COLOURS)], np.float32)
        im = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for box, score, cid in zip(dets.boxes, dets.scores, dets.category_ids):
        if score < score_thr:
            continue
        colour = _COLOURS[int(cid) % len(_COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        label = f"{category_name(int(cid))} {score:.2f}"
        tx, ty = x1 + 2, max(0.0, y1 - 12)
        left, top, right, bottom = draw.textbbox((tx, ty), label)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        draw.text((tx, ty), label, fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
