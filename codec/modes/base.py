"""What every coding mode shares: the mode object, its parameter dataclass and
the checks that features match the split point.

A coding mode is one `CodingMode` object (one module of codec/modes defines it
as `MODE`; codec.modes keeps the registry). It owns

* its parameter dataclass: fields made with `option(...)`, one of them the rate
  parameter (`rate=True`). fcm_enc's flags and the CTC's `param` / `options` are
  generated from it and checked by `CodingMode.make_params` before any model loads;
* encode(features, split_point, params) -> (ModeHeader, list[PayloadUnit]);
* decode_symbols(header, units, weights) -> dict[str, np.ndarray]  (decoded integer / raw symbols)
  reconstruct(header, symbols, weights) -> Features
  validate(header, units, weights) -> None         (mode-level checks without decoding)
  where `weights` is None (the shipped codec-model weights) or another weights file;
* its header constraint tables (HEADER_RULES / SCALE_RULES, bitstream_spec.md 7.6), checked
  by one validator (`check_constraints`) before decoding;
* its part of the container 2.0 header: a mode_header( ) construct selected by mode_id,
  with the conversions to and from the in-memory ModeHeader (`ModeHeaderSyntax`);
* the source and weight files its results depend on (the CTC cache key uses them).

This module imports no torch at import time, so that the bitstream inspector
starts fast; torch is imported by the functions that convert tensors.
"""

from __future__ import annotations

import builtins
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codec.bitstream import ContainerHeader, ModeHeader, PayloadUnit, ScaleHeader
from codec.bitstream.container import ModeHeaderSyntax
from codec.errors import EncodeError, MalformedError
from codec.files import REPO_ROOT

if TYPE_CHECKING:
    from codec.vision.base import Features, Preprocessing, SplitNetwork, SplitPoint

Weights = str | Path | None  # a codec-model weights file; None: the shipped one


@dataclass(frozen=True)
class EncodeContext:
    """What an encoder that allocates bits for the task or to a target rate needs beyond the
    features (a mode declares `uses_context`): the split network (its NN part 2 judges what
    a scale's bits are worth), the preprocessing (the original image's pixels, which bpp is
    counted over) and `container_bits(header, units)`, the size in bits of the container
    the pipeline builds around a mode header and payload units (so that a rate target
    counts the header and optional units exactly)."""

    network: SplitNetwork
    split: str
    prep: Preprocessing
    container_bits: Callable[[ModeHeader, list[PayloadUnit]], int]

    @property
    def image_pixels(self) -> int:
        return int(self.prep.orig_w) * int(self.prep.orig_h)


def option(
    default: Any,
    help: str,
    *,
    kind: type | None = None,
    range: tuple[int, int] | None = None,
    choices: tuple[str, ...] | None = None,
    rate: bool = False,
    what: str | None = None,
) -> Any:
    """A field of a mode's parameter dataclass. `kind` (int, float or str) defaults to
    the type of `default`; a default of None means "optional" and needs `kind`.
    `range` bounds an int inclusively, `choices` lists the allowed strings; `rate`
    marks the rate parameter (one per mode)."""
    if kind is None:
        if default is None:
            raise TypeError("an option with default None needs its kind")
        kind = builtins.type(default)
    if kind not in (int, float, str):
        raise TypeError(f"option kind must be int, float or str, got {kind!r}")
    meta = {
        "help": help,
        "kind": kind,
        "range": range,
        "choices": tuple(choices) if choices else None,
        "rate": rate,
        "what": what,  # the values in words where no range or choices say it ("a weights file")
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamSpec:
    """One field of a mode's parameter dataclass, as the apps and the CTC see it."""

    name: str
    kind: type
    default: Any
    help: str
    range: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None
    rate: bool = False
    what: str | None = None

    @property
    def flag(self) -> str:
        # a field named after a Python keyword ends in "_" (lambda_): its flag drops it (--lambda)
        return "--" + self.name.rstrip("_").replace("_", "-")

    def domain(self) -> str:
        """The allowed values in words: "0..63", "faster|fast", "an integer"."""
        if self.range is not None:
            text = f"{self.range[0]}..{self.range[1]}"
        elif self.choices is not None:
            text = "|".join(self.choices)
        else:
            text = self.what or {int: "an integer", float: "a number", str: "a string"}[self.kind]
        return text + (" or none" if self.default is None else "")

    def check(self, value: Any, mode: str) -> Any:
        """The value converted to the field's kind; EncodeError (one line) if it is not allowed."""
        where = f"{mode} parameter {self.name}"
        if value is None:
            if self.default is None:
                return None
            raise EncodeError(f"{where} must be {self.domain()}, got None")
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise EncodeError(f"{where} must be an integer in {self.domain()}, got {value!r}")
            value = int(value)
            if self.range is not None and not self.range[0] <= value <= self.range[1]:
                raise EncodeError(f"{where} must be an integer in {self.domain()}, got {value}")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise EncodeError(f"{where} must be a number, got {value!r}")
            value = float(value)
        else:
            if not isinstance(value, str):
                what = self.domain() if self.choices is None else f"a string ({self.domain()})"
                raise EncodeError(f"{where} must be {what}, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise EncodeError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}")
        return value


def param_specs(params_cls: type) -> list[ParamSpec]:
    """The ParamSpec of every field of a parameter dataclass, in field order."""
    out = []
    for f in dataclasses.fields(params_cls):
        if "kind" not in f.metadata:
            raise TypeError(f"{params_cls.__name__}.{f.name} is not declared with codec.modes.base.option()")
        m = f.metadata
        out.append(ParamSpec(f.name, m["kind"], f.default, m["help"], m["range"], m["choices"], m["rate"], m["what"]))
    return out


@dataclass(frozen=True, eq=False)
class CodingMode:
    """A coding mode: its id and name, parameter dataclass, codec and its dependencies."""

    mode_id: int  # mode_id written into the container (bitstream_spec.md, table "mode_id")
    name: str
    params: type  # a frozen dataclass whose fields are made with option()
    encode: Callable[[Features, SplitPoint, Any], tuple[ModeHeader, list[PayloadUnit]]]
    decode_symbols: Callable[..., dict[str, np.ndarray]]  # (header, units, weights=None)
    reconstruct: Callable[..., Features]  # (header, symbols, weights=None)
    validate: Callable[..., None]  # (header, units, weights=None)
    # the encoder of the ONNX engine (features of an ONNX NN part 1, no torch), as `encode`;
    # None: `encode` serves both engines (it needs no codec model, or runs its own in torch)
    encode_onnx: Callable[[Features, SplitPoint, Any], tuple[ModeHeader, list[PayloadUnit]]] | None = None
    # files (or folders) whose content changes this mode's results, relative to the
    # repository root or absolute; the module defining the mode is always one of them
    # its header constraint tables (the spec's table of the mode): a Rule for every field
    # of HEADER_FIELDS and SCALE_FIELDS, checked by check_constraints before validate
    header_rules: Mapping[str, Rule] = field(default_factory=dict)
    scale_rules: Mapping[str, Rule] = field(default_factory=dict)
    # its part of the container 2.0 header: mode_header( ), selected by mode_id (None: the
    # mode can only be carried in container 1.0)
    header_syntax: ModeHeaderSyntax | None = None
    # the parameters as the apps echo them, for a mode whose unset options have an effective value
    describe_params: Callable[[Any], str] | None = None
    # the parameters as the encoder uses them on a split point, for a mode whose defaults depend
    # on it (learned_e2e: the codec model trained for the split point); None: as given
    resolve_params: Callable[[Any, SplitPoint], Any] | None = None
    sources: tuple[str, ...] = ()
    description: str = ""
    # the encoder takes a fourth argument, the EncodeContext (network, preprocessing, container
    # size): modes that allocate bits through NN part 2 or to a target bpp
    uses_context: bool = False

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.params):
            raise TypeError(f"mode {self.name!r}: params must be a dataclass")
        rates = [s.name for s in self.param_specs() if s.rate]
        if len(rates) > 1:
            raise TypeError(f"mode {self.name!r} declares more than one rate parameter: {rates}")
        if not 1 <= int(self.mode_id) <= 254:
            raise TypeError(f"mode {self.name!r}: mode_id must be in 1..254, got {self.mode_id}")
        if set(self.header_rules) != set(HEADER_FIELDS) or set(self.scale_rules) != set(SCALE_FIELDS):
            raise TypeError(
                f"mode {self.name!r}: its constraint tables must give a rule for each of {HEADER_FIELDS} "
                f"and {SCALE_FIELDS}"
            )

    def encoder(
        self, engine: str = "torch"
    ) -> Callable[[Features, SplitPoint, Any], tuple[ModeHeader, list[PayloadUnit]]]:
        """The encode function for NN part 1's engine: "torch", or "onnx" (codec.vision.onnx_part1)."""
        if engine not in ("torch", "onnx"):
            raise ValueError(f"unknown engine {engine!r}")
        return self.encode_onnx if engine == "onnx" and self.encode_onnx is not None else self.encode

    # --- parameters ----------------------------------------------------------------

    def param_specs(self) -> list[ParamSpec]:
        return param_specs(self.params)

    @property
    def rate_param(self) -> str | None:
        """The name of the rate parameter (what a CTC curve varies), None if it has none."""
        return next((s.name for s in self.param_specs() if s.rate), None)

    def make_params(self, values: Mapping[str, Any] | Any = None) -> Any:
        """The mode's parameter dataclass from a mapping of given values (the rest take
        their defaults), or a checked copy of an instance; EncodeError if a name is not
        a parameter of this mode or a value is outside its domain."""
        given: dict[str, Any] = (
            {f.name: getattr(values, f.name) for f in dataclasses.fields(self.params)}
            if isinstance(values, self.params)
            else dict(values or {})
        )
        specs = {s.name: s for s in self.param_specs()}
        unknown = sorted(set(given) - set(specs))
        if unknown:
            raise EncodeError(
                f"mode {self.name} has no parameter {', '.join(unknown)}; its parameters: {', '.join(specs) or 'none'}"
            )
        checked = {name: spec.check(given.get(name, spec.default), self.name) for name, spec in specs.items()}
        return self.params(**checked)

    def resolve(self, params: Any, split_point: SplitPoint) -> Any:
        """The parameters as the encoder uses them on `split_point` (what the apps echo)."""
        return params if self.resolve_params is None else self.resolve_params(params, split_point)

    def describe(self, params: Any) -> str:
        """The parameters as the apps echo them ("qp 32, preset faster"): the rate
        parameter first, unset options left out."""
        if self.describe_params is not None:
            return self.describe_params(params)
        specs = sorted(self.param_specs(), key=lambda s: not s.rate)
        return ", ".join(f"{s.name} {getattr(params, s.name)}" for s in specs if getattr(params, s.name) is not None)

    # --- decoding ---------------------------------------------------------------------

    def check(self, header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> None:
        """Every conformance check of the mode that needs no decoding: its constraint
        tables (one validator for every mode), then its own structural checks (which
        may compare the codec-model hash with `weights`, None: the shipped file)."""
        check_constraints(self.name, self.header_rules, self.scale_rules, header)
        self.validate(header, units, weights)

    def decode(self, header: ContainerHeader, units: list[PayloadUnit], weights: Weights = None) -> Features:
        """Decoded symbols -> features; non-finite features are refused (bitstream_spec.md, 7.1)."""
        return self.features(header, self.decode_symbols(header, units, weights), weights)

    def features(self, header: ContainerHeader, symbols: dict[str, np.ndarray], weights: Weights = None) -> Features:
        """The mode's reconstruction of decoded symbols, refused if not finite."""
        features = self.reconstruct(header, symbols, weights)
        check_finite(features)
        return features

    # --- dependencies -----------------------------------------------------------------

    def source_files(self) -> list[Path]:
        """Every file the mode's results depend on (the defining module, its sources), sorted."""
        entries = [Path(inspect.getfile(self.encode)), *(Path(s) for s in self.sources)]
        files: set[Path] = set()
        for e in entries:
            p = e if e.is_absolute() else REPO_ROOT / e
            if p.is_dir():
                files |= {f for f in p.rglob("*") if f.suffix in (".py", ".pt", ".json") and f.is_file()}
            elif p.is_file():
                files.add(p)
        return sorted(files)


def refinement_loss(record: dict, network, split: str, mode: str) -> tuple[float, float, Any]:
    """The distortion weights a codec model was trained with, from its weights' record, for
    an encoder that refines against them (--refine): (feature_weight, task_weight, the task
    loss through the network's frozen heads or None). EncodeError, naming `mode`, if the
    record has no loss or is for another network / split point."""
    loss = record.get("loss")
    if not isinstance(loss, dict) or record.get("network") is None:
        raise EncodeError(f"{mode} --refine needs the codec model's training record (network and loss)")
    if record["network"] != getattr(network, "name", None) or record.get("split") != split:
        raise EncodeError(
            f"{mode} --refine: the codec model was trained on {record['network']}/{record.get('split')}, "
            f"the features come from {getattr(network, 'name', None)}/{split}"
        )
    fw, tw = float(loss.get("feature_weight", 1.0)), float(loss.get("task_weight", 0.0))
    task: Any = None
    if tw > 0:
        from codec.training.task import TaskLossConfig, TaskLossError, task_loss_for

        try:
            task = task_loss_for(network, split, TaskLossConfig(box_weight=float(loss.get("task_box_weight", 1.0))))
        except TaskLossError as e:
            raise EncodeError(f"{mode} --refine: {e}") from None
    return fw, tw, task


# --- header constraints (bitstream_spec.md, the "header constraints" table of each mode) ----------


@dataclass(frozen=True)
class Rule:
    """What a mode allows in one header field: `values` (a set, a range), the same value
    as another field of the scale (`same_as`), or the same value in every scale
    (`uniform`). `text` is the wording of the spec's constraint table."""

    text: str
    values: frozenset | range | None = None
    excluded: frozenset = frozenset()
    same_as: str | None = None
    uniform: bool = False

    def allows(self, value: Any, scale: Mapping[str, Any] | None = None) -> bool:
        if self.same_as is not None and (scale is None or value != scale[self.same_as]):
            return False
        return value not in self.excluded and (self.values is None or value in self.values)


ZERO_HASH = bytes(32)


def is_(value: Any, name: str | None = None) -> Rule:
    """Exactly `value` (written `name` in the spec, e.g. an id's name)."""
    return Rule(str(name if name is not None else value), frozenset({value}))


def in_range(lo: int, hi: int) -> Rule:
    return Rule(f"{lo}..{hi}", range(lo, hi + 1))


def other_than(value: Any, name: str) -> Rule:
    return Rule(f"not {name}", excluded=frozenset({value}))


def enum_rule(*members: Any) -> Rule:
    """One of the given IntEnum members, written by name."""
    return Rule(" or ".join(m.name for m in members), frozenset(int(m) for m in members))


NO_INNER_CODEC = {
    "inner_codec_id": Rule("NONE", frozenset({0})),
    "inner_qp": Rule("0", frozenset({0})),
    "inner_preset_id": Rule("NONE", frozenset({0})),
    "inner_bit_depth": Rule("0", frozenset({0})),
}
NO_CODEC_MODEL = {
    "codec_model_id": Rule("NONE", frozenset({0})),
    "codec_model_hash": Rule("32 zero bytes", frozenset({bytes(32)})),
}
NO_ENTROPY_CODER = {
    "entropy_coder_id": Rule("NONE", frozenset({0})),
    "entropy_precision": Rule("0", frozenset({0})),
}


EQUALS_SCALE_CHANNELS = Rule("scale_channels", same_as="scale_channels")
ANY = Rule("any")
UNIFORM = Rule("the same in every scale", uniform=True)


def header_fields(header: ContainerHeader) -> dict[str, Any]:
    """The mode-dependent fields of header_body( ) by their syntax element names."""
    m = header.mode
    return {
        "sample_format": int(m.sample_format),
        "inner_codec_id": int(m.inner.codec_id),
        "inner_qp": m.inner.qp,
        "inner_preset_id": int(m.inner.preset_id),
        "inner_bit_depth": m.inner.bit_depth,
        "codec_model_id": int(m.codec_model_id),
        "codec_model_hash": bytes(m.codec_model_hash),
        "entropy_coder_id": int(m.entropy_coder_id),
        "entropy_precision": m.entropy_precision,
    }


def scale_fields(scale: ScaleHeader) -> dict[str, Any]:
    return {
        "scale_channels": scale.channels,
        "phi_index": scale.phi_index,
        "kept_channels": scale.kept_channels,
        "quant_min": float(scale.quant_min),
        "quant_max": float(scale.quant_max),
    }


HEADER_FIELDS = (
    "sample_format", "inner_codec_id", "inner_qp", "inner_preset_id", "inner_bit_depth",
    "codec_model_id", "codec_model_hash", "entropy_coder_id", "entropy_precision",
)  # fmt: skip
SCALE_FIELDS = ("phi_index", "kept_channels", "quant_min", "quant_max")


def _shown(value: Any) -> str:
    return value.hex()[:16] + "..." if isinstance(value, bytes) else repr(value)


def check_finite(features: Features) -> None:
    """MalformedError if a decoded scale holds NaN or infinite values (an encoder never writes them)."""
    for name, t in features.items():
        bad = int(t.numel() - t.isfinite().sum()) if hasattr(t, "isfinite") else int((~np.isfinite(t)).sum())
        if bad:
            raise MalformedError(f"decoded scale {name} holds {bad} NaN or infinite values")


def check_constraints(mode_name: str, header_rules: Mapping[str, Rule], scale_rules: Mapping[str, Rule],
                      header: ContainerHeader) -> None:  # fmt: skip
    """The one validator of the modes' header constraint tables: MalformedError naming the
    first field that a mode's table does not allow."""
    fields = header_fields(header)
    for name, rule in header_rules.items():
        if not rule.allows(fields[name]):
            raise MalformedError(f"{mode_name} mode: {name} must be {rule.text}, got {_shown(fields[name])}")
    for name, rule in scale_rules.items():
        values = []
        for i, s in enumerate(header.scales):
            sf = scale_fields(s)
            if not rule.allows(sf[name], sf):
                raise MalformedError(
                    f"{mode_name} mode: {name} of scale {i} ({s.name}) must be {rule.text}, got {_shown(sf[name])}"
                )
            values.append(sf[name])
        if rule.uniform and len(set(values)) > 1:
            raise MalformedError(f"{mode_name} mode: {name} must be the same in every scale, got {values}")


Shapes = tuple[tuple[str, int, int, int], ...]  # (name, channels, height, width) per scale


def shaped_scales(shapes: Shapes, **per_scale: Any) -> tuple[ScaleHeader, ...]:
    """ScaleHeaders from container 2.0 scale shapes. A keyword gives one value for every
    scale or, as a list, one per scale; kept_channels defaults to the scale's channels."""
    out = []
    for i, (name, c, h, w) in enumerate(shapes):
        fields = {k: (v[i] if isinstance(v, (list, tuple)) else v) for k, v in per_scale.items()}
        fields.setdefault("kept_channels", c)
        out.append(ScaleHeader(name, c, h, w, **fields))
    return tuple(out)


def scale_arrays(features: Features, split_point: SplitPoint) -> list[tuple[str, np.ndarray]]:
    """Features -> [(scale name, (C, H, W) float32 array)] in the split point's order,
    checking names, batch size 1 and channel counts. A scale may be a torch tensor or a
    numpy array (the features of an ONNX NN part 1, codec.vision.onnx_part1)."""
    expected = split_point.scale_names()
    if sorted(features) != sorted(expected):
        raise EncodeError(f"features have scales {list(features)}, split point {split_point.name!r} has {expected}")
    out = []
    for info in split_point.scales:
        t = features[info.name]
        if isinstance(t, np.ndarray):
            array: np.ndarray | None = np.asarray(t, dtype=np.float32)
        else:
            import torch

            array = t.detach().to("cpu", torch.float32).numpy() if isinstance(t, torch.Tensor) else None
        if array is None or array.ndim != 4 or array.shape[0] != 1:
            raise EncodeError(
                f"scale {info.name}: expected a (1, C, H, W) tensor, got {tuple(getattr(t, 'shape', ()))}"
            )
        if array.shape[1] != info.channels:
            raise EncodeError(f"scale {info.name}: {array.shape[1]} channels, split point says {info.channels}")
        out.append((info.name, np.ascontiguousarray(array[0])))
    return out


def to_features(header: ContainerHeader, arrays: list[np.ndarray]) -> Features:
    """(C, H, W) arrays in header order -> Features ((1, C, H, W) float32 tensors)."""
    import torch

    return {
        s.name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(0)
        for s, a in zip(header.scales, arrays)
    }


def units_of_type(units: list[PayloadUnit], unit_type: int) -> list[PayloadUnit]:
    return [u for u in units if u.unit_type == unit_type]


def check_scale(scale: ScaleHeader, index: int) -> None:
    if scale.kept_channels != scale.channels:
        raise MalformedError(f"scale {index} ({scale.name}): kept_channels must equal scale_channels in this mode")
