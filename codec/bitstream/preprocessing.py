"""The preprocessing record of the container header (bitstream_spec.md, header_body( )):
how the image was brought to the network input, so that a decoder maps boxes back to
original-image pixels without the image. numpy only: the bitstream layer needs no torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ids import ResizeMode


@dataclass(frozen=True)
class Preprocessing:
    """Everything the decoder needs to map network-input coordinates back to
    original-image pixels. Written into the container header."""

    orig_w: int
    orig_h: int
    input_w: int  # width of the tensor fed to NN part 1 (after resize and padding)
    input_h: int
    resize_mode: ResizeMode
    scale_x: float  # input pixels per original pixel along x
    scale_y: float
    pad_x: int = 0  # padding added on the left / top, in input pixels
    pad_y: int = 0

    def boxes_to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from network-input pixels to original-image pixels, clipped."""
        b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad_x) / self.scale_x
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad_y) / self.scale_y
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.orig_w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.orig_h)
        return b

    def points_to_original(self, points_xy: np.ndarray) -> np.ndarray:
        """Map points (..., 2) from network-input pixels to original-image pixels, clipped to
        the image (as the boxes: x in [0, orig_w], y in [0, orig_h])."""
        p = np.asarray(points_xy, dtype=np.float64).copy()
        if p.shape[-1:] != (2,):
            raise ValueError(f"points must have shape (..., 2), got {p.shape}")
        p[..., 0] = ((p[..., 0] - self.pad_x) / self.scale_x).clip(0, self.orig_w)
        p[..., 1] = ((p[..., 1] - self.pad_y) / self.scale_y).clip(0, self.orig_h)
        return p


__all__ = ["Preprocessing"]
