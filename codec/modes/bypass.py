"""Mode "bypass": the lossless reference. Each scale is one RAW_TENSOR unit
holding the tensor as IEEE float16 or float32, little-endian, C-order (C, H, W)
(bitstream_spec.md, section 7.2). float32 is lossless; float16 rounds to nearest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from construct import Int8ub, Struct

from codec.bitstream import (
    ContainerHeader,
    InnerCodecId,
    InnerCodecParams,
    ModeHeader,
    ModeId,
    PayloadUnit,
    SampleFormat,
    ScaleHeader,
    UnitType,
)
from codec.bitstream.container import ModeHeaderSyntax
from codec.bitstream.syntax import id_field
from codec.errors import EncodeError, MalformedError

from .base import (
    EQUALS_SCALE_CHANNELS,
    NO_CODEC_MODEL,
    NO_ENTROPY_CODER,
    NO_INNER_CODEC,
    CodingMode,
    Shapes,
    Weights,
    check_scale,
    enum_rule,
    is_,
    option,
    scale_arrays,
    shaped_scales,
    to_features,
    units_of_type,
)

if TYPE_CHECKING:
    from codec.vision.base import Features, SplitPoint

MODE_ID = ModeId.BYPASS
NAME = "bypass"

DTYPES: dict[SampleFormat, np.dtype] = {
    SampleFormat.FLOAT16: np.dtype("<f2"),
    SampleFormat.FLOAT32: np.dtype("<f4"),
}
SAMPLE_FORMATS: dict[str, SampleFormat] = {"float16": SampleFormat.FLOAT16, "float32": SampleFormat.FLOAT32}


@dataclass(frozen=True)
class Params:
    bypass_dtype: str = option(
        "float16", "sample format of the coded tensors", choices=tuple(SAMPLE_FORMATS), rate=True
    )


def encode(features: Features, split_point: SplitPoint, params: Params) -> tuple[ModeHeader, list[PayloadUnit]]:
    if params.bypass_dtype not in SAMPLE_FORMATS:
        raise EncodeError(f"bypass_dtype must be one of {', '.join(SAMPLE_FORMATS)}, got {params.bypass_dtype!r}")
    fmt = SAMPLE_FORMATS[params.bypass_dtype]
    scales, units = [], []
    for i, (name, arr) in enumerate(scale_arrays(features, split_point)):
        c, h, w = arr.shape
        scales.append(ScaleHeader(name=name, channels=c, height=h, width=w, kept_channels=c))
        data = np.ascontiguousarray(arr.astype(DTYPES[fmt])).tobytes()
        units.append(PayloadUnit(UnitType.RAW_TENSOR, data, scale_index=i))
    return ModeHeader(scales=tuple(scales), sample_format=fmt, inner=InnerCodecParams()), units


def validate(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
    """Check the header fields and payload units of the mode without decoding."""
    decode_symbols(header, units)  # views into the unit data: nothing is decoded or copied


def decode_symbols(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> dict[str, np.ndarray]:
    """The raw tensors, (C, H, W) in their coded sample format."""
    if header.mode.inner.codec_id != InnerCodecId.NONE:
        raise MalformedError(f"bypass mode needs inner_codec_id NONE, got {header.mode.inner.codec_id.name}")
    fmt = header.mode.sample_format
    if fmt not in DTYPES:
        raise MalformedError(f"bypass mode needs sample_format FLOAT16 or FLOAT32, got {fmt.name}")
    raw = units_of_type(units, UnitType.RAW_TENSOR)
    others = sorted({u.type_name for u in units if u.unit_type != UnitType.RAW_TENSOR})
    if others:  # section 7.2: no other units of known type
        raise MalformedError(f"bypass mode allows only RAW_TENSOR units, got {', '.join(others)}")
    out: dict[str, np.ndarray] = {}
    for i, scale in enumerate(header.scales):
        check_scale(scale, i)
        mine = [u for u in raw if u.scale_index == i]
        if len(mine) != 1:
            raise MalformedError(f"scale {i} ({scale.name}) has {len(mine)} RAW_TENSOR units, expected 1")
        dtype = DTYPES[fmt]
        expected = scale.channels * scale.height * scale.width * dtype.itemsize
        if len(mine[0].data) != expected:
            raise MalformedError(
                f"RAW_TENSOR of scale {i} ({scale.name}) has {len(mine[0].data)} bytes, expected {expected}"
            )
        out[scale.name] = np.frombuffer(mine[0].data, dtype=dtype).reshape(scale.shape)
    if len(raw) != len(header.scales):
        raise MalformedError(f"{len(raw)} RAW_TENSOR units for {len(header.scales)} scales")
    return out


def reconstruct(header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
    return to_features(header, [symbols[s.name].astype(np.float32) for s in header.scales])


# mode_header( ) of container 2.0 (bitstream_spec.md, section 7.2.1): the sample format;
# every other mode-dependent field takes the value of the constraint table below
bypass_header = Struct("sample_format" / id_field(Int8ub, SampleFormat, "sample_format"))


def _to_header_value(mh: ModeHeader) -> dict:
    return {"sample_format": int(mh.sample_format)}


def _from_header_value(value, shapes: Shapes) -> ModeHeader:
    return ModeHeader(shaped_scales(shapes), sample_format=SampleFormat(value.sample_format), inner=InnerCodecParams())


# spec table name -> construct (tests/unit/test_spec.py compares them with the spec)
SYNTAX_STRUCTURES = {"bypass_header": bypass_header}
HEADER_SYNTAX = ModeHeaderSyntax(bypass_header, _to_header_value, _from_header_value)

# header constraints (bitstream_spec.md, section 7.2)
HEADER_RULES = {
    "sample_format": enum_rule(SampleFormat.FLOAT16, SampleFormat.FLOAT32),
    **NO_INNER_CODEC,
    **NO_CODEC_MODEL,
    **NO_ENTROPY_CODER,
}
SCALE_RULES = {
    "phi_index": is_(0),
    "kept_channels": EQUALS_SCALE_CHANNELS,
    "quant_min": is_(0.0),
    "quant_max": is_(0.0),
}

MODE = CodingMode(
    mode_id=MODE_ID,
    name=NAME,
    params=Params,
    header_rules=HEADER_RULES,
    scale_rules=SCALE_RULES,
    header_syntax=HEADER_SYNTAX,
    encode=encode,
    decode_symbols=decode_symbols,
    reconstruct=reconstruct,
    validate=validate,
    description="lossless reference: float16 / float32 tensors",
)
decode = MODE.decode
