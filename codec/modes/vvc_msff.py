"""Mode "vvc_msff": multi-scale feature fusion + QP-adaptive channel truncation +
VVC (bitstream_spec.md, section 7.4).

Encoder: MSFF (codec/models/msff.py) fuses the split point's scales into one
tensor Z of C channels at the model's fusion stride (the coarsest for the shipped
model), channels ordered by importance
(selective learning). Only the first KeptChannels channels are coded; the count
comes from the QP through TRUNCATION_TABLE. They are min-max quantised to 10 bits
(one range for the whole kept tensor), tiled into a monochrome frame exactly as
one scale of the anchor mode, and coded as one VVC intra picture.

Decoder: the kept channels are dequantised, channels KeptChannels..C-1 are zero
filled, and the integer-exact MSFR rebuilds every scale (so the reconstruction is
bit-identical on every machine). The header records the codec model id and the
sha256 of the MSFF/MSFR weights file; a decoder with other weights refuses.

KeptChannels is carried in the per-scale **kept_channels** fields, filled greedily
in scale order (scale i carries min(scale_channels_i, KeptChannels - sum of the
previous scales' values)), because one field is bounded by its scale's channels
while C may exceed them. Every scale carries the same quant_min / quant_max.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from construct import Bytes, Float32b, Int8ub, Int16ub, Struct

from codec.bitstream import (
    ALL_SCALES,
    CodecModelId,
    ContainerHeader,
    EntropyCoderId,
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
from codec.bitstream.syntax import MAX_CHANNELS, finite_field, id_field, limit_field
from codec.errors import EncodeError, InnerCodecError, MalformedError, SizeLimitError
from codec.inner import vvc
from codec.models.registry import check_model_hash

from . import anchor
from .base import (
    NO_ENTROPY_CODER,
    UNIFORM,
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
    refinement_loss,
    scale_arrays,
    shaped_scales,
    units_of_type,
)

if TYPE_CHECKING:
    import torch

    from codec.models.msff import ExactMsfr, MsffCodecModel
    from codec.vision.base import Features, SplitPoint

MODE_ID = ModeId.VVC_MSFF
NAME = "vvc_msff"
BIT_DEPTH = anchor.BIT_DEPTH
QP_RANGE = anchor.QP_RANGE

# its models in codec.models.registry, the encoder's default first; every one stays decodable
MODEL_IDS: tuple[CodecModelId, ...] = (CodecModelId.MSFF_NANODET_NECK_G2, CodecModelId.MSFF_NANODET_NECK)
MODEL_NAMES: dict[str, CodecModelId] = {
    "msff_nanodet_neck_g2": CodecModelId.MSFF_NANODET_NECK_G2,
    "msff_nanodet_neck": CodecModelId.MSFF_NANODET_NECK,
}

# QP -> kept fused channels per model, chosen from measurement by tools/tune_truncation.py
# (held-out train-images, see docs/results_msff.md). A QP between two entries uses
# the entry of the next lower table QP; below the first, all channels. The decoder does
# not need it (the header carries the kept count).
TRUNCATION_TABLES: dict[CodecModelId, dict[int, int]] = {
    CodecModelId.MSFF_NANODET_NECK_G2: {22: 192, 27: 128, 32: 128, 37: 128, 42: 96, 47: 96},
    CodecModelId.MSFF_NANODET_NECK: {22: 192, 27: 192, 32: 192, 37: 192, 42: 96, 47: 96},
}
TRUNCATION_TABLE: dict[int, int] = TRUNCATION_TABLES[MODEL_IDS[0]]  # the default model's

REFINE_MAX_STEPS = 200
# --refine-lr's and --refine-rate-weight's defaults (refine_fused), chosen on 16 held-out training
# images, never on the evaluation sets (docs/results_msff.md, 'Encoder-side refinement')
REFINE_LR = 0.15  # in VVC quantiser steps of the QP
REFINE_MAX_LR = 1.0
REFINE_RATE_WEIGHT = 0.7


@dataclass(frozen=True)
class Params:
    qp: int = option(32, "VVC quantisation parameter", range=QP_RANGE, rate=True)
    preset: str = option("faster", "VVenC preset (informative for the decoder)", choices=vvc.VVENC_PRESETS)
    kept_channels: int | None = option(
        None, "fused channels to code (default: from the QP by the truncation table)", kind=int, range=(1, 4096)
    )
    codec_model: str = option(
        "msff_nanodet_neck_g2",
        "codec model (codec_model_id): msff_nanodet_neck_g2 (2nd generation: MSFR trained on VVC-coded "
        "tensors) or msff_nanodet_neck (1st generation, the same MSFF), each still decodable",
        choices=tuple(MODEL_NAMES),
    )
    codec_weights: str | None = option(
        None,
        "codec-model weights file instead of the shipped one (the decoder needs the same)",
        kind=str,
        what="a weights file (.pt beside its .json record)",
    )
    refine: int | None = option(
        None,
        "encoder-side refinement of the fused tensor: steps per image, each a real VVC round trip of "
        "it and a gradient of the MSFR's training distortion (feature MSE + task loss through NN part "
        "2's frozen heads) through it, straight-through; the step with the lowest log(distortion) + "
        "W x log(bits) (W: --refine-rate-weight) is coded. Unset: none. The stream and the decoder are unchanged",
        kind=int,
        range=(1, REFINE_MAX_STEPS),
    )
    refine_lr: float | None = option(
        None,
        f"the first Adam step size of --refine, in VVC quantiser steps of the QP (cosine decay to 0); "
        f"unset: {REFINE_LR}. Only with --refine",
        kind=float,
    )
    refine_rate_weight: float | None = option(
        None,
        "--refine's exchange rate of bits for distortion: it minimises log(distortion) + W x log(bits) "
        f"(a differentiable stand-in for VVC's bits in the gradient, the stream's real bits in the choice "
        f"of the step); unset: {REFINE_RATE_WEIGHT}. Only with --refine",
        kind=float,
    )


def kept_channels_for_qp(qp: int, fused_channels: int, table: dict[int, int] | None = None) -> int:
    """Kept fused channels for a QP (1..fused_channels)."""
    table = TRUNCATION_TABLE if table is None else table
    kept = fused_channels
    for q in sorted(table):
        if q <= qp:
            kept = table[q]
    return max(1, min(fused_channels, kept))


@functools.lru_cache(maxsize=4)
def _exact(model: MsffCodecModel) -> ExactMsfr:
    from codec.models.msff import ExactMsfr

    return ExactMsfr(model.msfr)


def model_for(model_id: CodecModelId, weights: Weights = None) -> tuple[MsffCodecModel, ExactMsfr, bytes]:
    """(model, exact MSFR, sha256 of its weights file); `weights` overrides the shipped file."""
    from codec.models.registry import load_codec_model

    if model_id not in MODEL_IDS:
        raise MalformedError(f"codec_model_id {int(model_id)} has no vvc_msff model")
    model, digest = load_codec_model(model_id, weights)
    return model, _exact(model), digest


def model_id_for(split_point: SplitPoint, name: str | None = None) -> CodecModelId:
    """The MSFF/MSFR model trained for a split point (matched on scale names, channels, strides):
    the named one (EncodeError if it is not for this split point), or the first of MODEL_IDS that fits."""
    if name is not None:
        if name not in MODEL_NAMES:
            raise EncodeError(f"unknown vvc_msff codec model {name!r}; choose {', '.join(MODEL_NAMES)}")
        model, _, _ = model_for(MODEL_NAMES[name])
        if tuple(model.cfg.scales) == tuple(split_point.scales):
            return MODEL_NAMES[name]
        if name != Params.codec_model:  # the default name stands for the split point's own model
            raise EncodeError(f"codec model {name} is not for split point {split_point.name!r}")
    for mid in MODEL_IDS:
        model, _, _ = model_for(mid)
        if tuple(model.cfg.scales) == tuple(split_point.scales):
            return mid
    raise EncodeError(f"no vvc_msff model for split point {split_point.name!r} ({split_point.scale_names()})")


def split_kept(kept: int, channels: list[int]) -> list[int]:
    """KeptChannels -> the per-scale kept_channels fields (greedy, in scale order)."""
    out, rest = [], kept
    for c in channels:
        out.append(min(c, rest))
        rest -= out[-1]
    if rest:
        raise EncodeError(f"{kept} kept channels do not fit the scales' {sum(channels)} channels")
    return out


def _checked(features: Features, split_point: SplitPoint, qp: int, preset: str, kept: int, model: MsffCodecModel):
    """The encoder's checks before any work -> (preset id, the scales' arrays)."""
    if isinstance(qp, bool) or not isinstance(qp, int) or not QP_RANGE[0] <= qp <= QP_RANGE[1]:
        raise EncodeError(f"qp must be an integer in {QP_RANGE[0]}..{QP_RANGE[1]}, got {qp!r}")
    try:
        pid = preset_id(preset)
    except ValueError as e:
        raise EncodeError(str(e)) from None
    c = model.cfg.fused_channels
    if not 1 <= kept <= c:
        raise EncodeError(f"kept channels must be in 1..{c}, got {kept}")
    arrays = scale_arrays(features, split_point)
    for name, a in arrays:
        if not np.isfinite(a).all():
            raise EncodeError(f"scale {name}: features contain NaN or infinite values")
    return pid, arrays


def _coded(q: np.ndarray, qp: int, preset: str) -> tuple[anchor.FrameLayout, bytes]:
    layout = anchor.frame_layout([(q.shape[0], q.shape[1], q.shape[2])])
    try:
        anchor.check_frame_size(layout)
    except SizeLimitError as e:
        raise EncodeError(str(e)) from None
    return layout, vvc.encode_luma10(anchor.tile([q], layout), qp, preset)


def _header_and_units(arrays, qp: int, pid, kept: int, lo, hi, model_id: CodecModelId, digest: bytes,
                      bitstream: bytes) -> tuple[ModeHeader, list[PayloadUnit]]:  # fmt: skip
    per_scale = split_kept(kept, [a.shape[0] for _, a in arrays])
    scales = tuple(
        ScaleHeader(name=n, channels=a.shape[0], height=a.shape[1], width=a.shape[2], kept_channels=k,
                    quant_min=float(lo), quant_max=float(hi))
        for (n, a), k in zip(arrays, per_scale)
    )  # fmt: skip
    header = ModeHeader(
        scales=scales,
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(InnerCodecId.VVC_VVENC, qp, pid, BIT_DEPTH),
        codec_model_id=model_id,
        codec_model_hash=digest,
        entropy_coder_id=EntropyCoderId.NONE,
        entropy_precision=0,
    )
    return header, [PayloadUnit(UnitType.VVC_NAL_STREAM, bitstream, scale_index=ALL_SCALES)]


def encode_with_model(
    features: Features,
    split_point: SplitPoint,
    qp: int,
    preset: str,
    kept: int,
    model: MsffCodecModel,
    model_id: CodecModelId,
    digest: bytes,
) -> tuple[ModeHeader, list[PayloadUnit]]:
    import torch

    pid, arrays = _checked(features, split_point, qp, preset, kept, model)
    with torch.no_grad():
        z = model.msff({n: torch.from_numpy(a).unsqueeze(0) for n, a in arrays})[0, :kept].numpy()
    q, lo, hi = anchor.quantise(z)
    _, bitstream = _coded(q, qp, preset)
    return _header_and_units(arrays, qp, pid, kept, lo, hi, model_id, digest, bitstream)


def quantiser_step(qp: int) -> float:
    """VVC's quantiser step at `qp` for 8-bit samples, 2^((QP - 4) / 6): the unit of
    --refine-lr, so that one step size moves the codes by a similar share of what VVC's
    quantisation removes at every QP."""
    return float(2.0 ** ((qp - 4) / 6))


def refinement_distortion(record: dict, network, split: str, model: MsffCodecModel):
    """The distortion the MSFR was trained on, from its weights' record: feature_weight x the
    mean over scales of the MSE in units of the model's feature scale + task_weight x the task
    loss through the network's frozen heads (codec/training/task.py). -> a function
    (features dict) -> (reconstruction dict -> scalar distortion)."""
    fw, tw, task = refinement_loss(record, network, split, NAME)
    names = [s.name for s in model.cfg.scales]
    scale = model.msff.feature_scale.detach().clone()

    def for_features(feats: dict):
        xs = [feats[n] for n in names]
        teacher = task.teacher(xs) if task is not None else None

        def distortion(rec: dict):
            d = fw * sum(((rec[n] - x) / scale[i]).pow(2).mean() for i, (n, x) in enumerate(zip(names, xs))) / len(xs)
            if task is not None:
                d = d + tw * task([rec[n] for n in names], teacher)[0].mean()
            return d

        return distortion

    return for_features


def rate_proxy(t, qp: int):
    """A differentiable stand-in for VVC's intra bits of the code-unit tensor `t` (1, C, h, w):
    the sum over horizontal and vertical neighbours inside each channel's tile of
    log2(1 + |difference| / step), with step VVC's quantiser step for 10-bit samples (four
    times the 8-bit one). It only steers the refinement's gradient; what is kept is judged
    on the real stream's bits."""
    import torch

    step = 4.0 * quantiser_step(qp)
    dx = (t[..., :, 1:] - t[..., :, :-1]).abs()
    dy = (t[..., 1:, :] - t[..., :-1, :]).abs()
    return torch.log2(1 + dx / step).sum() + torch.log2(1 + dy / step).sum() + 1.0


def refine_fused(z0: np.ndarray, qp: int, preset: str, decoder, distortion, steps: int, lr: float,
                 rate_weight: float = 0.0):  # fmt: skip
    """Encoder-side refinement of one image's kept fused channels `z0` (kept, h, w).

    The variable is the tensor in 10-bit code units over z0's own range (lo, hi fixed, so the
    header's quant_min / quant_max stay z0's). Each step codes the rounded codes with VVC at
    `qp` and decodes them (the real round trip, as the decoder will see it), reconstructs with
    `decoder` (codes in, features out, differentiable: the float MSFR) and takes one Adam step
    on `distortion` through the round trip by the straight-through estimator (VVC's error in
    the forward pass, the identity's gradient). The objective is log(distortion) +
    rate_weight x log(rate_proxy): rate_weight is the exchange rate of the two, the share of
    distortion one share of bits is worth (0: distortion alone). Step 0 is the analysis
    itself; the step with the lowest log(decoded distortion) + rate_weight x log(stream bits)
    is kept, so refinement never makes that figure of the coded stream worse.
    -> (codes uint16, lo, hi, VVC stream, [(bits, distortion) per step])."""
    import math

    import torch

    q0, lo, hi = anchor.quantise(z0)
    layout, stream0 = _coded(q0, qp, preset)
    if float(hi) == float(lo):
        return q0, lo, hi, stream0, [(8 * len(stream0), float("nan"))]
    t = torch.from_numpy(
        ((z0.astype(np.float64) - float(lo)) * (anchor.MAX_CODE / (float(hi) - float(lo)))).astype(np.float32)
    )
    t = t.unsqueeze(0).requires_grad_(True)
    opt = torch.optim.Adam([t], lr=lr * quantiser_step(qp))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    best = None
    history = []
    codes, stream = q0, stream0
    for step in range(steps + 1):
        if step:
            codes = np.clip(np.floor(t.detach()[0].numpy() + np.float32(0.5)), 0, anchor.MAX_CODE).astype(np.uint16)
            stream = _coded(codes, qp, preset)[1]
        shape = (codes.shape[0], codes.shape[1], codes.shape[2])
        decoded = anchor.untile(vvc.decode_luma10(stream, layout.width, layout.height), [shape], layout)[0]
        t_hat = torch.from_numpy(decoded.astype(np.float32)).unsqueeze(0)
        d = distortion(decoder(t + (t_hat - t).detach()))
        d_value = float(d.detach())
        history.append((8 * len(stream), d_value))
        figure = math.log(max(d_value, 1e-30)) + rate_weight * math.log(8 * len(stream))
        if best is None or figure < best[0]:
            best = (figure, codes, stream)
        if step == steps:
            break
        objective = torch.log(d.clamp_min(1e-30))
        if rate_weight:
            objective = objective + rate_weight * torch.log(rate_proxy(t, qp))
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            t.clamp_(0, anchor.MAX_CODE)
    assert best is not None  # step 0 always runs
    return best[1], lo, hi, best[2], history


def encode_refined(
    features: Features,
    split_point: SplitPoint,
    qp: int,
    preset: str,
    kept: int,
    model: MsffCodecModel,
    model_id: CodecModelId,
    digest: bytes,
    record: dict,
    network,
    split: str,
    steps: int,
    lr: float = REFINE_LR,
    rate_weight: float = REFINE_RATE_WEIGHT,
) -> tuple[ModeHeader, list[PayloadUnit]]:
    """encode_with_model with the fused tensor refined for this image (refine_fused)."""
    import torch

    pid, arrays = _checked(features, split_point, qp, preset, kept, model)
    objective = refinement_distortion(record, network, split, model)
    c = model.cfg.fused_channels
    # the pipeline encodes in inference mode; autograd runs through the MSFR here, on tensors made outside it
    with torch.inference_mode(False), torch.enable_grad():
        feats = {n: torch.from_numpy(a).unsqueeze(0) for n, a in arrays}
        sizes = {n: tuple(f.shape[-2:]) for n, f in feats.items()}
        with torch.no_grad():
            z0 = model.msff(feats)[0, :kept].numpy()
        lo, hi = float(z0.min()), float(z0.max())
        pad = torch.zeros(1, c - kept, *z0.shape[-2:])

        def decoder(codes: torch.Tensor):
            z = codes * float(np.float32((hi - lo) / anchor.MAX_CODE)) + float(np.float32(lo))
            return model.msfr(torch.cat([z, pad], 1), sizes)

        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            _, qlo, qhi, stream, _ = refine_fused(z0, qp, preset, decoder, objective(feats), steps, lr, rate_weight)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
    return _header_and_units(arrays, qp, pid, kept, qlo, qhi, model_id, digest, stream)


def encode(
    features: Features, split_point: SplitPoint, params: Params, context: EncodeContext | None = None
) -> tuple[ModeHeader, list[PayloadUnit]]:
    model_id = model_id_for(split_point, params.codec_model)
    model, _, digest = model_for(model_id, params.codec_weights)
    if tuple(model.cfg.scales) != tuple(split_point.scales):
        raise EncodeError(f"codec model {params.codec_weights} is not for split point {split_point.name!r}")
    c = model.cfg.fused_channels
    table = TRUNCATION_TABLES[model_id]
    kept = kept_channels_for_qp(params.qp, c, table) if params.kept_channels is None else params.kept_channels
    if kept > c:
        raise EncodeError(f"vvc_msff parameter kept_channels must be at most the model's {c} channels, got {kept}")
    if params.refine_lr is not None:
        if params.refine is None:
            raise EncodeError("vvc_msff --refine-lr needs --refine")
        if not 0 < params.refine_lr <= REFINE_MAX_LR:
            raise EncodeError(f"vvc_msff --refine-lr must be in (0, {REFINE_MAX_LR}], got {params.refine_lr}")
    if params.refine_rate_weight is not None:
        if params.refine is None:
            raise EncodeError("vvc_msff --refine-rate-weight needs --refine")
        if not 0 <= params.refine_rate_weight <= 10:
            raise EncodeError(f"vvc_msff --refine-rate-weight must be in [0, 10], got {params.refine_rate_weight}")
    if params.refine is None:
        return encode_with_model(features, split_point, params.qp, params.preset, kept, model, model_id, digest)
    if context is None:
        raise EncodeError("vvc_msff --refine needs the network (the pipeline's context)")
    if getattr(context.network, "engine", "torch") != "torch":
        raise EncodeError("vvc_msff --refine needs the PyTorch network (it differentiates through NN part 2's heads)")
    from codec.models.registry import entry, verified_record

    record = verified_record(params.codec_weights if params.codec_weights is not None else entry(model_id).weights)
    lr = REFINE_LR if params.refine_lr is None else params.refine_lr
    w = REFINE_RATE_WEIGHT if params.refine_rate_weight is None else params.refine_rate_weight
    return encode_refined(features, split_point, params.qp, params.preset, kept, model, model_id, digest, record,
                          context.network, context.split, params.refine, lr, w)  # fmt: skip


def _check_header(header: ContainerHeader, model: MsffCodecModel, digest: bytes) -> tuple[int, anchor.FrameLayout]:
    """Checks of the mode; returns (KeptChannels, frame layout)."""
    m = header.mode
    check_model_hash(m.codec_model_hash, digest)
    if m.inner.codec_id != InnerCodecId.VVC_VVENC or m.inner.bit_depth != BIT_DEPTH:
        raise MalformedError(f"vvc_msff needs inner_codec_id VVC_VVENC with inner_bit_depth {BIT_DEPTH}")
    if m.sample_format != SampleFormat.NONE or m.entropy_coder_id != EntropyCoderId.NONE:
        raise MalformedError("vvc_msff needs sample_format NONE and entropy_coder_id NONE")
    want = [(s.name, s.channels) for s in model.cfg.scales]
    got = [(s.name, s.channels) for s in header.scales]
    if got != want:
        raise MalformedError(f"vvc_msff model has scales {want}, header has {got}")
    kept = sum(s.kept_channels for s in header.scales)
    if not 1 <= kept <= model.cfg.fused_channels:
        raise MalformedError(f"KeptChannels {kept} outside 1..{model.cfg.fused_channels}")
    if [s.kept_channels for s in header.scales] != split_kept(kept, [s.channels for s in header.scales]):
        raise MalformedError("kept_channels fields are not filled greedily in scale order")
    if len({(s.quant_min, s.quant_max) for s in header.scales}) != 1:
        raise MalformedError("vvc_msff needs the same quant_min and quant_max in every scale")
    # every scale's size follows from the coarsest one's (ceil division by 2 per stride step),
    # and Z lies at the model's fusion scale (the coarsest for the first models)
    coarse = header.scales[-1]
    top = model.cfg.scales[-1].stride
    for i, (s, info) in enumerate(zip(header.scales, model.cfg.scales)):
        r = top // info.stride
        if not ((coarse.height - 1) * r < s.height <= coarse.height * r and
                (coarse.width - 1) * r < s.width <= coarse.width * r):  # fmt: skip
            raise MalformedError(f"scale {i} ({s.name}) size {s.height}x{s.width} does not match the coarsest scale")
    fused = header.scales[model.cfg.level]
    layout = anchor.frame_layout([(kept, fused.height, fused.width)])
    anchor.check_frame_size(layout)
    return kept, layout


def _stream_of(units: list[PayloadUnit]) -> PayloadUnit:
    streams = units_of_type(units, UnitType.VVC_NAL_STREAM)
    if len(streams) != 1 or streams[0].scale_index != ALL_SCALES or len(units) != 1:
        raise MalformedError("vvc_msff needs exactly one VVC_NAL_STREAM unit for all scales and no other units")
    return anchor.check_vvc_payload(streams[0])


def validate(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
    model, _, digest = model_for(header.mode.codec_model_id, weights)
    _check_header(header, model, digest)
    _stream_of(units)


def decode_symbols(header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> dict[str, np.ndarray]:
    """{"frame": the decoded (FrameHeight, FrameWidth) uint16 10-bit frame}."""
    model, _, digest = model_for(header.mode.codec_model_id, weights)
    _, layout = _check_header(header, model, digest)
    stream = _stream_of(units)
    try:
        frame = vvc.decode_luma10(stream.data, layout.width, layout.height)
    except vvc.FfmpegToolError:
        raise  # ffmpeg itself failed (missing, killed, timed out): not the stream's fault
    except (vvc.FfmpegError, ValueError) as e:
        raise InnerCodecError(f"VVC payload could not be decoded: {str(e).splitlines()[0]}") from None
    if frame.shape != (layout.height, layout.width) or int(frame.max(initial=0)) > anchor.MAX_CODE:
        raise InnerCodecError(f"VVC picture is not a {layout.width}x{layout.height} 10-bit picture")
    return {"frame": frame.astype(np.uint16)}


def fused_tensor(header: ContainerHeader, frame: np.ndarray, fused_channels: int, level: int = -1) -> torch.Tensor:
    """Decoded frame -> (1, C, h, w) fused tensor at scale `level`'s size (the model's
    fusion scale): kept channels dequantised, the rest zero."""
    import torch

    fused = header.scales[level]
    kept = sum(s.kept_channels for s in header.scales)
    layout = anchor.frame_layout([(kept, fused.height, fused.width)])
    (codes,) = anchor.untile(frame, [(kept, fused.height, fused.width)], layout)
    z = np.zeros((fused_channels, fused.height, fused.width), dtype=np.float32)
    z[:kept] = anchor.dequantise(codes, fused.quant_min, fused.quant_max)
    return torch.from_numpy(z).unsqueeze(0)


def reconstruct(header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
    model, exact, digest = model_for(header.mode.codec_model_id, weights)
    _check_header(header, model, digest)
    z = fused_tensor(header, symbols["frame"], model.cfg.fused_channels, model.cfg.level)
    return dict(exact(z, {s.name: (s.height, s.width) for s in header.scales}))


# mode_header( ) of container 2.0 (bitstream_spec.md, section 7.4.1): the codec model,
# the inner QP and preset, KeptChannels once and the one quantisation range of the kept
# channels; inner_codec_id VVC_VVENC and inner_bit_depth 10 are implied by the mode
vvc_msff_header = Struct(
    "codec_model_id" / id_field(Int16ub, CodecModelId, "codec_model_id"),
    "codec_model_hash" / Bytes(32),
    "inner_qp" / Int8ub,
    "inner_preset_id" / id_field(Int8ub, PresetId, "inner_preset_id"),
    "kept_channels" / limit_field(Int16ub, 1, MAX_CHANNELS, "kept_channels"),
    "quant_min" / finite_field(Float32b, "quant_min"),
    "quant_max" / finite_field(Float32b, "quant_max"),
)


def _to_header_value(mh: ModeHeader) -> dict:
    s0 = mh.scales[0]
    return {
        "codec_model_id": int(mh.codec_model_id),
        "codec_model_hash": bytes(mh.codec_model_hash),
        "inner_qp": mh.inner.qp,
        "inner_preset_id": int(mh.inner.preset_id),
        "kept_channels": sum(s.kept_channels for s in mh.scales),
        "quant_min": float(s0.quant_min),
        "quant_max": float(s0.quant_max),
    }


def _from_header_value(value, shapes: Shapes) -> ModeHeader:
    try:  # the in-memory header spreads KeptChannels over the scales as container 1.0 does
        per_scale = split_kept(value.kept_channels, [c for _, c, _, _ in shapes])
    except EncodeError:
        raise MalformedError(
            f"vvc_msff mode: kept_channels {value.kept_channels} exceeds the scales' {sum(c for _, c, _, _ in shapes)}"
        ) from None
    scales = shaped_scales(shapes, kept_channels=per_scale, quant_min=value.quant_min, quant_max=value.quant_max)
    return ModeHeader(
        scales,
        sample_format=SampleFormat.NONE,
        inner=InnerCodecParams(InnerCodecId.VVC_VVENC, value.inner_qp, PresetId(value.inner_preset_id), BIT_DEPTH),
        codec_model_id=CodecModelId(value.codec_model_id),
        codec_model_hash=bytes(value.codec_model_hash),
    )


# spec table name -> construct (tests/unit/test_spec.py compares them with the spec)
SYNTAX_STRUCTURES = {"vvc_msff_header": vvc_msff_header}
HEADER_SYNTAX = ModeHeaderSyntax(vvc_msff_header, _to_header_value, _from_header_value)

# header constraints (bitstream_spec.md, section 7.4)
HEADER_RULES = {
    **anchor.VVC_HEADER_RULES,
    "codec_model_id": enum_rule(*sorted(MODEL_IDS)),
    "codec_model_hash": other_than(ZERO_HASH, "32 zero bytes"),
    **NO_ENTROPY_CODER,
}
SCALE_RULES = {
    "phi_index": is_(0),
    "kept_channels": Rule("filled greedily (section 7.4)"),  # checked by validate( ): it needs every scale
    "quant_min": UNIFORM,
    "quant_max": UNIFORM,
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
    uses_context=True,
    sources=(
        "codec/modes/anchor.py",
        "codec/training/task.py",
        "codec/models/msff.py",
        "codec/models/linear_path.py",
        "codec/models/weights/msff_nanodet_neck.pt",
        "codec/models/weights/msff_nanodet_neck_g2.pt",
    ),
    description="multi-scale feature fusion + QP-adaptive channel truncation + VVC",
)
decode = MODE.decode

__all__ = [
    "MODE",
    "Params",
    "MODEL_IDS",
    "MODEL_NAMES",
    "TRUNCATION_TABLE",
    "TRUNCATION_TABLES",
    "encode_with_model",
    "fused_tensor",
    "kept_channels_for_qp",
    "model_for",
    "split_kept",
]
