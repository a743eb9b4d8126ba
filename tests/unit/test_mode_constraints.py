"""The modes' header constraint tables drive one validator: from each golden vector,
one invalid stream per rule of its mode's tables (a field set to a value the rule
does not allow, every id still a defined value), each refused by the library, by
fcm_dec and by fcm_inspect with a one-line MalformedError naming the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from codec.apps import fcm_dec, fcm_inspect
from codec.bitstream import (
    CodecModelId,
    ContainerHeader,
    EntropyCoderId,
    InnerCodecId,
    PresetId,
    SampleFormat,
    build_container,
    parse_container,
)
from codec.errors import MalformedError
from codec.modes import all_modes, mode_by_id
from codec.modes.base import HEADER_FIELDS, SCALE_FIELDS, Rule, header_fields, scale_fields
from codec.pipeline import decode_bitstream

VECTORS = Path(__file__).resolve().parents[1] / "conformance"
GOLDEN = {
    "bypass": "bypass-f16",
    "anchor": "anchor-qp22",
    "vvc_msff": "vvc_msff-qp37",
    "learned_e2e": "learned_e2e-phi3",
}

ENUMS = {
    "sample_format": SampleFormat,
    "inner_codec_id": InnerCodecId,
    "inner_preset_id": PresetId,
    "codec_model_id": CodecModelId,
    "entropy_coder_id": EntropyCoderId,
}


def with_field(header: ContainerHeader, name: str, value, scale: int | None = None) -> ContainerHeader:
    m = header.mode
    if scale is not None:
        key = {"phi_index": "phi_index", "kept_channels": "kept_channels"}.get(name, name)
        scales = list(m.scales)
        scales[scale] = dataclasses.replace(scales[scale], **{key: value})
        return dataclasses.replace(header, mode=dataclasses.replace(m, scales=tuple(scales)))
    inner = {
        "inner_codec_id": "codec_id",
        "inner_qp": "qp",
        "inner_preset_id": "preset_id",
        "inner_bit_depth": "bit_depth",
    }
    if name in inner:
        new_inner = dataclasses.replace(m.inner, **{inner[name]: value})
        return dataclasses.replace(header, mode=dataclasses.replace(m, inner=new_inner))
    return dataclasses.replace(header, mode=dataclasses.replace(m, **{name: value}))


def violation(name: str, rule: Rule, current, scale: dict | None = None):
    """A value of the field's type that `rule` does not allow (None: the rule allows all)."""
    if rule.same_as is not None:
        return scale[rule.same_as] - 1
    if isinstance(current, bytes):
        candidates = [bytes(32), b"\x5a" * 32]
    elif isinstance(current, float):  # keeping quant_min <= quant_max (a container-level rule)
        candidates = [scale["quant_min"] - 2.0] if name == "quant_min" else [scale["quant_max"] + 2.0]
    elif name in ENUMS:
        candidates = [int(v) for v in ENUMS[name]]
    else:
        candidates = list(range(256))
    for c in candidates:
        if not rule.allows(c, scale):
            return ENUMS[name](c) if name in ENUMS else c
    return None


def invalid_streams():
    for mode in all_modes():
        if mode.name not in GOLDEN:
            continue
        data = (VECTORS / f"{GOLDEN[mode.name]}.bin").read_bytes()
        parsed = parse_container(data)
        fields = header_fields(parsed.header)
        for name in HEADER_FIELDS:
            bad = violation(name, mode.header_rules[name], fields[name])
            if bad is not None:
                yield mode.name, name, build_container(with_field(parsed.header, name, bad), parsed.units)
        for name in SCALE_FIELDS:
            rule = mode.scale_rules[name]
            s0 = scale_fields(parsed.header.scales[0])
            if rule.uniform:  # scale 0 differs from the others (a lower quant_min, a higher phi)
                bad = s0[name] + 1 if isinstance(s0[name], int) else s0[name] - 0.25
            else:
                bad = violation(name, rule, s0[name], s0)
            if bad is None:
                continue
            label = name if rule.uniform else f"{name} of scale 0"
            yield mode.name, label, build_container(with_field(parsed.header, name, bad, 0), parsed.units)


def invalid_v2_streams():
    """The same for the container 2.0 vectors: only the fields a mode's mode_header( )
    carries can break a rule there (the others are implied by the mode)."""
    for mode in all_modes():
        if mode.name not in GOLDEN:
            continue
        data = (VECTORS / f"v2-{GOLDEN_V2[mode.name]}.bin").read_bytes()
        parsed = parse_container(data)
        fields = header_fields(parsed.header)
        for name in HEADER_FIELDS:
            bad = violation(name, mode.header_rules[name], fields[name])
            if bad is None:
                continue
            rebuilt = build_container(with_field(parsed.header, name, bad), parsed.units)
            if rebuilt != data:  # the field is carried by the mode's syntax
                yield mode.name, name, rebuilt


GOLDEN_V2 = {
    "bypass": "bypass-f16",
    "anchor": "anchor-qp37",
    "vvc_msff": "vvc_msff-qp37",
    "learned_e2e": "learned_e2e-phi3",
}
CASES = list(invalid_streams()) + [(m, f, d) for m, f, d in invalid_v2_streams()]


def test_every_mode_has_generated_invalid_streams():
    per_mode = {m: sum(1 for c in CASES if c[0] == m) for m in GOLDEN}
    assert all(n >= 5 for n in per_mode.values()), per_mode
    v2 = {(m, f) for m, f, d in CASES if d[4] == 2}
    assert {("anchor", "inner_qp"), ("learned_e2e", "entropy_precision"), ("vvc_msff", "codec_model_hash")} <= v2
    # the examples of the issue: a bypass stream with an inner QP, a preset, a range, a model hash
    bypass = {c[1] for c in CASES if c[0] == "bypass"}
    assert {"inner_qp", "inner_preset_id", "codec_model_hash", "quant_min of scale 0"} <= bypass


@pytest.mark.parametrize(("mode", "field", "data"), CASES, ids=[f"v{c[2][4]}-{c[0]}-{c[1]}" for c in CASES])
def test_a_stream_breaking_a_rule_of_its_mode_is_refused(mode, field, data, tmp_path, capsys):
    with pytest.raises(MalformedError) as info:
        decode_bitstream(data)
    assert f"{mode} mode: {field}" in str(info.value) and "\n" not in str(info.value)
    assert mode_by_id(parse_container(data).header.mode_id).name == mode
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    for app in (fcm_dec, fcm_inspect):
        assert app.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{mode} mode: {field}" in err and len(err.strip().splitlines()) == 1


def test_the_golden_vectors_satisfy_their_tables():
    for mode_name, stem in GOLDEN.items():
        parsed = parse_container((VECTORS / f"{stem}.bin").read_bytes())
        mode = mode_by_id(parsed.header.mode_id)
        assert mode.name == mode_name
        mode.check(parsed.header, parsed.units)


def test_entropy_precision_of_the_table_is_the_model_s():
    from codec.models.fenet import ENTROPY_PRECISION
    from codec.modes import learned_e2e

    assert learned_e2e.ENTROPY_PRECISION == ENTROPY_PRECISION


def test_refine_step_size_of_the_mode_is_the_model_s():
    from codec.models.fenet import REFINE_LR
    from codec.modes import learned_e2e

    assert learned_e2e.REFINE_LR == REFINE_LR
