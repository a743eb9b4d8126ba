"""Mode "learned_ps": the per-scale variable-rate learned feature codec (one small
hyperprior codec with gain units per scale, codec/models/fenet_ps.py; bitstream_spec.md,
section 7.8), with a quality index phi_i per scale.

Scale i is coded by its own codec at its own **phi_index** into its own LATENT_STRING
unit (unit_scale_index i) holding a latent_strings( ) structure, exactly as learned_e2e
codes its one latent (fixed-point entropy parameters, CompressAI's rANS, CRC-32 of the
decoded symbols): any allocation (phi_1, ..., phi_k) decodes bit-exactly.

The allocation is the encoder's choice (the decoder only reads the phi_index values):

* ``--phi P``: uniform, every scale at P (the default, 4);
* ``--phis 3,5,2``: an explicit quality index per scale;
* ``--target-bpp B`` or ``--lambda L``: multiscale feature importance-based bit
  allocation (MFIBA, codec/allocation/mfiba.py): the importance of every scale for the
  task predicted by precoding (MFIP), the closed-form rate of every scale, phi from the
  rate-phi model; with ``--target-bpp`` lambda' is found by bisection so that the
  container lands at B bits per original-image pixel. ``--allocation`` chooses the
  predicted importance (mfiba), the importance fine-tuned by line search (mfiba_ft), the
  exhaustive search on losses measured at every phi of every scale (exhaustive) or one phi
  for every scale (uniform, rate control alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from construct import Array, Bytes, ConstructError, Int8ub, Int16ub, Struct, this

from codec.allocation.options import allocation_option, lambda_option, target_bpp_option
from codec.bitstream import (
    CodecModelId,
    ContainerHeader,
    EntropyCoderId,
    InnerCodecParams,
    ModeHeader,
    ModeId,
    PayloadUnit,
    SampleFormat,
    ScaleHeader,
    UnitType,
)
from codec.bitstream.container import ModeHeaderSyntax
from codec.bitstream.syntax import id_field, latent_strings
from codec.errors import EncodeError, MalformedError
from codec.models.registry import check_model_hash

from .base import (
    EQUALS_SCALE_CHANNELS,
    NO_INNER_CODEC,
    ZERO_HASH,
    CodingMode,
    EncodeContext,
    Rule,
    Shapes,
    Weights,
    enum_rule,
    is_,
    option,
    other_than,
    scale_arrays,
    shaped_scales,
    units_of_type,
)

if TYPE_CHECKING:
    from codec.models.fenet import CompressedLatents
    from codec.models.fenet_ps import PerScaleCodec
    from codec.vision.base import Features, SplitPoint

MODE_ID = ModeId.LEARNED_PS
NAME = "learned_ps"
ENTROPY_PRECISION = 16  # CompressAI's rANS, as learned_e2e
NUM_QUALITIES = 8  # phi 0..7 per scale: the gain-unit rows of the shipped model (checked against the model)
DEFAULT_PHI = 4


@dataclass(frozen=True)
class Params:
    phi: int | None = option(
        None,
        f"uniform quality index of every scale (gain-unit row), higher is better; {DEFAULT_PHI} unless --phis, "
        "--target-bpp or --lambda chooses the allocation",
        kind=int,
        range=(0, NUM_QUALITIES - 1),
        rate=True,
    )
    phis: str | None = option(
        None, "a quality index per scale, comma-separated, finest first (e.g. 3,5,2)", kind=str,
        what="comma-separated indices, one per scale",
    )  # fmt: skip
    target_bpp: float | None = target_bpp_option()
    lambda_: float | None = lambda_option()
    allocation: str = allocation_option("phi")
    mfip_levels: str = option(
        "2,4,6", "quality indices MFIP precodes every scale at (comma-separated)", kind=str,
        what="comma-separated indices",
    )  # fmt: skip
    codec_model: str = option(
        "fenet_ps_nanodet_neck", "codec model (codec_model_id)", choices=("fenet_ps_nanodet_neck",)
    )
    codec_weights: str | None = option(
        None,
        "codec-model weights file instead of the shipped one (the decoder needs the same; MFIBA reads "
        "the fitted models beside it, NAME.mfiba.json)",
        kind=str,
        what="a weights file (.pt beside its .json record)",
    )


MODEL_IDS: tuple[CodecModelId, ...] = (CodecModelId.FENET_PS_NANODET_NECK,)
MODEL_NAMES: dict[str, CodecModelId] = {"fenet_ps_nanodet_neck": CodecModelId.FENET_PS_NANODET_NECK}


def model_for(model_id: CodecModelId, weights: Weights = None) -> tuple[PerScaleCodec, bytes]:
    """(model, sha256 of its weights file) for a codec model id; `weights` overrides the shipped file."""
    from codec.models.registry import load_codec_model

    if model_id not in MODEL_IDS:
        raise MalformedError(f"codec_model_id {int(model_id)} has no learned_ps model")
    return load_codec_model(model_id, weights)


def parse_indices(text: str, what: str, count: int | None = None) -> list[int]:
    """'3,5,2' -> [3, 5, 2]; EncodeError (one line) for anything else."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise EncodeError(f"learned_ps {what} must be comma-separated integers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise EncodeError(f"learned_ps {what} needs {count} values (one per scale), got {len(values)}")
    return values


def check_phis(phis: list[int], num_qualities: int) -> list[int]:
    for p in phis:
        if not 0 <= p < num_qualities:
            raise EncodeError(f"learned_ps quality index phi must be in 0..{num_qualities - 1}, got {p}")
    return phis


def _checked_arrays(features: Features, split_point: SplitPoint) -> list[tuple[str, np.ndarray]]:
    arrays = scale_arrays(features, split_point)  # validates names, batch 1, channels
    for name, a in arrays:
        if not np.isfinite(a).all():
            raise EncodeError(f"scale {name}: features contain NaN or infinite values")
    return arrays


def header_and_units(
    arrays: list[tuple[str, np.ndarray]],
    phis: list[int],
    model_id: CodecModelId,
    digest: bytes,
    compressed: list[CompressedLatents] | None,
) -> tuple[ModeHeader, list[PayloadUnit]]:
    """The mode header and one LATENT_STRING unit per scale; `compressed` None: empty
    strings (the container's size without the latents, for a rate target)."""
    scales = tuple(
        ScaleHeader(name=name, channels=a.shape[0], height=a.shape[1], width=a.shape[2], phi_index=phi,
                    kept_channels=a.shape[0])
        for (name, a), phi in zip(arrays, phis)
    )  # fmt: skip
    header = ModeHeader(
        scales=scales,
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(),
        codec_model_id=model_id,
        codec_model_hash=digest,
        entropy_coder_id=EntropyCoderId.RANS_COMPRESSAI,
        entropy_precision=ENTROPY_PRECISION,
    )
    units = []
    for i in range(len(arrays)):
        c = compressed[i] if compressed is not None else None
        data = latent_strings.build(
            dict(
                hyper_symbols_crc32=c.z_crc32 if c else 0,
                latent_symbols_crc32=c.y_crc32 if c else 0,
                hyper_data=c.z_string if c else b"",
                latent_data=c.y_string if c else b"",
            )
        )
        units.append(PayloadUnit(UnitType.LATENT_STRING, data, scale_index=i))
    return header, units


def encode_with_model(
    features: Features,
    split_point: SplitPoint,
    phis: list[int],
    model: PerScaleCodec,
    model_id: CodecModelId,
    digest: bytes,
) -> tuple[ModeHeader, list[PayloadUnit]]:
    """Every scale at its quality index (an allocation already chosen)."""
    import torch

    arrays = _checked_arrays(features, split_point)
    phis = check_phis(list(phis), model.cfg.num_qualities)
    if len(phis) != len(arrays):
        raise EncodeError(f"learned_ps needs {len(arrays)} quality indices (one per scale), got {len(phis)}")
    compressed = model.compress([torch.from_numpy(a).unsqueeze(0) for _, a in arrays], phis)
    return header_and_units(arrays, phis, model_id, digest, compressed)


def _model_of(split_point: SplitPoint, params: Params) -> tuple[PerScaleCodec, CodecModelId, bytes]:
    if params.codec_model not in MODEL_NAMES:
        raise EncodeError(f"unknown learned_ps codec model {params.codec_model!r}; choose {', '.join(MODEL_NAMES)}")
    model_id = MODEL_NAMES[params.codec_model]
    model, digest = model_for(model_id, params.codec_weights)
    if tuple(model.cfg.scales) != tuple(split_point.scales):
        raise EncodeError(f"codec model {params.codec_weights or params.codec_model} is not for split point "
                          f"{split_point.name!r}")  # fmt: skip
    return model, model_id, digest


def requested_allocation(params: Params) -> str:
    """Which of the exclusive ways of choosing phi the parameters ask for: "phi", "phis",
    "target_bpp" or "lambda" (none given: "phi", the default)."""
    given = [n for n, v in (("phi", params.phi), ("phis", params.phis), ("target_bpp", params.target_bpp),
                            ("lambda", params.lambda_)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise EncodeError(f"learned_ps: give one of --phi, --phis, --target-bpp, --lambda (got {', '.join(given)})")
    return given[0] if given else "phi"


def encode(
    features: Features, split_point: SplitPoint, params: Params, context: EncodeContext | None = None
) -> tuple[ModeHeader, list[PayloadUnit]]:
    model, model_id, digest = _model_of(split_point, params)
    k = len(split_point.scales)
    how = requested_allocation(params)
    if how == "phi":
        phis = [params.phi if params.phi is not None else DEFAULT_PHI] * k
    elif how == "phis":
        phis = parse_indices(params.phis or "", "--phis", k)
    else:
        if context is None:
            raise EncodeError("learned_ps --target-bpp / --lambda need the network and image (the pipeline's context)")
        from codec.allocation import mfiba

        if params.target_bpp is not None and not params.target_bpp > 0:
            raise EncodeError(f"learned_ps --target-bpp must be positive, got {params.target_bpp}")
        if params.lambda_ is not None and not params.lambda_ > 0:
            raise EncodeError(f"learned_ps --lambda must be positive, got {params.lambda_}")
        arrays = _checked_arrays(features, split_point)
        empty_header, empty_units = header_and_units(arrays, [0] * k, model_id, digest, None)
        overhead_bits = context.container_bits(empty_header, empty_units)
        levels = check_phis(parse_indices(params.mfip_levels, "--mfip-levels"), model.cfg.num_qualities)
        fitted = mfiba.load_fitted(params.codec_weights, model_id, digest)
        plan = mfiba.allocate(
            model,
            fitted,
            arrays,
            context,
            target_bits=None if params.target_bpp is None else params.target_bpp * context.image_pixels - overhead_bits,
            lam=params.lambda_,
            allocation=params.allocation,
            levels=levels,
        )
        phis = plan.phis
    return encode_with_model(features, split_point, phis, model, model_id, digest)


def _check_structure(header: ContainerHeader) -> list[int]:
    """Header checks that need no model; returns the phi of every scale."""
    m = header.mode
    if m.entropy_coder_id != EntropyCoderId.RANS_COMPRESSAI or m.entropy_precision != ENTROPY_PRECISION:
        raise MalformedError(
            f"learned_ps needs entropy_coder_id RANS_COMPRESSAI with precision {ENTROPY_PRECISION}, "
            f"got {m.entropy_coder_id.name} / {m.entropy_precision}"
        )
    if m.sample_format != SampleFormat.NONE or m.inner.codec_id != 0:
        raise MalformedError("learned_ps needs sample_format NONE and inner_codec_id NONE")
    for i, s in enumerate(header.scales):
        if s.kept_channels != s.channels or s.quant_min != 0.0 or s.quant_max != 0.0:
            raise MalformedError(f"scale {i} ({s.name}): kept_channels must equal scale_channels, quant_* 0.0")
    return [s.phi_index for s in header.scales]


def _check_header(header: ContainerHeader, model: PerScaleCodec, digest: bytes) -> list[int]:
    phis = _check_structure(header)
    check_model_hash(header.mode.codec_model_hash, digest)
    want = [(s.name, s.channels) for s in model.cfg.scales]
    got = [(s.name, s.channels) for s in header.scales]
    if got != want:
        raise MalformedError(f"learned_ps model has scales {want}, header has {got}")
    for i, (s, phi) in enumerate(zip(header.scales, phis)):
        if phi >= model.cfg.num_qualities:
            raise MalformedError(
                f"phi_index {phi} of scale {i} ({s.name}) exceeds the model's {model.cfg.num_qualities} quality indices"
            )
        model.codec(i).check_symbol_counts([(s.height, s.width)])
    return phis


def _latents(units: list[PayloadUnit], num_scales: int) -> list:
    strings = units_of_type(units, UnitType.LATENT_STRING)
    if len(strings) != num_scales or len(units) != num_scales:
        raise MalformedError(
            f"learned_ps needs one LATENT_STRING unit per scale ({num_scales}), "
            f"got {len(strings)} of {len(units)} units"
        )
    out = []
    for i, u in enumerate(strings):
        if u.scale_index != i:
            raise MalformedError(f"LATENT_STRING unit {i} must have unit_scale_index {i}, got {u.scale_index}")
        try:
            out.append(latent_strings.parse(u.data))
        except ConstructError:
            raise MalformedError(f"LATENT_STRING unit {i}: unit_data is not a latent_strings( ) structure") from None
    return out


def validate(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
    """The header fields and payload units without entropy decoding: the codec model (its
    hash), its scales, every phi and latent size, one latent_strings( ) unit per scale."""
    model, digest = model_for(header.mode.codec_model_id, weights)
    _check_header(header, model, digest)
    _latents(units, len(header.scales))


def decode_symbols(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> dict[str, np.ndarray]:
    """-> per scale i: "z<i>" hyper-latent symbols, "y<i>" latent symbols, "y_indexes<i>"
    scale-table indices (int32), "y_hat_g<i>" symbols plus means in units of 2^-10 before the
    inverse gain (int64): the decoded integer data of the mode."""
    model, digest = model_for(header.mode.codec_model_id, weights)
    phis = _check_header(header, model, digest)
    out: dict[str, np.ndarray] = {}
    for i, (s, lat, phi) in enumerate(zip(header.scales, _latents(units, len(header.scales)), phis)):
        d = model.decode_scale(
            i, bytes(lat.hyper_data), bytes(lat.latent_data), phi, (s.height, s.width),
            lat.hyper_symbols_crc32, lat.latent_symbols_crc32,
        )  # fmt: skip
        out.update({f"z{i}": d.z_symbols, f"y{i}": d.y_symbols, f"y_indexes{i}": d.y_indexes, f"y_hat_g{i}": d.y_hat_g})
    return out


def reconstruct(header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
    import torch

    model, digest = model_for(header.mode.codec_model_id, weights)
    phis = _check_header(header, model, digest)
    out = {}
    for i, (s, phi) in enumerate(zip(header.scales, phis)):
        key = f"y_hat_g{i}"
        if key not in symbols:
            raise MalformedError(f"learned_ps symbols lack {key}")
        y_hat_g = torch.from_numpy(np.ascontiguousarray(symbols[key], dtype=np.int64)).unsqueeze(0)
        y_hat = model.codec(i).dequantize_latent(y_hat_g, phi)
        out[s.name] = model.reconstruct_scale(i, y_hat, (s.height, s.width))
    return out


# mode_header( ) of container 2.0 (bitstream_spec.md, section 7.8.3): the codec model, the
# entropy coder and its precision, and the quality index of every scale
learned_ps_header = Struct(
    "codec_model_id" / id_field(Int16ub, CodecModelId, "codec_model_id"),
    "codec_model_hash" / Bytes(32),
    "entropy_coder_id" / id_field(Int8ub, EntropyCoderId, "entropy_coder_id"),
    "entropy_precision" / Int8ub,
    "phi_indices" / Array(this._.num_scales, Int8ub),
)


def _to_header_value(mh: ModeHeader) -> dict:
    return {
        "codec_model_id": int(mh.codec_model_id),
        "codec_model_hash": bytes(mh.codec_model_hash),
        "entropy_coder_id": int(mh.entropy_coder_id),
        "entropy_precision": mh.entropy_precision,
        "phi_indices": [s.phi_index for s in mh.scales],
    }


def _from_header_value(value, shapes: Shapes) -> ModeHeader:
    return ModeHeader(
        shaped_scales(shapes, phi_index=list(value.phi_indices)),
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(),
        codec_model_id=CodecModelId(value.codec_model_id),
        codec_model_hash=bytes(value.codec_model_hash),
        entropy_coder_id=EntropyCoderId(value.entropy_coder_id),
        entropy_precision=value.entropy_precision,
    )


SYNTAX_STRUCTURES = {"learned_ps_header": learned_ps_header}
HEADER_SYNTAX = ModeHeaderSyntax(learned_ps_header, _to_header_value, _from_header_value)

# header constraints (bitstream_spec.md, section 7.6.6)
HEADER_RULES = {
    "sample_format": enum_rule(SampleFormat.NONE),
    **NO_INNER_CODEC,
    "codec_model_id": enum_rule(*sorted(MODEL_IDS)),
    "codec_model_hash": other_than(ZERO_HASH, "32 zero bytes"),
    "entropy_coder_id": enum_rule(EntropyCoderId.RANS_COMPRESSAI),
    "entropy_precision": is_(ENTROPY_PRECISION),
}
SCALE_RULES = {
    "phi_index": Rule(f"0..{NUM_QUALITIES - 1}, one per scale", range(NUM_QUALITIES)),
    "kept_channels": EQUALS_SCALE_CHANNELS,
    "quant_min": is_(0.0),
    "quant_max": is_(0.0),
}


def describe_params(params: Params) -> str:
    """The parameters as the apps echo them: the effective allocation first (phi 4 when none
    is given), the allocation options only when an allocation searches."""
    how = requested_allocation(params)
    if how == "phi":
        parts = [f"phi {params.phi if params.phi is not None else DEFAULT_PHI}"]
    elif how == "phis":
        parts = [f"phis {params.phis}"]
    else:
        value = params.target_bpp if how == "target_bpp" else params.lambda_
        parts = [f"{how} {value}", f"allocation {params.allocation}", f"mfip_levels {params.mfip_levels}"]
    model = params.codec_weights or params.codec_model
    return ", ".join(parts + ([f"codec_model {model}"] if model else []))


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
        "codec/models/fenet.py",
        "codec/models/fenet_ps.py",
        "codec/models/fixed_point.py",
        "codec/allocation",
        "codec/models/weights/fenet_ps_nanodet_neck.pt",
        "codec/models/weights/fenet_ps_nanodet_neck.mfiba.json",
    ),
    description="per-scale variable-rate learned codec (a phi per scale; MFIBA allocation, rate control)",
    uses_context=True,
    describe_params=describe_params,
)
decode = MODE.decode
