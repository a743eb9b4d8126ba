"""Conformance vectors (bitstream_spec.md, section 9): every golden vector
decodes to its md5s on every run and with 1 and 2 torch threads; every invalid
vector is rejected with its error, by the library and by fcm_dec / fcm_inspect."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codec.apps import fcm_dec, fcm_inspect
from codec.errors import BitstreamError
from codec.modes import conformance_digest
from codec.pipeline import decode_bitstream

HERE = Path(__file__).resolve().parent
GOLDEN = sorted(p for p in HERE.glob("*.bin") if not p.name.startswith("invalid-"))
INVALID = sorted(HERE.glob("invalid-*.bin"))

EXPECTED_GOLDEN = {
    "bypass-f16", "bypass-f32", "bypass-f16-optional-unit", "anchor-qp22", "anchor-qp37", "vvc_msff-qp37",
    "learned_e2e-phi3",
    # container 2.0: each mode's header part in its own syntax
    "v2-bypass-f16", "v2-anchor-qp37", "v2-vvc_msff-qp37", "v2-learned_e2e-phi3",
    # the second-generation learned_e2e model (codec_model_id FENET_NANODET_NECK_P4)
    "learned_e2e-p4-phi3", "v2-learned_e2e-p4-phi3",
    # container 2.1: payload_units_crc32 binds the units to the header
    "v21-bypass-f16", "v21-anchor-qp37", "v21-vvc_msff-qp37", "v21-learned_e2e-p4-phi3",
    # the optional IMAGE_INFO unit (image id and source file name)
    "v21-bypass-f16-image-info",
    # the third-generation learned_e2e model (codec_model_id FENET_NANODET_NECK_G3)
    "v21-learned_e2e-g3-phi3",
    # the fourth-generation learned_e2e model (codec_model_id FENET_NANODET_NECK_G4)
    "v21-learned_e2e-g4-phi3",
    # the MPEG feature anchor procedure (mode mpeg_anchor)
    "v21-mpeg_anchor-qp37",
    # learned_ps: a quality index per scale (mode 6, a mixed allocation)
    "v21-learned_ps-phis523",
    # mpeg_anchor_ps: one frame and one QP per scale (mode 7)
    "v21-mpeg_anchor_ps-qps324247",
    # learned_e2e with the YOLOv5s-seg model (codec_model_id FENET_YOLOV5S_SEG_NECK)
    "v21-learned_e2e-yolov5s_seg-phi3",
    # vvc_msff's second generation (codec_model_id MSFF_NANODET_NECK_G2)
    "v21-vvc_msff-g2-qp37",
}  # fmt: skip
EXPECTED_INVALID = {
    "invalid-bad-magic", "invalid-version-major", "invalid-unknown-mode", "invalid-header-crc",
    "invalid-payload-crc", "invalid-truncated", "invalid-absurd-channels", "invalid-absurd-samples",
    "invalid-trailing-garbage", "invalid-unknown-required-unit", "invalid-payload-size",
    # table 8.2 (the 16-channel neck vectors of before are kept here)
    "invalid-neck-16-channels", "invalid-neck-16-channels-v2", "invalid-split-point-id", "invalid-scale-size",
    # container 2.1 binding
    "invalid-unit-spliced", "invalid-units-reordered",
    # learned_e2e latent size from the header (a crash of CompressAI's rANS decoder before)
    "invalid-learned_e2e-enlarged", "invalid-learned_e2e-latent-limit",
    "invalid-nonfinite-feature",  # decoded features must be finite
    "invalid-image-info-twice", "invalid-image-info-required", "invalid-image-info-name",
    "invalid-mpeg_anchor-empty-range",  # the set's range must be a non-empty interval
}  # fmt: skip


def _vvc_available() -> bool:
    from codec.inner import vvc

    return vvc.ffmpeg_supports_vvc()


def test_the_vector_set_is_complete_and_small():
    assert {p.stem for p in GOLDEN} == EXPECTED_GOLDEN
    assert {p.stem for p in INVALID} == EXPECTED_INVALID
    for p in GOLDEN + INVALID:
        assert p.stat().st_size < 100_000, p.name


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_vector_decodes_to_its_md5(path: Path):
    if path.stem.removeprefix("v2-").startswith(("anchor", "vvc_msff")) and not _vvc_available():
        pytest.skip("ffmpeg lacks the vvc decoder")
    md5_file = path.with_suffix(".md5")
    assert md5_file.exists(), f"{md5_file.name} is missing (python -m tools.make_conformance --regenerate)"
    expected = md5_file.read_text()
    assert expected.count("float32 ") == 3 and "integer " in expected
    data = path.read_bytes()
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for _ in range(3):
                assert conformance_digest(data) == expected, (path.name, n)
    finally:
        torch.set_num_threads(threads)


def _expected(path: Path) -> tuple[str, str]:
    exp = path.with_suffix(".expected")
    assert exp.exists(), f"{exp.name} is missing (python -m tools.make_conformance --regenerate)"
    cls, message = exp.read_text().splitlines()[:2]
    return cls, message


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_is_rejected_with_its_error(path: Path):
    cls, message = _expected(path)
    with pytest.raises(BitstreamError) as info:
        decode_bitstream(path.read_bytes())
    assert type(info.value).__name__ == cls
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
@pytest.mark.parametrize("app", [fcm_dec, fcm_inspect], ids=["fcm_dec", "fcm_inspect"])
def test_invalid_vector_through_the_apps_exits_2(path: Path, app, capsys):
    _, message = _expected(path)
    if app is fcm_inspect and _found_by_decoding(path):
        # the inspector does not entropy-decode: it cannot tell, and says the container is valid
        assert app.main([str(path)]) == 0
        return
    assert app.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _found_by_decoding(path: Path) -> bool:
    """A third line `found by decoding` in NAME.expected (bitstream_spec.md, section 9.2)."""
    return "found by decoding" in path.with_suffix(".expected").read_text().splitlines()[2:3]


@pytest.mark.parametrize(
    "name", sorted(n[4:] for n in EXPECTED_GOLDEN if n.startswith("v21-") and f"v2-{n[4:]}" in EXPECTED_GOLDEN)
)
def test_container_2_1_carries_the_2_0_content_and_binds_its_units(name: str):
    from codec.bitstream import parse_container

    v20, v21 = (HERE / f"v2-{name}.bin").read_bytes(), (HERE / f"v21-{name}.bin").read_bytes()
    assert (v20[4:6], v21[4:6]) == (b"\x02\x00", b"\x02\x01")
    assert (HERE / f"v2-{name}.md5").read_text() == (HERE / f"v21-{name}.md5").read_text()
    p20, p21 = parse_container(v20), parse_container(v21)
    assert p20.units == p21.units and p21.head_size == p20.head_size + 4


@pytest.mark.parametrize("name", sorted(n.removeprefix("v2-") for n in EXPECTED_GOLDEN if n.startswith("v2-")))
def test_both_container_versions_carry_the_same_content(name: str):
    """Version 1.0 and 2.0 of one coded content: told apart by version_major, the same
    decoded symbols and features (the md5s), the 2.0 header smaller."""
    from codec.bitstream import parse_container

    v1, v2 = (HERE / f"{name}.bin").read_bytes(), (HERE / f"v2-{name}.bin").read_bytes()
    assert (v1[4], v2[4]) == (1, 2)
    assert (HERE / f"{name}.md5").read_text() == (HERE / f"v2-{name}.md5").read_text()
    h1, h2 = parse_container(v1), parse_container(v2)
    assert h1.header.mode_id == h2.header.mode_id and h1.units == h2.units
    assert h2.head_size < h1.head_size


def test_the_image_info_vector_adds_its_unit_and_nothing_else():
    """v21-bypass-f16 with an IMAGE_INFO unit (section 5.5) appended: the same features; the
    unit optional, so that a decoder that predates it skips it (section 5.4)."""
    from codec.bitstream import ImageInfo, UnitType, parse_container

    plain, with_info = (HERE / "v21-bypass-f16.bin").read_bytes(), (HERE / "v21-bypass-f16-image-info.bin").read_bytes()
    p, q = parse_container(plain), parse_container(with_info)
    assert q.units == p.units and q.header == p.header and p.image_info is None
    assert q.image_info == ImageInfo(image_id=1000, source_name="000000001000.jpg")
    md5 = (HERE / "v21-bypass-f16-image-info.md5").read_text()
    assert md5 == (HERE / "v21-bypass-f16.md5").read_text() + (
        "image_info image_id 1000\nimage_info source_name 5e21e20d05792a67eba0dafd3a5442f5\n"
    )
    unit = with_info[len(plain) :]  # appended after the mode's units: type, flags, scale index, size, data, CRC
    assert unit[0] == UnitType.IMAGE_INFO and unit[1] == 0 and unit[2] == 255
    assert len(with_info) - len(plain) == 11 + 1 + 8 + 2 + len("000000001000.jpg")
