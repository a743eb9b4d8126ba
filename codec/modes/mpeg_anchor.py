"""Mode "mpeg_anchor": the feature anchor as the MPEG FCM evaluation platform defines it
(bitstream_spec.md, section 7.7), point by point:

* quantisation with one range for the whole set (MPEG's per-dataset (min, max), computed
  over the set's features and recorded): q = Floor(Clamp((x - Min) / (Max - Min), 0, 1) x 1023)
  in float32; x = q / 1023 x (Max - Min) + Min at the decoder;
* packing without filler: the largest scale is tiled on the near-square divisor grid
  (TileRows x TileCols = C with the short edge the largest divisor of C not above sqrt(C)),
  which sets the frame width; every other scale is re-tiled to that width (as many channels
  per row as fit) and the scales are stacked top to bottom, largest first;
* all-intra coding at the nominal QP: vvenc's all-intra configuration (intra period 1, no
  intra QP offset: the coded slice QP is the requested one, and the all-intra SPS);
* 4:0:0 is not available (libvvenc through ffmpeg takes yuv420p10le only): the frame is the
  luma of a 4:2:0 picture whose chroma is the mid level, the code of 0.0, as the platform writes
  chroma for its 4:2:0 configurations.

Remaining deviations from the platform (README, spec section 7.7): VVenC instead of VTM (its
preset is the encoder strength), and 4:2:0 instead of 4:0:0.

The per-image range anchor of section 7.3 stays decodable (mode "anchor").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from construct import Float32b, Int8ub, Struct

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

from . import anchor
from .base import (
    NO_CODEC_MODEL,
    NO_ENTROPY_CODER,
    CodingMode,
    Rule,
    Weights,
    check_scale,
    option,
    scale_arrays,
    shaped_scales,
    to_features,
)

if TYPE_CHECKING:
    from codec.vision.base import Features, SplitPoint

MODE_ID = ModeId.MPEG_ANCHOR
NAME = "mpeg_anchor"

BIT_DEPTH = anchor.BIT_DEPTH
MAX_CODE = anchor.MAX_CODE  # 1023
QP_RANGE = anchor.QP_RANGE

# The recorded set ranges (MPEG's MIN_MAX_DATASET): per network/split, the range of the
# uncompressed features over a named image set, with the command that computed it
# (tools/feature_range.py). fcm_enc uses the network's entry unless a range is given.
RANGES_FILE = Path(__file__).resolve().parent / "mpeg_anchor_ranges.json"


def recorded_ranges() -> dict[str, dict]:
    return json.loads(RANGES_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Params:
    qp: int = option(32, "VVC quantisation parameter (coded as the slice QP)", range=QP_RANGE, rate=True)
    preset: str = option("faster", "VVenC preset (informative for the decoder)", choices=vvc.VVENC_PRESETS)
    range_min: float | None = option(
        None,
        "lower end of the set's quantisation range (default: the network's recorded range, "
        "codec/modes/mpeg_anchor_ranges.json)",
        kind=float,
    )
    range_max: float | None = option(None, "upper end of the set's quantisation range", kind=float)


def grid_shape(channels: int, height: int, width: int) -> tuple[int, int]:
    """(TileRows, TileCols) of MPEG's near-square divisor grid for C channels of H x W: the
    short edge is the largest divisor of C not above sqrt(C); it runs along the frame width
    unless the channels are taller than wide."""
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    short = math.isqrt(channels)
    while channels % short:
        short -= 1
    long = channels // short
    return (short, long) if height > width else (long, short)


@dataclass(frozen=True)
class FrameLayout:
    width: int  # FrameWidth
    height: int  # FrameHeight
    grids: tuple[tuple[int, int], ...]  # (TileRows, TileCols) per scale, in header order
    y_offsets: tuple[int, ...]  # ScaleY per scale, in header order
    order: tuple[int, ...]  # header indices in packing order (largest first)


def frame_layout(shapes: list[tuple[int, int, int]]) -> FrameLayout:
    """Layout of scales of shape (C, H, W), in header order."""
    order = sorted(range(len(shapes)), key=lambda i: -(shapes[i][0] * shapes[i][1] * shapes[i][2]))  # stable
    c0, h0, w0 = shapes[order[0]]
    width = max(grid_shape(c0, h0, w0)[1] * w0, max(w for _, _, w in shapes))
    grids: dict[int, tuple[int, int]] = {}
    offsets: dict[int, int] = {}
    y = 0
    for i in order:
        c, h, w = shapes[i]
        cols = grid_shape(c, h, w)[1] if i == order[0] else min(c, width // w)
        rows = -(-c // cols)
        grids[i], offsets[i] = (rows, cols), y
        y += rows * h
    n = len(shapes)
    return FrameLayout(
        width=width,
        height=y,
        grids=tuple(grids[i] for i in range(n)),
        y_offsets=tuple(offsets[i] for i in range(n)),
        order=tuple(order),
    )


def check_frame_size(layout: FrameLayout) -> None:
    if layout.width > anchor.MAX_FRAME_DIM or layout.height > anchor.MAX_FRAME_DIM:
        raise SizeLimitError(
            f"mpeg_anchor frame {layout.width}x{layout.height} exceeds {anchor.MAX_FRAME_DIM} in a dimension"
        )
    if layout.width * layout.height > anchor.MAX_FRAME_SAMPLES:
        raise SizeLimitError(
            f"mpeg_anchor frame {layout.width}x{layout.height} exceeds {anchor.MAX_FRAME_SAMPLES} samples"
        )


def check_range(lo: float | np.floating, hi: float | np.floating) -> tuple[np.float32, np.float32]:
    lo32, hi32 = np.float32(lo), np.float32(hi)
    with np.errstate(over="ignore", invalid="ignore"):
        width = np.float32(hi32 - lo32)
    if not (np.isfinite(lo32) and np.isfinite(hi32) and lo32 < hi32 and np.isfinite(width)):
        raise ValueError(f"the quantisation range must be finite with min < max, got {lo}..{hi}")
    return lo32, hi32


def quantise(x: np.ndarray, lo: float | np.floating, hi: float | np.floating) -> np.ndarray:
    """MPEG's min_max_normalization in float32: q = Floor(Clamp((x - Min) / (Max - Min), 0, 1)
    x 1023), as uint16."""
    lo32, hi32 = check_range(lo, hi)
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise EncodeError("features contain NaN or infinite values; the anchor modes need finite features")
    t = np.clip((x - lo32) / np.float32(hi32 - lo32), np.float32(0), np.float32(1))
    return np.floor(t * np.float32(MAX_CODE)).astype(np.uint16)


def dequantise(q: np.ndarray, lo: float | np.floating, hi: float | np.floating) -> np.ndarray:
    """x = q / 1023 x (Max - Min) + Min in float32 (each operation rounded to float32)."""
    lo32, hi32 = check_range(lo, hi)
    t = q.astype(np.float32) / np.float32(MAX_CODE)
    return (t * np.float32(hi32 - lo32) + lo32).astype(np.float32)


def mid_level(lo: float | np.floating, hi: float | np.floating) -> int:
    """The code of 0.0 (MPEG's mid level, clamped to the code range): the value of samples that
    carry no channel and of the chroma planes."""
    lo32, hi32 = check_range(lo, hi)
    v = int(math.floor(float(-lo32 / (hi32 - lo32)) * MAX_CODE + 0.5))
    return min(max(v, 0), MAX_CODE)


def tile(codes: list[np.ndarray], layout: FrameLayout, fill: int) -> np.ndarray:
    frame = np.full((layout.height, layout.width), fill, dtype=np.uint16)
    for q, (rows, cols), y0 in zip(codes, layout.grids, layout.y_offsets):
        c, h, w = q.shape
        padded = np.full((rows * cols, h, w), fill, dtype=np.uint16)
        padded[:c] = q
        frame[y0 : y0 + rows * h, : cols * w] = (
            padded.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)
        )
    return frame


def untile(frame: np.ndarray, shapes: list[tuple[int, int, int]], layout: FrameLayout) -> list[np.ndarray]:
    out = []
    for (c, h, w), (rows, cols), y0 in zip(shapes, layout.grids, layout.y_offsets):
        grid = frame[y0 : y0 + rows * h, : cols * w]
        tiles = grid.reshape(rows, h, cols, w).transpose(0, 2, 1, 3).reshape(rows * cols, h, w)
        out.append(np.ascontiguousarray(tiles[:c]))
    return out


def scales_signature(split_point: SplitPoint) -> list[list]:
    return [[sc.name, sc.channels, sc.stride] for sc in split_point.scales]


def default_range(split_point: SplitPoint) -> tuple[float, float]:
    """The recorded range whose split point (name, scales, channels, strides) is this one; an
    EncodeError when none or several networks' entries match (then give the range)."""
    sig = scales_signature(split_point)
    hits = [
        (k, e) for k, e in recorded_ranges().items() if e.get("split") == split_point.name and e.get("scales") == sig
    ]
    if len(hits) != 1:
        raise EncodeError(
            f"{'no' if not hits else 'more than one'} recorded quantisation range for split point "
            f"{split_point.name!r} ({', '.join(k for k, _ in hits) or 'none'}): give range_min and range_max "
            "(python -m tools.feature_range computes one)"
        )
    return float(hits[0][1]["min"]), float(hits[0][1]["max"])


def check_qp(qp: object) -> int:
    """An encoder's QP: an int in QP_RANGE (EncodeError otherwise)."""
    if isinstance(qp, bool) or not isinstance(qp, int) or not QP_RANGE[0] <= qp <= QP_RANGE[1]:
        raise EncodeError(f"qp must be an integer in {QP_RANGE[0]}..{QP_RANGE[1]}, got {qp!r}")
    return qp


def encoder_preset(preset: str) -> PresetId:
    try:
        return preset_id(preset)
    except ValueError as e:
        raise EncodeError(str(e)) from None


def encoder_range(
    split_point: SplitPoint, range_min: float | None, range_max: float | None
) -> tuple[np.float32, np.float32]:
    """The set's range an encoder uses: the one given, else the split point's recorded one."""
    if (range_min is None) != (range_max is None):
        raise EncodeError("give both range_min and range_max, or neither")
    if range_min is None or range_max is None:
        lo, hi = default_range(split_point)
    else:
        lo, hi = float(range_min), float(range_max)
    try:
        return check_range(lo, hi)
    except ValueError as e:
        raise EncodeError(str(e)) from None


def encode_frame(codes: list[np.ndarray], lo32: np.float32, hi32: np.float32, qp: int, preset: str) -> bytes:
    """Scales' 10-bit codes (C, H, W) tiled into one frame (frame_layout) and coded as one
    all-intra VVC picture at `qp`, chroma and uncovered samples at the mid level."""
    layout = frame_layout([(q.shape[0], q.shape[1], q.shape[2]) for q in codes])
    try:
        check_frame_size(layout)
    except SizeLimitError as e:
        raise EncodeError(str(e)) from None
    fill = mid_level(lo32, hi32)
    return vvc.encode_luma10(tile(codes, layout, fill), qp, preset, all_intra=True, chroma_value=fill)


def decode_frame(data: bytes, layout: FrameLayout) -> np.ndarray:
    """One VVC picture -> its (FrameHeight, FrameWidth) 10-bit luma (InnerCodecError)."""
    try:
        frame = vvc.decode_luma10(data, layout.width, layout.height)
    except vvc.FfmpegToolError:
        raise
    except (vvc.FfmpegError, ValueError) as e:
        raise InnerCodecError(f"VVC payload could not be decoded: {str(e).splitlines()[0]}") from None
    if frame.shape != (layout.height, layout.width) or int(frame.max(initial=0)) > MAX_CODE:
        raise InnerCodecError(f"VVC picture is not a {layout.width}x{layout.height} 10-bit picture")
    return frame.astype(np.uint16)


def encode(features: Features, split_point: SplitPoint, params: Params) -> tuple[ModeHeader, list[PayloadUnit]]:
    qp = check_qp(params.qp)
    pid = encoder_preset(params.preset)
    lo32, hi32 = encoder_range(split_point, params.range_min, params.range_max)
    arrays = scale_arrays(features, split_point)
    bitstream = encode_frame([quantise(a, lo32, hi32) for _, a in arrays], lo32, hi32, qp, params.preset)
    scales = tuple(
        ScaleHeader(
            name=name,
            channels=a.shape[0],
            height=a.shape[1],
            width=a.shape[2],
            kept_channels=a.shape[0],
            quant_min=float(lo32),
            quant_max=float(hi32),
        )
        for name, a in arrays
    )
    header = ModeHeader(
        scales=scales,
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(InnerCodecId.VVC_VVENC, qp, pid, BIT_DEPTH),
    )
    return header, [PayloadUnit(UnitType.VVC_NAL_STREAM, bitstream, scale_index=ALL_SCALES)]


def set_range_of(header: ContainerHeader, mode: str = NAME) -> tuple[np.float32, np.float32]:
    """The one range of the set (quant_min, quant_max of every scale), checked."""
    lo, hi = header.scales[0].quant_min, header.scales[0].quant_max
    if any(s.quant_min != lo or s.quant_max != hi for s in header.scales):
        raise MalformedError(f"{mode} needs the same quant_min and quant_max in every scale")
    try:
        return check_range(lo, hi)
    except ValueError as e:
        raise MalformedError(f"{mode}: {e}") from None


def check_vvc_header(header: ContainerHeader, mode: str = NAME) -> None:
    """The header fields the feature anchor's modes share: VVC_VVENC at 10 bits, sample
    format NONE, sane scale sizes, one finite range."""
    inner = header.mode.inner
    if inner.codec_id != InnerCodecId.VVC_VVENC:
        raise MalformedError(f"{mode} mode needs inner_codec_id VVC_VVENC, got {inner.codec_id.name}")
    if inner.bit_depth != BIT_DEPTH:
        raise MalformedError(f"{mode} mode needs inner_bit_depth {BIT_DEPTH}, got {inner.bit_depth}")
    if header.mode.sample_format != SampleFormat.NONE:
        raise MalformedError(f"{mode} mode needs sample_format NONE")
    for i, s in enumerate(header.scales):
        check_scale(s, i)
    set_range_of(header, mode)


def _layout_of(header: ContainerHeader) -> FrameLayout:
    check_vvc_header(header)
    layout = frame_layout([s.shape for s in header.scales])
    check_frame_size(layout)
    return layout


def validate(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
    _layout_of(header)
    anchor._stream_of(units)


def decode_symbols(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> dict[str, np.ndarray]:
    """{"frame": the decoded (FrameHeight, FrameWidth) uint16 10-bit frame}."""
    layout = _layout_of(header)
    stream = anchor._stream_of(units)
    return {"frame": decode_frame(stream.data, layout)}


def reconstruct(header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
    layout = _layout_of(header)
    lo, hi = set_range_of(header)
    codes = untile(symbols["frame"], [s.shape for s in header.scales], layout)
    return to_features(header, [dequantise(q, lo, hi) for q in codes])


# mode_header( ) (bitstream_spec.md, section 7.7.1): the inner QP and preset and the set's range
mpeg_anchor_header = Struct(
    "inner_qp" / Int8ub,
    "inner_preset_id" / id_field(Int8ub, PresetId, "inner_preset_id"),
    "range_min" / finite_field(Float32b, "range_min"),
    "range_max" / finite_field(Float32b, "range_max"),
)


def _to_header_value(mh: ModeHeader) -> dict:
    return {
        "inner_qp": mh.inner.qp,
        "inner_preset_id": int(mh.inner.preset_id),
        "range_min": float(mh.scales[0].quant_min),
        "range_max": float(mh.scales[0].quant_max),
    }


def _from_header_value(value, shapes) -> ModeHeader:
    scales = shaped_scales(shapes, quant_min=value.range_min, quant_max=value.range_max)
    inner = InnerCodecParams(InnerCodecId.VVC_VVENC, value.inner_qp, PresetId(value.inner_preset_id), BIT_DEPTH)
    return ModeHeader(scales, sample_format=SampleFormat.NONE, inner=inner)


SYNTAX_STRUCTURES = {"mpeg_anchor_header": mpeg_anchor_header}
HEADER_SYNTAX = ModeHeaderSyntax(mpeg_anchor_header, _to_header_value, _from_header_value)

SET_RANGE = Rule("range_min of the mode header")
SET_RANGE_MAX = Rule("range_max of the mode header")
HEADER_RULES = {**anchor.VVC_HEADER_RULES, **NO_CODEC_MODEL, **NO_ENTROPY_CODER}
SCALE_RULES = {
    "phi_index": anchor.SCALE_RULES["phi_index"],
    "kept_channels": anchor.SCALE_RULES["kept_channels"],
    "quant_min": SET_RANGE,
    "quant_max": SET_RANGE_MAX,
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
    description="MPEG FCM feature anchor as the platform defines it: one range per set, packing "
    "without filler, all-intra VVC at the nominal QP",
)
decode = MODE.decode

__all__ = [
    "MODE",
    "FrameLayout",
    "Params",
    "dequantise",
    "frame_layout",
    "grid_shape",
    "mid_level",
    "quantise",
    "recorded_ranges",
    "tile",
    "untile",
]
