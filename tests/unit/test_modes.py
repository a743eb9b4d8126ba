"""Coding modes: anchor tiling and quantisation (exact, without VVC), bypass,
and anchor through VVC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.bitstream import (
    ALL_SCALES,
    ContainerHeader,
    ModeId,
    NetworkId,
    PayloadUnit,
    ResizeMode,
    UnitType,
    build_container,
    parse_container,
)
from codec.errors import EncodeError, InnerCodecError, MalformedError, UnsupportedModeError
from codec.modes import anchor, available_modes, bypass, mode_by_id, mode_by_name
from codec.vision.base import Preprocessing, ScaleInfo, SplitPoint

SPLIT = SplitPoint("neck", 1, (ScaleInfo("p3", 16, 8), ScaleInfo("p4", 16, 16), ScaleInfo("p5", 16, 32)))
PREP = Preprocessing(160, 120, 128, 128, ResizeMode.STRETCH, 0.8, 128 / 120)


def smooth_features(seed: int = 0, split: SplitPoint = SPLIT, size: int = 128) -> dict[str, torch.Tensor]:
    """Deterministic, image-like features (smooth per channel, ReLU-ish, different ranges per scale)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in enumerate(split.scales):
        h = w = size // s.stride
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        chans = []
        for _ in range(s.channels):
            fx, fy, ph = rng.uniform(0.2, 1.0, 2).tolist() + [rng.uniform(0, 6.28)]
            chans.append(np.maximum(np.sin(fx * 6.28 * xx + ph) * np.cos(fy * 6.28 * yy), -0.2) * (k + 1))
        out[s.name] = torch.from_numpy(np.stack(chans)[None].astype(np.float32))
    return out


def header_for(mode, mode_header) -> ContainerHeader:
    # a network without rows in table 8.2: the modes are tested with small synthetic scales
    return ContainerHeader(NetworkId.CENTERNET_MBV3, bytes(32), 1, "neck", PREP, mode.MODE.mode_id, mode_header)


# --- anchor: layout -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "grid"),
    [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 4)), (16, (4, 4)), (17, (3, 8)),
     (128, (8, 16)), (256, (16, 16)), (512, (16, 32))],
)  # fmt: skip
def test_grid_shape(channels, grid):
    assert anchor.grid_shape(channels) == grid


def test_frame_layout_of_nanodet_neck():
    layout = anchor.frame_layout([(128, 52, 52), (128, 26, 26), (128, 13, 13)])
    assert (layout.width, layout.height) == (832, 728)
    assert layout.y_offsets == (0, 416, 624)
    assert layout.grids == ((8, 16),) * 3


def test_tile_places_channels_as_specified_and_untile_inverts():
    rng = np.random.default_rng(1)
    shapes = [(5, 3, 4), (3, 2, 2)]
    codes = [rng.integers(0, 1024, s, dtype=np.uint16) for s in shapes]
    layout = anchor.frame_layout(shapes)
    frame = anchor.tile(codes, layout)
    assert frame.shape == (layout.height, layout.width) == (2 * 3 + 2 * 2, 4 * 4)
    # sample (c, y, x) of scale i is at (ScaleY + (c // cols) * H + y, (c % cols) * W + x)
    for i, (q, (_rows, cols), y0) in enumerate(zip(codes, layout.grids, layout.y_offsets)):
        c_, h, w = q.shape
        for c in range(c_):
            r, k = divmod(c, cols)
            assert np.array_equal(frame[y0 + r * h : y0 + (r + 1) * h, k * w : (k + 1) * w], q[c]), (i, c)
    # unused tiles and the area right of the narrower grid hold FillValue
    assert (frame[2 * 3 :, 2 * 2 :] == anchor.FILL_VALUE).all()  # scale 1 grid is 2x2 tiles of 2x2
    assert (frame[3:6, 4:] == anchor.FILL_VALUE).all()  # scale 0: channels 5..7 of the 2x4 grid unused
    back = anchor.untile(frame, shapes, layout)
    assert all(np.array_equal(a, b) for a, b in zip(back, codes))


# --- anchor: quantisation -----------------------------------------------------------


def test_quantise_dequantise_error_bound_and_range():
    x = np.random.default_rng(2).normal(0.3, 2.0, (16, 9, 7)).astype(np.float32)
    q, lo, hi = anchor.quantise(x)
    assert q.dtype == np.uint16 and q.min() == 0 and q.max() == 1023
    assert lo == x.min() and hi == x.max()
    y = anchor.dequantise(q, lo, hi)
    assert y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - x).max()
    assert err <= (float(hi) - float(lo)) / 2046 * (1 + 1e-5)
    assert err > (float(hi) - float(lo)) / 2046 * 0.9  # and it is a real 10-bit quantiser, not lossless


def test_quantise_matches_the_specified_float32_formula():
    x = np.array([[[-1.0, 0.0, 0.1, 0.5, 2.0, 1.234567]]], dtype=np.float32)
    q, lo, hi = anchor.quantise(x)
    scale = np.float32(1023) / np.float32(hi - lo)
    expected = [int(np.floor(np.float32(np.float32(np.float32(v - lo) * scale) + np.float32(0.5)))) for v in x.ravel()]
    assert q.ravel().tolist() == expected == [0, 341, 375, 512, 1023, 762]  # 0.5 -> 511.5 + 0.5: half rounds up
    # dequantisation exactly as specified: q * Step + min, each op in float32
    step = np.float32(np.float32(hi - lo) / np.float32(1023))
    assert anchor.dequantise(q, lo, hi).ravel().tolist() == [
        float(np.float32(np.float32(v * step) + lo)) for v in expected
    ]


def test_exact_inverse_without_vvc():
    feats = smooth_features(3)
    arrays = [feats[s.name].numpy()[0] for s in SPLIT.scales]
    quant = [anchor.quantise(a) for a in arrays]
    layout = anchor.frame_layout([a.shape for a in arrays])
    frame = anchor.tile([q for q, _, _ in quant], layout)
    codes = anchor.untile(frame, [a.shape for a in arrays], layout)
    for a, (q, lo, hi), c in zip(arrays, quant, codes):
        assert np.array_equal(c, q)
        assert np.abs(anchor.dequantise(c, lo, hi) - a).max() <= (hi - lo) / 2046 * (1 + 1e-5)


def test_constant_tensor_is_exact():
    x = np.full((4, 3, 3), -0.75, dtype=np.float32)
    q, lo, hi = anchor.quantise(x)
    assert (q == 0).all() and lo == hi == np.float32(-0.75)
    assert np.array_equal(anchor.dequantise(q, lo, hi), x)


def test_non_finite_features_are_rejected():
    x = np.zeros((2, 2, 2), dtype=np.float32)
    x[0, 0, 0] = np.nan
    with pytest.raises(EncodeError, match="NaN or infinite"):
        anchor.quantise(x)


def test_anchor_parameter_errors():
    feats = smooth_features()
    with pytest.raises(EncodeError, match="qp must be an integer in 0..63"):
        anchor.encode(feats, SPLIT, anchor.Params(qp=64))
    with pytest.raises(EncodeError, match="preset"):
        anchor.encode(feats, SPLIT, anchor.Params(preset="ultrafast"))
    bad = dict(feats, p3=feats["p3"][:, :8])
    with pytest.raises(EncodeError, match="8 channels, split point says 16"):
        anchor.encode(bad, SPLIT, anchor.Params())
    # the mode's own check of its parameter dataclass, before anything is encoded
    with pytest.raises(EncodeError, match="anchor parameter qp must be an integer in 0..63, got 64"):
        anchor.MODE.make_params({"qp": 64})
    with pytest.raises(EncodeError, match="anchor parameter preset must be one of faster, fast"):
        anchor.MODE.make_params({"preset": "ultrafast"})
    with pytest.raises(EncodeError, match="mode anchor has no parameter phi; its parameters: qp, preset"):
        anchor.MODE.make_params({"phi": 3})
    with pytest.raises(EncodeError, match="must be an integer"):
        anchor.MODE.make_params({"qp": True})


# --- bypass ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_bypass_round_trip(dtype):
    feats = smooth_features(4)
    feats["p3"][0, 0, 0, 0] = 1e-3  # a value float16 cannot represent exactly
    mh, units = bypass.encode(feats, SPLIT, bypass.Params(bypass_dtype=dtype))
    parsed = parse_container(build_container(header_for(bypass, mh), units))
    out = bypass.decode(parsed.header, parsed.units)
    assert list(out) == ["p3", "p4", "p5"]
    for name, t in feats.items():
        assert out[name].dtype == torch.float32 and out[name].shape == t.shape
        expected = t.half().float() if dtype == "float16" else t
        assert torch.equal(out[name], expected)
    assert len(units[0].data) == 16 * 16 * 16 * (2 if dtype == "float16" else 4)
    # little-endian, C order
    first = np.frombuffer(units[0].data[:4], dtype="<f4" if dtype == "float32" else "<f2")[0]
    assert first == np.asarray(feats["p3"][0, 0, 0, 0].item(), dtype=first.dtype)


def test_bypass_payload_size_mismatch_and_missing_unit():
    mh, units = bypass.encode(smooth_features(), SPLIT, bypass.Params())
    header = header_for(bypass, mh)
    short = [PayloadUnit(UnitType.RAW_TENSOR, units[0].data[:-2], 0), *units[1:]]
    with pytest.raises(MalformedError, match="RAW_TENSOR of scale 0 \\(p3\\) has 8190 bytes, expected 8192"):
        bypass.decode(header, short)
    with pytest.raises(MalformedError, match="scale 2 \\(p5\\) has 0 RAW_TENSOR units"):
        bypass.decode(header, units[:2])
    with pytest.raises(EncodeError, match="bypass_dtype"):
        bypass.encode(smooth_features(), SPLIT, bypass.Params(bypass_dtype="int8"))


def test_registry():
    from codec.modes import all_modes

    names = available_modes()
    assert set(names) == {
        "anchor",
        "bypass",
        "vvc_msff",
        "learned_e2e",
        "mpeg_anchor",
        "learned_ps",
        "mpeg_anchor_ps",
    } and names == sorted(names)
    assert mode_by_id(ModeId.ANCHOR) is anchor.MODE and mode_by_name("bypass") is bypass.MODE
    # every built-in mode's id is the spec's ModeId of its name, and every ModeId has its mode
    spec_names = {m.name.lower() for m in ModeId}
    assert {ModeId(m.mode_id).name.lower(): m.name for m in all_modes()} == {n: n for n in spec_names}
    with pytest.raises(UnsupportedModeError, match="coding mode id 200 is not implemented"):
        mode_by_id(200)
    with pytest.raises(EncodeError, match="unknown coding mode 'msff'"):
        mode_by_name("msff")


def test_every_mode_declares_its_rate_parameter_with_a_valid_default():
    from codec.modes import all_modes

    rates = {m.name: m.rate_param for m in all_modes()}
    assert rates == {
        "bypass": "bypass_dtype",
        "anchor": "qp",
        "vvc_msff": "qp",
        "learned_e2e": "phi",
        "mpeg_anchor": "qp",
        "learned_ps": "phi",
        "mpeg_anchor_ps": "qp",
    }
    for m in all_modes():
        defaults = m.make_params()  # the defaults pass the mode's own checks
        spec = next(s for s in m.param_specs() if s.rate)
        assert getattr(defaults, spec.name) == spec.default
        assert spec.range is not None or spec.choices is not None, m.name
    e2e = mode_by_name("learned_e2e")
    assert e2e.make_params().phi == 3
    assert e2e.describe(e2e.make_params({"phi": 1})) == "phi 1, codec_model fenet_nanodet_neck_g4"
    with pytest.raises(EncodeError, match="learned_e2e parameter phi must be an integer in 0..5, got 32"):
        e2e.make_params({"phi": 32})


# --- anchor through VVC -------------------------------------------------------------------


def _vvc_available() -> bool:
    from codec.inner import vvc

    return vvc.ffmpeg_supports_vvc()


needs_vvc = pytest.mark.skipif(not _vvc_available(), reason="ffmpeg lacks libvvenc or the vvc decoder")


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_anchor_round_trip_through_vvc():
    feats = smooth_features(5)
    mh, units = anchor.encode(feats, SPLIT, anchor.Params(qp=22))
    assert mh.inner.qp == 22 and mh.inner.bit_depth == 10 and units[0].scale_index == ALL_SCALES
    parsed = parse_container(build_container(header_for(anchor, mh), units))
    symbols = anchor.decode_symbols(parsed.header, parsed.units)
    arrays = [feats[s.name].numpy()[0] for s in SPLIT.scales]
    sent = anchor.tile([anchor.quantise(a)[0] for a in arrays], anchor.frame_layout([a.shape for a in arrays]))
    assert symbols["frame"].shape == sent.shape == (4 * 16 + 4 * 8 + 4 * 4, 4 * 16)
    assert symbols["frame"].dtype == np.uint16
    # QP 22 at 10 bits (Qstep about 32 codes): the frame comes back within a few codes on average
    assert np.abs(symbols["frame"].astype(int) - sent).mean() < 12
    out = anchor.reconstruct(parsed.header, symbols)
    for s in mh.scales:
        x = feats[s.name]
        err = (out[s.name] - x).abs()
        rng = s.quant_max - s.quant_min
        assert err.mean().item() < rng * 0.012, (s.name, err.mean(), rng)
        assert out[s.name].shape == x.shape
    # decoding is bit-exact
    again = anchor.decode(parsed.header, parsed.units)
    assert all(torch.equal(again[k], out[k]) for k in out)


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_anchor_garbage_vvc_payload_is_inner_codec_error():
    mh, units = anchor.encode(smooth_features(6), SPLIT, anchor.Params(qp=37))
    garbage = [PayloadUnit(UnitType.VVC_NAL_STREAM, b"\x00\x00\x01" + bytes(range(256)) * 4)]
    with pytest.raises(InnerCodecError, match="VVC payload is not one intra picture"):
        anchor.decode(header_for(anchor, mh), garbage)


def test_listing_the_modes_and_inspecting_imports_neither_torch_nor_compressai():
    import subprocess
    import sys
    from pathlib import Path

    vectors = Path(__file__).resolve().parents[1] / "conformance"
    for vector in ("bypass-f16.bin", "anchor-qp22.bin", "v2-anchor-qp37.bin"):  # a non-learned stream: no torch
        code = (
            "import sys, codec.apps.fcm_inspect as app, codec.modes as m; m.all_modes(); "
            f"rc = app.main([{str(vectors / vector)!r}]); "
            "print(rc, 'torch' in sys.modules, 'compressai' in sys.modules, file=sys.stderr)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stderr.strip().splitlines()[-1] == "0 False False", out.stderr
    code = "import sys, codec.apps.fcm_dec, codec.apps.fcm_enc; print('compressai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_vvc_payload_that_is_not_an_intra_picture_is_refused_without_decoding():
    """fcm_inspect and the decoders check the NAL structure of the VVC unit (no decoder run):
    random bytes from a broken encoder, or a stream cut before its slice, are refused."""
    from pathlib import Path

    from codec.bitstream import build_container, parse_container
    from codec.errors import InnerCodecError
    from codec.modes import mode_by_id

    vectors = Path(__file__).resolve().parents[1] / "conformance"
    for name in ("v21-anchor-qp37.bin", "v21-vvc_msff-qp37.bin"):
        parsed = parse_container((vectors / name).read_bytes())
        unit = parsed.units[0]
        mode = mode_by_id(parsed.header.mode_id)
        mode.check(parsed.header, parsed.units)  # the real stream passes
        rng = np.random.default_rng(0)
        for bad in (rng.bytes(1000), unit.data[:40], b"\x00\x00\x01" + rng.bytes(200)):
            data = build_container(parsed.header, [PayloadUnit(unit.unit_type, bad, unit.scale_index)])
            p = parse_container(data)
            with pytest.raises(InnerCodecError, match="VVC payload is not one intra picture"):
                mode.check(p.header, p.units)


def test_bypass_refuses_units_of_another_known_type():
    """Section 7.2: one RAW_TENSOR per scale and no other units of known type (a VVC unit added
    to a bypass stream, its CRCs and the binding valid, used to decode)."""
    from pathlib import Path

    from codec.bitstream import ALL_SCALES, build_container, parse_container
    from codec.pipeline import decode_bitstream

    vectors = Path(__file__).resolve().parents[1] / "conformance"
    for name in ("bypass-f16.bin", "v21-bypass-f16.bin"):
        p = parse_container((vectors / name).read_bytes())
        extra = PayloadUnit(UnitType.VVC_NAL_STREAM, b"\x00\x00\x01\x40\x01", ALL_SCALES)
        bad = build_container(p.header, [*p.units, extra])
        with pytest.raises(MalformedError, match="bypass mode allows only RAW_TENSOR units, got VVC_NAL_STREAM"):
            decode_bitstream(bad)
