"""Mode learned_ps (codec/modes/learned_ps.py): a quality index per scale in the
container, bit-exact decoding of any allocation, the exclusive ways of choosing phi, and
MFIBA / rate control through the pipeline (a small untrained model of NanoDet's neck)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from codec.allocation import mfiba
from codec.bitstream import PayloadUnit, UnitType, parse_container
from codec.errors import EncodeError, MalformedError
from codec.models.fenet_ps import PerScaleCodec, PerScaleConfig, save_fenet_ps
from codec.modes import learned_ps, mode_by_name
from codec.pipeline import encode_features, encode_image
from codec.vision import get_network


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(1)
    return get_network("nanodet")


@pytest.fixture(scope="module")
def weights(tmp_path_factory, net):
    torch.manual_seed(0)
    cfg = PerScaleConfig.for_split_point(net.split_points["neck"], width=8, latent_channels=16, hyper_channels=8)
    m = PerScaleCodec(cfg).eval()
    m.update()
    pt = tmp_path_factory.mktemp("ps") / "ps.pt"
    digest = save_fenet_ps(m, pt)
    lines = tuple(mfiba.RatePhiLine(0.3, 0.05) for _ in cfg.scales)
    fitted = mfiba.FittedModels(0.05, 1.0, lines, ("p3", "p4", "p5"), cfg.num_qualities, digest)
    mfiba.fitted_path(pt).write_text(json.dumps(fitted.to_json()))
    return pt


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = np.zeros((120, 160, 3), np.uint8)
    img[20:90, 30:120] = rng.integers(0, 255, (70, 90, 3))
    return img


def encode(net, image, weights, **params):
    return encode_image(image, net, "neck", "learned_ps", {"codec_weights": str(weights), **params})


def test_each_scale_carries_its_phi_and_decodes_bit_exactly(net, image, weights):
    r = encode(net, image, weights, phis="1,5,3")
    parsed = parse_container(r.bitstream)
    assert [s.phi_index for s in parsed.header.scales] == [1, 5, 3]
    assert [u.scale_index for u in parsed.units] == [0, 1, 2]
    mode = mode_by_name("learned_ps")
    mode.check(parsed.header, parsed.units, weights)
    symbols = mode.decode_symbols(parsed.header, parsed.units, weights)
    assert sorted(symbols) == sorted(f"{k}{i}" for i in range(3) for k in ("z", "y", "y_indexes", "y_hat_g"))
    decoded = mode.features(parsed.header, symbols, weights)
    model, _ = learned_ps.model_for(learned_ps.MODEL_IDS[0], weights)
    for i, (name, phi) in enumerate(zip(("p3", "p4", "p5"), (1, 5, 3))):
        assert torch.equal(decoded[name], model.forward_quantised_scale(i, r.features[name], phi))
    again = mode.decode(parsed.header, parsed.units, weights)
    assert all(torch.equal(again[n], decoded[n]) for n in decoded)


def test_uniform_phi_default_and_exclusive_choices(net, image, weights):
    parsed = parse_container(encode(net, image, weights).bitstream)
    assert [s.phi_index for s in parsed.header.scales] == [learned_ps.DEFAULT_PHI] * 3
    parsed = parse_container(encode(net, image, weights, phi=2).bitstream)
    assert [s.phi_index for s in parsed.header.scales] == [2, 2, 2]
    with pytest.raises(EncodeError, match="give one of"):
        encode(net, image, weights, phi=2, target_bpp=0.1)
    with pytest.raises(EncodeError, match="needs 3 values"):
        encode(net, image, weights, phis="1,2")
    with pytest.raises(EncodeError, match="0..7"):
        encode(net, image, weights, phis="1,2,9")
    with pytest.raises(EncodeError, match="positive"):
        encode(net, image, weights, target_bpp=0.0)


def test_lambda_flag_name_drops_the_keyword_underscore():
    spec = next(s for s in mode_by_name("learned_ps").param_specs() if s.name == "lambda_")
    assert spec.flag == "--lambda"


@pytest.mark.parametrize("allocation", ["mfiba", "exhaustive", "uniform"])
def test_target_bpp_counts_the_whole_container(net, image, weights, allocation):
    pixels = image.shape[0] * image.shape[1]
    low = 8 * len(encode(net, image, weights, phi=1).bitstream) / pixels
    high = 8 * len(encode(net, image, weights, phi=6).bitstream) / pixels
    target = 0.5 * (low + high)
    r = encode(net, image, weights, target_bpp=target, allocation=allocation)
    bpp = 8 * len(r.bitstream) / pixels
    assert abs(bpp / target - 1) < 0.25
    if allocation == "exhaustive":  # the best combination within the target: never above it
        assert bpp <= target
    phis = [s.phi_index for s in parse_container(r.bitstream).header.scales]
    if allocation == "uniform":
        assert len(set(phis)) == 1


def test_mfiba_at_a_lambda_and_the_fine_tuned_variant(net, image, weights):
    lo = parse_container(encode(net, image, weights, lambda_=1e-4).bitstream)
    hi = parse_container(encode(net, image, weights, lambda_=10.0).bitstream)
    assert sum(s.phi_index for s in lo.header.scales) >= sum(s.phi_index for s in hi.header.scales)
    ft = encode(net, image, weights, lambda_=1e-3, allocation="mfiba_ft")
    mode_by_name("learned_ps").check(parse_container(ft.bitstream).header, parse_container(ft.bitstream).units, weights)


def test_mfiba_needs_the_models_fitted_for_these_weights(net, image, weights, tmp_path):
    other = tmp_path / "w.pt"
    other.write_bytes(weights.read_bytes())
    other.with_suffix(".json").write_text(weights.with_suffix(".json").read_text())
    with pytest.raises(EncodeError, match="w.mfiba.json not found"):
        encode(net, image, other, target_bpp=0.1)


def test_encode_features_without_the_pipeline_context_refuses_a_target(net, image, weights):
    x, prep = net.preprocess(image)
    with torch.inference_mode():
        feats = net.part1(x, "neck")
    sp = net.split_points["neck"]
    params = learned_ps.MODE.make_params({"codec_weights": str(weights), "target_bpp": 0.1})
    with pytest.raises(EncodeError, match="context"):
        learned_ps.encode(feats, sp, params)
    assert encode_features(feats, net, "neck", prep, "learned_ps", {"codec_weights": str(weights), "phi": 3})


def test_units_and_header_are_validated(net, image, weights):
    parsed = parse_container(encode(net, image, weights, phis="0,1,2").bitstream)
    mode = mode_by_name("learned_ps")
    with pytest.raises(MalformedError, match="one LATENT_STRING unit per scale"):
        mode.check(parsed.header, parsed.units[:2], weights)
    swapped = [PayloadUnit(UnitType.LATENT_STRING, u.data, scale_index=2 - i) for i, u in enumerate(parsed.units)]
    with pytest.raises(MalformedError, match="unit_scale_index"):
        mode.check(parsed.header, swapped, weights)
    bad_scales = tuple(dataclasses.replace(s, phi_index=8) for s in parsed.header.mode.scales)
    header = dataclasses.replace(parsed.header, mode=dataclasses.replace(parsed.header.mode, scales=bad_scales))
    with pytest.raises(MalformedError, match="phi_index"):
        mode.check(header, parsed.units, weights)


def test_header_syntax_round_trip():
    value = {"codec_model_id": 8, "codec_model_hash": bytes(range(32)), "entropy_coder_id": 1,
             "entropy_precision": 16, "phi_indices": [7, 0, 3]}  # fmt: skip
    data = learned_ps.learned_ps_header.build(value, num_scales=3)
    assert len(data) == 2 + 32 + 1 + 1 + 3
    back = learned_ps.learned_ps_header.parse(data, num_scales=3)
    assert list(back.phi_indices) == [7, 0, 3] and back.codec_model_id == 8
