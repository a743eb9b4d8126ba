"""The linear path shared by the learned models (MSFF/MSFR and FENet/DRNet).

A split point's scales, normalised, are stacked space-to-depth at the coarsest
stride: scale i with r_i = coarsest stride / stride_i contributes C_i * r_i^2
channels (pixel unshuffle by r_i), in scale order. A 1x1 projection of this stack
is added to the encoder's latent and a 1x1 reconstruction (depth-to-space back to
every scale) to the decoder's output. Both maps start from PCA of training
features: the leading principal directions, most variance first, which is the
best linear code for every number of kept channels at once. Training then refines
them together with the models' convolutional paths, which start at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

FitFn = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def stacked_channels(channels: list[int], ratios: list[int]) -> int:
    return sum(c * r * r for c, r in zip(channels, ratios))


def stack_scales(xs: list[torch.Tensor], ratios: list[int], fit: FitFn) -> torch.Tensor:
    """Scales (finest first, the last one coarsest) -> (N, D, Hc, Wc): each scale
    fitted to exactly r_i times the coarsest size, then pixel-unshuffled by r_i."""
    hc, wc = xs[-1].shape[-2:]
    parts = []
    for x, r in zip(xs, ratios):
        x = fit(x, (hc * r, wc * r))
        parts.append(F.pixel_unshuffle(x, r) if r > 1 else x)
    return torch.cat(parts, 1)


def unstack_scales(
    stacked: torch.Tensor, channels: list[int], ratios: list[int], sizes: list[tuple[int, int]], fit: FitFn
) -> list[torch.Tensor]:
    """Inverse of stack_scales: depth-to-space per scale, fitted to each scale's size.
    Exact on integer-valued tensors (only moves and crops values)."""
    out, start = [], 0
    for c, r, size in zip(channels, ratios, sizes):
        n = c * r * r
        part = stacked[:, start : start + n]
        out.append(fit(F.pixel_shuffle(part, r) if r > 1 else part, size))
        start += n
    return out


def stacked_channels_at(channels: list[int], strides: list[int], level: int) -> int:
    """Channels of the scales stacked at scale `level`'s stride: a finer scale i contributes
    C_i * r^2 (space-to-depth by r = stride_level / stride_i), a coarser one C_i / q^2
    (depth-to-space by q = stride_i / stride_level)."""
    lv = strides[level]
    return sum(c * (lv // s) ** 2 if s <= lv else c // (s // lv) ** 2 for c, s in zip(channels, strides))


def stack_at(xs: list[torch.Tensor], strides: list[int], level: int, fit: FitFn) -> torch.Tensor:
    """Every scale moved to the grid of scale `level`: finer ones space-to-depth (as
    stack_scales), coarser ones depth-to-space, then fitted; exact (moves and crops)."""
    if level % len(xs) == len(xs) - 1:
        return stack_scales(xs, [strides[-1] // s for s in strides], fit)
    lv = level % len(xs)
    h, w = xs[lv].shape[-2:]
    parts = []
    for i, x in enumerate(xs):
        if i <= lv:
            r = strides[lv] // strides[i]
            x = fit(x, (h * r, w * r))
            parts.append(F.pixel_unshuffle(x, r) if r > 1 else x)
        else:
            parts.append(fit(F.pixel_shuffle(x, strides[i] // strides[lv]), (h, w)))
    return torch.cat(parts, 1)


def unstack_from(
    stacked: torch.Tensor,
    channels: list[int],
    strides: list[int],
    level: int,
    sizes: list[tuple[int, int]],
    fit: FitFn,
) -> list[torch.Tensor]:
    """Inverse of stack_at, fitted to each scale's size; exact on integer-valued tensors."""
    if level % len(sizes) == len(sizes) - 1:
        return unstack_scales(stacked, channels, [strides[-1] // s for s in strides], sizes, fit)
    lv = level % len(sizes)
    out, start = [], 0
    for i, (c, size) in enumerate(zip(channels, sizes)):
        if i <= lv:
            r = strides[lv] // strides[i]
            n = c * r * r
            part = stacked[:, start : start + n]
            out.append(fit(F.pixel_shuffle(part, r) if r > 1 else part, size))
        else:
            q = strides[i] // strides[lv]
            n = c // (q * q)
            part = fit(stacked[:, start : start + n], (size[0] * q, size[1] * q))
            out.append(F.pixel_unshuffle(part, q))
        start += n
    return out


@torch.no_grad()
def pca(stacks: Iterable[torch.Tensor], components: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """PCA over every spatial position of the (N, D, H, W) stacks: returns the mean (D,),
    the leading `components` directions (components, D), most variance first, each with
    its largest-magnitude entry positive (a deterministic sign), and the fraction of the
    variance they hold. The covariance is accumulated in float64 and decomposed with
    torch.linalg.eigh."""
    total: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    count = 0
    for s in stacks:
        x = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1]).double()
        if total is None or gram is None:
            total = torch.zeros(x.shape[1], dtype=torch.float64)
            gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        total += x.sum(0)
        gram += x.t() @ x
        count += len(x)
    if total is None or gram is None or count < 2:
        raise ValueError("PCA needs at least two samples")
    if components > len(total):
        raise ValueError(f"{components} components asked of {len(total)}-dimensional data")
    mean = total / count
    cov = gram / count - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)
    comp = evecs[:, order[:components]].t().contiguous()
    comp = comp * torch.sign(comp.gather(1, comp.abs().argmax(1, keepdim=True)))
    explained = float(evals[order[:components]].clamp(min=0).sum() / evals.clamp(min=0).sum())
    return mean, comp, explained


def set_conv(conv: nn.Module | None, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy a linear map into a 1x1 conv of the linear path (float32 copy of float64 values)."""
    if not isinstance(conv, nn.Conv2d) or conv.bias is None:
        raise ValueError("the model has no linear path (a 1x1 convolution with a bias)")
    with torch.no_grad():
        conv.weight.copy_(weight.float())
        conv.bias.copy_(bias.float())


def zero_conv(conv: nn.Module) -> None:
    """Zero a convolution's weight and bias (the convolutional path starts silent)."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"expected a Conv2d, got {type(conv).__name__}")
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
