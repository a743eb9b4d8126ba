"""Mode mpeg_anchor_ps (codec/modes/mpeg_anchor_ps.py, bitstream_spec.md section 7.9): the
feature anchor's conversion with one frame and one QP per scale, its header, its errors,
and MFIBA choosing the QPs through the shared allocator (codec/allocation/mfiba.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_modes import needs_vvc

from codec.allocation import mfiba
from codec.bitstream import PayloadUnit, UnitType, parse_container
from codec.errors import EncodeError, MalformedError
from codec.modes import mode_by_name, mpeg_anchor_ps
from codec.pipeline import encode_image

pytestmark = [pytest.mark.needs_ffmpeg, needs_vvc]


@pytest.fixture(scope="module")
def net():
    from codec.vision import get_network

    torch.set_num_threads(1)
    return get_network("nanodet")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = np.zeros((120, 160, 3), np.uint8)
    img[20:90, 30:120] = rng.integers(0, 255, (70, 90, 3))
    return img


def encode(net, image, **params):
    return encode_image(image, net, "neck", "mpeg_anchor_ps", {"preset": "faster", **params})


def test_header_syntax_round_trip():
    value = {"inner_qps": [22, 63, 0], "inner_preset_id": 1, "range_min": -1.5, "range_max": 7.25}
    data = mpeg_anchor_ps.mpeg_anchor_ps_header.build(value, num_scales=3)
    assert len(data) == 3 + 1 + 4 + 4
    back = mpeg_anchor_ps.mpeg_anchor_ps_header.parse(data, num_scales=3)
    assert list(back.inner_qps) == [22, 63, 0] and back.range_max == 7.25


def test_quality_index_is_the_reversed_qp():
    assert mpeg_anchor_ps.quality_of(63) == 0 and mpeg_anchor_ps.quality_of(0) == 63
    assert mpeg_anchor_ps.qp_of(mpeg_anchor_ps.quality_of(37)) == 37
    assert mpeg_anchor_ps.NUM_QUALITIES == 64


def test_each_scale_is_its_own_unit_at_its_qp_and_a_qp_changes_only_its_unit(net, image):
    from codec.inner import vvc

    a = parse_container(encode(net, image, qps="32,37,42").bitstream)
    b = parse_container(encode(net, image, qps="32,45,42").bitstream)
    assert [s.phi_index for s in a.header.scales] == [32, 37, 42]
    assert [u.scale_index for u in a.units] == [0, 1, 2]
    assert all(u.unit_type == UnitType.VVC_NAL_STREAM for u in a.units)
    assert [vvc.slice_qps(u.data) for u in a.units] == [[32], [37], [42]]  # the coded slice QP of every scale
    assert a.units[0].data == b.units[0].data and a.units[2].data == b.units[2].data
    assert a.units[1].data != b.units[1].data and len(b.units[1].data) < len(a.units[1].data)
    mode = mode_by_name("mpeg_anchor_ps")
    fa, fb = mode.decode(a.header, a.units), mode.decode(b.header, b.units)
    assert torch.equal(fa["p3"], fb["p3"]) and torch.equal(fa["p5"], fb["p5"])
    assert not torch.equal(fa["p4"], fb["p4"])
    again = mode.decode(a.header, a.units)
    assert all(torch.equal(again[k], fa[k]) for k in fa)  # decoding is repeatable


def test_uniform_qp_default_and_exclusive_choices(net, image):
    r = parse_container(encode(net, image).bitstream)
    assert [s.phi_index for s in r.header.scales] == [32, 32, 32]
    with pytest.raises(EncodeError, match="give one of"):
        encode(net, image, qp=30, qps="30,30,30")
    with pytest.raises(EncodeError, match="needs 3 values"):
        encode(net, image, qps="30,30")
    with pytest.raises(EncodeError, match="a QP must be in 0..63"):
        encode(net, image, qps="30,30,64")


def test_units_and_header_are_validated(net, image):
    parsed = parse_container(encode(net, image, qps="40,45,50").bitstream)
    mode = mode_by_name("mpeg_anchor_ps")
    with pytest.raises(MalformedError, match="one VVC_NAL_STREAM unit per scale"):
        mode.check(parsed.header, parsed.units[:2])
    swapped = [PayloadUnit(UnitType.VVC_NAL_STREAM, u.data, scale_index=2 - i) for i, u in enumerate(parsed.units)]
    with pytest.raises(MalformedError, match="unit_scale_index"):
        mode.check(parsed.header, swapped)
    bad_scales = tuple(dataclasses.replace(s, phi_index=64) for s in parsed.header.mode.scales)
    header = dataclasses.replace(parsed.header, mode=dataclasses.replace(parsed.header.mode, scales=bad_scales))
    with pytest.raises(MalformedError, match="inner_qps|phi_index"):
        mode.check(header, parsed.units)


def test_target_bpp_lands_near_its_target_through_the_shared_allocator(net, image, monkeypatch):
    calls = []
    real = mfiba.allocate

    def spy(coder, *args, **kwargs):
        calls.append(type(coder).__name__)
        return real(coder, *args, **kwargs)

    monkeypatch.setattr(mfiba, "allocate", spy)
    pixels = image.shape[0] * image.shape[1]
    low = 8 * len(encode(net, image, qp=47).bitstream) / pixels
    high = 8 * len(encode(net, image, qp=32).bitstream) / pixels
    target = float(np.sqrt(low * high))
    r = encode(net, image, target_bpp=target, allocation="mfiba")
    assert calls == ["VvcScaleCoder"]
    bpp = 8 * len(r.bitstream) / pixels
    assert abs(bpp / target - 1) < 0.1
    qps = [s.phi_index for s in parse_container(r.bitstream).header.scales]
    assert all(27 <= q <= 52 for q in qps)


def test_fit_reports_the_log_linear_rate_qp_model_against_a_linear_one():
    from tools.fit_mfiba import fit_rate_qp

    qp = np.array([22, 27, 32, 37, 42, 47, 52], dtype=np.float64)
    r = np.exp(0.16 * (63 - qp) - 3.3)
    f = fit_rate_qp(qp, r)
    assert f["a"] == pytest.approx(0.16) and f["b"] == pytest.approx(-3.3)
    assert f["log_linear"]["pearson"] == pytest.approx(1.0) and f["log_linear"]["rmse"] < 1e-9
    assert f["linear_qp"]["pearson"] < 0.95 and f["linear_qp"]["rmse"] > 0


def test_the_shipped_fit_is_for_nanodet_neck_and_log_linear(net):
    fitted = mpeg_anchor_ps.load_fitted(net, "neck")
    assert fitted.rate_model == "log_linear" and fitted.scales == ("p3", "p4", "p5")
    assert all(ln.a > 0 for ln in fitted.rate_phi) and fitted.beta > 0
    with pytest.raises(EncodeError, match="no models fitted for nanodet/backbone"):
        mpeg_anchor_ps.load_fitted(net, "backbone")


def test_exhaustive_allocation_is_refused_before_any_vvc_coding(net, image, monkeypatch):
    coded = []
    real = mpeg_anchor_ps.VvcScaleCoder.scale_bits

    def spy(self, *args, **kwargs):
        coded.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mpeg_anchor_ps.VvcScaleCoder, "scale_bits", spy)
    with pytest.raises(EncodeError, match="at most 16"):
        encode(net, image, target_bpp=0.1, allocation="exhaustive")
    assert coded == []


def test_fit_reports_a_log_linear_rate_phi_model_against_the_linear_one():
    """tools/fit_mfiba --rate-model log_linear (learned_ps): ln R = a phi + b, with the paper's
    linear R = a phi + b beside it for comparison."""
    from tools.fit_mfiba import fit_rate_phi_log

    phi = np.arange(8, dtype=np.float64)
    r = np.exp(0.6 * phi - 0.7)
    f = fit_rate_phi_log(phi, r)
    assert f["a"] == pytest.approx(0.6) and f["b"] == pytest.approx(-0.7)
    assert f["log_linear"]["pearson"] == pytest.approx(1.0) and f["log_linear"]["rmse"] < 1e-9
    assert f["linear_phi"]["pearson"] < 0.97 and f["linear_phi"]["rmse"] > 0
