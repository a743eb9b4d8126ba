"""bitstream_spec.md and the construct definitions must agree: syntax element
names, order and descriptors of every syntax table, and every id table."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import construct as cs
import pytest

from codec.bitstream import ids, syntax
from codec.bitstream.syntax import SYNTAX_STRUCTURES as CONTAINER_STRUCTURES
from codec.modes import anchor, bypass, learned_e2e, learned_ps, mpeg_anchor, mpeg_anchor_ps, vvc_msff

# every syntax table of the spec: the container's and the built-in modes' mode_header( )s
SYNTAX_STRUCTURES = {
    **CONTAINER_STRUCTURES,
    **{
        name: st
        for m in (bypass, anchor, vvc_msff, learned_e2e, mpeg_anchor, learned_ps, mpeg_anchor_ps)
        for name, st in m.SYNTAX_STRUCTURES.items()
    },
}

SPEC = Path(__file__).resolve().parents[2] / "bitstream_spec.md"

_FORMATS = {">B": "u(8)", ">H": "u(16)", ">I": "u(32)", ">L": "u(32)", ">Q": "u(64)", ">f": "f32", ">d": "f64"}


def _struct_name(struct: cs.Construct) -> str:
    for name, s in SYNTAX_STRUCTURES.items():
        if s is struct:
            return name
    raise AssertionError(f"struct {struct!r} is not in SYNTAX_STRUCTURES")


def _descriptor(sc: cs.Construct, size_name: str | None = None) -> str:
    """Spec descriptor of a construct field (adapters unwrapped)."""
    while isinstance(sc, (cs.Renamed, cs.Adapter, cs.RawCopy, cs.Const)):
        sc = sc.subcon
    if isinstance(sc, cs.FormatField):
        return _FORMATS[sc.fmtstr]
    if isinstance(sc, cs.Checksum):
        return _descriptor(sc.checksumfield)
    if isinstance(sc, cs.Bytes):
        return f"bytes({sc.length})"
    if sc is cs.GreedyBytes:
        return f"bytes({size_name})"
    if isinstance(sc, cs.Struct):
        return f"{_struct_name(sc)}( )"
    if isinstance(sc, cs.Switch):  # the header body by version, the mode header by mode_id
        key = re.findall(r"\w+", repr(sc.keyfunc))[-1]
        if sc.cases is syntax.MODE_HEADERS:
            return f"mode_header( ) of {key}"
        return ", ".join(f"{_struct_name(v)}( ) ({key} {k})" for k, v in sorted(sc.cases.items()))
    if isinstance(sc, cs.IfThenElse) and sc.elsesubcon is cs.Pass:  # a field of later minor versions
        cond = re.sub(r"this(\['_'\])?\['(\w+)'\]", r"\2", repr(sc.condfunc)).strip("()")
        return f"{_descriptor(sc.thensubcon)} if {cond}"
    if isinstance(sc, cs.Array):
        count = re.findall(r"\w+", repr(sc.count))[-1]  # this.a.b / this['a']['b'] -> b
        return f"{_descriptor(sc.subcon)}[ {count} ]"
    raise AssertionError(f"no descriptor for {sc!r}")


def code_rows(struct: cs.Struct) -> list[tuple[str, str]]:
    """(syntax element, descriptor) rows of a construct Struct, as the spec writes them:
    a Prefixed field x becomes x_size (its length field) followed by x."""
    rows = []
    for sc in struct.subcons:
        if sc.name is None:  # Terminated and other anonymous checks carry no syntax element
            assert sc is cs.Terminated
            continue
        inner = sc.subcon
        while isinstance(inner, (cs.Adapter, cs.RawCopy)):
            inner = inner.subcon
        if isinstance(inner, cs.Prefixed):
            rows.append((f"{sc.name}_size", _descriptor(inner.lengthfield)))
            rows.append((sc.name, _descriptor(inner.subcon, f"{sc.name}_size")))
        else:
            rows.append((sc.name, _descriptor(sc)))
    return rows


def _tables_after(pattern: str) -> dict[str, list[list[str]]]:
    """{group(1) of a heading matching pattern: rows of the first table below it}."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    out: dict[str, list[list[str]]] = {}
    i = 0
    while i < len(lines):
        m = re.match(pattern, lines[i])
        i += 1
        if not m:
            continue
        while i < len(lines) and not lines[i].startswith("|"):
            i += 1
        rows = []
        while i < len(lines) and lines[i].startswith("|"):
            rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
            i += 1
        out[m.group(1)] = rows[2:]  # drop the head and the |---| line
    return out


def spec_syntax_tables() -> dict[str, list[tuple[str, str]]]:
    tables = _tables_after(r"^#{2,4} [\d.]+ (\w+)\( \) syntax(?: \(version [\d.]+\))?\s*$")
    return {name: [(r[0], r[1]) for r in rows] for name, rows in tables.items()}


def test_every_syntax_structure_has_a_table_and_vice_versa():
    assert set(spec_syntax_tables()) == set(SYNTAX_STRUCTURES)


@pytest.mark.parametrize("name", sorted(SYNTAX_STRUCTURES))
def test_syntax_table_matches_construct(name):
    assert spec_syntax_tables()[name] == code_rows(SYNTAX_STRUCTURES[name])


def test_code_rows_reads_descriptors():
    # the walker itself: a known structure gives known rows (so an empty walk cannot pass)
    rows = code_rows(syntax.payload_unit_body)
    assert rows == [
        ("unit_type", "u(8)"),
        ("unit_flags", "u(8)"),
        ("unit_scale_index", "u(8)"),
        ("unit_data_size", "u(32)"),
        ("unit_data", "bytes(unit_data_size)"),
    ]
    assert ("scales", "scale_info( )[ num_scales ]") in code_rows(syntax.header_body)


def _enum_classes() -> dict[str, type[enum.IntEnum]]:
    return {
        name: obj
        for name, obj in vars(ids).items()
        if isinstance(obj, type) and issubclass(obj, enum.IntEnum) and obj is not enum.IntEnum
    }


def spec_id_tables() -> dict[str, dict[int, str]]:
    tables = _tables_after(r"^#{2,4} [\d.]+ \w+ \(`(\w+)`\)\s*$")
    return {name: {int(r[0]): r[1] for r in rows} for name, rows in tables.items()}


def test_every_id_enum_has_a_spec_table():
    assert set(spec_id_tables()) == set(_enum_classes())


@pytest.mark.parametrize("enum_name", sorted(_enum_classes()))
def test_id_table_matches_enum(enum_name):
    cls = _enum_classes()[enum_name]
    assert spec_id_tables()[enum_name] == {int(m): m.name for m in cls}


def test_split_point_table_matches_the_code_and_the_networks():
    from codec.vision.nanodet import SPLIT_POINTS as NANODET
    from codec.vision.yolo11_pose import SPLIT_POINTS as YOLO11N_POSE
    from codec.vision.yolov5_seg import SPLIT_POINTS as YOLOV5S_SEG

    rows = _tables_after(r"^#{2,4} [\d.]+ (split_point_id)\s*$")["split_point_id"]
    spec = {(r[0], int(r[1]), r[2]): r[3] for r in rows}
    code = {
        (ids.NetworkId(net).name, sid, name): "; ".join(f"{n}: {c}, {st}" for n, c, st in scales)
        for (net, sid), (name, scales) in ids.SPLIT_POINT_TABLE.items()
    }
    assert spec == code
    for net, split_points in (("NANODET", NANODET), ("YOLOV5S_SEG", YOLOV5S_SEG), ("YOLO11N_POSE", YOLO11N_POSE)):
        for sp in split_points.values():
            scales = "; ".join(f"{s.name}: {s.channels}, {s.stride}" for s in sp.scales)
            assert spec[(net, sp.split_id, sp.name)] == scales


def test_limits_table_matches_code():
    from codec.modes import anchor

    rows = _tables_after(r"^#{2,4} [\d.]+ (Limits)\s*$")["Limits"]
    values = {r[0]: int(r[1].split()[0]) for r in rows}
    code = {k: getattr(syntax, k, None) or getattr(anchor, k) for k in values}
    assert values == code
    assert set(values) >= {"MAX_SCALES", "MAX_CHANNELS", "MAX_SCALE_DIM", "MAX_UNIT_DATA_SIZE", "MAX_HEADER_SIZE"}


def test_magic_and_version_in_spec():
    text = SPEC.read_text(encoding="utf-8")
    assert f'("{syntax.MAGIC.decode()}")' in text
    assert syntax.SUPPORTED_VERSIONS == (1, 2) and (syntax.VERSION_MAJOR, syntax.VERSION_MINOR) == (2, 1)
    assert syntax.LATEST_MINOR == {1: 0, 2: 1}
    assert "**version_major** is 1 or 2" in text and "an encoder of this version writes 2.1" in text


def spec_constraint_tables() -> dict[str, dict[str, str]]:
    tables = _tables_after(r"^#{2,5} [\d.]+ Header constraints of mode (\w+)\s*$")
    return {mode: {r[0]: r[1] for r in rows} for mode, rows in tables.items()}


def test_every_built_in_mode_has_its_constraint_table_and_they_match_the_code():
    from codec.modes import all_modes
    from codec.modes.base import HEADER_FIELDS, SCALE_FIELDS

    spec = spec_constraint_tables()
    modes = {m.name: m for m in all_modes() if m.mode_id in set(ids.ModeId)}
    assert set(spec) == set(modes) == {m.name.lower() for m in ids.ModeId}
    for name, mode in modes.items():
        code = {f: mode.header_rules[f].text for f in HEADER_FIELDS}
        code |= {f"scale_info.{f}": mode.scale_rules[f].text for f in SCALE_FIELDS}
        assert spec[name] == code, name


def test_constraint_tables_name_header_fields_of_the_syntax_and_their_enums():
    from codec.modes import all_modes
    from codec.modes.base import HEADER_FIELDS, SCALE_FIELDS

    header = {r[0] for r in code_rows(syntax.header_body)}
    scale = {r[0] for r in code_rows(syntax.scale_info)}
    assert set(HEADER_FIELDS) <= header and set(SCALE_FIELDS) <= scale
    # which enum validates which field: the id named in a table row is a member of that field's enum
    field_enum = {
        "sample_format": ids.SampleFormat,
        "inner_codec_id": ids.InnerCodecId,
        "inner_preset_id": ids.PresetId,
        "codec_model_id": ids.CodecModelId,
        "entropy_coder_id": ids.EntropyCoderId,
    }
    for mode in all_modes():
        for field, cls in field_enum.items():
            rule = mode.header_rules[field]
            assert rule.values is not None and set(rule.values) <= {int(m) for m in cls}, (mode.name, field)
            names = [m.name for m in cls if int(m) in rule.values]
            assert rule.text == " or ".join(names), (mode.name, field, rule.text)


def test_the_spec_calls_no_implemented_value_reserved():
    from codec.modes import all_modes

    used = {m.name.upper() for m in all_modes() if m.mode_id in set(ids.ModeId)}
    used |= {"LATENT_STRING", "RAW_TENSOR", "VVC_NAL_STREAM", "RANS_COMPRESSAI"}
    for table in spec_id_tables().values():
        assert table  # parsed
    text = SPEC.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("|") and "reserved" in line.lower():
            assert not any(f"| {name} |" in line for name in used), line


def test_network_weights_hash_is_defined_byte_for_byte():
    import hashlib

    import torch

    from codec.vision.base import state_dict_sha256

    state = {"b": torch.tensor([1.0, 2.0]), "a.w": torch.zeros(2, 1, dtype=torch.float32), "c": torch.tensor(3)}
    expected = hashlib.sha256(
        b"a.w"
        + b"(2, 1)"
        + bytes(8)
        + b"b"
        + b"(2,)"
        + b"\x00\x00\x80\x3f\x00\x00\x00\x40"
        + b"c"
        + b"()"
        + b"\x00\x00\x40\x40"
    ).hexdigest()
    assert state_dict_sha256(state) == expected
    assert "(d,)" in SPEC.read_text(encoding="utf-8") and "state_dict_sha256" in SPEC.read_text(encoding="utf-8")


def test_each_id_field_is_validated_by_the_enum_its_spec_table_names():
    """The headings of section 8 ("8.n field (`Enum`)") name which enum validates which
    field; every header_body( ) field with a table is checked by exactly that enum."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    spec = dict(m.groups() for line in lines if (m := re.match(r"^### 8\.\d+ (\w+) \(`(\w+)`\)\s*$", line)))
    code = {field: cls.__name__ for field, cls in syntax.enum_fields(syntax.header_body).items()}
    header_fields = {r[0] for r in code_rows(syntax.header_body)}
    assert code == {f: e for f, e in spec.items() if f in header_fields}
    assert set(code) >= {"network_id", "mode_id", "sample_format", "codec_model_id"}
    # unit_type lives in payload_unit_body( ): parse_container skips unknown optional units there
    assert set(spec) - set(code) == {"unit_type"}
    # the same in every other syntax structure, the modes' mode_header( )s of container 2.0 included
    for name, struct in SYNTAX_STRUCTURES.items():
        rows = {r[0] for r in code_rows(struct)}
        got = {field: cls.__name__ for field, cls in syntax.enum_fields(struct).items()}
        want = {f: e for f, e in spec.items() if f in rows and f != "unit_type"}
        assert got == want, name
