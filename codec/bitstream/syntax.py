"""Container syntax (versions 1.0 and 2.0, told apart by version_major): one construct
`Struct` per syntax table of bitstream_spec.md (section 4; the modes' mode_header( )
structures live in codec/modes and are selected by mode_id through MODE_HEADERS).
The same objects parse and build; lengths are
derived (`Prefixed`), integrity is CRC32 (`RawCopy` + `Checksum`).

Parsing validates ids and sizes as it goes and raises the specific
`codec.errors.BitstreamError` subclasses; building does not validate, so that
tools can write invalid conformance vectors with correct CRCs."""

from __future__ import annotations

import enum
import math
import re
import zlib
from collections.abc import Callable
from typing import Any

from construct import (
    Adapter,
    Array,
    Bytes,
    Checksum,
    Const,
    Float32b,
    Float64b,
    GreedyBytes,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Prefixed,
    RawCopy,
    Struct,
    Switch,
    Terminated,
    this,
)

from codec.errors import (
    BadMagicError,
    BitstreamError,
    HeaderCrcError,
    MalformedError,
    PayloadCrcError,
    SizeLimitError,
    UnknownIdError,
    UnknownModeError,
    UnsupportedVersionError,
)

from .ids import (
    CodecModelId,
    EntropyCoderId,
    InnerCodecId,
    ModeId,
    NetworkId,
    PresetId,
    ResizeMode,
    SampleFormat,
    mode_id_value,
)

MAGIC = b"FCMB"
VERSION_MAJOR = 2  # what the encoder writes
VERSION_MINOR = 1  # 2.1: header_body_v2( ) ends with payload_units_crc32 (bitstream_spec.md, 5.3a)
LATEST_MINOR = {1: 0, 2: VERSION_MINOR}  # version_major -> the minor version an encoder writes
SUPPORTED_VERSIONS = (1, 2)  # version_major values this decoder implements (bitstream_spec.md, 5.1)

# Limits of bitstream conformance (bitstream_spec.md, section 6.3). Checked
# while parsing, before anything is allocated from these numbers.
MAX_HEADER_SIZE = 1 << 16
MAX_SCALES = 16
MAX_CHANNELS = 4096
MAX_SCALE_DIM = 4096
MAX_SCALE_SAMPLES = 1 << 26  # scale_channels * scale_height * scale_width
MAX_PAYLOAD_UNITS = 1024
MAX_UNIT_DATA_SIZE = 1 << 28
MAX_NAME_SIZE = 32
MAX_SOURCE_NAME_SIZE = 1024  # source_name_size of image_info( )
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")


class _Validated(Adapter):
    """Runs `check(value, context)` on parse; its return value is the parsed value.
    Building writes the value unchanged (tools build invalid vectors on purpose)."""

    def __init__(
        self,
        subcon: Any,
        check: Callable[[Any, Any], Any],
        always: bool = False,
        enum_cls: type[enum.IntEnum] | None = None,
    ):
        super().__init__(subcon)
        self.check = check
        self.always = always  # also when parsed with validate=False (fcm_inspect's raw view)
        self.enum_cls = enum_cls  # the id table (IntEnum) that validates the field, if any

    def _decode(self, obj: Any, context: Any, path: Any) -> Any:
        if not self.always and not context._params.get("validate", True):
            return obj
        return self.check(obj, context)

    def _encode(self, obj: Any, context: Any, path: Any) -> Any:
        return int(obj) if isinstance(obj, enum.IntEnum) else obj


def _enum(subcon: Any, enum_cls: type[enum.IntEnum], what: str, error: type[BitstreamError] = UnknownIdError):
    def check(value: int, context: Any) -> enum.IntEnum:
        try:
            return enum_cls(value)
        except ValueError:
            raise error(f"{what} {value} is a reserved value") from None

    return _Validated(subcon, check, enum_cls=enum_cls)


def _mode_id(subcon: Any):
    def check(value: int, context: Any) -> ModeId | int:
        try:
            return mode_id_value(value)
        except ValueError:
            raise UnknownModeError(f"mode_id {value} is a reserved value") from None

    return _Validated(subcon, check, enum_cls=ModeId)


def id_field(subcon: Any, enum_cls: type[enum.IntEnum], what: str) -> Any:
    """A field holding an id of `enum_cls` (a reserved value is an UnknownIdError): for
    the mode header syntaxes of codec/modes."""
    return _enum(subcon, enum_cls, what)


def limit_field(subcon: Any, lo: int, hi: int, what: str) -> Any:
    """A size field checked against conformance limits (SizeLimitError)."""
    return _limit(subcon, lo, hi, what)


def finite_field(subcon: Any, what: str) -> Any:
    """A float field that must be finite (MalformedError)."""
    return _finite(subcon, what)


def _limit(subcon: Any, lo: int, hi: int, what: str):
    def check(value: int, context: Any) -> int:
        if not lo <= value <= hi:
            raise SizeLimitError(f"{what} = {value} is outside the conformance limits [{lo}, {hi}]")
        return value

    return _Validated(subcon, check)


def _finite(subcon: Any, what: str):
    def check(value: float, context: Any) -> float:
        if not math.isfinite(value):
            raise MalformedError(f"{what} is not finite ({value})")
        return value

    return _Validated(subcon, check)


class _Magic(Const):
    """The magic bytes; a mismatch is a BadMagicError rather than construct's ConstError."""

    def _parse(self, stream: Any, context: Any, path: Any) -> bytes:
        value = self.subcon._parsereport(stream, context, path)
        if value != self.value:
            raise BadMagicError(f"not an FCM container: magic is {value!r}, expected {self.value!r}")
        return value


def _check_version_major(value: int, context: Any) -> int:
    if value not in SUPPORTED_VERSIONS:
        implemented = " and ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise UnsupportedVersionError(
            f"unsupported container version_major {value} (this decoder implements {implemented})"
        )
    return value


class _Name(Adapter):
    """Short ASCII name (scale or split point name), length-prefixed with u(8)."""

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        if not context._params.get("validate", True):
            return obj.decode("ascii", errors="replace")
        try:
            text = obj.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedError(f"name {obj[:MAX_NAME_SIZE]!r} is not ASCII") from None
        if not 1 <= len(obj) <= MAX_NAME_SIZE or not NAME_PATTERN.fullmatch(text):
            raise MalformedError(f"name {text!r} is not 1..{MAX_NAME_SIZE} characters of [A-Za-z0-9_.-]")
        return text

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return obj.encode("ascii")


class Crc32(Checksum):
    """CRC-32 (ISO-HDLC, as zlib.crc32) of the bytes of a preceding `RawCopy`.
    Raises `error` on mismatch unless parsed with verify_crc=False."""

    def __init__(self, bytesfunc: Any, error: type[BitstreamError], what: str):
        super().__init__(Int32ub, lambda data: zlib.crc32(data) & 0xFFFFFFFF, bytesfunc)
        self.error = error
        self.what = what

    def _parse(self, stream: Any, context: Any, path: Any) -> int:
        stored = self.checksumfield._parsereport(stream, context, path)
        if context._params.get("verify_crc", True):
            computed = self.hashfunc(self.bytesfunc(context))
            if stored != computed:
                index = context._.get("_index") if "_" in context else None
                where = self.what if index is None else f"{self.what} of payload unit {index}"
                raise self.error(f"{where} mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")
        return stored


def _name() -> Any:
    return _Name(Prefixed(Int8ub, GreedyBytes))


# C0 controls and DEL: a source name is printed by inspectors and written into reports
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _SourceName(Adapter):
    """source_name of image_info( ): UTF-8 without control characters (may be empty)."""

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        if not context._params.get("validate", True):
            return obj.decode("utf-8", errors="replace")
        try:
            text = obj.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedError(f"source_name {obj[:40]!r} is not UTF-8") from None
        if _CONTROL.search(text):
            raise MalformedError(f"source_name {text[:40]!r} holds control characters")
        return text

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return obj.encode("utf-8")


# --- syntax structures (one per spec table) ------------------------------------

scale_info = Struct(
    "scale_name" / _name(),
    "scale_channels" / _limit(Int16ub, 1, MAX_CHANNELS, "scale_channels"),
    "scale_height" / _limit(Int16ub, 1, MAX_SCALE_DIM, "scale_height"),
    "scale_width" / _limit(Int16ub, 1, MAX_SCALE_DIM, "scale_width"),
    "phi_index" / Int8ub,
    "kept_channels" / _limit(Int16ub, 0, MAX_CHANNELS, "kept_channels"),
    "quant_min" / _finite(Float32b, "quant_min"),
    "quant_max" / _finite(Float32b, "quant_max"),
)

header_body = Struct(
    "network_id" / _enum(Int8ub, NetworkId, "network_id"),
    "network_weights_hash" / Bytes(32),
    "split_point_id" / Int8ub,
    "split_point_name" / _name(),
    "orig_width" / _limit(Int16ub, 1, 65535, "orig_width"),
    "orig_height" / _limit(Int16ub, 1, 65535, "orig_height"),
    "input_width" / _limit(Int16ub, 1, 65535, "input_width"),
    "input_height" / _limit(Int16ub, 1, 65535, "input_height"),
    "resize_mode" / _enum(Int8ub, ResizeMode, "resize_mode"),
    "scale_x" / _finite(Float64b, "scale_x"),
    "scale_y" / _finite(Float64b, "scale_y"),
    "pad_x" / Int16ub,
    "pad_y" / Int16ub,
    "mode_id" / _mode_id(Int8ub),
    "sample_format" / _enum(Int8ub, SampleFormat, "sample_format"),
    "inner_codec_id" / _enum(Int8ub, InnerCodecId, "inner_codec_id"),
    "inner_qp" / Int8ub,
    "inner_preset_id" / _enum(Int8ub, PresetId, "inner_preset_id"),
    "inner_bit_depth" / Int8ub,
    "codec_model_id" / _enum(Int16ub, CodecModelId, "codec_model_id"),
    "codec_model_hash" / Bytes(32),
    "entropy_coder_id" / _enum(Int8ub, EntropyCoderId, "entropy_coder_id"),
    "entropy_precision" / Int8ub,
    "num_scales" / _limit(Int8ub, 1, MAX_SCALES, "num_scales"),
    "scales" / Array(this.num_scales, scale_info),
    "num_payload_units" / _limit(Int16ub, 0, MAX_PAYLOAD_UNITS, "num_payload_units"),
)

# --- version 2.0: the mode-dependent part of the header is the mode's own syntax -----

scale_shape = Struct(
    "scale_name" / _name(),
    "scale_channels" / _limit(Int16ub, 1, MAX_CHANNELS, "scale_channels"),
    "scale_height" / _limit(Int16ub, 1, MAX_SCALE_DIM, "scale_height"),
    "scale_width" / _limit(Int16ub, 1, MAX_SCALE_DIM, "scale_width"),
)

# mode_id -> the mode_header( ) syntax of the mode (a construct Struct), filled by the
# mode registry (codec.modes.register_mode); a mode_id without one parses as bytes.
MODE_HEADERS: dict[int, Any] = {}

header_body_v2 = Struct(
    *header_body.subcons[: [sc.name for sc in header_body.subcons].index("mode_id") + 1],
    "num_scales" / _limit(Int8ub, 1, MAX_SCALES, "num_scales"),
    "scales" / Array(this.num_scales, scale_shape),
    "mode_header" / Prefixed(Int16ub, Switch(this.mode_id, MODE_HEADERS, default=GreedyBytes)),
    "num_payload_units" / _limit(Int16ub, 0, MAX_PAYLOAD_UNITS, "num_payload_units"),
    # 2.1: binds the payload units to the header (units_binding_crc32); a 2.0 decoder skips it
    "payload_units_crc32" / If(this._.version_minor >= 1, Int32ub),
)


def units_binding_crc32(unit_crcs: list[int]) -> int:
    """payload_units_crc32: the CRC-32 of the units' unit_crc32 values, each as 4 bytes big-endian,
    in bitstream order (bitstream_spec.md, section 5.3a)."""
    return zlib.crc32(b"".join(int(c).to_bytes(4, "big") for c in unit_crcs)) & 0xFFFFFFFF


HEADER_BODIES = {1: header_body, 2: header_body_v2}  # version_major -> header body syntax

payload_unit_body = Struct(
    "unit_type" / Int8ub,
    "unit_flags" / Int8ub,
    "unit_scale_index" / Int8ub,
    "unit_data" / Prefixed(_limit(Int32ub, 0, MAX_UNIT_DATA_SIZE, "unit_data_size"), GreedyBytes),
)

payload_unit = Struct(
    "unit" / RawCopy(payload_unit_body),
    "unit_crc32" / Crc32(this.unit.data, PayloadCrcError, "unit_crc32"),
)

_HEAD = (
    "magic" / _Magic(MAGIC),
    "version_major" / _Validated(Int8ub, _check_version_major, always=True),
    "version_minor" / Int8ub,
    # header_crc32 covers header_size and all header bytes (including any
    # extension bytes of a later minor version, which a decoder skips).
    "header"
    / RawCopy(Prefixed(_limit(Int32ub, 0, MAX_HEADER_SIZE, "header_size"), Switch(this.version_major, HEADER_BODIES))),
    "header_crc32" / Crc32(this.header.data, HeaderCrcError, "header_crc32"),
)

fcm_container = Struct(
    *_HEAD,
    "payload_units" / Array(this.header.value.num_payload_units, payload_unit),
    Terminated,
)

# unit_data of the LATENT_STRING unit of mode learned_e2e (bitstream_spec.md, section 7.5)
latent_strings = Struct(
    "hyper_symbols_crc32" / Int32ub,
    "latent_symbols_crc32" / Int32ub,
    "hyper_data" / Prefixed(Int32ub, GreedyBytes),
    "latent_data" / Prefixed(Int32ub, GreedyBytes),
    Terminated,
)

# unit_data of the IMAGE_INFO unit (bitstream_spec.md, section 5.5): which image the stream codes.
# No Terminated: a later version may append fields, which a decoder ignores.
IMAGE_ID_PRESENT = 0x01  # bit 0 of image_info_flags
image_info = Struct(
    "image_info_flags" / Int8ub,
    "image_id" / Int64ub,
    "source_name" / _SourceName(Prefixed(_limit(Int16ub, 0, MAX_SOURCE_NAME_SIZE, "source_name_size"), GreedyBytes)),
)

# Everything up to and including header_crc32: what fcm_inspect can still show
# when the payload units are damaged.
fcm_container_head = Struct(*_HEAD)


def enum_fields(struct: Struct) -> dict[str, type[enum.IntEnum]]:
    """Field name -> the IntEnum (id table) that validates it, for the fields of `struct`."""
    return {
        sc.name: sc.subcon.enum_cls
        for sc in struct.subcons
        if sc.name is not None and isinstance(sc.subcon, _Validated) and sc.subcon.enum_cls is not None
    }


# spec table name -> construct; tests/unit/test_spec.py compares them with the spec.
SYNTAX_STRUCTURES: dict[str, Struct] = {
    "fcm_container": fcm_container,
    "header_body": header_body,
    "header_body_v2": header_body_v2,
    "scale_shape": scale_shape,
    "scale_info": scale_info,
    "payload_unit": payload_unit,
    "payload_unit_body": payload_unit_body,
    "latent_strings": latent_strings,
    "image_info": image_info,
}
