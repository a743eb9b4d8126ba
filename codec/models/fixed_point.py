"""Fixed-point inference, the one engine of the learned codecs' exact decoders: the
small networks whose outputs select entropy-coder tables (hyper synthesis, context
model, entropy parameters) and DRNet of learned_e2e, and MSFR of vvc_msff (with its
own activation grid, `act_bits` / `act_limit` of FixedConv2d).

Why: a rANS decoder must use exactly the CDF table the encoder used for every
symbol. If the table index comes from a float network, a different summation
order (another thread count, BLAS, GPU) can move a scale across a table boundary
and the decoder silently produces garbage (CompressAI issues 279, 309).

How: every weight is an integer multiple of 2^-WEIGHT_BITS, every activation an
integer multiple of 2^-ACT_BITS, clamped to |a| <= ACT_LIMIT (in units of
2^-ACT_BITS). A convolution is computed as unfold + matmul in float64 on these
integers. Every product and every partial sum is an integer of magnitude at most

    sum_k |W_int[o, k]| * ACT_LIMIT + |B_int[o]|   (for output channel o),

and `FixedConv2d` checks when it is built that this bound is below 2^53 for every
output channel. Below 2^53 float64 represents all integers exactly, so every
summation order gives the same (exact) result. The accumulator (in units of
2^-(WEIGHT_BITS + ACT_BITS)) is brought back to the activation grid by adding
2^(WEIGHT_BITS-1) and flooring a division by 2^WEIGHT_BITS: both exact in float64.
Element-wise steps (ReLU, clamp, pixel shuffle, crop) are exact by nature.

With WEIGHT_BITS = 14, ACT_BITS = 10 and ACT_LIMIT = 2^24 the bound allows
sum_k |w[o, k]| < 2^15 per output channel in real units; trained layers are
three to four orders of magnitude below that (checked when a layer is built, not
assumed; `FixedPointOverflowError` otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.errors import CodecModelError

WEIGHT_BITS = 14
ACT_BITS = 10
ACT_LIMIT = 1 << 24  # |activation| bound in units of 2^-ACT_BITS (i.e. 16384.0 in real units)
EXACT_LIMIT = 1 << 53  # float64 represents every integer of magnitude <= 2^53


class FixedPointOverflowError(CodecModelError, ValueError):
    """A layer's weights are too large for exact float64 accumulation."""


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Real-valued tensor -> integer-valued float64 tensor in units of 2^-ACT_BITS
    (round half to even of x * 2^ACT_BITS, clamped). Element-wise, so deterministic."""
    q = torch.round(x.to(torch.float64) * float(1 << ACT_BITS))
    return q.clamp_(-ACT_LIMIT, ACT_LIMIT)


def dequantize_activation(q: torch.Tensor) -> torch.Tensor:
    """Integer activations (units of 2^-ACT_BITS) -> real values (float64, exact)."""
    return q / float(1 << ACT_BITS)


def accumulation_bound(weight_int: torch.Tensor, bias_int: torch.Tensor | None, act_limit: int = ACT_LIMIT) -> int:
    """Largest |partial sum| a layer can produce, in exact Python integers."""
    w = weight_int.to(torch.int64).abs().flatten(1).sum(dim=1).tolist()
    b = bias_int.to(torch.int64).abs().tolist() if bias_int is not None else [0] * len(w)
    return max(int(wi) * act_limit + int(bi) for wi, bi in zip(w, b))


class FixedConv2d(nn.Module):
    """Integer-exact version of a trained `nn.Conv2d` (groups 1, dilation 1).

    `mask` (same shape as the weight, 0/1) zeroes taps, as in a masked context convolution.
    `act_bits` / `act_limit`: the activation grid (2^-act_bits) and clamp of the model
    (FENet's entropy-parameter networks and DRNet: ACT_BITS, ACT_LIMIT; the MSFR of
    vvc_msff: 16 bits and 2^30, codec/models/msff.py). Weights are always on the
    2^-WEIGHT_BITS grid, biases on the accumulator grid 2^-(WEIGHT_BITS + act_bits)."""

    weight_int: torch.Tensor  # buffers (registered in __init__)
    bias_int: torch.Tensor

    def __init__(
        self, conv: nn.Conv2d, mask: torch.Tensor | None = None, act_bits: int = ACT_BITS, act_limit: int = ACT_LIMIT
    ) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1) or not isinstance(conv.padding, tuple):
            raise ValueError("FixedConv2d supports groups 1, dilation 1 and numeric padding only")
        w = conv.weight.detach().to(torch.float64)
        if mask is not None:
            w = w * mask.to(torch.float64)
        w_int = torch.round(w * float(1 << WEIGHT_BITS))
        b_int = None
        if conv.bias is not None:
            b_int = torch.round(conv.bias.detach().to(torch.float64) * float(1 << (WEIGHT_BITS + act_bits)))
        bound = accumulation_bound(w_int, b_int, act_limit)
        if bound + (1 << WEIGHT_BITS) >= EXACT_LIMIT:
            raise FixedPointOverflowError(
                f"fixed-point conv accumulator bound 2^{bound.bit_length() - 1} reaches 2^53: weights too large"
            )
        self.bound = bound
        self.act_limit = act_limit
        self.kernel_size = conv.kernel_size
        self.padding = conv.padding
        self.stride = conv.stride
        self.register_buffer("weight_int", w_int.flatten(1), persistent=False)  # (Cout, Cin*kh*kw)
        self.register_buffer(
            "bias_int",
            b_int if b_int is not None else torch.zeros(w_int.shape[0], dtype=torch.float64),
            persistent=False,
        )

    def forward(self, x_int: torch.Tensor) -> torch.Tensor:
        """(N, Cin, H, W) integer float64 -> (N, Cout, H, W) integer float64 (units 2^-ACT_BITS)."""
        n, _, h, w = x_int.shape
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        cols = F.unfold(x_int, self.kernel_size, padding=self.padding, stride=self.stride)  # exact copy
        acc = torch.matmul(self.weight_int, cols) + self.bias_int.view(1, -1, 1)
        out = torch.floor((acc + float(1 << (WEIGHT_BITS - 1))) / float(1 << WEIGHT_BITS))
        return out.clamp_(-self.act_limit, self.act_limit).view(n, -1, h, w)


def fixed_relu(x_int: torch.Tensor) -> torch.Tensor:
    return x_int.clamp(min=0)


def fixed_leaky_relu(x_int: torch.Tensor) -> torch.Tensor:
    """LeakyReLU with slope 1/8 (the float model's slope), rounded down onto the grid."""
    return torch.where(x_int < 0, torch.floor(x_int / 8.0), x_int)


__all__ = [
    "ACT_BITS",
    "ACT_LIMIT",
    "EXACT_LIMIT",
    "FixedConv2d",
    "FixedPointOverflowError",
    "WEIGHT_BITS",
    "accumulation_bound",
    "dequantize_activation",
    "fixed_leaky_relu",
    "fixed_relu",
    "quantize_activation",
]
