"""The container (versions 2.0 and 1.0) in Python terms: header and payload-unit dataclasses, and the
three entry points `build_container`, `parse_container` (strict, for decoding)
and `inspect_container` (lenient, for fcm_inspect). The bytes are defined only
by the construct objects in `syntax.py`."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from construct import ConstructError, StreamError, Struct, TerminatedError

from codec.errors import (
    BitstreamError,
    MalformedError,
    PayloadCrcError,
    SizeLimitError,
    TrailingDataError,
    TruncatedError,
    UnknownUnitError,
    UnsupportedModeError,
)

from . import syntax
from .ids import (
    ALL_SCALES,
    SPLIT_POINT_TABLE,
    TABLED_NETWORKS,
    UNIT_FLAG_REQUIRED,
    CodecModelId,
    EntropyCoderId,
    InnerCodecId,
    ModeId,
    NetworkId,
    PresetId,
    ResizeMode,
    SampleFormat,
    UnitType,
    mode_id_value,
)
from .preprocessing import Preprocessing

UNIT_OVERHEAD = 1 + 1 + 1 + 4 + 4  # unit_type, unit_flags, unit_scale_index, unit_data_size, unit_crc32


@dataclass(frozen=True)
class ScaleHeader:
    """One scale_info( ): the tensor shape and the mode's per-scale parameters."""

    name: str
    channels: int
    height: int
    width: int
    phi_index: int = 0
    kept_channels: int = 0
    quant_min: float = 0.0
    quant_max: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class InnerCodecParams:
    codec_id: InnerCodecId = InnerCodecId.NONE
    qp: int = 0
    preset_id: PresetId = PresetId.NONE
    bit_depth: int = 0


@dataclass(frozen=True)
class ModeHeader:
    """The header fields that a coding mode sets (the rest come from the network)."""

    scales: tuple[ScaleHeader, ...]
    sample_format: SampleFormat = SampleFormat.NONE
    inner: InnerCodecParams = InnerCodecParams()
    codec_model_id: CodecModelId = CodecModelId.NONE
    codec_model_hash: bytes = bytes(32)
    entropy_coder_id: EntropyCoderId = EntropyCoderId.NONE
    entropy_precision: int = 0


@dataclass(frozen=True)
class ContainerHeader:
    network_id: NetworkId
    network_weights_hash: bytes  # 32 bytes, sha256 of the network weights
    split_point_id: int
    split_point_name: str
    preprocessing: Preprocessing
    mode_id: ModeId | int  # an int for a private-use mode id (ids.PRIVATE_MODE_IDS)
    mode: ModeHeader
    version_major: int = syntax.VERSION_MAJOR
    version_minor: int = -1  # -1: the latest minor version of version_major (syntax.LATEST_MINOR)

    def __post_init__(self) -> None:
        if self.version_minor < 0:
            object.__setattr__(self, "version_minor", syntax.LATEST_MINOR.get(self.version_major, 0))

    @property
    def scales(self) -> tuple[ScaleHeader, ...]:
        return self.mode.scales

    def scale_names(self) -> list[str]:
        return [s.name for s in self.mode.scales]


@dataclass(frozen=True)
class PayloadUnit:
    unit_type: int  # a UnitType value, or an unknown value of a skipped optional unit
    data: bytes
    scale_index: int = ALL_SCALES
    required: bool = True
    flags: int | None = None  # None: derived from `required`

    @property
    def type_name(self) -> str:
        try:
            return UnitType(self.unit_type).name
        except ValueError:
            return f"RESERVED_{self.unit_type}"

    @property
    def unit_flags(self) -> int:
        return (UNIT_FLAG_REQUIRED if self.required else 0) if self.flags is None else self.flags


@dataclass(frozen=True)
class ImageInfo:
    """What the IMAGE_INFO unit records (bitstream_spec.md, section 5.5): the id of the coded
    image in its data set (the COCO image id) and the name of its source file, each optional."""

    image_id: int | None = None  # 0 .. 2^64 - 1
    source_name: str | None = None  # a file name without folders; None or "": not recorded

    def __post_init__(self) -> None:
        if self.image_id is not None and (
            isinstance(self.image_id, bool) or not isinstance(self.image_id, int) or not 0 <= self.image_id < 1 << 64
        ):
            raise ValueError(f"image_id must be an integer in 0..2^64-1, got {self.image_id!r}")
        if self.source_name is not None:
            if not isinstance(self.source_name, str):
                raise ValueError(f"source_name must be a string, got {self.source_name!r}")
            if len(self.source_name.encode("utf-8")) > syntax.MAX_SOURCE_NAME_SIZE:
                raise ValueError(f"source_name is longer than {syntax.MAX_SOURCE_NAME_SIZE} bytes in UTF-8")
            if syntax._CONTROL.search(self.source_name):
                raise ValueError(f"source_name {self.source_name!r} holds control characters")

    @property
    def empty(self) -> bool:
        return self.image_id is None and not self.source_name

    def to_unit(self) -> PayloadUnit:
        """The optional IMAGE_INFO payload unit (unit_flags 0, all scales)."""
        value = dict(
            image_info_flags=syntax.IMAGE_ID_PRESENT if self.image_id is not None else 0,
            image_id=self.image_id or 0,
            source_name=self.source_name or "",
        )
        return PayloadUnit(UnitType.IMAGE_INFO, syntax.image_info.build(value), ALL_SCALES, required=False)


def image_info_from_unit(unit: PayloadUnit, index: int | None = None) -> ImageInfo:
    """The ImageInfo of an IMAGE_INFO unit; MalformedError (or TruncatedError) if it is not conforming."""
    where = "IMAGE_INFO unit" if index is None else f"payload unit {index} (IMAGE_INFO)"
    if unit.unit_flags & UNIT_FLAG_REQUIRED or unit.scale_index != ALL_SCALES:
        raise MalformedError(
            f"{where} has unit_flags {unit.unit_flags} and unit_scale_index {unit.scale_index}; "
            f"it must be optional (0) and for all scales ({ALL_SCALES})"
        )
    value = _parse(syntax.image_info, unit.data)
    present = bool(value.image_info_flags & syntax.IMAGE_ID_PRESENT)
    return ImageInfo(value.image_id if present else None, value.source_name or None)


@dataclass
class ParsedContainer:
    header: ContainerHeader
    units: list[PayloadUnit]  # units of known types for the coding mode, in bitstream order
    skipped_units: list[PayloadUnit]  # optional units of unknown type
    head_size: int  # bytes from magic to header_crc32 inclusive
    total_size: int
    image_info: ImageInfo | None = None  # from the IMAGE_INFO unit, if there is one (not in `units`)


# --- build ---------------------------------------------------------------------


def _scale_dict(s: ScaleHeader) -> dict[str, Any]:
    return dict(
        scale_name=s.name,
        scale_channels=s.channels,
        scale_height=s.height,
        scale_width=s.width,
        phi_index=s.phi_index,
        kept_channels=s.kept_channels,
        quant_min=float(s.quant_min),
        quant_max=float(s.quant_max),
    )


# --- mode headers of version 2.0 ---------------------------------------------------------


@dataclass(frozen=True)
class ModeHeaderSyntax:
    """A mode's own header syntax (container 2.0) and its two conversions: ModeHeader ->
    the construct value, and (construct value, scale shapes) -> ModeHeader (with the fields
    the syntax does not carry set to the values of the mode's constraint table)."""

    struct: Any
    to_value: Callable[[ModeHeader], dict[str, Any]]
    from_value: Callable[[Any, tuple[tuple[str, int, int, int], ...]], ModeHeader]


_MODE_HEADERS: dict[int, ModeHeaderSyntax] = {}


def register_mode_header(mode_id: int, mode_header: ModeHeaderSyntax) -> None:
    """Called by the mode registry (codec.modes.register_mode)."""
    _MODE_HEADERS[int(mode_id)] = mode_header
    syntax.MODE_HEADERS[int(mode_id)] = mode_header.struct


def unregister_mode_header(mode_id: int) -> None:
    _MODE_HEADERS.pop(int(mode_id), None)
    syntax.MODE_HEADERS.pop(int(mode_id), None)


def _load_mode_headers() -> None:
    """The built-in modes register their header syntax when codec.modes lists them
    (no torch: mode modules import their models lazily)."""
    from codec import modes

    modes.all_modes()


def _mode_header_syntax(mode_id: int) -> ModeHeaderSyntax:
    _load_mode_headers()
    found = _MODE_HEADERS.get(int(mode_id))
    if found is None:
        raise UnsupportedModeError(
            f"coding mode id {int(mode_id)} is not implemented by this decoder (no container 2.0 header syntax)"
        )
    return found


def _common_header_fields(header: ContainerHeader) -> dict[str, Any]:
    """The fields that header_body( ) (1.0) and header_body_v2( ) (2.0) share, up to mode_id."""
    p = header.preprocessing
    return dict(
        network_id=int(header.network_id),
        network_weights_hash=bytes(header.network_weights_hash),
        split_point_id=header.split_point_id,
        split_point_name=header.split_point_name,
        orig_width=p.orig_w,
        orig_height=p.orig_h,
        input_width=p.input_w,
        input_height=p.input_h,
        resize_mode=int(p.resize_mode),
        scale_x=float(p.scale_x),
        scale_y=float(p.scale_y),
        pad_x=p.pad_x,
        pad_y=p.pad_y,
        mode_id=int(header.mode_id),
    )


def header_to_dict(
    header: ContainerHeader, num_payload_units: int, payload_units_crc32: int | None = None
) -> dict[str, Any]:
    """ContainerHeader -> the value of its version's header body for construct
    (`payload_units_crc32`: the binding field of container 2.1 and later)."""
    if header.version_major >= 2:
        _load_mode_headers()
        return header_to_dict_v2(header, num_payload_units, payload_units_crc32)
    m = header.mode
    return dict(
        **_common_header_fields(header),
        sample_format=int(m.sample_format),
        inner_codec_id=int(m.inner.codec_id),
        inner_qp=m.inner.qp,
        inner_preset_id=int(m.inner.preset_id),
        inner_bit_depth=m.inner.bit_depth,
        codec_model_id=int(m.codec_model_id),
        codec_model_hash=bytes(m.codec_model_hash),
        entropy_coder_id=int(m.entropy_coder_id),
        entropy_precision=m.entropy_precision,
        num_scales=len(m.scales),
        scales=[_scale_dict(s) for s in m.scales],
        num_payload_units=num_payload_units,
    )


def header_to_dict_v2(
    header: ContainerHeader, num_payload_units: int, payload_units_crc32: int | None = None
) -> dict[str, Any]:
    """ContainerHeader -> the value of header_body_v2( ): the mode's part in its own syntax."""
    m = header.mode
    return dict(
        **_common_header_fields(header),
        num_scales=len(m.scales),
        scales=[
            dict(scale_name=s.name, scale_channels=s.channels, scale_height=s.height, scale_width=s.width)
            for s in m.scales
        ],
        mode_header=_mode_header_syntax(header.mode_id).to_value(m),
        num_payload_units=num_payload_units,
        payload_units_crc32=payload_units_crc32 if header.version_minor >= 1 else None,
    )


def unit_to_dict(unit: PayloadUnit) -> dict[str, Any]:
    return dict(
        unit=dict(
            value=dict(
                unit_type=int(unit.unit_type),
                unit_flags=unit.unit_flags,
                unit_scale_index=unit.scale_index,
                unit_data=bytes(unit.data),
            )
        ),
        unit_crc32=None,
    )


def build_container(
    header: ContainerHeader,
    units: list[PayloadUnit],
    version_major: int | None = None,
    version_minor: int | None = None,
) -> bytes:
    """Serialise a header and its payload units in the syntax of `version_major` (default:
    the header's, i.e. VERSION_MAJOR.VERSION_MINOR unless set; another major version is
    written in its latest minor version unless `version_minor` says otherwise). From
    container 2.1 on, the header's payload_units_crc32 binds the units to it. Building does
    not validate (see syntax.py)."""
    if version_major is not None and version_major != header.version_major:
        # another major version: its latest minor version
        header = replace(header, version_major=version_major, version_minor=syntax.LATEST_MINOR.get(version_major, 0))
    if version_minor is not None:
        header = replace(header, version_minor=version_minor)
    if header.version_major not in syntax.HEADER_BODIES:
        raise ValueError(f"container version_major {header.version_major} has no syntax")
    unit_values = [unit_to_dict(u) for u in units]
    binding = syntax.units_binding_crc32(
        [zlib.crc32(syntax.payload_unit_body.build(u["unit"]["value"])) & 0xFFFFFFFF for u in unit_values]
    )
    value = dict(
        version_major=header.version_major,
        version_minor=header.version_minor,
        header=dict(value=header_to_dict(header, len(units), binding)),
        header_crc32=None,
        payload_units=unit_values,
    )
    return syntax.fcm_container.build(value)


# --- parse ---------------------------------------------------------------------


def _one_line(e: ConstructError) -> str:
    text = str(e).splitlines()
    return text[-1] if text else type(e).__name__


def _where(e: ConstructError) -> str:
    path = getattr(e, "path", None) or ""
    parts = [p.strip() for p in path.split("->") if p.strip() and p.strip() != "(parsing)"]
    return parts[-1] if parts else "the container"


_open_container = Struct(*syntax._HEAD, "payload_units" / syntax.fcm_container.payload_units.subcon)


def _parse(struct: Struct, data: bytes, **params: Any) -> Any:
    """construct parse with construct's exceptions mapped to one-line BitstreamErrors."""
    try:
        return struct.parse(data, **params)
    except BitstreamError:
        raise
    except TerminatedError:
        extra = len(data) - _end_of_container(data, **params)
        raise TrailingDataError(f"{extra} bytes of trailing data after the last payload unit") from None
    except StreamError as e:
        raise TruncatedError(f"truncated bitstream: data ends inside {_where(e)} ({len(data)} bytes)") from None
    except ConstructError as e:
        raise MalformedError(f"malformed container at {_where(e)}: {_one_line(e)}") from None


def _end_of_container(data: bytes, **params: Any) -> int:
    """Offset just after the last payload unit (data parsed fine up to there)."""
    parsed = _open_container.parse(data, **params)
    units = parsed.payload_units
    return units[-1].unit.offset2 + 4 if units else parsed.header.offset2 + 4


def _scale_from(c: Any) -> ScaleHeader:
    return ScaleHeader(
        name=c.scale_name,
        channels=c.scale_channels,
        height=c.scale_height,
        width=c.scale_width,
        phi_index=c.phi_index,
        kept_channels=c.kept_channels,
        quant_min=c.quant_min,
        quant_max=c.quant_max,
    )


def header_from_parsed(parsed: Any) -> ContainerHeader:
    h = parsed.header.value
    prep = Preprocessing(
        orig_w=h.orig_width,
        orig_h=h.orig_height,
        input_w=h.input_width,
        input_h=h.input_height,
        resize_mode=ResizeMode(h.resize_mode),
        scale_x=h.scale_x,
        scale_y=h.scale_y,
        pad_x=h.pad_x,
        pad_y=h.pad_y,
    )
    if parsed.version_major >= 2:
        shapes = tuple((s.scale_name, s.scale_channels, s.scale_height, s.scale_width) for s in h.scales)
        mode = _mode_header_syntax(h.mode_id).from_value(h.mode_header, shapes)
    else:
        mode = _mode_header_v1(h)
    return ContainerHeader(
        network_id=NetworkId(h.network_id),
        network_weights_hash=bytes(h.network_weights_hash),
        split_point_id=h.split_point_id,
        split_point_name=h.split_point_name,
        preprocessing=prep,
        mode_id=mode_id_value(h.mode_id),
        mode=mode,
        version_major=parsed.version_major,
        version_minor=parsed.version_minor,
    )


def _mode_header_v1(h: Any) -> ModeHeader:
    return ModeHeader(
        scales=tuple(_scale_from(s) for s in h.scales),
        sample_format=SampleFormat(h.sample_format),
        inner=InnerCodecParams(
            codec_id=InnerCodecId(h.inner_codec_id),
            qp=h.inner_qp,
            preset_id=PresetId(h.inner_preset_id),
            bit_depth=h.inner_bit_depth,
        ),
        codec_model_id=CodecModelId(h.codec_model_id),
        codec_model_hash=bytes(h.codec_model_hash),
        entropy_coder_id=EntropyCoderId(h.entropy_coder_id),
        entropy_precision=h.entropy_precision,
    )


def validate_header(header: ContainerHeader) -> None:
    """Semantic checks across fields (bitstream_spec.md, section 5), before any allocation."""
    p = header.preprocessing
    if not (p.scale_x > 0 and p.scale_y > 0):
        raise MalformedError(f"scale_x and scale_y must be positive (got {p.scale_x}, {p.scale_y})")
    if p.pad_x >= p.input_w or p.pad_y >= p.input_h:
        raise MalformedError(f"pad ({p.pad_x}, {p.pad_y}) is not inside the input ({p.input_w}x{p.input_h})")
    names: set[str] = set()
    for i, s in enumerate(header.scales):
        samples = s.channels * s.height * s.width
        if samples > syntax.MAX_SCALE_SAMPLES:
            raise SizeLimitError(
                f"scale {i} ({s.name}) has {samples} samples, more than the limit {syntax.MAX_SCALE_SAMPLES}"
            )
        if s.kept_channels > s.channels:
            raise MalformedError(f"scale {i} ({s.name}): kept_channels {s.kept_channels} > {s.channels}")
        if not s.quant_min <= s.quant_max:
            raise MalformedError(f"scale {i} ({s.name}): quant_min {s.quant_min} > quant_max {s.quant_max}")
        if s.name in names:
            raise MalformedError(f"scale name {s.name!r} occurs twice")
        names.add(s.name)
    check_split_point_table(header)


def check_split_point_table(header: ContainerHeader) -> None:
    """For a network of the split_point_id table (bitstream_spec.md, section 8.2): the split
    point is a row of the table, its scales are the row's (names and channels, in order) and
    each scale is Ceil(input size / stride) large."""
    net = int(header.network_id)
    if net not in TABLED_NETWORKS:
        return
    row = SPLIT_POINT_TABLE.get((net, header.split_point_id))
    net_name = NetworkId(net).name
    if row is None:
        raise MalformedError(f"split_point_id {header.split_point_id} is not a split point of {net_name} (table 8.2)")
    name, scales = row
    if header.split_point_name != name:
        raise MalformedError(
            f"split point {header.split_point_id} of {net_name} is {name!r}, "
            f"the header says {header.split_point_name!r}"
        )
    want = [(n, c) for n, c, _ in scales]
    got = [(s.name, s.channels) for s in header.scales]
    if got != want:
        raise MalformedError(f"split point {name} of {net_name} has scales {want}, the header has {got}")
    p = header.preprocessing
    for s, (_, _, stride) in zip(header.scales, scales):
        hw = (-(-p.input_h // stride), -(-p.input_w // stride))
        if (s.height, s.width) != hw:
            raise MalformedError(
                f"scale {s.name} is {s.height}x{s.width}, but a {p.input_w}x{p.input_h} input at stride "
                f"{stride} gives {hw[0]}x{hw[1]}"
            )


def check_units_binding(parsed: Any) -> None:
    """Container 2.1 and later: payload_units_crc32 against the parsed units' unit_crc32
    values (PayloadCrcError on a unit spliced in from another stream, reordered, dropped or added)."""
    stored = parsed.header.value.get("payload_units_crc32")
    if stored is None:
        return  # container 1.0 / 2.0: no binding field
    computed = syntax.units_binding_crc32([u.unit_crc32 for u in parsed.payload_units])
    if stored != computed:
        raise PayloadCrcError(
            f"payload_units_crc32 mismatch: stored 0x{stored:08x}, computed 0x{computed:08x} "
            "(the payload units are not the ones the header was written with)"
        )


def _unit_from(c: Any) -> PayloadUnit:
    u = c.unit.value
    return PayloadUnit(
        unit_type=u.unit_type,
        data=bytes(u.unit_data),
        scale_index=u.unit_scale_index,
        required=bool(u.unit_flags & UNIT_FLAG_REQUIRED),
        flags=u.unit_flags,
    )


def parse_container(data: bytes) -> ParsedContainer:
    """Strict parse for decoding: every error is a specific BitstreamError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("parse_container expects bytes")
    data = bytes(data)
    _load_mode_headers()
    parsed = _parse(syntax.fcm_container, data)
    header = header_from_parsed(parsed)
    check_units_binding(parsed)
    validate_header(header)
    units: list[PayloadUnit] = []
    skipped: list[PayloadUnit] = []
    image_info: ImageInfo | None = None
    known = {t.value for t in UnitType}
    for i, c in enumerate(parsed.payload_units):
        unit = _unit_from(c)
        if unit.scale_index != ALL_SCALES and unit.scale_index >= len(header.scales):
            raise MalformedError(
                f"payload unit {i}: unit_scale_index {unit.scale_index} but there are {len(header.scales)} scales"
            )
        if unit.unit_type == UnitType.IMAGE_INFO:  # not the mode's: section 5.5
            if image_info is not None:
                raise MalformedError(f"payload unit {i} is a second IMAGE_INFO unit (at most one is allowed)")
            image_info = image_info_from_unit(unit, i)
        elif unit.unit_type in known:
            units.append(unit)
        elif unit.required:
            raise UnknownUnitError(f"payload unit {i} has unknown required unit_type {unit.unit_type}")
        else:
            skipped.append(unit)
    return ParsedContainer(
        header=header,
        units=units,
        skipped_units=skipped,
        head_size=parsed.header.offset2 + 4,
        total_size=len(data),
        image_info=image_info,
    )


# --- inspect -------------------------------------------------------------------


@dataclass
class UnitReport:
    index: int
    offset: int
    unit_type: int
    type_name: str
    flags: int
    scale_index: int
    size: int
    crc_stored: int
    crc_ok: bool
    data: bytes = field(repr=False, default=b"")


@dataclass
class InspectReport:
    total_size: int
    version: tuple[int, int] | None = None
    header_size: int | None = None
    header_fields: dict[str, Any] | None = None  # raw values as parsed (ids as ints or IntEnum)
    header_crc_ok: bool | None = None
    units: list[UnitReport] = field(default_factory=list)
    error: BitstreamError | None = None  # what strict parsing raised, if anything

    @property
    def payload_bytes(self) -> int:
        return sum(u.size for u in self.units)

    @property
    def overhead_bytes(self) -> int:
        """Container bytes that are not payload data (header, unit headers, CRCs)."""
        return self.total_size - self.payload_bytes


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def inspect_container(data: bytes) -> InspectReport:
    """Parse as much as possible. Strict parsing first; if it fails the error is
    recorded and the data is parsed again without CRC and id/size checks (magic
    and version_major are still checked), then only up to header_crc32."""
    data = bytes(data)
    _load_mode_headers()
    report = InspectReport(total_size=len(data))
    try:
        parse_container(data)
    except BitstreamError as e:
        report.error = e
    parsed = None
    head_only = False
    for struct, is_head in ((syntax.fcm_container, False), (_open_container, False), (syntax.fcm_container_head, True)):
        try:
            parsed = struct.parse(data, verify_crc=False, validate=False)
            head_only = is_head
            break
        except (ConstructError, BitstreamError):
            continue
    if parsed is None:
        return report
    report.version = (parsed.version_major, parsed.version_minor)
    report.header_size = parsed.header.length - 4
    fields = _plain(dict(parsed.header.value))
    report.header_fields = fields
    report.header_crc_ok = (zlib.crc32(parsed.header.data) & 0xFFFFFFFF) == parsed.header_crc32
    if not head_only:
        for i, c in enumerate(parsed.payload_units):
            u = c.unit.value
            ok = (zlib.crc32(c.unit.data) & 0xFFFFFFFF) == c.unit_crc32
            try:
                name = UnitType(u.unit_type).name
            except ValueError:
                name = f"RESERVED_{u.unit_type}"
            report.units.append(
                UnitReport(
                    index=i,
                    offset=c.unit.offset1,
                    unit_type=u.unit_type,
                    type_name=name,
                    flags=u.unit_flags,
                    scale_index=u.unit_scale_index,
                    size=len(u.unit_data),
                    crc_stored=c.unit_crc32,
                    crc_ok=ok,
                    data=bytes(u.unit_data),
                )
            )
    return report
