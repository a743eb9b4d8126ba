"""Fixed-point convolution (codec/models/fixed_point.py): exact integer results,
independent of thread count, close to the float layer, overflow detected."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codec.models.fixed_point import (
    ACT_BITS,
    ACT_LIMIT,
    EXACT_LIMIT,
    WEIGHT_BITS,
    FixedConv2d,
    FixedPointOverflowError,
    accumulation_bound,
    fixed_leaky_relu,
    quantize_activation,
)


def _conv(cin: int, cout: int, k: int, stride: int = 1, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    c = nn.Conv2d(cin, cout, k, stride, k // 2)
    with torch.no_grad():
        c.weight.mul_(3.0)
        c.bias.uniform_(-1, 1)
    return c


def _reference_int64(conv: nn.Conv2d, x_int: torch.Tensor) -> torch.Tensor:
    """The same arithmetic in exact int64 (no floating point at all)."""
    w = torch.round(conv.weight.detach().double() * (1 << WEIGHT_BITS)).to(torch.int64)
    b = torch.round(conv.bias.detach().double() * (1 << (WEIGHT_BITS + ACT_BITS))).to(torch.int64)
    cols = F.unfold(x_int.double(), conv.kernel_size, padding=conv.padding, stride=conv.stride).to(torch.int64)
    acc = torch.matmul(w.flatten(1), cols) + b.view(1, -1, 1)
    out = torch.div(acc + (1 << (WEIGHT_BITS - 1)), 1 << WEIGHT_BITS, rounding_mode="floor")
    h = (x_int.shape[-2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    w_ = (x_int.shape[-1] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    return out.clamp(-ACT_LIMIT, ACT_LIMIT).view(x_int.shape[0], -1, h, w_)


@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (3, 2), (5, 1)])
def test_fixed_conv_equals_int64_reference(k, stride):
    conv = _conv(24, 16, k, stride)
    torch.manual_seed(1)
    x = quantize_activation(torch.randn(2, 24, 13, 11) * 40)  # large activations: big partial sums
    got = FixedConv2d(conv)(x)
    ref = _reference_int64(conv, x)
    assert got.shape == ref.shape == conv(torch.zeros(2, 24, 13, 11)).shape
    assert torch.equal(got.to(torch.int64), ref)
    assert got.abs().max() > 1 << 16  # the test exercises large sums


def test_fixed_conv_is_close_to_the_float_layer():
    conv = _conv(32, 32, 3)
    x = torch.randn(1, 32, 9, 9)
    fixed = FixedConv2d(conv)(quantize_activation(x)) / (1 << ACT_BITS)
    err = (fixed.float() - conv(x)).abs().max().item()
    assert err < 0.05  # weight step 2^-14, activation step 2^-10, 288 taps
    assert err > 0  # and it is a different (quantised) computation


def test_fixed_conv_thread_count_invariant():
    conv = _conv(64, 64, 3, seed=3)
    torch.manual_seed(4)
    x = quantize_activation(torch.randn(1, 64, 40, 40) * 8)
    layer = FixedConv2d(conv)
    threads = torch.get_num_threads()
    digests = set()
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            digests.add(hashlib.md5(layer(x).to(torch.int64).numpy().tobytes()).hexdigest())
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1


def test_accumulation_bound_and_overflow():
    conv = _conv(8, 4, 3)
    layer = FixedConv2d(conv)
    w = torch.round(conv.weight.detach().double() * (1 << WEIGHT_BITS))
    expected = int((w.abs().flatten(1).sum(1) * ACT_LIMIT).max())
    assert expected <= layer.bound <= expected + (1 << (WEIGHT_BITS + ACT_BITS + 1))
    assert accumulation_bound(w, None) == expected
    with torch.no_grad():
        conv.weight.fill_(float(EXACT_LIMIT >> 40))  # sum |w| * ACT_LIMIT far beyond 2^53
    with pytest.raises(FixedPointOverflowError, match="2\\^53"):
        FixedConv2d(conv)


def test_fixed_leaky_relu_matches_float_slope_on_the_grid():
    x = torch.tensor([-17.0, -16.0, -1.0, 0.0, 5.0])
    assert fixed_leaky_relu(x).tolist() == [-3.0, -2.0, -1.0, 0.0, 5.0]  # floor(x / 8) below zero


def test_unsupported_conv_rejected():
    with pytest.raises(ValueError, match="groups 1"):
        FixedConv2d(nn.Conv2d(4, 4, 3, padding=1, groups=2))


def test_one_engine_for_both_learned_codecs_and_an_exact_overflow_check():
    from codec.errors import CodecModelError
    from codec.models.msff import EXACT_ACT_BITS, EXACT_ACT_LIMIT, ExactMsfr, MsffCodecModel, MsffConfig
    from codec.vision.base import ScaleInfo

    cfg = MsffConfig(scales=(ScaleInfo("a", 4, 8), ScaleInfo("b", 4, 16)), fused_channels=8, width=8, fuse_blocks=1)
    exact = ExactMsfr(MsffCodecModel(cfg).msfr)
    assert isinstance(exact.trunk_in, FixedConv2d) and exact.trunk_in.act_limit == EXACT_ACT_LIMIT == 1 << 30
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.bias.fill_(0.25)
    layer = FixedConv2d(conv, act_bits=EXACT_ACT_BITS, act_limit=EXACT_ACT_LIMIT)
    assert float(layer.bias_int) == 0.25 * 2 ** (14 + 16) and layer.bound == (1 << 13) * (1 << 30) + (1 << 28)
    # a bound past 2^63 is computed exactly (Python integers), not wrapped around in int64
    big = torch.full((1, 1 << 12), float(1 << 40))
    assert accumulation_bound(big, None, 1 << 30) == (1 << 52) * (1 << 30)
    with torch.no_grad():
        conv.weight.fill_(1e9)
    with pytest.raises(FixedPointOverflowError) as info:
        FixedConv2d(conv, act_bits=EXACT_ACT_BITS, act_limit=EXACT_ACT_LIMIT)
    assert isinstance(info.value, CodecModelError)
