"""Mode "anchor": the MPEG FCM feature anchor (bitstream_spec.md, section 7.3).

Per scale, the C channels are tiled into a near-square grid (TileCols is the
smallest power of two with TileCols^2 >= C, TileRows = ceil(C / TileCols),
channel c at grid row c // TileCols, column c % TileCols); the scales' grids
are stacked top to bottom, left aligned, into one monochrome frame whose
unused samples are 512. Each scale is min-max quantised to 10 bits in float32
with round-half-up; the frame is coded as the luma of one VVC intra picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from construct import Array, Float32b, Int8ub, Struct, this

from codec.bitstream import (
    ALL_SCALES,
    ContainerHeader,
    InnerCodecId,
    InnerCodecParams,
    ModeHeader,
    ModeId,
    PayloadUnit,
    PresetId,
    SampleFormat,
    ScaleHeader,
    UnitType,
    preset_id,
)
from codec.bitstream.container import ModeHeaderSyntax
from codec.bitstream.syntax import finite_field, id_field
from codec.errors import EncodeError, InnerCodecError, MalformedError, SizeLimitError
from codec.inner import vvc

from .base import (
    EQUALS_SCALE_CHANNELS,
    NO_CODEC_MODEL,
    NO_ENTROPY_CODER,
    CodingMode,
    Rule,
    Shapes,
    Weights,
    check_scale,
    enum_rule,
    in_range,
    is_,
    option,
    scale_arrays,
    shaped_scales,
    to_features,
    units_of_type,
)

if TYPE_CHECKING:
    from codec.vision.base import Features, SplitPoint

MODE_ID = ModeId.ANCHOR
NAME = "anchor"

BIT_DEPTH = 10
MAX_CODE = (1 << BIT_DEPTH) - 1  # 1023
FILL_VALUE = 1 << (BIT_DEPTH - 1)  # 512: samples of the frame that carry no channel
MAX_FRAME_DIM = vvc.MAX_DIMENSION
MAX_FRAME_SAMPLES = vvc.MAX_LUMA_SAMPLES  # VVC level 6.2 MaxLumaPs
QP_RANGE = (vvc.QP_MIN, vvc.QP_MAX)


@dataclass(frozen=True)
class Params:
    qp: int = option(32, "VVC quantisation parameter", range=QP_RANGE, rate=True)
    preset: str = option("faster", "VVenC preset (informative for the decoder)", choices=vvc.VVENC_PRESETS)


def grid_shape(channels: int) -> tuple[int, int]:
    """(TileRows, TileCols) of a scale with `channels` channels."""
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    cols = 1
    while cols * cols < channels:
        cols *= 2
    return -(-channels // cols), cols


@dataclass(frozen=True)
class FrameLayout:
    """Where each scale's tile grid sits in the frame."""

    width: int  # FrameWidth
    height: int  # FrameHeight
    grids: tuple[tuple[int, int], ...]  # (TileRows, TileCols) per scale
    y_offsets: tuple[int, ...]  # ScaleY per scale (top row of its grid)


def frame_layout(shapes: list[tuple[int, int, int]]) -> FrameLayout:
    """Layout for scales of shape (C, H, W), in header order."""
    grids, offsets, width, y = [], [], 0, 0
    for c, h, w in shapes:
        rows, cols = grid_shape(c)
        grids.append((rows, cols))
        offsets.append(y)
        y += rows * h
        width = max(width, cols * w)
    return FrameLayout(width=width, height=y, grids=tuple(grids), y_offsets=tuple(offsets))


def check_frame_size(layout: FrameLayout) -> None:
    if layout.width > MAX_FRAME_DIM or layout.height > MAX_FRAME_DIM:
        raise SizeLimitError(f"anchor frame {layout.width}x{layout.height} exceeds {MAX_FRAME_DIM} in a dimension")
    if layout.width * layout.height > MAX_FRAME_SAMPLES:
        raise SizeLimitError(f"anchor frame {layout.width}x{layout.height} exceeds {MAX_FRAME_SAMPLES} samples")


def quantise(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    """Min-max quantisation of one scale to 0..1023, all arithmetic in float32:
    Scale = 1023 / (max - min); q = floor((x - min) * Scale + 0.5), clipped.
    A constant tensor gives q = 0. Returns (q as uint16, min, max)."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise EncodeError("features contain NaN or infinite values; the anchor mode needs finite features")
    lo, hi = np.float32(x.min()), np.float32(x.max())
    rng = np.float32(hi - lo)
    if not np.isfinite(rng):
        raise EncodeError(f"feature range {lo}..{hi} overflows float32")
    if rng == 0:
        return np.zeros(x.shape, dtype=np.uint16), lo, hi
    scale = np.float32(np.float32(MAX_CODE) / rng)
    t = (x - lo) * scale + np.float32(0.5)
    q = np.clip(np.floor(t), 0, MAX_CODE).astype(np.uint16)
    return q, lo, hi


def dequantise(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x = q * Step + min with Step = (max - min) / 1023, in float32."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    step = np.float32(np.float32(hi32 - lo32) / np.float32(MAX_CODE))
    return (q.astype(np.float32) * step + lo32).astype(np.float32)


def tile(codes: list[np.ndarray], layout: FrameLayout) -> np.ndarray:
    """Place each scale's (C, H, W) codes into the (FrameHeight, FrameWidth) frame."""
    frame = np.full((layout.height, layout.width), FILL_VALUE, dtype=np.uint16)
    for q, (rows, cols), y0 in zip(codes, layout.grids, layout.y_offsets):
        c, h, w = q.shape
        padded = np.full((rows * cols, h, w), FILL_VALUE, dtype=np.uint16)
        padded[:c] = q
        grid = padded.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)
        frame[y0 : y0 + rows * h, : cols * w] = grid
    return frame


def untile(frame: np.ndarray, shapes: list[tuple[int, int, int]], layout: FrameLayout) -> list[np.ndarray]:
    """Inverse of `tile`: (C, H, W) codes per scale."""
    out = []
    for (c, h, w), (rows, cols), y0 in zip(shapes, layout.grids, layout.y_offsets):
        grid = frame[y0 : y0 + rows * h, : cols * w]
        tiles = grid.reshape(rows, h, cols, w).transpose(0, 2, 1, 3).reshape(rows * cols, h, w)
        out.append(np.ascontiguousarray(tiles[:c]))
    return out


def encode(features: Features, split_point: SplitPoint, params: Params) -> tuple[ModeHeader, list[PayloadUnit]]:
    if isinstance(params.qp, bool) or not isinstance(params.qp, int) or not QP_RANGE[0] <= params.qp <= QP_RANGE[1]:
        raise EncodeError(f"qp must be an integer in {QP_RANGE[0]}..{QP_RANGE[1]}, got {params.qp!r}")
    try:
        pid = preset_id(params.preset)
    except ValueError as e:
        raise EncodeError(str(e)) from None
    arrays = scale_arrays(features, split_point)
    scales, codes = [], []
    for name, arr in arrays:
        q, lo, hi = quantise(arr)
        c, h, w = arr.shape
        scales.append(
            ScaleHeader(
                name=name, channels=c, height=h, width=w, kept_channels=c, quant_min=float(lo), quant_max=float(hi)
            )
        )
        codes.append(q)
    layout = frame_layout([(a.shape[0], a.shape[1], a.shape[2]) for _, a in arrays])
    try:
        check_frame_size(layout)
    except SizeLimitError as e:
        raise EncodeError(str(e)) from None
    frame = tile(codes, layout)
    bitstream = vvc.encode_luma10(frame, params.qp, params.preset)
    header = ModeHeader(
        scales=tuple(scales),
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(InnerCodecId.VVC_VVENC, params.qp, pid, BIT_DEPTH),
    )
    return header, [PayloadUnit(UnitType.VVC_NAL_STREAM, bitstream, scale_index=ALL_SCALES)]


def _layout_of(header: ContainerHeader) -> FrameLayout:
    inner = header.mode.inner
    if inner.codec_id != InnerCodecId.VVC_VVENC:
        raise MalformedError(f"anchor mode needs inner_codec_id VVC_VVENC, got {inner.codec_id.name}")
    if inner.bit_depth != BIT_DEPTH:
        raise MalformedError(f"anchor mode needs inner_bit_depth {BIT_DEPTH}, got {inner.bit_depth}")
    if header.mode.sample_format != SampleFormat.NONE:
        raise MalformedError("anchor mode needs sample_format NONE")
    for i, s in enumerate(header.scales):
        check_scale(s, i)
    layout = frame_layout([s.shape for s in header.scales])
    check_frame_size(layout)
    return layout


def _stream_of(units: list[PayloadUnit]) -> PayloadUnit:
    streams = units_of_type(units, UnitType.VVC_NAL_STREAM)
    others = [u for u in units if u.unit_type != UnitType.VVC_NAL_STREAM]
    if len(streams) != 1 or streams[0].scale_index != ALL_SCALES or others:
        raise MalformedError(
            f"anchor mode needs exactly one VVC_NAL_STREAM unit for all scales and no other units, "
            f"got {len(streams)} and {len(others)} others"
        )
    return check_vvc_payload(streams[0])


def check_vvc_payload(unit: PayloadUnit) -> PayloadUnit:
    """The structural check of a VVC_NAL_STREAM unit that needs no decoder (NAL headers of one
    intra picture, SPS and PPS first: vvc.check_intra_stream); InnerCodecError otherwise."""
    try:
        vvc.check_intra_stream(unit.data)
    except vvc.NalParseError as e:
        raise InnerCodecError(f"VVC payload is not one intra picture: {str(e).splitlines()[0]}") from None
    return unit


def validate(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
    """Check the header fields and payload units of the mode without decoding VVC."""
    _layout_of(header)
    _stream_of(units)


def decode_symbols(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> dict[str, np.ndarray]:
    """{"frame": the decoded (FrameHeight, FrameWidth) uint16 10-bit frame}."""
    layout = _layout_of(header)
    stream = _stream_of(units)
    try:
        frame = vvc.decode_luma10(stream.data, layout.width, layout.height)
    except vvc.FfmpegToolError:
        raise  # ffmpeg itself failed (missing, killed, timed out): not the stream's fault
    except (vvc.FfmpegError, ValueError) as e:
        raise InnerCodecError(f"VVC payload could not be decoded: {str(e).splitlines()[0]}") from None
    if frame.shape != (layout.height, layout.width) or int(frame.max(initial=0)) > MAX_CODE:
        raise InnerCodecError(f"VVC picture is not a {layout.width}x{layout.height} 10-bit picture")
    return {"frame": frame.astype(np.uint16)}


def reconstruct(header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
    layout = _layout_of(header)
    shapes = [s.shape for s in header.scales]
    codes = untile(symbols["frame"], shapes, layout)
    arrays = [dequantise(q, s.quant_min, s.quant_max) for q, s in zip(codes, header.scales)]
    return to_features(header, arrays)


# mode_header( ) of container 2.0 (bitstream_spec.md, sections 7.3.1 and 7.3.2): the inner
# QP and preset, and each scale's quantisation range; inner_codec_id VVC_VVENC and
# inner_bit_depth 10 are implied by the mode (the constraint table below)
anchor_scale_range = Struct(
    "quant_min" / finite_field(Float32b, "quant_min"),
    "quant_max" / finite_field(Float32b, "quant_max"),
)
anchor_header = Struct(
    "inner_qp" / Int8ub,
    "inner_preset_id" / id_field(Int8ub, PresetId, "inner_preset_id"),
    "scale_ranges" / Array(this._.num_scales, anchor_scale_range),
)


def _to_header_value(mh: ModeHeader) -> dict:
    return {
        "inner_qp": mh.inner.qp,
        "inner_preset_id": int(mh.inner.preset_id),
        "scale_ranges": [{"quant_min": float(s.quant_min), "quant_max": float(s.quant_max)} for s in mh.scales],
    }


def _from_header_value(value, shapes: Shapes) -> ModeHeader:
    ranges = value.scale_ranges
    scales = shaped_scales(shapes, quant_min=[r.quant_min for r in ranges], quant_max=[r.quant_max for r in ranges])
    inner = InnerCodecParams(InnerCodecId.VVC_VVENC, value.inner_qp, PresetId(value.inner_preset_id), BIT_DEPTH)
    return ModeHeader(scales, sample_format=SampleFormat.NONE, inner=inner)


# spec table name -> construct (tests/unit/test_spec.py compares them with the spec)
SYNTAX_STRUCTURES = {"anchor_header": anchor_header, "anchor_scale_range": anchor_scale_range}
HEADER_SYNTAX = ModeHeaderSyntax(anchor_header, _to_header_value, _from_header_value)

# header constraints (bitstream_spec.md, section 7.3); shared with vvc_msff
VVC_HEADER_RULES = {
    "sample_format": enum_rule(SampleFormat.NONE),
    "inner_codec_id": enum_rule(InnerCodecId.VVC_VVENC),
    "inner_qp": in_range(*QP_RANGE),
    "inner_preset_id": enum_rule(*(p for p in PresetId if p != PresetId.NONE)),
    "inner_bit_depth": is_(BIT_DEPTH),
}
HEADER_RULES = {**VVC_HEADER_RULES, **NO_CODEC_MODEL, **NO_ENTROPY_CODER}
SCALE_RANGE = Rule("the scale's range (below)")  # finite, quant_min <= quant_max: section 5.3
SCALE_RULES = {
    "phi_index": is_(0),
    "kept_channels": EQUALS_SCALE_CHANNELS,
    "quant_min": SCALE_RANGE,
    "quant_max": SCALE_RANGE,
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
    description="MPEG FCM feature anchor: tiled 10-bit min-max quantised features through VVC",
)
decode = MODE.decode

__all__ = [
    "MODE",
    "Params",
    "FrameLayout",
    "dequantise",
    "frame_layout",
    "grid_shape",
    "quantise",
    "tile",
    "untile",
]
