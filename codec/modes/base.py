"""What every coding mode shares: the encoder parameters and the checks that
features match the split point. A mode is one module with

    MODE_ID: ModeId, NAME: str
    encode(features, split_point, params) -> (ModeHeader, list[PayloadUnit])
    decode_symbols(header, units) -> dict[str, np.ndarray]   # decoded integer / raw symbols
    reconstruct(header, symbols) -> Features
    decode(header, units) -> Features                        # reconstruct(decode_symbols(...))
    validate(header, units) -> None                          # mode-level checks without decoding
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from codec.bitstream import ContainerHeader, PayloadUnit, ScaleHeader
from codec.errors import EncodeError, MalformedError
from codec.vision.base import Features, SplitPoint


@dataclass
class EncodeParams:
    """Encoder settings. `qp` and `preset` are for modes with a VVC inner codec,
    `bypass_dtype` ("float16" | "float32") for the bypass mode."""

    mode: str = "anchor"
    qp: int = 32
    preset: str = "faster"
    bypass_dtype: str = "float16"
    phi: int | None = None  # quality index of learned modes (learned_e2e: gain-unit row; None: use qp)


def scale_arrays(features: Features, split_point: SplitPoint) -> list[tuple[str, np.ndarray]]:
    """Features -> [(scale name, (C, H, W) float32 array)] in the split point's order,
    checking names, batch size 1 and channel counts."""
    expected = split_point.scale_names()
    if sorted(features) != sorted(expected):
        raise EncodeError(f"features have scales {list(features)}, split point {split_point.name!r} has {expected}")
    out = []
    for info in split_point.scales:
        t = features[info.name]
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[0] != 1:
            raise EncodeError(
                f"scale {info.name}: expected a (1, C, H, W) tensor, got {tuple(getattr(t, 'shape', ()))}"
            )
        if t.shape[1] != info.channels:
            raise EncodeError(f"scale {info.name}: {t.shape[1]} channels, split point says {info.channels}")
        out.append((info.name, t.detach().to("cpu", torch.float32).numpy()[0]))
    return out


def to_features(header: ContainerHeader, arrays: list[np.ndarray]) -> Features:
    """(C, H, W) arrays in header order -> Features ((1, C, H, W) float32 tensors)."""
    return {
        s.name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(0)
        for s, a in zip(header.scales, arrays)
    }


def units_of_type(units: list[PayloadUnit], unit_type: int) -> list[PayloadUnit]:
    return [u for u in units if u.unit_type == unit_type]


def check_scale(scale: ScaleHeader, index: int) -> None:
    if scale.kept_channels != scale.channels:
        raise MalformedError(f"scale {index} ({scale.name}): kept_channels must equal scale_channels in this mode")
