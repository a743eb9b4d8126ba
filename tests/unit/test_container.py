"""Container v1: round trips of every syntax structure and every error class."""

from __future__ import annotations

import enum
import re
import struct
import zlib
from dataclasses import replace

import pytest
from construct import SizeofError

from codec.bitstream import (
    ALL_SCALES,
    ContainerHeader,
    ImageInfo,
    InnerCodecId,
    InnerCodecParams,
    ModeHeader,
    ModeId,
    NetworkId,
    PayloadUnit,
    PresetId,
    ResizeMode,
    SampleFormat,
    ScaleHeader,
    UnitType,
    build_container,
    inspect_container,
    parse_container,
    syntax,
)
from codec.bitstream.container import header_to_dict
from codec.errors import (
    BadMagicError,
    BitstreamError,
    HeaderCrcError,
    MalformedError,
    PayloadCrcError,
    SizeLimitError,
    TrailingDataError,
    TruncatedError,
    UnknownIdError,
    UnknownModeError,
    UnknownUnitError,
    UnsupportedVersionError,
)
from codec.vision.base import Preprocessing

PREP = Preprocessing(640, 427, 416, 416, ResizeMode.STRETCH, 0.65, 416 / 427)


def make_header(mode_id: ModeId = ModeId.ANCHOR, scales=None, **kw) -> ContainerHeader:
    scales = scales or (
        ScaleHeader("p3", 4, 8, 8, kept_channels=4, quant_min=-1.5, quant_max=2.25),
        ScaleHeader("p4", 4, 4, 4, kept_channels=4, quant_min=0.0, quant_max=0.0),
    )
    mode = ModeHeader(scales=tuple(scales), inner=InnerCodecParams(InnerCodecId.VVC_VVENC, 37, PresetId.FAST, 10))
    args = dict(
        network_id=NetworkId.CENTERNET_MBV3,  # a network without rows in table 8.2: any scales
        network_weights_hash=bytes(range(32)),
        split_point_id=1,
        split_point_name="neck",
        preprocessing=PREP,
        mode_id=mode_id,
        mode=mode,
        version_major=1,  # the syntax of container 1.0 (2.0: test_container_v2_*)
    )
    args.update(kw)
    return ContainerHeader(**args)


UNITS = [PayloadUnit(UnitType.VVC_NAL_STREAM, b"\x00\x00\x01" + bytes(range(200)), ALL_SCALES)]


def test_container_round_trip_and_layout():
    header = make_header()
    data = build_container(header, UNITS)
    assert data[:4] == b"FCMB" and data[4:6] == b"\x01\x00"
    parsed = parse_container(data)
    assert parsed.header == header
    assert parsed.units == [PayloadUnit(UnitType.VVC_NAL_STREAM, UNITS[0].data, ALL_SCALES, True, 1)]
    header_size = struct.unpack(">I", data[6:10])[0]
    assert parsed.head_size == 4 + 2 + 4 + header_size + 4
    assert parsed.total_size == len(data) == parsed.head_size + 11 + len(UNITS[0].data)
    # header_crc32 is the CRC of header_size and the header bytes
    crc = struct.unpack(">I", data[10 + header_size : 14 + header_size])[0]
    assert crc == zlib.crc32(data[6 : 10 + header_size])
    # and the same bytes come back when the parsed value is built again
    assert build_container(parsed.header, parsed.units) == data


def test_scale_info_round_trip_and_size():
    value = dict(
        scale_name="p3",
        scale_channels=128,
        scale_height=52,
        scale_width=52,
        phi_index=3,
        kept_channels=96,
        quant_min=-0.5,
        quant_max=1.25,
    )
    data = syntax.scale_info.build(value)
    assert len(data) == 1 + 2 + 2 * 3 + 1 + 2 + 4 + 4
    back = syntax.scale_info.parse(data)
    assert {k: back[k] for k in value} == value
    assert syntax.scale_info.build(back) == data
    with pytest.raises(SizeofError):  # variable size (the name): no static sizeof
        syntax.scale_info.sizeof()


def test_header_body_round_trip_and_size():
    header = make_header()
    value = header_to_dict(header, num_payload_units=3)
    data = syntax.header_body.build(value)
    # network 1+32, split 1+1+4, sizes 4*2, resize 1, scale_x/y 2*8, pad 2*2, mode 1, sample_format 1,
    # inner 4, codec model 2+32, entropy 2, num_scales 1, num_payload_units 2
    fixed = 33 + 6 + 8 + 1 + 16 + 4 + 1 + 1 + 4 + 34 + 2 + 1 + 2
    per_scale = 1 + 2 + 3 * 2 + 1 + 2 + 2 * 4  # name size + "pN", C/H/W, phi, kept, min/max
    assert len(data) == fixed + 2 * per_scale == 153
    back = syntax.header_body.parse(data)
    assert back.num_payload_units == 3 and back.mode_id is ModeId.ANCHOR and back.network_id is NetworkId.CENTERNET_MBV3
    assert back.scale_x == 0.65 and back.scales[0].quant_max == 2.25
    assert syntax.header_body.build(back) == data


def test_payload_unit_round_trip_and_size():
    body = dict(unit_type=4, unit_flags=1, unit_scale_index=2, unit_data=b"abcdef")
    data = syntax.payload_unit_body.build(body)
    assert data == bytes([4, 1, 2]) + (6).to_bytes(4, "big") + b"abcdef"
    unit = syntax.payload_unit.build(dict(unit=dict(value=body), unit_crc32=None))
    assert unit == data + zlib.crc32(data).to_bytes(4, "big")
    back = syntax.payload_unit.parse(unit)
    assert back.unit.value.unit_data == b"abcdef" and back.unit_crc32 == zlib.crc32(data)
    assert syntax.payload_unit.build(back) == unit


def test_bypass_header_fields_take_defined_values():
    scales = (ScaleHeader("p3", 2, 2, 2, kept_channels=2),)
    header = make_header(
        ModeId.BYPASS, scales=scales, mode=ModeHeader(scales=scales, sample_format=SampleFormat.FLOAT16)
    )
    fields = syntax.fcm_container.parse(build_container(header, [])).header.value
    assert (fields.inner_codec_id, fields.inner_qp, fields.inner_preset_id, fields.inner_bit_depth) == (0, 0, 0, 0)
    assert fields.codec_model_hash == bytes(32) and fields.entropy_coder_id == 0
    assert fields.sample_format is SampleFormat.FLOAT16


def _corrupt(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1 :]


def _rebuild_with(field: str, value, header: ContainerHeader | None = None, units=UNITS) -> bytes:
    """A container whose header field `field` is `value`, with correct CRCs."""
    header = header or make_header()
    d = header_to_dict(header, len(units))
    d[field] = value
    from codec.bitstream.container import unit_to_dict

    return syntax.fcm_container.build(
        dict(
            version_major=1,
            version_minor=0,
            header=dict(value=d),
            header_crc32=None,
            payload_units=[unit_to_dict(u) for u in units],
        )
    )


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: b"RIFF" + d[4:], BadMagicError, "not an FCM container"),
        (lambda d: d[:4] + b"\x03" + d[5:], UnsupportedVersionError, "version_major 3"),
        (lambda d: d[:-1], TruncatedError, "truncated"),
        (lambda d: d[:8], TruncatedError, "truncated"),
        (lambda d: d + b"\x00\x00\x00", TrailingDataError, "3 bytes of trailing data"),
        (lambda d: _corrupt(d, 20), HeaderCrcError, "header_crc32 mismatch"),
        (lambda d: _corrupt(d, len(d) - 20), PayloadCrcError, "unit_crc32 of payload unit 0 mismatch"),
    ],
)
def test_corruptions_raise_specific_errors(make, error, message):
    data = build_container(make_header(), UNITS)
    with pytest.raises(error, match=message) as info:
        parse_container(make(data))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("mode_id", 99, UnknownModeError, "mode_id 99 is a reserved value"),
        ("network_id", 200, UnknownIdError, "network_id 200"),
        ("inner_codec_id", 7, UnknownIdError, "inner_codec_id 7"),
        ("resize_mode", 9, UnknownIdError, "resize_mode 9"),
        ("split_point_name", "bad name!", MalformedError, "name 'bad name!'"),
        ("scale_x", float("nan"), MalformedError, "scale_x is not finite"),
        ("scale_x", -1.0, MalformedError, "scale_x and scale_y must be positive"),
        ("pad_x", 416, MalformedError, "pad"),
    ],
)
def test_header_field_errors(field, value, error, message):
    with pytest.raises(error, match=message):
        parse_container(_rebuild_with(field, value))


@pytest.mark.parametrize(
    ("scale", "error", "message"),
    [
        (ScaleHeader("p3", 5000, 1, 1), SizeLimitError, "scale_channels = 5000"),
        (ScaleHeader("p3", 1, 60000, 1), SizeLimitError, "scale_height = 60000"),
        (ScaleHeader("p3", 4096, 4096, 4096, kept_channels=1), SizeLimitError, "samples, more than the limit"),
        (ScaleHeader("p3", 4, 2, 2, kept_channels=5), MalformedError, "kept_channels 5 > 4"),
        (ScaleHeader("p3", 4, 2, 2, quant_min=2.0, quant_max=1.0), MalformedError, "quant_min 2.0 > quant_max"),
        (ScaleHeader("p3", 4, 2, 2, quant_min=float("inf")), MalformedError, "quant_min is not finite"),
    ],
)
def test_scale_errors_before_allocation(scale, error, message):
    header = make_header(scales=(scale,))
    with pytest.raises(error, match=message):
        parse_container(build_container(header, UNITS))


@pytest.mark.parametrize("n", [0, 17])
def test_number_of_scales_limit(n):
    scales = tuple(ScaleHeader(f"s{i}", 1, 1, 1, kept_channels=1) for i in range(n))
    header = make_header(mode=ModeHeader(scales=scales))
    with pytest.raises(SizeLimitError, match=f"num_scales = {n} is outside"):
        parse_container(build_container(header, UNITS))


def test_duplicate_scale_names_rejected():
    s = ScaleHeader("p3", 4, 2, 2, kept_channels=4)
    with pytest.raises(MalformedError, match="occurs twice"):
        parse_container(build_container(make_header(scales=(s, s)), UNITS))


def test_unknown_optional_unit_is_skipped_and_required_one_rejected():
    optional = PayloadUnit(200, b"future metadata", ALL_SCALES, required=False)
    parsed = parse_container(build_container(make_header(), [optional, *UNITS]))
    assert [u.unit_type for u in parsed.units] == [UnitType.VVC_NAL_STREAM]
    assert [u.data for u in parsed.skipped_units] == [b"future metadata"]
    required = PayloadUnit(200, b"x", ALL_SCALES, required=True)
    with pytest.raises(UnknownUnitError, match="unknown required unit_type 200"):
        parse_container(build_container(make_header(), [*UNITS, required]))


def test_unit_scale_index_out_of_range():
    with pytest.raises(MalformedError, match="unit_scale_index 2 but there are 2 scales"):
        parse_container(build_container(make_header(), [PayloadUnit(UnitType.RAW_TENSOR, b"", 2)]))


def test_minor_version_header_extension_is_ignored():
    """A 1.x header may append bytes; header_size and header_crc32 cover them."""
    header = make_header()
    data = build_container(header, UNITS)
    size = struct.unpack(">I", data[6:10])[0]
    ext = b"\x07\x07\x07"
    body = data[10 : 10 + size] + ext
    head = data[:5] + b"\x03" + (size + 3).to_bytes(4, "big") + body
    crc = zlib.crc32(head[6:]).to_bytes(4, "big")
    newer = head + crc + data[14 + size :]
    parsed = parse_container(newer)
    assert parsed.header.version_minor == 3 and parsed.header.scales == header.scales


def test_inspect_reports_crc_status_of_damaged_file():
    data = build_container(make_header(), [*UNITS, PayloadUnit(UnitType.METADATA, b"m" * 10, required=False)])
    bad = _corrupt(data, len(data) - 8)  # inside the last unit's data
    report = inspect_container(bad)
    assert isinstance(report.error, PayloadCrcError)
    assert report.header_crc_ok is True
    assert [u.crc_ok for u in report.units] == [True, False]
    assert report.header_fields["split_point_name"] == "neck"
    assert report.overhead_bytes == len(data) - len(UNITS[0].data) - 10
    bad_header = _rebuild_with("mode_id", 99)
    report = inspect_container(bad_header)
    assert isinstance(report.error, UnknownModeError) and report.header_fields["mode_id"] == 99
    assert inspect_container(b"nothing").version is None


def test_errors_are_bitstream_errors():
    for cls in (
        BadMagicError,
        UnsupportedVersionError,
        TruncatedError,
        TrailingDataError,
        HeaderCrcError,
        PayloadCrcError,
        SizeLimitError,
        UnknownIdError,
        UnknownModeError,
        UnknownUnitError,
        MalformedError,
    ):
        assert issubclass(cls, BitstreamError)


def test_the_bitstream_layer_imports_without_torch():
    import subprocess
    import sys

    code = "import codec.bitstream, codec.files, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_one_sha256_helper_and_one_assets_lookup(tmp_path, monkeypatch):
    import hashlib

    from codec import files
    from codec.vision import weights
    from ctc import config, runner

    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1000)
    assert files.file_sha256(p) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert weights.sha256_file is files.file_sha256 and runner.sha256_file is files.file_sha256
    monkeypatch.setenv("FCM_ASSETS", str(tmp_path))
    assert files.assets_dir() == tmp_path == config.default_assets_dir() == weights.assets_dir()
    monkeypatch.setenv("FCM_ASSETS", str(tmp_path / "absent"))
    assert files.assets_dir() is None and config.default_assets_dir() == tmp_path / "absent"


# --- container 2.0 -----------------------------------------------------------------------


def test_container_v2_round_trip_puts_the_mode_part_in_the_mode_s_syntax():
    from codec.modes import anchor

    header = make_header(version_major=2)
    data = build_container(header, UNITS)
    assert data[:6] == b"FCMB\x02\x01"  # container 2.1
    parsed = parse_container(data)
    assert parsed.header == header and parsed.units[0].data == UNITS[0].data
    value = syntax.fcm_container.parse(data).header.value
    assert [sc.name for sc in syntax.header_body_v2.subcons][-4:] == [
        "scales", "mode_header", "num_payload_units", "payload_units_crc32",
    ]  # fmt: skip
    assert dict(value.mode_header)["inner_qp"] == 37 and len(value.mode_header.scale_ranges) == 2
    assert syntax.MODE_HEADERS[int(ModeId.ANCHOR)] is anchor.anchor_header
    # the same header in 1.0 is longer: every mode field of every scale
    assert len(build_container(header, UNITS, version_major=1)) > len(data)


def _v2_with(**fields) -> bytes:
    from codec.bitstream.container import unit_to_dict

    d = header_to_dict(make_header(version_major=2), len(UNITS))
    d.update(fields)
    value = dict(
        version_major=2,
        version_minor=0,
        header=dict(value=d),
        header_crc32=None,
        payload_units=[unit_to_dict(u) for u in UNITS],
    )
    return syntax.fcm_container.build(value)


def test_container_v2_mode_without_header_syntax_and_bad_mode_header():
    # a private-use mode_id this decoder has no mode for: its mode_header( ) is opaque bytes
    with pytest.raises(BitstreamError, match="coding mode id 200 is not implemented") as info:
        parse_container(_v2_with(mode_id=200, mode_header=b"\x01\x02"))
    assert type(info.value).__name__ == "UnsupportedModeError"
    # anchor mode_header( ) bytes written as opaque ones, then mode_id set back to ANCHOR
    # (the header CRC recomputed): too short for two scale ranges, and a reserved preset
    with pytest.raises(TruncatedError):
        parse_container(_as_anchor(_v2_with(mode_id=200, mode_header=b"\x25\x02")))
    with pytest.raises(UnknownIdError, match="inner_preset_id 9"):
        parse_container(_as_anchor(_v2_with(mode_id=200, mode_header=b"\x25\x09" + bytes(16))))


def _as_anchor(data: bytes) -> bytes:
    mode_id_at = 4 + 2 + 4 + 1 + 32 + 1 + 1 + len("neck") + 8 + 1 + 16 + 4
    assert data[mode_id_at] == 200
    out = bytearray(data)
    out[mode_id_at] = int(ModeId.ANCHOR)
    end = 10 + struct.unpack(">I", data[6:10])[0]
    out[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(out[6:end])) & 0xFFFFFFFF)
    return bytes(out)


def test_inspect_shows_the_mode_header_of_a_v2_stream(capsys):
    import json
    from pathlib import Path

    from codec.apps import fcm_inspect

    vector = Path(__file__).resolve().parents[1] / "conformance" / "v2-vvc_msff-qp37.bin"
    assert fcm_inspect.main([str(vector), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    mh = info["header"]["mode_header"]
    assert info["version"] == "2.0" and info["header_names"]["mode_id"] == "VVC_MSFF"
    assert mh["inner_qp"] == 37 and len(mh["codec_model_hash"]) == 64 and 1 <= mh["kept_channels"] <= 192
    assert fcm_inspect.main([str(vector)]) == 0
    assert "mode_header.kept_channels" in capsys.readouterr().out


# --- container 2.1: payload_units_crc32 binds the units to the header ------------------


def _units(n: int, tag: bytes = b"") -> list[PayloadUnit]:
    return [PayloadUnit(UnitType.VVC_NAL_STREAM, tag + bytes([i]) * (10 + i), ALL_SCALES) for i in range(n)]


def _container_with_units(units: list[PayloadUnit], like: bytes) -> bytes:
    """`units` after the head (magic .. header_crc32) of `like`: its payload_units_crc32 kept."""
    from codec.bitstream.container import unit_to_dict

    head = like[: 10 + int.from_bytes(like[6:10], "big") + 4]
    return head + b"".join(syntax.payload_unit.build(unit_to_dict(u)) for u in units)


def test_container_2_1_binds_the_payload_units_to_the_header():
    header = make_header(version_major=2)
    units = _units(3)
    data = build_container(header, units)
    value = syntax.fcm_container.parse(data)
    crcs = [u.unit_crc32 for u in value.payload_units]
    assert value.header.value.payload_units_crc32 == zlib.crc32(b"".join(c.to_bytes(4, "big") for c in crcs))
    assert parse_container(data).units == [PayloadUnit(u.unit_type, u.data, u.scale_index, True, 1) for u in units]
    other = _units(3, b"x")
    cases = {
        "spliced": [units[0], other[1], units[2]],  # a unit of another stream, its own CRC intact
        "reordered": [units[1], units[0], units[2]],
        "dropped and replaced": [units[0], units[2], units[2]],
    }
    for what, changed in cases.items():
        with pytest.raises(PayloadCrcError, match="payload_units_crc32 mismatch"):
            parse_container(_container_with_units(changed, data))
        # each unit is intact (its own CRC): with the header they were written with, they parse
        assert len(parse_container(build_container(header, changed)).units) == 3, what


def test_container_2_0_has_no_binding_and_still_parses():
    header = make_header(version_major=2, version_minor=0)
    data = build_container(header, _units(2))
    assert data[4:6] == b"\x02\x00"
    assert syntax.fcm_container.parse(data).header.value.payload_units_crc32 is None
    assert parse_container(data).header.version_minor == 0
    # another major version is written in its latest minor version unless told
    assert build_container(header, _units(2), version_major=1)[4:6] == b"\x01\x00"
    assert build_container(make_header(version_major=1), _units(2), version_major=2)[4:6] == b"\x02\x01"


# --- table 8.2: the split points of NanoDet -------------------------------------------------


def _nanodet_header(**kw) -> ContainerHeader:
    scales = tuple(
        ScaleHeader(n, 128, -(-416 // st), -(-416 // st), kept_channels=128)
        for n, st in (("p3", 8), ("p4", 16), ("p5", 32))
    )
    return make_header(scales=scales, network_id=NetworkId.NANODET, **kw)


def test_split_point_table_matches_the_network_and_is_enforced():
    from codec.bitstream.ids import SPLIT_POINT_TABLE
    from codec.vision.nanodet import SPLIT_POINTS

    for sp in SPLIT_POINTS.values():
        assert SPLIT_POINT_TABLE[(NetworkId.NANODET, sp.split_id)] == (
            sp.name, tuple((s.name, s.channels, s.stride) for s in sp.scales),
        )  # fmt: skip
    assert parse_container(build_container(_nanodet_header(), UNITS)).header.split_point_name == "neck"
    h = _nanodet_header()
    cases = [
        (replace(h, split_point_id=9), "split_point_id 9 is not a split point of NANODET"),
        (replace(h, split_point_name="backbone"), "is 'neck', the header says 'backbone'"),
        (make_header(network_id=NetworkId.NANODET), "has scales"),  # 4 channels, 2 scales
        (replace(h, preprocessing=replace(PREP, input_w=320)), "a 320x416 input at stride 8 gives 52x40"),
    ]
    for bad, message in cases:
        with pytest.raises(MalformedError, match=re.escape(message)):
            parse_container(build_container(bad, UNITS))


# -- the IMAGE_INFO unit (bitstream_spec.md, section 5.5) ----------------------------------------


@pytest.mark.parametrize(
    "info",
    [
        ImageInfo(1000, "000000001000.jpg"),
        ImageInfo(0),  # image 0 is an id like any other
        ImageInfo(None, "Zürich, été.png"),  # UTF-8
        ImageInfo((1 << 64) - 1, "x" * syntax.MAX_SOURCE_NAME_SIZE),
    ],
)
def test_image_info_round_trip_in_every_version(info):
    for major in (1, 2):
        header = make_header(version_major=major)
        data = build_container(header, [*UNITS, info.to_unit()])
        parsed = parse_container(data)
        assert parsed.image_info == info and parsed.units == parse_container(build_container(header, UNITS)).units
        assert build_container(parsed.header, [*parsed.units, parsed.image_info.to_unit()]) == data
    unit = info.to_unit()
    assert (unit.unit_type, unit.unit_flags, unit.scale_index) == (UnitType.IMAGE_INFO, 0, ALL_SCALES)
    name = (info.source_name or "").encode()
    assert unit.data == bytes([info.image_id is not None]) + (info.image_id or 0).to_bytes(8, "big") + (
        len(name).to_bytes(2, "big") + name
    )


def test_image_info_values_are_checked_when_made():
    for bad in (dict(image_id=-1), dict(image_id=1 << 64), dict(image_id=True), dict(image_id=1.0)):
        with pytest.raises(ValueError, match="image_id must be an integer"):
            ImageInfo(**bad)
    with pytest.raises(ValueError, match="control characters"):
        ImageInfo(source_name="a\nb.jpg")
    with pytest.raises(ValueError, match="longer than 1024 bytes"):
        ImageInfo(source_name="é" * 513)
    assert ImageInfo().empty and ImageInfo(source_name="").empty and not ImageInfo(0).empty


def test_image_info_is_invisible_to_a_decoder_that_predates_it(monkeypatch):
    """An older decoder knows no unit type 6: the unit is optional, so it is skipped."""
    from codec.bitstream import container

    data = build_container(make_header(version_major=2), [*UNITS, ImageInfo(7, "7.png").to_unit()])

    class OldUnitType(enum.IntEnum):
        VVC_NAL_STREAM = 1
        LATENT_STRING = 3
        RAW_TENSOR = 4
        IMAGE_INFO = 256  # no u(8) value: this decoder has no IMAGE_INFO unit

    monkeypatch.setattr(container, "UnitType", OldUnitType)
    parsed = parse_container(data)
    assert parsed.image_info is None and [u.unit_type for u in parsed.skipped_units] == [6]
    assert [u.unit_type for u in parsed.units] == [UnitType.VVC_NAL_STREAM]


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"\x01" + bytes(8) + b"\x00\x05abc", TruncatedError, "truncated"),
        (b"\x01" + bytes(8) + b"\x00\x02\xff\xfe", MalformedError, "is not UTF-8"),
        (b"\x00" + bytes(8) + b"\x00\x01\x07", MalformedError, "holds control characters"),
        (b"\x00" + bytes(8) + b"\x04\x01" + bytes(1025), SizeLimitError, "source_name_size = 1025"),
    ],
)
def test_a_damaged_image_info_unit_is_refused(data, error, message):
    unit = PayloadUnit(UnitType.IMAGE_INFO, data, ALL_SCALES, required=False)
    with pytest.raises(error, match=message):
        parse_container(build_container(make_header(), [*UNITS, unit]))


def test_image_info_ignores_appended_fields_and_reserved_flags():
    data = b"\xfe" + (5).to_bytes(8, "big") + b"\x00\x01a" + b"a later field"
    unit = PayloadUnit(UnitType.IMAGE_INFO, data, ALL_SCALES, required=False)
    assert parse_container(build_container(make_header(), [*UNITS, unit])).image_info == ImageInfo(None, "a")
