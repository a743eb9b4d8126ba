"""Codecs compared by the CTC harness: a small plugin registry.

A codec type turns one image into (bits, detections) at one rate point, through
the real code path, so that the counted bits are the bytes a file would hold:

* ``image_anchor``: the image coded with VVC, decoded, then the whole network (NN part 1 +
  part 2) on the decoded image. bits = VVC bytes * 8. ``conversion: mpeg`` (the default) is
  the MPEG FCM platform's image anchor (``encode_rgb_image_mpeg``: 8-bit full-range BT.601
  4:2:0, all-intra at the nominal QP); ``conversion: bt709`` the earlier limited-range
  10-bit BT.709 conversion in vvenc's random-access default (``encode_rgb_image``).
* ``feature_anchor``: the container's "mpeg_anchor" mode, the MPEG feature anchor procedure
  (``codec.pipeline.encode_image`` with that mode and its parameters, then
  ``decode_bitstream`` and ``run_part2``; options ``range_min`` / ``range_max``: the set's
  range). bits = container bytes * 8. The per-image range anchor is type ``anchor``.
* ``bypass``: the container's lossless "bypass" mode (float16 / float32 tensors).
* ``container`` (with ``mode: NAME``), or a type named after any registered mode
  (``codec.modes.available_modes()``): that container mode; the config's ``param``
  (default: the mode's rate parameter) and ``options`` are the fields of the mode's
  parameter dataclass, checked by the mode. An ablation is a mode with other
  options (e.g. ``codec_weights``, ``kept_channels`` of vvc_msff).
* ``uncompressed``: NN part 1 -> NN part 2 with no coding at all; the rate is the
  raw float32 size of the split features (a reference line, not a codec).

Third-party codec types are named ``module:attr`` in a config (attr: a CodecType
subclass or instance), or registered with :func:`register_codec_type`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import EncodeError
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
    from codec.inner.vvc import QP_MAX, QP_MIN

    qp = params.get("qp")
    if isinstance(qp, bool) or not isinstance(qp, int) or not QP_MIN <= qp <= QP_MAX:
        raise ConfigError(f"qp must be an integer in {QP_MIN}..{QP_MAX}, got {qp!r}")


def _ffmpeg_version() -> str:
    """The ffmpeg build that codes (with the vvenc it links): its version and the sha256 of the
    binary, since a version string does not name the libvvenc inside."""
    import imageio_ffmpeg

    from codec.inner.vvc import ffmpeg_exe

    try:
        exe = Path(ffmpeg_exe())
        st = exe.stat()
        digest = _binary_sha256(str(exe), st.st_mtime_ns, st.st_size)
        return f"imageio-ffmpeg {imageio_ffmpeg.__version__}; ffmpeg {imageio_ffmpeg.get_ffmpeg_version()}; {digest}"
    except (
        RuntimeError,
        OSError,
    ) as e:  # no binary (FfmpegError is a RuntimeError): the job itself fails with the runner's message
        return f"imageio-ffmpeg {imageio_ffmpeg.__version__}; ffmpeg unavailable ({e})"


@functools.lru_cache(maxsize=4)
def _binary_sha256(path: str, mtime_ns: int, size: int) -> str:
    from codec.files import file_sha256

    return file_sha256(path)


IMAGE_CONVERSIONS = ("mpeg", "bt709")


class ImageAnchor(CodecType):
    type_name = "image_anchor"
    default_param = "qp"
    uses_ffmpeg = True

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        from codec.inner.vvc import VVENC_PRESETS

        unknown = sorted(set(params) - {"qp", "preset", "conversion"})
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for image_anchor (qp, preset, conversion)")
        out = {"preset": "faster", "conversion": "mpeg", **params}
        _check_qp(out)
        if out["preset"] not in VVENC_PRESETS:
            raise ConfigError(f"preset {out['preset']!r} is not one of {', '.join(VVENC_PRESETS)}")
        if out["conversion"] not in IMAGE_CONVERSIONS:
            raise ConfigError(f"conversion {out['conversion']!r} is not one of {', '.join(IMAGE_CONVERSIONS)}")
        return out

    def version(self) -> str:
        return _ffmpeg_version()

    def run(self, image: np.ndarray, network: SplitNetwork, split: str, params: dict[str, Any]) -> CodecOutput:
        from codec.inner import vvc

        h, w = image.shape[:2]
        mpeg = params.get("conversion", "mpeg") == "mpeg"
        t0 = time.perf_counter()
        if mpeg:
            bitstream = vvc.encode_rgb_image_mpeg(image, params["qp"], params["preset"])
        else:
            bitstream = vvc.encode_rgb_image(image, params["qp"], params["preset"])
        t1 = time.perf_counter()
        decoded = vvc.decode_rgb_image_mpeg(bitstream, w, h) if mpeg else vvc.decode_rgb_image(bitstream, w, h)
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
    """A container coding mode through codec.pipeline (encode_image -> bytes -> decode_bitstream).

    The parameters of a rate point are the mode's parameter dataclass: the rate
    parameter (the default `param`) and options, checked by the mode itself. An
    ablation is the same mode with other options (codec-model weights, a kept-channel
    count, ...), never another code path. A `codec_weights` path is relative to the
    repository root; its sha256 joins the parameters (and so the job key)."""

    type_name = "container"

    def __init__(self, mode: str) -> None:
        from codec.modes import mode_by_name

        try:
            self._mode = mode_by_name(mode)
        except EncodeError as e:
            raise ConfigError(str(e)) from None
        self.mode = mode
        self.default_param = self._mode.rate_param
        self.uses_ffmpeg = mode != "bypass"

    def _mode_params(self, params: dict[str, Any]) -> Any:
        values = {k: v for k, v in params.items() if k != WEIGHTS_SHA256}
        if isinstance(values.get("codec_weights"), str):
            values["codec_weights"] = str(codec_weights_path(values["codec_weights"]))
        try:
            return self._mode.make_params(values)
        except EncodeError as e:
            raise ConfigError(str(e)) from None

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        from codec.errors import CodecModelError
        from codec.models.registry import verify_weights

        checked = self._mode_params(params)
        out = dataclasses.asdict(checked)
        if out.get("codec_weights") is not None:
            out["codec_weights"] = params["codec_weights"]  # as written: the job key stays machine-independent
            path = codec_weights_path(params["codec_weights"])
            try:
                _, digest = verify_weights(path)  # missing, unrecorded or corrupt: refused before any job
            except CodecModelError as e:
                raise ConfigError(str(e)) from None
            out[WEIGHTS_SHA256] = digest  # other weights, other results
        return out

    def version(self) -> str:
        return _ffmpeg_version() if self.uses_ffmpeg else ""

    def run(self, image: np.ndarray, network: SplitNetwork, split: str, params: dict[str, Any]) -> CodecOutput:
        from codec.files import file_sha256
        from codec.pipeline import decode_bitstream, encode_image, run_part2

        mode_params = self._mode_params(params)
        weights = getattr(mode_params, "codec_weights", None)
        if weights is not None and file_sha256(weights) != params.get(WEIGHTS_SHA256):
            raise ConfigError(f"{weights} changed since the run was planned")
        staged = _StagedNetwork(network)
        with count_stage("encode"):
            enc = encode_image(image, staged, split, self._mode, mode_params)
        with count_stage("decode"):
            dec = decode_bitstream(enc.bitstream, staged, weights)
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


WEIGHTS_SHA256 = "codec_weights_sha256"


def codec_weights_path(weights: str | os.PathLike) -> Path:
    """A config's codec_weights: absolute, or relative to the repository root."""
    from codec.files import REPO_ROOT

    path = Path(weights)
    return path if path.is_absolute() else REPO_ROOT / path


_REGISTRY: dict[str, CodecType] = {}


def register_codec_type(codec_type: CodecType, name: str | None = None) -> None:
    _REGISTRY[name or codec_type.type_name] = codec_type


register_codec_type(ImageAnchor())
register_codec_type(Uncompressed())
register_codec_type(ContainerCodec("mpeg_anchor"), "feature_anchor")
register_codec_type(ContainerCodec("bypass"), "bypass")


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
