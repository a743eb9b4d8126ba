"""Mode "mpeg_anchor_ps": the MPEG feature anchor's procedure with one frame and one QP
per scale (bitstream_spec.md, section 7.9), MFIBA's second base codec (issue 10, item 5).

Every scale is converted as mode mpeg_anchor converts the set of scales (one range per
set, 10-bit codes, the near-square divisor grid of codec/modes/mpeg_anchor.py, MidLevel
chroma), but alone: scale i is its own monochrome frame, coded as one all-intra VVC
picture at its own QP_i into its own VVC_NAL_STREAM unit (unit_scale_index i). The mode
header carries QP_i of every scale.

The allocation is the encoder's choice (the decoder only reads the QPs):

* ``--qp Q``: every scale at Q (32 when nothing else is given);
* ``--qps 32,37,42``: a QP per scale, finest first;
* ``--target-bpp B`` or ``--lambda L``: MFIBA (codec/allocation/mfiba.py) on the quality
  index q = QP_MAX - QP (a higher index spends more bits, as phi does for learned_ps),
  with a log-linear rate-QP model ln R_i = a_i q + b_i per scale in place of the rate-phi
  line, and the task loss-rate model fitted offline (mpeg_anchor_ps.mfiba.json, written
  by ``python -m tools.fit_mfiba --codec mpeg_anchor_ps``). ``--mfip-levels`` are the QPs
  MFIP precodes every scale at, ``--allocation`` mfiba, mfiba_ft or uniform (exhaustive
  is refused: it would code every scale at all 64 QPs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from construct import Array, Float32b, Int8ub, Struct, this

from codec.allocation.options import allocation_option, lambda_option, target_bpp_option
from codec.bitstream import (
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
)
from codec.bitstream.container import ModeHeaderSyntax
from codec.bitstream.syntax import finite_field, id_field
from codec.errors import EncodeError, MalformedError
from codec.inner import vvc

from . import anchor, mpeg_anchor
from .base import (
    NO_CODEC_MODEL,
    NO_ENTROPY_CODER,
    CodingMode,
    EncodeContext,
    Rule,
    Shapes,
    Weights,
    is_,
    option,
    scale_arrays,
    shaped_scales,
    to_features,
    units_of_type,
)

if TYPE_CHECKING:
    import torch

    from codec.vision.base import Features, SplitPoint

MODE_ID = ModeId.MPEG_ANCHOR_PS
NAME = "mpeg_anchor_ps"
QP_RANGE = mpeg_anchor.QP_RANGE  # 0..63
QP_MAX = QP_RANGE[1]
NUM_QUALITIES = QP_RANGE[1] - QP_RANGE[0] + 1  # quality index q = QP_MAX - QP
DEFAULT_QP = 32

# MFIBA's offline fits per network/split (alpha, beta of the task loss-rate model and the
# rate-QP lines), with the sha256 of the network weights they were fitted with
FITTED_FILE = Path(__file__).resolve().parent / "mpeg_anchor_ps.mfiba.json"


@dataclass(frozen=True)
class Params:
    qp: int | None = option(
        None,
        f"VVC QP of every scale (the slice QP); {DEFAULT_QP} unless --qps, --target-bpp or --lambda chooses",
        kind=int,
        range=QP_RANGE,
        rate=True,
    )
    qps: str | None = option(
        None, "a VVC QP per scale, comma-separated, finest first (e.g. 32,37,42)", kind=str,
        what="comma-separated QPs, one per scale",
    )  # fmt: skip
    target_bpp: float | None = target_bpp_option()
    lambda_: float | None = lambda_option()
    allocation: str = allocation_option("QP")
    mfip_levels: str = option(
        "27,37,47", "QPs MFIP precodes every scale at (comma-separated)", kind=str, what="comma-separated QPs"
    )
    preset: str = option("faster", "VVenC preset (informative for the decoder)", choices=vvc.VVENC_PRESETS)
    range_min: float | None = option(
        None,
        "lower end of the set's quantisation range (default: the network's recorded range, "
        "codec/modes/mpeg_anchor_ranges.json)",
        kind=float,
    )
    range_max: float | None = option(None, "upper end of the set's quantisation range", kind=float)


def quality_of(qp: int) -> int:
    """MFIBA's quality index of a QP (higher spends more bits)."""
    return QP_MAX - int(qp)


def qp_of(q: int) -> int:
    return QP_MAX - int(q)


def parse_qps(text: str, what: str, count: int | None = None) -> list[int]:
    """'32,37,42' -> [32, 37, 42], every one in QP_RANGE; EncodeError (one line) otherwise."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise EncodeError(f"{NAME} {what} must be comma-separated integers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise EncodeError(f"{NAME} {what} needs {count} values (one per scale), got {len(values)}")
    for v in values:
        if not QP_RANGE[0] <= v <= QP_RANGE[1]:
            raise EncodeError(f"{NAME} {what}: a QP must be in {QP_RANGE[0]}..{QP_RANGE[1]}, got {v}")
    return values


def scale_layout(shape: tuple[int, int, int]) -> mpeg_anchor.FrameLayout:
    """The frame of one scale: mpeg_anchor's layout of that scale alone (its near-square grid)."""
    return mpeg_anchor.frame_layout([shape])


def encode_scale(array: np.ndarray, lo32: np.float32, hi32: np.float32, qp: int, preset: str) -> bytes:
    """Scale (C, H, W) float32 -> one all-intra VVC picture at `qp` (mpeg_anchor's conversion)."""
    return mpeg_anchor.encode_frame([mpeg_anchor.quantise(array, lo32, hi32)], lo32, hi32, qp, preset)


def decode_scale(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """One scale's VVC picture -> its (C, H, W) uint16 codes."""
    layout = scale_layout(shape)
    return mpeg_anchor.untile(mpeg_anchor.decode_frame(data, layout), [shape], layout)[0]


class VvcScaleCoder:
    """MFIBA's ScaleCoder for this mode: scale i at quality index q = QP_MAX - QP coded as the
    encoder codes it (bits of the VVC picture) and decoded as the decoder decodes it. Keeps
    every picture it coded, so that the encoder writes the ones the allocation measured."""

    num_qualities = NUM_QUALITIES

    def __init__(self, lo32: np.float32, hi32: np.float32, preset: str) -> None:
        self.lo32, self.hi32, self.preset = lo32, hi32, preset
        self.streams: dict[tuple[int, int], bytes] = {}
        self.encodes = 0

    def stream(self, i: int, array: np.ndarray, qp: int) -> bytes:
        key = (int(i), int(qp))
        if key not in self.streams:
            self.streams[key] = encode_scale(array, self.lo32, self.hi32, qp, self.preset)
            self.encodes += 1
        return self.streams[key]

    def scale_bits(self, i: int, x: torch.Tensor, q: int) -> int:
        return 8 * len(self.stream(i, x[0].numpy(), qp_of(q)))

    def scale_rec(self, i: int, x: torch.Tensor, q: int) -> torch.Tensor:
        import torch

        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        codes = decode_scale(self.stream(i, x[0].numpy(), qp_of(q)), shape)
        return torch.from_numpy(mpeg_anchor.dequantise(codes, self.lo32, self.hi32)).unsqueeze(0)


def fitted_key(network: str, split: str) -> str:
    return f"{network}/{split}"


def load_fitted(network: Any, split: str, path: Path | None = None) -> Any:
    """The fitted models of network/split (mfiba.FittedModels), checked against the sha256 of
    the network weights in use (EncodeError when none fits)."""
    from codec.allocation import mfiba

    path = FITTED_FILE if path is None else path
    name = getattr(network, "name", str(network))
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise EncodeError(f"{NAME} MFIBA needs its fitted models: {path.name} missing or not JSON") from None
    key = fitted_key(name, split)
    if key not in table:
        raise EncodeError(f"{path.name} has no models fitted for {key} (python -m tools.fit_mfiba --codec {NAME})")
    fitted = mfiba.FittedModels.from_json(table[key])
    if fitted.rate_model != "log_linear" or fitted.num_qualities != NUM_QUALITIES:
        raise EncodeError(f"{path.name} {key}: not a log-linear rate-QP model over {NUM_QUALITIES} QPs")
    sha = getattr(network, "weights_sha256", None)
    if callable(sha) and fitted.codec_weights_sha256 != sha():
        raise EncodeError(f"{path.name} {key} was fitted with other network weights (sha256 differs)")
    return fitted


def requested_allocation(params: Params) -> str:
    """ "qp", "qps", "target_bpp" or "lambda" (none given: "qp")."""
    given = [n for n, v in (("qp", params.qp), ("qps", params.qps), ("target_bpp", params.target_bpp),
                            ("lambda", params.lambda_)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise EncodeError(f"{NAME}: give one of --qp, --qps, --target-bpp, --lambda (got {', '.join(given)})")
    return given[0] if given else "qp"


def header_and_units(
    arrays: list[tuple[str, np.ndarray]],
    qps: list[int],
    pid: PresetId,
    lo32: np.float32,
    hi32: np.float32,
    streams: list[bytes] | None,
) -> tuple[ModeHeader, list[PayloadUnit]]:
    """The mode header and one VVC_NAL_STREAM unit per scale (`streams` None: empty units,
    the container's size without the pictures, for a rate target)."""
    scales = tuple(
        ScaleHeader(name=name, channels=a.shape[0], height=a.shape[1], width=a.shape[2], phi_index=qp,
                    kept_channels=a.shape[0], quant_min=float(lo32), quant_max=float(hi32))
        for (name, a), qp in zip(arrays, qps)
    )  # fmt: skip
    header = ModeHeader(
        scales=scales,
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(InnerCodecId.VVC_VVENC, 0, pid, mpeg_anchor.BIT_DEPTH),
    )
    units = [
        PayloadUnit(UnitType.VVC_NAL_STREAM, streams[i] if streams is not None else b"", scale_index=i)
        for i in range(len(arrays))
    ]
    return header, units


def encode(
    features: Features, split_point: SplitPoint, params: Params, context: EncodeContext | None = None
) -> tuple[ModeHeader, list[PayloadUnit]]:
    pid = mpeg_anchor.encoder_preset(params.preset)
    lo32, hi32 = mpeg_anchor.encoder_range(split_point, params.range_min, params.range_max)
    arrays = scale_arrays(features, split_point)
    for name, a in arrays:
        if not np.isfinite(a).all():
            raise EncodeError(f"scale {name}: features contain NaN or infinite values")
    for _, a in arrays:
        mpeg_anchor.check_frame_size(scale_layout((a.shape[0], a.shape[1], a.shape[2])))
    k = len(arrays)
    coder = VvcScaleCoder(lo32, hi32, params.preset)
    how = requested_allocation(params)
    if how == "qp":
        qps = [mpeg_anchor.check_qp(params.qp if params.qp is not None else DEFAULT_QP)] * k
    elif how == "qps":
        qps = parse_qps(params.qps or "", "--qps", k)
    else:
        qps = allocate(arrays, coder, pid, params, context)
    streams = [coder.stream(i, a, qp) for i, ((_, a), qp) in enumerate(zip(arrays, qps))]
    return header_and_units(arrays, qps, pid, lo32, hi32, streams)


def allocate(
    arrays: list[tuple[str, np.ndarray]],
    coder: VvcScaleCoder,
    pid: PresetId,
    params: Params,
    context: EncodeContext | None,
    **shared: Any,
) -> list[int]:
    """The QP of every scale chosen by MFIBA (codec/allocation/mfiba.py) for --target-bpp or
    --lambda; `shared` (store, task_loss) lets an evaluation share work between targets."""
    from codec.allocation import mfiba

    if context is None:
        raise EncodeError(f"{NAME} --target-bpp / --lambda need the network and image (the pipeline's context)")
    if params.target_bpp is not None and not params.target_bpp > 0:
        raise EncodeError(f"{NAME} --target-bpp must be positive, got {params.target_bpp}")
    if params.lambda_ is not None and not params.lambda_ > 0:
        raise EncodeError(f"{NAME} --lambda must be positive, got {params.lambda_}")
    k = len(arrays)
    empty_header, empty_units = header_and_units(arrays, [DEFAULT_QP] * k, pid, coder.lo32, coder.hi32, None)
    overhead_bits = context.container_bits(empty_header, empty_units)
    levels = [quality_of(qp) for qp in parse_qps(params.mfip_levels, "--mfip-levels")]
    fitted = load_fitted(context.network, context.split)
    plan = mfiba.allocate(
        coder,
        fitted,
        arrays,
        context,
        target_bits=None if params.target_bpp is None else params.target_bpp * context.image_pixels - overhead_bits,
        lam=params.lambda_,
        allocation=params.allocation,
        levels=levels,
        **shared,
    )
    return [qp_of(q) for q in plan.phis]


def _check_header(header: ContainerHeader) -> list[int]:
    """The header checks; returns QP_i of every scale."""
    mpeg_anchor.check_vvc_header(header, NAME)
    qps = [s.phi_index for s in header.scales]
    for i, (s, qp) in enumerate(zip(header.scales, qps)):
        if not QP_RANGE[0] <= qp <= QP_RANGE[1]:
            raise MalformedError(f"{NAME}: inner_qps[{i}] ({s.name}) is {qp}, not in {QP_RANGE[0]}..{QP_RANGE[1]}")
        mpeg_anchor.check_frame_size(scale_layout(s.shape))
    return qps


def _streams(units: list[PayloadUnit], num_scales: int) -> list[PayloadUnit]:
    streams = units_of_type(units, UnitType.VVC_NAL_STREAM)
    if len(streams) != num_scales or len(units) != num_scales:
        raise MalformedError(
            f"{NAME} needs one VVC_NAL_STREAM unit per scale ({num_scales}), got {len(streams)} of {len(units)} units"
        )
    for i, u in enumerate(streams):
        if u.scale_index != i:
            raise MalformedError(f"VVC_NAL_STREAM unit {i} must have unit_scale_index {i}, got {u.scale_index}")
        if not u.data:
            raise MalformedError(f"VVC_NAL_STREAM unit {i} is empty")
    return streams


def validate(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
    _check_header(header)
    _streams(units, len(header.scales))


def decode_symbols(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> dict[str, np.ndarray]:
    """{"frame<i>": the decoded 10-bit frame of scale i (FrameHeight_i, FrameWidth_i), uint16}."""
    _check_header(header)
    out = {}
    for i, (s, u) in enumerate(zip(header.scales, _streams(units, len(header.scales)))):
        out[f"frame{i}"] = mpeg_anchor.decode_frame(u.data, scale_layout(s.shape))
    return out


def reconstruct(header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
    _check_header(header)
    lo, hi = mpeg_anchor.set_range_of(header, NAME)
    arrays = []
    for i, s in enumerate(header.scales):
        key = f"frame{i}"
        if key not in symbols:
            raise MalformedError(f"{NAME} symbols lack {key}")
        layout = scale_layout(s.shape)
        codes = mpeg_anchor.untile(symbols[key], [s.shape], layout)[0]
        arrays.append(mpeg_anchor.dequantise(codes, lo, hi))
    return to_features(header, arrays)


# mode_header( ) (bitstream_spec.md, section 7.9.1): a QP per scale, the preset and the set's range
mpeg_anchor_ps_header = Struct(
    "inner_qps" / Array(this._.num_scales, Int8ub),
    "inner_preset_id" / id_field(Int8ub, PresetId, "inner_preset_id"),
    "range_min" / finite_field(Float32b, "range_min"),
    "range_max" / finite_field(Float32b, "range_max"),
)


def _to_header_value(mh: ModeHeader) -> dict:
    return {
        "inner_qps": [s.phi_index for s in mh.scales],
        "inner_preset_id": int(mh.inner.preset_id),
        "range_min": float(mh.scales[0].quant_min),
        "range_max": float(mh.scales[0].quant_max),
    }


def _from_header_value(value, shapes: Shapes) -> ModeHeader:
    scales = shaped_scales(
        shapes, phi_index=list(value.inner_qps), quant_min=value.range_min, quant_max=value.range_max
    )
    inner = InnerCodecParams(InnerCodecId.VVC_VVENC, 0, PresetId(value.inner_preset_id), mpeg_anchor.BIT_DEPTH)
    return ModeHeader(scales, sample_format=SampleFormat.NONE, inner=inner)


SYNTAX_STRUCTURES = {"mpeg_anchor_ps_header": mpeg_anchor_ps_header}
HEADER_SYNTAX = ModeHeaderSyntax(mpeg_anchor_ps_header, _to_header_value, _from_header_value)

HEADER_RULES = {
    **anchor.VVC_HEADER_RULES,
    "inner_qp": is_(0),  # the QPs are per scale (inner_qps)
    **NO_CODEC_MODEL,
    **NO_ENTROPY_CODER,
}
SCALE_RULES = {
    "phi_index": Rule(f"QP_i = inner_qps[ i ], {QP_RANGE[0]}..{QP_RANGE[1]}", range(QP_RANGE[0], QP_RANGE[1] + 1)),
    "kept_channels": mpeg_anchor.SCALE_RULES["kept_channels"],
    "quant_min": mpeg_anchor.SET_RANGE,
    "quant_max": mpeg_anchor.SET_RANGE_MAX,
}


def describe_params(params: Params) -> str:
    """The effective allocation first (qp 32 when none is given), the allocation options only
    when an allocation searches."""
    how = requested_allocation(params)
    if how == "qp":
        parts = [f"qp {params.qp if params.qp is not None else DEFAULT_QP}"]
    elif how == "qps":
        parts = [f"qps {params.qps}"]
    else:
        value = params.target_bpp if how == "target_bpp" else params.lambda_
        parts = [f"{how} {value}", f"allocation {params.allocation}", f"mfip_levels {params.mfip_levels}"]
    parts.append(f"preset {params.preset}")
    if params.range_min is not None:
        parts.append(f"range {params.range_min}..{params.range_max}")
    return ", ".join(parts)


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
    sources=(
        "codec/modes/mpeg_anchor.py",
        "codec/modes/mpeg_anchor_ranges.json",
        "codec/allocation",
        "codec/modes/mpeg_anchor_ps.mfiba.json",
    ),  # fmt: skip
    description="the MPEG feature anchor's procedure with one frame and one QP per scale (MFIBA allocation, "
    "rate control)",
    uses_context=True,
    describe_params=describe_params,
)
decode = MODE.decode
