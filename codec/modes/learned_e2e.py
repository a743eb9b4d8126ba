"""Mode "learned_e2e": the end-to-end learned multi-scale feature codec
(FENet/DRNet of codec/models/fenet.py; bitstream_spec.md, section 7.5).

All scales are fused into one latent y with a hyper-latent z; both are coded
with CompressAI's rANS (16-bit precision) into one LATENT_STRING unit
(unit_scale_index 255) holding a latent_strings( ) structure. The quality index phi (gain-unit row) is written as
**phi_index** of every scale. The header records the codec model id and the
sha256 of its weights file; a decoder whose weights differ refuses the stream.
The unit carries the CRC-32 of the integer symbols each string decodes to (for y
also of the scale-table indices), so that a decoder that derived different
entropy parameters reports it instead of returning garbage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from construct import Bytes, ConstructError, Int8ub, Int16ub, Struct

from codec.bitstream import (
    ALL_SCALES,
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
    UNIFORM,
    ZERO_HASH,
    CodingMode,
    EncodeContext,
    Shapes,
    Weights,
    enum_rule,
    is_,
    option,
    other_than,
    refinement_loss,
    scale_arrays,
    shaped_scales,
    units_of_type,
)

if TYPE_CHECKING:
    from codec.models.fenet import CompressedLatents, FenetCodec
    from codec.vision.base import Features, SplitPoint

MODE_ID = ModeId.LEARNED_E2E
NAME = "learned_e2e"
ENTROPY_PRECISION = 16  # CompressAI's rANS; equal to codec.models.fenet.ENTROPY_PRECISION (tested)
NUM_QUALITIES = 6  # phi 0..5: the gain-unit rows of the shipped model (checked against the model)
REFINE_MAX_STEPS = 1000
REFINE_LR = 0.01  # --refine-lr's default: equal to codec.models.fenet.REFINE_LR (tested; no torch import here)
REFINE_MAX_LR = 1.0  # --refine-lr: a step of a whole quantisation step and more only diverges


@dataclass(frozen=True)
class Params:
    phi: int = option(3, "quality index (gain-unit row), higher is better", range=(0, NUM_QUALITIES - 1), rate=True)
    codec_model: str = option(
        "fenet_nanodet_neck_g4",
        "codec model (codec_model_id). NanoDet neck: fenet_nanodet_neck_g4 (4th generation), fenet_nanodet_neck_g3 "
        "(3rd), fenet_nanodet_neck_p4 (2nd generation, latent at p4, task-aware) or fenet_nanodet_neck (1st "
        "generation), each still decodable; YOLOv5s-seg neck: fenet_yolov5s_seg_neck. The default is "
        "NanoDet's; on another split point it stands for the model trained for that split point",
        choices=(
            "fenet_nanodet_neck_g4",
            "fenet_nanodet_neck_g3",
            "fenet_nanodet_neck_p4",
            "fenet_nanodet_neck",
            "fenet_yolov5s_seg_neck",
        ),
    )
    codec_weights: str | None = option(
        None,
        "codec-model weights file instead of the shipped one (the decoder needs the same)",
        kind=str,
        what="a weights file (.pt beside its .json record)",
    )
    refine: int | None = option(
        None,
        "encoder-side latent refinement: Adam steps per image on the codec model's own training "
        "objective (rate + lambda[phi] x (feature + task distortion through NN part 2's heads)); "
        "unset: none. The stream and the decoder are unchanged; each step costs about a decoder pass "
        "and its gradient",
        kind=int,
        range=(1, REFINE_MAX_STEPS),
    )
    refine_lr: float | None = option(
        None,
        "the first Adam step size of --refine (the latents in quantisation steps; cosine decay to 0); "
        f"unset: {REFINE_LR}. Only with --refine",
        kind=float,
    )


# its models in codec.models.registry, the encoder's default first; every one stays decodable
MODEL_IDS: tuple[CodecModelId, ...] = (
    CodecModelId.FENET_NANODET_NECK_G4,
    CodecModelId.FENET_NANODET_NECK_G3,
    CodecModelId.FENET_NANODET_NECK_P4,
    CodecModelId.FENET_NANODET_NECK,
    CodecModelId.FENET_YOLOV5S_SEG_NECK,
)
MODEL_NAMES: dict[str, CodecModelId] = {
    "fenet_nanodet_neck_g4": CodecModelId.FENET_NANODET_NECK_G4,
    "fenet_nanodet_neck_g3": CodecModelId.FENET_NANODET_NECK_G3,
    "fenet_nanodet_neck_p4": CodecModelId.FENET_NANODET_NECK_P4,
    "fenet_nanodet_neck": CodecModelId.FENET_NANODET_NECK,
    "fenet_yolov5s_seg_neck": CodecModelId.FENET_YOLOV5S_SEG_NECK,
}


# the model trained for each (network, split point): what the training programme writes into the
# headers of its dev evaluation, before the weights are shipped
NETWORK_MODELS: dict[tuple[str, str], CodecModelId] = {
    ("nanodet", "neck"): CodecModelId.FENET_NANODET_NECK_G4,
    ("yolov5s_seg", "neck"): CodecModelId.FENET_YOLOV5S_SEG_NECK,
}


def model_id_for_network(network: str, split: str) -> CodecModelId:
    """The codec model id trained for a network's split point (the encoder's default first model otherwise)."""
    return NETWORK_MODELS.get((network, split), MODEL_IDS[0])


def model_for(model_id: CodecModelId, weights: Weights = None) -> tuple[FenetCodec, bytes]:
    """(model, sha256 of its weights file) for a codec model id; `weights` overrides the shipped file."""
    from codec.models.registry import load_codec_model

    if model_id not in MODEL_IDS:
        raise MalformedError(f"codec_model_id {int(model_id)} has no learned_e2e model")
    return load_codec_model(model_id, weights)


def trained_scales(model_id: CodecModelId) -> tuple[tuple[str, int, int], ...]:
    """(name, channels, stride) of the split point a shipped model was trained for, from its
    weights' record verified against the weights (a missing or damaged file is the loader's
    one-line CodecModelError): no torch, no model built (the encoder checks the loaded
    model's scales again)."""
    from codec.models.registry import entry, verified_record

    record = verified_record(entry(model_id).weights)
    return tuple((s["name"], int(s["channels"]), int(s["stride"])) for s in record["config"]["scales"])


def model_id_for(split_point: SplitPoint, name: str | None = None) -> CodecModelId:
    """The codec model trained for a split point (matched on scale names, channels, strides):
    the named one, or the first of MODEL_IDS that fits. The default name (NanoDet's model) on
    another split point is the first that fits: the model is chosen by the split point unless
    the user names one."""
    scales = tuple((s.name, s.channels, s.stride) for s in split_point.scales)
    if name is not None:
        if name not in MODEL_NAMES:
            raise EncodeError(f"unknown learned_e2e codec model {name!r}; choose {', '.join(MODEL_NAMES)}")
        if trained_scales(MODEL_NAMES[name]) == scales:
            return MODEL_NAMES[name]
        if name != Params.codec_model:
            raise EncodeError(f"codec model {name} is not for split point {split_point.name!r}")
    for mid in MODEL_IDS:
        if trained_scales(mid) == scales:
            return mid
    raise EncodeError(f"no learned_e2e model for split point {split_point.name!r} ({split_point.scale_names()})")


def quality_index(params: Params, num_qualities: int) -> int:
    """phi of the parameters, checked against the model's quality indices 0..num_qualities-1."""
    phi = params.phi
    if isinstance(phi, bool) or not isinstance(phi, (int, np.integer)) or not 0 <= int(phi) < num_qualities:
        raise EncodeError(f"learned_e2e quality index phi must be an integer in 0..{num_qualities - 1}, got {phi!r}")
    return int(phi)


def encode_with_model(
    features: Features, split_point: SplitPoint, phi: int, model: FenetCodec, model_id: CodecModelId, digest: bytes
) -> tuple[ModeHeader, list[PayloadUnit]]:
    arrays = _checked_arrays(features, split_point)
    import torch

    # from the checked float32 arrays: the same values as the tensors, and NN part 1 may be ONNX's
    c: CompressedLatents = model.compress({name: torch.from_numpy(a).unsqueeze(0) for name, a in arrays}, phi)
    return _header_and_units(arrays, phi, model_id, digest, c.z_string, c.y_string, c.z_crc32, c.y_crc32)


def _checked_arrays(features: Features, split_point: SplitPoint) -> list[tuple[str, np.ndarray]]:
    arrays = scale_arrays(features, split_point)  # validates names, batch 1, channels
    for name, a in arrays:
        if not np.isfinite(a).all():
            raise EncodeError(f"scale {name}: features contain NaN or infinite values")
    return arrays


def _header_and_units(
    arrays: list[tuple[str, np.ndarray]],
    phi: int,
    model_id: CodecModelId,
    digest: bytes,
    z_string: bytes,
    y_string: bytes,
    z_crc32: int,
    y_crc32: int,
) -> tuple[ModeHeader, list[PayloadUnit]]:
    scales = tuple(
        ScaleHeader(name=name, channels=a.shape[0], height=a.shape[1], width=a.shape[2], phi_index=phi,
                    kept_channels=a.shape[0])
        for name, a in arrays
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
    data = latent_strings.build(
        dict(hyper_symbols_crc32=z_crc32, latent_symbols_crc32=y_crc32, hyper_data=z_string, latent_data=y_string)
    )
    units = [PayloadUnit(UnitType.LATENT_STRING, data, scale_index=ALL_SCALES)]
    return header, units


def resolve_params(params: Params, split_point: SplitPoint) -> Params:
    """`params` with the codec model the encoder uses on `split_point` named (the default name
    stands for the model trained for the split point); errors as the encoder's."""
    model_id = model_id_for(split_point, params.codec_model)
    name = next(n for n, mid in MODEL_NAMES.items() if mid == model_id)
    return dataclasses.replace(params, codec_model=name)


def encode(
    features: Features, split_point: SplitPoint, params: Params, context: EncodeContext | None = None
) -> tuple[ModeHeader, list[PayloadUnit]]:
    model_id = model_id_for(split_point, params.codec_model)
    model, digest = model_for(model_id, params.codec_weights)
    if tuple(model.cfg.scales) != tuple(split_point.scales):
        raise EncodeError(f"codec model {params.codec_weights} is not for split point {split_point.name!r}")
    phi = quality_index(params, model.cfg.num_qualities)
    if params.refine_lr is not None:
        if params.refine is None:
            raise EncodeError("learned_e2e --refine-lr needs --refine")
        if not 0 < params.refine_lr <= REFINE_MAX_LR:
            raise EncodeError(f"learned_e2e --refine-lr must be in (0, {REFINE_MAX_LR}], got {params.refine_lr}")
    if params.refine is None:
        return encode_with_model(features, split_point, phi, model, model_id, digest)
    if context is None:
        raise EncodeError("learned_e2e --refine needs the network (the pipeline's context)")
    record = _record(model_id, params.codec_weights)
    return encode_refined(features, split_point, phi, model, model_id, digest, record, context.network,
                          context.split, params.refine,
                          REFINE_LR if params.refine_lr is None else params.refine_lr)  # fmt: skip


def _record(model_id: CodecModelId, weights: Weights) -> dict:
    from codec.models.registry import entry, verified_record

    return verified_record(weights if weights is not None else entry(model_id).weights)


def refinement_objective(record: dict, network, split: str, model: FenetCodec):
    """The distortion of a codec model's training, from its weights' record: feature_weight x
    the per-scale MSE of the normalised features + task_weight x the task loss through the
    network's frozen heads (codec/training/task.py). -> a function (features) -> distortion
    (rec_norm, target_norm) -> (1,) for that image."""
    fw, tw, task = refinement_loss(record, network, split, NAME)

    def for_features(xs: list) -> object:
        teacher = task.teacher(xs) if task is not None else None

        def distortion(rec_norm: list, target_norm: list):
            d = fw * sum(((r - t) ** 2).flatten(1).mean(dim=1) for r, t in zip(rec_norm, target_norm))
            if task is not None:
                d = d + tw * task(model.denormalise(rec_norm), teacher)[0]
            return d

        return distortion

    return for_features


def encode_refined(
    features: Features,
    split_point: SplitPoint,
    phi: int,
    model: FenetCodec,
    model_id: CodecModelId,
    digest: bytes,
    record: dict,
    network,
    split: str,
    steps: int,
    lr: float = REFINE_LR,
) -> tuple[ModeHeader, list[PayloadUnit]]:
    """encode_with_model with the latents refined for this image (FenetCodec.refine_latents, on
    the objective the model was trained with at quality index phi)."""
    arrays = _checked_arrays(features, split_point)
    import torch

    objective = refinement_objective(record, network, split, model)
    sizes = [(a.shape[1], a.shape[2]) for _, a in arrays]
    model.check_symbol_counts(sizes)  # before any work: a stream no decoder would accept is not written
    # the pipeline encodes in inference mode; autograd runs through the decoder side here, on
    # tensors made outside it
    with torch.inference_mode(False), torch.enable_grad():
        xs = [torch.from_numpy(a).unsqueeze(0) for _, a in arrays]
        y_g, z_g = model.refine_latents(xs, phi, objective(xs), float(model.cfg.lambdas[phi]), steps, lr)
    c = model.compress_latents(y_g, z_g, phi, sizes)
    return _header_and_units(arrays, phi, model_id, digest, c.z_string, c.y_string, c.z_crc32, c.y_crc32)


def encode_onnx(
    features: Features, split_point: SplitPoint, params: Params, context: EncodeContext | None = None
) -> tuple[ModeHeader, list[PayloadUnit]]:
    """The encoder of the ONNX engine, without torch: the codec model's exported encoder
    (codec/models/fenet_onnx.py; `codec_weights` names the .onnx file, by default the cache's
    onnx/CODEC_MODEL.onnx that ``python -m tools.export_onnx --codec learned_e2e`` writes). The
    header carries the export's record of the PyTorch weights, which the decoder checks."""
    from codec.models import fenet_onnx

    if params.refine:
        raise EncodeError("learned_e2e --refine needs the PyTorch encoder (it differentiates through the decoder)")
    name = resolve_params(params, split_point).codec_model  # the default: the model of the split point
    enc = fenet_onnx.load_encoder(params.codec_weights or fenet_onnx.default_codec_model_path(name))
    if enc.codec_model_id != int(MODEL_NAMES[name]):
        raise EncodeError(f"{enc.path} is the encoder of codec model {enc.codec_model}, not {name} (--codec-model)")
    if [(s.name, s.channels, s.stride) for s in split_point.scales] != enc.scales:
        raise EncodeError(f"codec model {enc.codec_model} is not for split point {split_point.name!r}")
    arrays = _checked_arrays(features, split_point)
    phi = quality_index(params, enc.num_qualities)
    c = enc.compress({name: a[None] for name, a in arrays}, phi)
    digest = bytes.fromhex(enc.weights_sha256)
    return _header_and_units(arrays, phi, MODEL_NAMES[name], digest, c.z_string, c.y_string, c.z_crc32, c.y_crc32)


def _check_structure(header: ContainerHeader) -> int:
    """Header checks that need no model; returns phi."""
    m = header.mode
    precision = ENTROPY_PRECISION
    if m.entropy_coder_id != EntropyCoderId.RANS_COMPRESSAI or m.entropy_precision != precision:
        raise MalformedError(
            f"learned_e2e needs entropy_coder_id RANS_COMPRESSAI with precision {precision}, "
            f"got {m.entropy_coder_id.name} / {m.entropy_precision}"
        )
    if m.codec_model_id == CodecModelId.NONE:
        raise MalformedError("learned_e2e needs a codec_model_id")
    if m.sample_format != SampleFormat.NONE or m.inner.codec_id != 0:
        raise MalformedError("learned_e2e needs sample_format NONE and inner_codec_id NONE")
    phis = {s.phi_index for s in header.scales}
    if len(phis) != 1:
        raise MalformedError(f"learned_e2e needs the same phi_index for every scale, got {sorted(phis)}")
    for i, s in enumerate(header.scales):
        if s.kept_channels != s.channels or s.quant_min != 0.0 or s.quant_max != 0.0:
            raise MalformedError(f"scale {i} ({s.name}): kept_channels must equal scale_channels, quant_* 0.0")
        if i and (s.height, s.width) != (-(-header.scales[i - 1].height // 2), -(-header.scales[i - 1].width // 2)):
            raise MalformedError(f"scale {i} ({s.name}) is not half the size of scale {i - 1}")
    return phis.pop()


def _check_header(header: ContainerHeader, model: FenetCodec, digest: bytes) -> int:
    phi = _check_structure(header)
    m = header.mode
    check_model_hash(m.codec_model_hash, digest)
    want = [(s.name, s.channels) for s in model.cfg.scales]
    got = [(s.name, s.channels) for s in header.scales]
    if got != want:
        raise MalformedError(f"learned_e2e model has scales {want}, header has {got}")
    if phi >= model.cfg.num_qualities:
        raise MalformedError(f"phi_index {phi} exceeds the model's {model.cfg.num_qualities} quality indices")
    model.check_symbol_counts([(s.height, s.width) for s in header.scales])
    return phi


def validate(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
    """Check the header fields and payload units of the mode without entropy decoding:
    the codec model (its hash), the scales it was trained for, phi and the latent size."""
    model, digest = model_for(header.mode.codec_model_id, weights)
    _check_header(header, model, digest)
    _latents(units)


def _latents(units: list[PayloadUnit]):
    strings = units_of_type(units, UnitType.LATENT_STRING)
    if len(strings) != 1 or len(units) != 1:
        raise MalformedError(f"learned_e2e needs exactly one LATENT_STRING unit, got {len(strings)} of {len(units)}")
    if strings[0].scale_index != ALL_SCALES:
        raise MalformedError(f"LATENT_STRING unit_scale_index must be {ALL_SCALES}, got {strings[0].scale_index}")
    try:
        return latent_strings.parse(strings[0].data)
    except ConstructError:
        raise MalformedError("LATENT_STRING unit_data is not a latent_strings( ) structure") from None


def decode_symbols(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> dict[str, np.ndarray]:
    """-> {"z": hyper-latent symbols, "y": latent symbols, "y_indexes": scale-table indices
    (int32, C order (channel, row, column)), "y_hat_g": symbols plus means in units of
    2^-10 before the inverse gain (int64)}: the decoded integer data of the mode."""
    model, digest = model_for(header.mode.codec_model_id, weights)
    phi = _check_header(header, model, digest)
    lat = _latents(units)
    sizes = [(s.height, s.width) for s in header.scales]
    d = model.decode_latents(
        bytes(lat.hyper_data), bytes(lat.latent_data), phi, sizes, lat.hyper_symbols_crc32, lat.latent_symbols_crc32
    )
    return {"z": d.z_symbols, "y": d.y_symbols, "y_indexes": d.y_indexes, "y_hat_g": d.y_hat_g}


def reconstruct(header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
    import torch

    model, digest = model_for(header.mode.codec_model_id, weights)
    phi = _check_header(header, model, digest)
    y_hat_g = torch.from_numpy(np.ascontiguousarray(symbols["y_hat_g"], dtype=np.int64)).unsqueeze(0)
    return model.reconstruct(model.dequantize_latent(y_hat_g, phi), [(s.height, s.width) for s in header.scales])


# mode_header( ) of container 2.0 (bitstream_spec.md, section 7.5.3): the codec model,
# the entropy coder and its precision, and phi once (it is one for all scales)
learned_e2e_header = Struct(
    "codec_model_id" / id_field(Int16ub, CodecModelId, "codec_model_id"),
    "codec_model_hash" / Bytes(32),
    "entropy_coder_id" / id_field(Int8ub, EntropyCoderId, "entropy_coder_id"),
    "entropy_precision" / Int8ub,
    "phi_index" / Int8ub,
)


def _to_header_value(mh: ModeHeader) -> dict:
    return {
        "codec_model_id": int(mh.codec_model_id),
        "codec_model_hash": bytes(mh.codec_model_hash),
        "entropy_coder_id": int(mh.entropy_coder_id),
        "entropy_precision": mh.entropy_precision,
        "phi_index": mh.scales[0].phi_index,
    }


def _from_header_value(value, shapes: Shapes) -> ModeHeader:
    return ModeHeader(
        shaped_scales(shapes, phi_index=value.phi_index),
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(),
        codec_model_id=CodecModelId(value.codec_model_id),
        codec_model_hash=bytes(value.codec_model_hash),
        entropy_coder_id=EntropyCoderId(value.entropy_coder_id),
        entropy_precision=value.entropy_precision,
    )


# spec table name -> construct (tests/unit/test_spec.py compares them with the spec)
SYNTAX_STRUCTURES = {"learned_e2e_header": learned_e2e_header}
HEADER_SYNTAX = ModeHeaderSyntax(learned_e2e_header, _to_header_value, _from_header_value)

# header constraints (bitstream_spec.md, section 7.5)
HEADER_RULES = {
    "sample_format": enum_rule(SampleFormat.NONE),
    **NO_INNER_CODEC,
    "codec_model_id": enum_rule(*sorted(MODEL_IDS)),
    "codec_model_hash": other_than(ZERO_HASH, "32 zero bytes"),
    "entropy_coder_id": enum_rule(EntropyCoderId.RANS_COMPRESSAI),
    "entropy_precision": is_(ENTROPY_PRECISION),
}
SCALE_RULES = {
    "phi_index": UNIFORM,
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
    encode_onnx=encode_onnx,
    decode_symbols=decode_symbols,
    reconstruct=reconstruct,
    validate=validate,
    resolve_params=resolve_params,
    uses_context=True,
    sources=(
        "codec/models/fenet.py",
        "codec/models/fixed_point.py",
        "codec/models/linear_path.py",
        "codec/training/task.py",
        "codec/models/weights/fenet_nanodet_neck.pt",
        "codec/models/weights/fenet_nanodet_neck_p4.pt",
        "codec/models/weights/fenet_nanodet_neck_g3.pt",
        "codec/models/weights/fenet_nanodet_neck_g4.pt",
        "codec/models/weights/fenet_yolov5s_seg_neck.pt",
    ),
    description="end-to-end learned codec (FENet/DRNet, CompressAI rANS)",
)
decode = MODE.decode
