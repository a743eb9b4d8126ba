"""Detections drawn on an image (boxes, class names, scores) with Pillow."""

from __future__ import annotations

import io
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Drawing:
    png: bytes
    boxes: int  # detections drawn (scoring >= the threshold)
    below: int  # detections left out (scoring below it)
    best_score: float | None  # the highest score of all detections, None if there are none


def label_origin(
    box: tuple[float, float, float, float], text_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[float, float]:
    """Where a label of `text_size` (w, h) goes for `box` (x1, y1, x2, y2) in an image of
    `image_size` (w, h): above the box's top-left corner, or just inside the box where there
    is no room above, moved as needed so that the label and its 1-pixel frame are inside the
    image (a label wider or taller than the image starts at its left or top edge)."""
    x1, y1, _, _ = box
    tw, th = text_size
    iw, ih = image_size
    x = x1 + 2
    y = y1 - th - 2 if y1 - th - 2 >= 1 else y1 + 2
    x = max(1.0, min(x, iw - tw - 2.0))
    y = max(1.0, min(y, ih - th - 2.0))
    return x, y


# COCO's person skeleton (pairs of 1-based keypoint indices), as in its annotation files
_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
KEYPOINT_THR = 0.5


def _draw_keypoints(draw: ImageDraw.ImageDraw, keypoints: np.ndarray) -> None:
    """Dots and skeleton lines of (N, 17, 3) keypoints (x, y, confidence) of confidence >= 0.5."""
    for person in keypoints:
        if person.shape[0] == 17:
            for a, b in _SKELETON:
                (xa, ya, va), (xb, yb, vb) = person[a - 1], person[b - 1]
                if min(va, vb) >= KEYPOINT_THR:
                    draw.line((float(xa), float(ya), float(xb), float(yb)), fill=(255, 255, 255), width=2)
        for x, y, v in person:
            if v >= KEYPOINT_THR:
                draw.ellipse((float(x) - 3, float(y) - 3, float(x) + 3, float(y) + 3), fill=(255, 64, 64))


def draw_detections(image: np.ndarray, dets: Detections, score_thr: float) -> Drawing:
    """`image` with the detections scoring >= score_thr: boxes, labels (class name and score)
    kept inside the image, and masks, when the detections have them, as translucent fills under
    the boxes, keypoints (those of confidence >= 0.5) as dots joined by COCO's person skeleton;
    PNG bytes and the number of boxes drawn."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if dets.masks is not None and dets.masks.shape[1:] == (im.height, im.width):
        out = np.asarray(im, dtype=np.float32).copy()
        for mask, score, cid in zip(dets.masks, dets.scores, dets.category_ids):
            if score >= score_thr:
                out[mask] = 0.55 * out[mask] + 0.45 * np.asarray(_COLOURS[int(cid) % len(_COLOURS)], np.float32)
        im = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(im)
    drawn = 0
    for box, score, cid in zip(dets.boxes, dets.scores, dets.category_ids):
        if score < score_thr:
            continue
        drawn += 1
        colour = _COLOURS[int(cid) % len(_COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        label = f"{category_name(int(cid))} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label)
        tx, ty = label_origin((x1, y1, x2, y2), (int(right - left), int(bottom - top)), im.size)
        tx, ty = tx - left, ty - top  # textbbox's offset of the glyphs from the text origin
        left, top, right, bottom = draw.textbbox((tx, ty), label)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        draw.text((tx, ty), label, fill=(0, 0, 0))
    if dets.keypoints is not None:
        _draw_keypoints(draw, dets.keypoints[dets.scores >= score_thr])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    best = float(np.max(dets.scores)) if len(dets.scores) else None
    return Drawing(buf.getvalue(), drawn, len(dets.scores) - drawn, best)
