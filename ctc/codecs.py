"""Codecs compared by the CTC harness: a small plugin registry.

A codec type turns one image into (bits, detections) at one rate point, through
the real code path, so that the counted bits are the bytes a file would hold:

* ``image_anchor``: the image coded with VVC (``encode_rgb_image``), decoded, then
  the whole network (NN part 1 + part 2) on the decoded image. bits = VVC bytes * 8.
* ``feature_anchor``: the container's "anchor" mode (``codec.pipeline.encode_image``
  with ``EncodeParams(mode="anchor", qp=...)``, then ``decode_bitstream`` and
  ``run_part2``). bits = container bytes * 8.
* ``bypass``: the container's lossless "bypass" mode (float16 / float32 tensors).
* ``container`` (with ``mode: NAME``), or a type named after any mode in
  ``codec.pipeline.available_modes()``: that container mode with the rate
  parameters of the config (fields of ``EncodeParams``).
* ``uncompressed``: NN part 1 -> NN part 2 with no coding at all; the rate is the
  raw float32 size of the split features (a reference line, not a codec).

Third-party codec types are named ``module:attr`` in a config (attr: a CodecType
subclass or instance), or registered with :func:`register_codec_type`.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codec.vision.base import Detections, Features, SplitNetwork

from .complexity import count_stage
from .errors import ConfigError

STAGES = ("nn_part1", "encode", "decode", "nn_part2")


@dataclass
class CodecOutput:
    """What one codec run on one image yields."""

    bits: int  # coded size in bits (the file's bytes * 8); raw float32 bits for "uncompressed"
    detections: Detections
    timings: dict[str, float]  # seconds per stage (keys from STAGES)
    raw_feature_bits: int  # float32 size of the split features of this image (compression-ratio basis)
    extra: dict[str, Any] = field(default_factory=dict)


def raw_feature_bits(features: Features) -> int:
    return int(sum(t.numel() for t in features.values())) * 32


class _StagedNetwork:
    """Delegates to a SplitNetwork and attributes MACs of preprocess/part1 to
    "nn_part1" and of part2 to "nn_part2", whoever calls them (e.g. the pipeline)."""

    def __init__(self, network: SplitNetwork) -> None:
        self._network = network

    def __getattr__(self, name: str) -> Any:
        return getattr(self._network, name)

    def preprocess(self, image: np.ndarray):
        with count_stage("nn_part1"):
            return self._network.preprocess(image)

    def part1(self, x, split):
        with count_stage("nn_part1"):
            return self._network.part1(x, split)

    def part2(self, features, split, meta):
        with count_stage("nn_part2"):
            return self._network.part2(features, split, meta)


class CodecType:
    """Base class of codec plugins."""

    type_name: str = ""
    default_param: str | None = None  # the rate parameter when a config names none
    mode: str | None = None  # the container mode, for container codecs
    uses_ffmpeg: bool = False

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check (and complete with defaults) the parameters of one rate point; ConfigError if bad."""
        return dict(params)

    def version(self) -> str:
        """Everything outside this repository's code that changes the output (cache key)."""
        return ""

    def run(self, image: np.ndarray, network: SplitNetwork, split: str, params: dict[str, Any]) -> CodecOutput:
        raise NotImplementedError


def _check_qp(params: dict[str, Any]) -> None:
    qp = params.get("qp")
    if isinstance(qp, bool) or not isinstance(qp, int) or not 0 <= qp <= 63:
        raise ConfigError(f"qp must be an integer in 0..63, got {qp!r}")


def _ffmpeg_version() -> str:
    import imageio_ffmpeg

    try:
        return f"imageio-ffmpeg {imageio_ffmpeg.__version__}; ffmpeg {imageio_ffmpeg.get_ffmpeg_version()}"
    except RuntimeError as e:  # no binary: the job itself will fail with the runner's message
        return f"imageio-ffmpeg {imageio_ffmpeg.__version__}; ffmpeg unavailable ({e})"


class ImageAnchor(CodecType):
    type_name = "image_anchor"
    default_param = "qp"
    uses_ffmpeg = True

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        from codec.inner.vvc import VVENC_PRESETS

        unknown = sorted(set(params) - {"qp", "preset"})
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for image_anchor (qp, preset)")
        out = {"preset": "faster", **params}
        _check_qp(out)
        if out["preset"] not in VVENC_PRESETS:
            raise ConfigError(f"preset {out['preset']!r} is not one of {', '.join(VVENC_PRESETS)}")
        return out

    def version(self) -> str:
        return _ffmpeg_version()

    def run(self, image: np.ndarray, network: SplitNetwork, split: str, params: dict[str, Any]) -> CodecOutput:
        from codec.inner.vvc import decode_rgb_image, encode_rgb_image

        h, w = image.shape[:2]
        t0 = time.perf_counter()
        bitstream = encode_rgb_image(image, params["qp"], params["preset"])
        t1 = time.perf_counter()
        decoded = decode_rgb_image(bitstream, w, h)
        t2 = time.perf_counter()
        with count_stage("nn_part1"):
            x, meta = network.preprocess(decoded)
            features = network.part1(x, split)
        t3 = time.perf_counter()
        with count_stage("nn_part2"):
            detections = network.part2(features, split, meta)
        t4 = time.perf_counter()
        return CodecOutput(
            bits=len(bitstream) * 8,
            detections=detections,
            timings={"encode": t1 - t0, "decode": t2 - t1, "nn_part1": t3 - t2, "nn_part2": t4 - t3},
            raw_feature_bits=raw_feature_bits(features),
        )


class Uncompressed(CodecType):
    type_name = "uncompressed"
    default_param = None

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        if params:
            raise ConfigError(f"uncompressed takes no parameters, got {', '.join(sorted(params))}")
        return {}

    def run(self, image: np.ndarray, network: SplitNetwork, split: str, params: dict[str, Any]) -> CodecOutput:
        t0 = time.perf_counter()
        with count_stage("nn_part1"):
            x, meta = network.preprocess(image)
            features = network.part1(x, split)
        t1 = time.perf_counter()
        with count_stage("nn_part2"):
            detections = network.part2(features, split, meta)
        t2 = time.perf_counter()
        raw = raw_feature_bits(features)
        return CodecOutput(
            bits=raw,
            detections=detections,
            timings={"nn_part1": t1 - t0, "encode": 0.0, "decode": 0.0, "nn_part2": t2 - t1},
            raw_feature_bits=raw,
        )


class ContainerCodec(CodecType):
    """A container coding mode through codec.pipeline (encode_image -> bytes -> decode_bitstream)."""

    type_name = "container"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        if mode in ("anchor", "bypass"):
            self.default_param = "bypass_dtype" if mode == "bypass" else "qp"
        else:  # other modes (learned): their quality index if EncodeParams has one
            from codec.pipeline import EncodeParams

            self.default_param = "phi" if "phi" in {f.name for f in dataclasses.fields(EncodeParams)} else "qp"
        self.uses_ffmpeg = mode != "bypass"

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        from codec.pipeline import EncodeParams

        fields = {f.name: f for f in dataclasses.fields(EncodeParams) if f.name != "mode"}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)} for mode {self.mode!r} "
                f"(EncodeParams fields: {', '.join(fields)})"
            )
        defaults = EncodeParams(mode=self.mode)
        out = {name: getattr(defaults, name) for name in fields}
        for name, value in params.items():
            default = getattr(defaults, name)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if default is not None:
                allowed = {type(default).__name__}
            else:  # an optional field: the simple types its annotation names ("int | None")
                allowed = {t for t in ("int", "float", "str", "bool") if t in str(fields[name].type)}
            if value is not None and allowed and type(value).__name__ not in allowed:
                raise ConfigError(f"{name} must be of type {' or '.join(sorted(allowed))}, got {value!r}")
            out[name] = value
        if "qp" in out:
            _check_qp(out)
        return out

    def version(self) -> str:
        return _ffmpeg_version() if self.uses_ffmpeg else ""

    def run(self, image: np.ndarray, network: SplitNetwork, split: str, params: dict[str, Any]) -> CodecOutput:
        from codec.pipeline import EncodeParams, decode_bitstream, encode_image, run_part2

        staged = _StagedNetwork(network)
        with count_stage("encode"):
            enc = encode_image(image, staged, split, EncodeParams(mode=self.mode, **params))
        with count_stage("decode"):
            dec = decode_bitstream(enc.bitstream, staged)
        detections, t_part2 = run_part2(staged, dec)
        return CodecOutput(
            bits=len(enc.bitstream) * 8,
            detections=detections,
            timings={
                "nn_part1": float(enc.timings.get("nn_part1", 0.0)),
                "encode": float(enc.timings.get("encode", 0.0)),
                "decode": float(dec.timings.get("decode", 0.0)),
                "nn_part2": float(t_part2),
            },
            raw_feature_bits=raw_feature_bits(enc.features),
        )


class MsffAblation(CodecType):
    """vvc_msff with other MSFF/MSFR weights and/or another kept-channel policy, through the
    real container (same mode id and syntax; the decoder is given the same weights): the
    ablations of docs/results_msff.md. Parameters: qp, preset, `weights` (a weights file;
    relative paths are from the repository root; default the shipped one) and `kept`
    ("table": the shipped QP table, "all": every fused channel, or a number)."""

    type_name = "vvc_msff_ablation"
    default_param = "qp"
    mode = "vvc_msff"
    uses_ffmpeg = True

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        from codec.files import file_sha256
        from codec.inner.vvc import VVENC_PRESETS

        unknown = sorted(set(params) - {"qp", "preset", "weights", "kept"})
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)} for vvc_msff_ablation (qp, preset, weights, kept)"
            )
        out = {"preset": "faster", "kept": "table", "weights": None, **params}
        _check_qp(out)
        if out["preset"] not in VVENC_PRESETS:
            raise ConfigError(f"preset {out['preset']!r} is not one of {', '.join(VVENC_PRESETS)}")
        kept = out["kept"]
        if not (kept in ("table", "all") or (isinstance(kept, int) and not isinstance(kept, bool) and kept >= 1)):
            raise ConfigError(f"kept must be 'table', 'all' or a positive integer, got {kept!r}")
        path = self.weights_path(out["weights"])
        if not path.is_file():
            raise ConfigError(f"vvc_msff_ablation weights not found: {path}")
        out["weights_sha256"] = file_sha256(path)  # part of the job key: other weights, other results
        return out

    @staticmethod
    def weights_path(weights: str | None):
        from pathlib import Path

        from codec.models.msff import shipped_weights_paths

        path = shipped_weights_paths()[0] if weights is None else Path(weights)
        return path if path.is_absolute() else Path(__file__).resolve().parent.parent / path

    def version(self) -> str:
        return _ffmpeg_version()

    def run(self, image: np.ndarray, network: SplitNetwork, split: str, params: dict[str, Any]) -> CodecOutput:
        from codec.bitstream import parse_container
        from codec.modes import vvc_msff
        from codec.pipeline import build_bitstream

        sp = network.split_points[split]
        weights = self.weights_path(params["weights"])
        model_id = vvc_msff.model_id_for(sp)
        model, _, digest = vvc_msff.model_for(model_id, weights)
        if digest.hex() != params["weights_sha256"]:
            raise ConfigError(f"{weights} changed since the run was planned")
        c = model.cfg.fused_channels
        kept = params["kept"]
        kept = vvc_msff.kept_channels_for_qp(params["qp"], c) if kept == "table" else c if kept == "all" else kept
        t_start = time.perf_counter()
        with count_stage("nn_part1"):
            x, prep = network.preprocess(image)
            features = network.part1(x, split)
        t0 = time.perf_counter()
        with count_stage("encode"):
            mode_header, units = vvc_msff.encode_with_model(
                features, sp, params["qp"], params["preset"], min(kept, c), model, model_id, digest
            )
            bitstream = build_bitstream(network, sp, prep, vvc_msff.MODE_ID, mode_header, units)
        t1 = time.perf_counter()
        with count_stage("decode"):
            parsed = parse_container(bitstream)
            symbols = vvc_msff.decode_symbols(parsed.header, parsed.units, weights)
            decoded = vvc_msff.reconstruct(parsed.header, symbols, weights)
        t2 = time.perf_counter()
        with count_stage("nn_part2"):
            detections = network.part2(decoded, split, parsed.header.preprocessing)
        t3 = time.perf_counter()
        return CodecOutput(
            bits=len(bitstream) * 8,
            detections=detections,
            timings={"nn_part1": t0 - t_start, "encode": t1 - t0, "decode": t2 - t1, "nn_part2": t3 - t2},
            raw_feature_bits=raw_feature_bits(features),
        )


_REGISTRY: dict[str, CodecType] = {}


def register_codec_type(codec_type: CodecType, name: str | None = None) -> None:
    _REGISTRY[name or codec_type.type_name] = codec_type


register_codec_type(ImageAnchor())
register_codec_type(Uncompressed())
register_codec_type(ContainerCodec("anchor"), "feature_anchor")
register_codec_type(ContainerCodec("bypass"), "bypass")
register_codec_type(MsffAblation())


def available_codec_types() -> list[str]:
    names = set(_REGISTRY) | {"container"}
    try:
        from codec.pipeline import available_modes

        names |= set(available_modes())
    except ImportError:
        pass
    return sorted(names)


def get_codec_type(type_name: str, mode: str | None = None) -> CodecType:
    """The codec plugin for a config's `type` (and `mode`, for type "container")."""
    if ":" in type_name:
        module_name, attr = type_name.split(":", 1)
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import codec type {type_name!r}: {e}") from None
        obj = obj() if isinstance(obj, type) else obj
        if not isinstance(obj, CodecType):
            raise ConfigError(f"{type_name!r} is not a ctc.codecs.CodecType")
        return obj
    if type_name == "container" or (type_name not in _REGISTRY and mode is None):
        try:
            from codec.pipeline import available_modes
        except ImportError as e:
            raise ConfigError(f"unknown codec type {type_name!r} (codec.pipeline unavailable: {e})") from None

        name = mode if type_name == "container" else type_name
        if name is None:
            raise ConfigError("type 'container' needs a 'mode'")
        if name not in available_modes():
            if type_name == "container":
                raise ConfigError(f"unknown container mode {name!r}; available: {', '.join(available_modes())}")
            raise ConfigError(f"unknown codec type {type_name!r}; available: {', '.join(available_codec_types())}")
        return ContainerCodec(name)
    if mode is not None:
        raise ConfigError(f"'mode' is only allowed with type 'container', not {type_name!r}")
    return _REGISTRY[type_name]
