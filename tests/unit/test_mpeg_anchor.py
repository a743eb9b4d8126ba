"""Mode mpeg_anchor (codec/modes/mpeg_anchor.py, bitstream_spec.md section 7.7): the MPEG FCM
feature anchor procedure point by point: one range per set with clamp and floor, packing
without filler, all-intra VVC at the nominal QP (the coded slice QP read back), the small
all-intra SPS, and the mode's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_modes import SPLIT, header_for, needs_vvc, smooth_features

from codec.bitstream import ALL_SCALES, build_container, parse_container
from codec.errors import EncodeError, MalformedError
from codec.modes import mpeg_anchor
from codec.vision.base import ScaleInfo, SplitPoint


def test_divisor_grid_of_the_platform():
    assert mpeg_anchor.grid_shape(128, 52, 52) == (16, 8)  # short edge 8 (largest divisor <= 11) along the width
    assert mpeg_anchor.grid_shape(256, 10, 10) == (16, 16)
    assert mpeg_anchor.grid_shape(192, 5, 5) == (16, 12)
    assert mpeg_anchor.grid_shape(192, 8, 4) == (12, 16)  # taller than wide: the short edge runs down
    assert mpeg_anchor.grid_shape(7, 3, 3) == (7, 1)  # a prime: one column


def test_nanodet_neck_packs_without_filler():
    layout = mpeg_anchor.frame_layout([(128, 52, 52), (128, 26, 26), (128, 13, 13)])
    assert (layout.width, layout.height) == (416, 1092)
    assert layout.grids == ((16, 8), (8, 16), (4, 32))
    assert layout.y_offsets == (0, 832, 1040)
    covered = sum(r * c * h * w for (r, c), (h, w) in zip(layout.grids, [(52, 52), (26, 26), (13, 13)]))
    assert covered == layout.width * layout.height  # every sample is a channel sample


def test_packing_order_is_by_volume_and_untile_inverts():
    shapes = [(4, 2, 2), (8, 4, 4), (3, 1, 1)]  # the second is the largest: it sets the width
    layout = mpeg_anchor.frame_layout(shapes)
    assert layout.order == (1, 0, 2)
    assert layout.grids[1] == (4, 2) and layout.width == 8
    assert layout.y_offsets == (4 * 4, 0, 4 * 4 + 1 * 2)
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 1024, s).astype(np.uint16) for s in shapes]
    frame = mpeg_anchor.tile(codes, layout, fill=77)
    assert frame.shape == (layout.height, layout.width)
    assert frame[0:4, 4:8].tolist() == codes[1][1].tolist()  # channel 1 of the base: grid row 0, column 1
    assert (frame[18:19, 3:] == 77).all()  # the 3 single-sample channels leave the rest of their row
    back = mpeg_anchor.untile(frame, shapes, layout)
    assert all(np.array_equal(a, b) for a, b in zip(back, codes))


def test_quantisation_is_the_platforms_clamp_and_floor():
    x = np.array([-3.0, -2.0, -0.5, 0.0, 0.999, 1.5, 2.0, 9.0], dtype=np.float32)
    q = mpeg_anchor.quantise(x, -2.0, 2.0)
    t = np.clip((x - np.float32(-2.0)) / np.float32(4.0), 0, 1)
    assert q.tolist() == np.floor(t * np.float32(1023)).astype(int).tolist()
    assert q[0] == 0 and q[-1] == 1023 and q[2] == 383  # clamped below and above; floor, not round
    y = mpeg_anchor.dequantise(q, -2.0, 2.0)
    assert y.dtype == np.float32
    assert np.array_equal(y, (q.astype(np.float32) / np.float32(1023)) * np.float32(4.0) + np.float32(-2.0))
    assert mpeg_anchor.mid_level(-2.0, 2.0) == 512 and mpeg_anchor.mid_level(0.5, 2.0) == 0
    for lo, hi in ((1.0, 1.0), (2.0, 1.0), (float("nan"), 1.0), (-3e38, 3e38)):
        with pytest.raises(ValueError):
            mpeg_anchor.quantise(x, lo, hi)


def test_encoder_errors_before_any_coding():
    feats = smooth_features(1)
    with pytest.raises(EncodeError, match="both range_min and range_max"):
        mpeg_anchor.encode(feats, SPLIT, mpeg_anchor.Params(range_min=-1.0))
    with pytest.raises(EncodeError, match="min < max"):
        mpeg_anchor.encode(feats, SPLIT, mpeg_anchor.Params(range_min=1.0, range_max=-1.0))
    with pytest.raises(EncodeError, match="no recorded quantisation range"):
        mpeg_anchor.encode(feats, SPLIT, mpeg_anchor.Params())  # a split point nobody recorded


def test_recorded_range_of_nanodet_neck_names_its_images():
    from codec.vision.nanodet import SPLIT_POINTS

    entry = mpeg_anchor.recorded_ranges()["nanodet/neck"]
    assert entry["images"]["folder"] == "train-images" and entry["images"]["count"] >= 800
    assert entry["min"] < 0 < entry["max"] and entry["command"].startswith("python -m tools.feature_range")
    assert mpeg_anchor.default_range(SPLIT_POINTS["neck"]) == (entry["min"], entry["max"])


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_round_trip_all_intra_at_the_nominal_qp():
    from codec.inner import vvc

    feats = smooth_features(5)
    mh, units = mpeg_anchor.encode(feats, SPLIT, mpeg_anchor.Params(qp=22, range_min=-0.5, range_max=3.5))
    assert mh.inner.qp == 22 and units[0].scale_index == ALL_SCALES
    assert {(s.quant_min, s.quant_max) for s in mh.scales} == {(-0.5, 3.5)}
    data = units[0].data
    assert vvc.slice_qps(data) == [22]  # the coded slice QP is the requested one
    sps = [n for n in vvc.parse_nal_units(data) if n.type_name == "SPS"]
    assert len(sps) == 1 and sps[0].size < 60  # the all-intra SPS (random access: about 150 bytes)
    parsed = parse_container(build_container(header_for(mpeg_anchor, mh), units))
    assert parsed.header.mode.scales[2].quant_max == 3.5
    symbols = mpeg_anchor.decode_symbols(parsed.header, parsed.units)
    out = mpeg_anchor.reconstruct(parsed.header, symbols)
    for s in SPLIT.scales:
        err = (out[s.name] - feats[s.name]).abs()
        assert err.mean().item() < 4.0 * 0.016, s.name  # about 16 codes of the range 4.0 on 4 x 4 tiles at QP 22
    again = mpeg_anchor.decode(parsed.header, parsed.units)
    assert all(torch.equal(again[k], out[k]) for k in out)


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_the_random_access_default_codes_a_lower_qp():
    """Why all-intra: vvenc's default configuration codes QP 37 at slice QP 34."""
    from codec.inner import vvc

    frame = np.random.default_rng(0).integers(0, 1024, (64, 64))
    assert vvc.slice_qps(vvc.encode_luma10(frame, 37)) == [34]
    assert vvc.slice_qps(vvc.encode_luma10(frame, 37, all_intra=True)) == [37]


def test_header_with_an_empty_range_is_malformed():
    from dataclasses import replace

    mh, units = _fake_stream()
    bad = replace(mh, scales=tuple(replace(s, quant_min=1.0, quant_max=1.0) for s in mh.scales))
    with pytest.raises(MalformedError, match="min < max"):
        mpeg_anchor.validate(header_for(mpeg_anchor, bad), units)
    mixed = replace(mh, scales=(replace(mh.scales[0], quant_max=2.0), *mh.scales[1:]))
    with pytest.raises(MalformedError, match="same quant_min and quant_max"):
        mpeg_anchor.validate(header_for(mpeg_anchor, mixed), units)


def _fake_stream():
    from codec.bitstream import (
        InnerCodecId,
        InnerCodecParams,
        ModeHeader,
        PayloadUnit,
        PresetId,
        SampleFormat,
        ScaleHeader,
        UnitType,
    )

    scales = tuple(
        ScaleHeader(
            s.name,
            s.channels,
            128 // s.stride,
            128 // s.stride,
            kept_channels=s.channels,
            quant_min=-1.0,
            quant_max=1.0,
        )
        for s in SPLIT.scales
    )
    mh = ModeHeader(scales, SampleFormat.NONE, InnerCodecParams(InnerCodecId.VVC_VVENC, 30, PresetId.FASTER, 10))
    return mh, [PayloadUnit(UnitType.VVC_NAL_STREAM, b"\x00\x00\x01" + b"\x00" * 8, scale_index=ALL_SCALES)]


def test_split_point_of_other_shapes_lays_out_within_limits():
    sp = SplitPoint("fpn", 2, tuple(ScaleInfo(f"p{i + 2}", 256, 4 << i) for i in range(4)))
    shapes = [(256, 200 // (4 << i) + 1, 304 // (4 << i)) for i in range(4)]
    layout = mpeg_anchor.frame_layout(shapes)
    assert layout.width == 16 * shapes[0][2]
    assert layout.height == sum(r * s[1] for (r, _), s in zip(layout.grids, shapes))
    assert len(sp.scales) == len(layout.grids)


# -- the image anchor as the platform converts and codes it ------------------------------


@pytest.mark.needs_ffmpeg
def test_platform_colour_conversion_is_full_range_bt601_with_even_padding():
    from codec.inner import vvc

    img = np.zeros((5, 7, 3), dtype=np.uint8)
    img[0, 0] = (255, 255, 255)
    img[1:, :] = (128, 128, 128)
    img[0, 1:] = (255, 0, 0)
    y, u, v = vvc.rgb_to_yuv420p_full(img)
    assert y.shape == (6, 8) and u.shape == v.shape == (3, 4)  # padded to an even size
    assert y[0, 0] == 255 and y[2, 3] == 128  # full range: white is 255, not 235
    assert abs(int(y[0, 2]) - round(0.299 * 255)) <= 1  # BT.601 luma of pure red (BT.709: 54)
    assert abs(int(u[1, 1]) - 128) <= 1 and abs(int(v[1, 1]) - 128) <= 1  # grey has no colour
    assert (y[5] == 0).all() and (y[:, 7] == 0).all()  # the padding is black
    back = vvc.yuv420p_full_to_rgb((y, u, v))
    assert np.abs(back[2:4, :6].astype(int) - 128).max() <= 2  # grey away from red and the padding


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_platform_image_anchor_codes_all_intra_at_the_nominal_qp():
    from codec.inner import vvc

    yy, xx = np.mgrid[0:37, 0:50]
    img = np.stack([xx * 5, yy * 6, 255 - xx * 4], axis=-1).clip(0, 255).astype(np.uint8)  # smooth colours
    data = vvc.encode_rgb_image_mpeg(img, 22)
    assert vvc.slice_qps(data) == [22]
    out = vvc.decode_rgb_image_mpeg(data, 50, 37)
    assert out.shape == img.shape and out.dtype == np.uint8
    converted = vvc.yuv420p_full_to_rgb(vvc.rgb_to_yuv420p_full(img))[:37, :50]
    assert np.abs(out.astype(int) - converted).mean() < 3  # VVC at QP 22 adds little to the conversion


def test_ctc_image_anchor_conversion_option():
    from ctc.codecs import get_codec_type
    from ctc.errors import ConfigError

    ia = get_codec_type("image_anchor")
    assert ia.validate_params({"qp": 37})["conversion"] == "mpeg"
    assert ia.validate_params({"qp": 37, "conversion": "bt709"})["conversion"] == "bt709"
    with pytest.raises(ConfigError, match="conversion"):
        ia.validate_params({"qp": 37, "conversion": "bt2020"})
    fa = get_codec_type("feature_anchor")
    params = fa.validate_params({"qp": 37, "range_min": -1.0, "range_max": 1.0})
    assert params["range_min"] == -1.0
