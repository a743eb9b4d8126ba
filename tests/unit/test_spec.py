"""bitstream_spec.md and the construct definitions must agree: syntax element
names, order and descriptors of every syntax table, and every id table."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import construct as cs
import pytest

from codec.bitstream import ids, syntax
from codec.bitstream.syntax import SYNTAX_STRUCTURES

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
    tables = _tables_after(r"^#{2,4} [\d.]+ (\w+)\( \) syntax\s*$")
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


def test_split_point_table_matches_nanodet():
    from codec.vision.nanodet import SPLIT_POINTS

    rows = _tables_after(r"^#{2,4} [\d.]+ (split_point_id)\s*$")["split_point_id"]
    spec = {(r[0], int(r[1]), r[2]): r[3] for r in rows}
    for sp in SPLIT_POINTS.values():
        scales = "; ".join(f"{s.name}: {s.channels}, {s.stride}" for s in sp.scales)
        assert spec[("NANODET", sp.split_id, sp.name)] == scales


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
    assert f"**version_major** is {syntax.VERSION_MAJOR}" in text
