"""Split points of a split network: the scales NN part 1 hands over (no torch, so that an
encoder without torch, codec.vision.onnx_part1, describes its network the same way)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScaleInfo", "SplitPoint"]


@dataclass(frozen=True)
class ScaleInfo:
    name: str  # e.g. "p3"
    channels: int
    stride: int


@dataclass(frozen=True)
class SplitPoint:
    name: str  # e.g. "neck"
    split_id: int  # written into the container
    scales: tuple[ScaleInfo, ...]  # ordered, finest first

    def scale_names(self) -> list[str]:
        return [s.name for s in self.scales]

    def shapes(self, input_h: int, input_w: int) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) per scale for a given network-input size (ceil division by stride)."""
        return {s.name: (s.channels, -(-input_h // s.stride), -(-input_w // s.stride)) for s in self.scales}
