"""End-to-end learned multi-scale feature codec: FENet (fusion + encoding) and
DRNet (decoding + reconstruction) with a hyperprior, a checkerboard context
model and gain units (one model for every rate).

Data path (finest scale first, strides two apart, e.g. NanoDet neck p3/p4/p5):

    FENet:  h = enc_0(p3 / s_3);  h = enc_1(cat(h, p4 / s_4));  y = enc_2(cat(h, p5 / s_5))
            each enc_i halves the resolution, so y lies at twice the coarsest stride
            (416x416 input: 52^2, 26^2, 13^2 -> y: M x 7 x 7), or at the coarsest stride
            (the last enc keeps the resolution), or (``latent_scale`` L) at scale L's stride:
            the scales finer than L are fused down to it as above, the coarser ones enter
            enc_L depth-to-space (pixel shuffle: exact, no information lost), e.g. y at
            p4: M x 26 x 26 from p3 (stride-2 fusion), p4 and p5 (128 -> 32 channels at 26^2).
    gain:   y_g = y * |g[phi]|                       (per-channel gain of quality index phi)
    hyper:  z = h_a(y_g);  z_g = z * |hg[phi]|  ->  EntropyBottleneck  ->  z_hat = z_hat_g * |ihg[phi]|
            hp = h_s(z_hat)
    context (checkerboard, two passes): anchors ((i + j) even) use ep(cat(hp, 0));
            non-anchors use ep(cat(hp, ctx(y_hat_g at anchors))), ctx a 5x5 masked conv.
            ep gives (scale, mean) of a GaussianConditional for y_g.
    DRNet:  y_hat = y_hat_g * |ig[phi]|; top-down branches r_i = up_i(r_{i+1}) rebuild
            every finer scale's resolution (coarser than y: r_j = td_down_j(r_{j-1})),
            bottom-up mixing m_i = r_i + down_i(m_{i-1}),
            heads give each scale's tensor (times its normalisation s_i).

Bit-exact decoding: h_s, ctx and ep run in fixed point at inference
(codec/models/fixed_point.py); scale indices come from an integer comparison
of the fixed-point scales with the scale table stored in the weights, means
lie on a 2^-MEAN_BITS grid. The rANS CDF tables are stored in the weights file
(built once by `update()` after training), so no float math selects a table
at the decoder. FENet, h_a and DRNet stay in float: they do not select tables.

Integrity: `compress` also returns a CRC32 of the decoded integer symbols (and,
for y, of the scale indices); `decompress` recomputes it and raises
`LatentChecksumError` if a decoder derived different tables.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    # `import compressai` imports torch_geometric (through compressai.registry.transforms), whose
    # modules call torch.jit.script at import time; recent torch deprecates that call with a
    # FutureWarning each time: two lines of noise on every learned-mode run, from calls that are
    # neither ours nor CompressAI's own and that nothing here uses. Exactly that warning is ignored,
    # and only while compressai is imported.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from compressai.ans import BufferedRansEncoder, RansDecoder
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.layers import GDN

from codec.errors import BitstreamError, CodecModelError, SizeLimitError
from codec.files import file_sha256
from codec.inner import rans
from codec.vision.base import Features, ScaleInfo, SplitPoint

from . import linear_path
from .fixed_point import ACT_BITS, ACT_LIMIT, FixedConv2d, fixed_leaky_relu, fixed_relu, quantize_activation

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MEAN_BITS = 6  # means of the GaussianConditional lie on a 2^-MEAN_BITS grid
SCALE_TABLE = (0.11, 64.0, 48)  # 48 log-spaced scales in [0.11, 64] (CompressAI uses 64 in [0.11, 256]; smaller tables)
ENTROPY_PRECISION = 16  # CompressAI's rANS: 16-bit CDF precision
REFINE_SEED = 0  # refine_latents' noise generator seed
# refine_latents' first Adam step (y_g, z_g in quantisation steps), chosen on held-out training
# images (docs/results_e2e.md): 0.003 moved too little in 50 steps, 0.03 raised the rate
REFINE_LR = 0.01


class FenetConfigError(ValueError):
    """A split point or configuration FENet/DRNet cannot be built for."""


class FenetWeightsError(CodecModelError):
    """FENet/DRNet weights unusable (e.g. entropy tables missing); loading failures are
    codec.errors.CodecModelError (codec/models/registry.py)."""


class LatentChecksumError(BitstreamError):
    """The decoded latent symbols do not match the check value written by the encoder."""


@dataclass(frozen=True)
class FenetConfig:
    """Hyper-parameters (stored in the weights file and its json record)."""

    scales: tuple[ScaleInfo, ...]
    width: int = 56  # N: channels inside FENet / DRNet
    latent_channels: int = 64  # M: channels of y
    hyper_channels: int = 48  # channels of z
    latent_downsample: bool = True  # y at twice the coarsest stride (True) or at the coarsest stride
    num_qualities: int = 6  # gain-unit rows: quality index phi = 0 (lowest rate) .. num_qualities-1
    lambdas: tuple[float, ...] = field(default=(0.004, 0.012, 0.036, 0.11, 0.33, 1.0))  # training only
    # a linear path beside the convolutional one (codec/models/linear_path.py): FENet adds a
    # 1x1 projection of the space-to-depth stacked, normalised scales to y, DRNet adds a 1x1
    # reconstruction of y_hat (depth-to-space back to every scale) to its heads; both start
    # from PCA of training features (FenetCodec.init_linear_path)
    linear_path: bool = False
    # index of the scale at whose stride y lies (-1: the coarsest). With latent_scale L < k-1
    # the scales finer than L are fused into L as above, and the coarser ones enter L
    # depth-to-space (pixel shuffle, exact): y has 4x the positions per step of L.
    latent_scale: int = -1
    # channel-importance context (codec_model_id 5 on): y's channels, in descending order of
    # task importance, are split into groups of these sizes (sum = latent_channels) and coded
    # group after group, each group in two checkerboard passes whose context sees every group
    # already decoded (all positions) and the group's own anchors; () is one group of all
    # channels, the two-pass checkerboard of the first models. bitstream_spec.md, section 7.5.
    channel_groups: tuple[int, ...] = ()

    @classmethod
    def for_split_point(cls, split_point: SplitPoint, **kwargs) -> FenetConfig:
        return cls(scales=tuple(split_point.scales), **kwargs)

    def __post_init__(self) -> None:
        if not self.scales:
            raise FenetConfigError("FENet needs at least one scale")
        strides = [s.stride for s in self.scales]
        for a, b in zip(strides, strides[1:]):
            if b != 2 * a:
                raise FenetConfigError(f"scales must be ordered finest first with strides two apart, got {strides}")
        if len(self.lambdas) != self.num_qualities:
            raise FenetConfigError(f"{len(self.lambdas)} lambdas for {self.num_qualities} quality indices")
        if self.linear_path and self.latent_downsample:
            raise FenetConfigError("the linear path needs y at the coarsest stride (latent_downsample False)")
        if self.channel_groups and (min(self.channel_groups) < 1 or sum(self.channel_groups) != self.latent_channels):
            raise FenetConfigError(
                f"channel groups {list(self.channel_groups)} must be positive and add up to "
                f"the {self.latent_channels} latent channels"
            )
        k = len(self.scales)
        if not -k <= self.latent_scale < k:
            raise FenetConfigError(f"latent_scale {self.latent_scale} is not a scale index of {k} scales")
        if self.latent_downsample and self.level != k - 1:
            raise FenetConfigError("latent_downsample needs y at the coarsest scale (latent_scale -1)")
        for i in range(self.level + 1, k):
            q = self.scales[i].stride // self.scales[self.level].stride
            if self.scales[i].channels % (q * q):
                raise FenetConfigError(
                    f"scale {self.scales[i].name}: {self.scales[i].channels} channels cannot be "
                    f"shuffled depth-to-space by {q}"
                )

    @property
    def level(self) -> int:
        """latent_scale as a non-negative index."""
        return self.latent_scale % len(self.scales)

    @property
    def groups(self) -> list[tuple[int, int]]:
        """[start, end) of every channel group of y, in coding order."""
        sizes = self.channel_groups or (self.latent_channels,)
        ends = np.cumsum(sizes).tolist()
        return [(e - n, e) for n, e in zip(sizes, ends)]

    @property
    def ratios(self) -> list[int]:
        """Coarsest stride / stride of each scale (the space-to-depth factors)."""
        return [self.scales[-1].stride // s.stride for s in self.scales]

    @property
    def stacked_channels(self) -> int:
        """Channels of all scales stacked at the latent's stride (space-to-depth for the
        finer scales, depth-to-space for the coarser ones)."""
        return linear_path.stacked_channels_at(
            [s.channels for s in self.scales], [s.stride for s in self.scales], self.level
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["scales"] = [asdict(s) for s in self.scales]
        d["lambdas"] = list(self.lambdas)
        d["channel_groups"] = list(self.channel_groups)
        return d

    @classmethod
    def from_json(cls, d: dict) -> FenetConfig:
        d = dict(d)
        d["scales"] = tuple(ScaleInfo(**s) for s in d["scales"])
        d["lambdas"] = tuple(d["lambdas"])
        d["channel_groups"] = tuple(d.get("channel_groups", ()))
        return cls(**d)


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop (bottom/right) or zero-pad a map to (h, w)."""
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def _fit_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return _fit(x, *size)


def _conv(module: nn.Module) -> nn.Conv2d:
    """A submodule that is a Conv2d by construction (ModuleList items are typed Module)."""
    return cast(nn.Conv2d, module)


def _half(n: int) -> int:
    return -(-n // 2)


def stack_at_level(xs: list[torch.Tensor], cfg: FenetConfig) -> torch.Tensor:
    """Every scale moved to the latent scale's grid: finer ones space-to-depth, coarser ones
    depth-to-space (linear_path.stack_at, with zero padding); exact (moves and crops)."""
    return linear_path.stack_at(xs, [s.stride for s in cfg.scales], cfg.level, _fit_size)


def unstack_from_level(stacked: torch.Tensor, cfg: FenetConfig, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of stack_at_level, fitted to each scale's size; exact on integer tensors."""
    scales = cfg.scales
    return linear_path.unstack_from(
        stacked, [s.channels for s in scales], [s.stride for s in scales], cfg.level, sizes, _fit_size
    )


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2)


class SubpelUp(nn.Module):
    """x`factor` upsampling: conv to factor^2 x channels + pixel shuffle (exact in fixed point)."""

    def __init__(self, cin: int, cout: int, k: int = 3, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.conv = conv(cin, factor * factor * cout, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), self.factor)


class FENet(nn.Module):
    """Interleaved fusion and encoding: finest scale -> latent, concatenated with
    the next scale, encoded again, ... -> y."""

    def __init__(self, cfg: FenetConfig) -> None:
        super().__init__()
        n, m = cfg.width, cfg.latent_channels
        lv = cfg.level
        blocks = []
        for i, s in enumerate(cfg.scales[: lv + 1]):
            cin = s.channels + (n if i else 0)
            if i == lv:  # the coarser scales enter here depth-to-space
                cin += sum(c.channels // (c.stride // s.stride) ** 2 for c in cfg.scales[lv + 1 :])
            last = i == lv
            stride = 1 if last and not cfg.latent_downsample else 2
            layers: list[nn.Module] = [conv(cin, n, 3, stride), GDN(n), conv(n, m if last else n)]
            if not last:
                layers.append(GDN(n))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.cfg = cfg
        self.linear = nn.Conv2d(cfg.stacked_channels, m, 1) if cfg.linear_path else None

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        h = None
        lv = self.cfg.level
        for i, x in enumerate(xs[: lv + 1]):
            parts = [x] if h is None else [_fit(h, x.shape[-2], x.shape[-1]), x]
            if i == lv:
                for j in range(lv + 1, len(xs)):
                    q = self.cfg.scales[j].stride // self.cfg.scales[lv].stride
                    parts.append(_fit(F.pixel_shuffle(xs[j], q), x.shape[-2], x.shape[-1]))
            h = self.blocks[i](torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        if h is None:
            raise FenetConfigError("FENet needs at least one scale")
        if self.linear is not None:
            h = h + self.linear(stack_at_level(xs, self.cfg))
        return h


class DRNet(nn.Module):
    """Latent -> every scale: top-down branches, bottom-up feature mixing, per-scale heads.

    Only stride-1/stride-2 convs, LeakyReLU(1/8), pixel shuffle, crop/pad and sums, so
    that `forward_fixed` (the decoder's path) is integer-exact: the reconstructed
    features are bit-identical on every platform."""

    SLOPE = 0.125

    def __init__(self, cfg: FenetConfig) -> None:
        super().__init__()
        n, m = cfg.width, cfg.latent_channels
        k = len(cfg.scales)
        lv = cfg.level
        self.up = nn.ModuleList(
            [
                SubpelUp(m, n, 1, 2 if cfg.latent_downsample else 1) if i == lv else SubpelUp(n, n, 1)
                for i in range(lv + 1)
            ]
        )
        # scales coarser than the latent's: stride-2 convs down from the one below
        self.td_down = nn.ModuleList([conv(n, n, 3, 2) for _ in range(lv + 1, k)])
        self.refine = nn.ModuleList([conv(n, n) for _ in range(k)])
        self.down = nn.ModuleList([conv(n, n, 3, 2) for _ in range(k - 1)])
        self.head_mid = nn.ModuleList([conv(n, n) for _ in cfg.scales])
        self.head_out = nn.ModuleList([conv(n, s.channels, 1) for s in cfg.scales])
        self.linear = nn.Conv2d(m, cfg.stacked_channels, 1) if cfg.linear_path else None
        self.cfg = cfg
        self._fixed: nn.ModuleDict | None = None

    def _unstack(self, stacked: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        return unstack_from_level(stacked, self.cfg, sizes)

    def forward(self, y_hat: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        def act(x: torch.Tensor) -> torch.Tensor:
            return F.leaky_relu(x, self.SLOPE)

        k = len(sizes)
        lv = self.cfg.level
        r: list[torch.Tensor] = [y_hat] * k
        t = y_hat
        for i in reversed(range(lv + 1)):
            t = act(_fit(self.up[i](t), *sizes[i]))
            t = act(self.refine[i](t))
            r[i] = t
        t = r[lv]
        for i in range(lv + 1, k):
            t = act(_fit(self.td_down[i - lv - 1](t), *sizes[i]))
            t = act(self.refine[i](t))
            r[i] = t
        lin = self._unstack(self.linear(y_hat), sizes) if self.linear is not None else None
        out = []
        m = None
        for i in range(k):
            m = r[i] if m is None else r[i] + act(_fit(self.down[i - 1](m), *sizes[i]))
            o = self.head_out[i](act(self.head_mid[i](m)))
            out.append(o if lin is None else o + lin[i])
        return out

    def fixed(self) -> nn.ModuleDict:
        if self._fixed is None:
            dev = _conv(self.refine[0]).weight.device
            self._fixed = nn.ModuleDict(
                {
                    "up": nn.ModuleList([FixedConv2d(cast(SubpelUp, u).conv) for u in self.up]),
                    "td_down": nn.ModuleList([FixedConv2d(_conv(c)) for c in self.td_down]),
                    "refine": nn.ModuleList([FixedConv2d(_conv(c)) for c in self.refine]),
                    "down": nn.ModuleList([FixedConv2d(_conv(c)) for c in self.down]),
                    "head_mid": nn.ModuleList([FixedConv2d(_conv(c)) for c in self.head_mid]),
                    "head_out": nn.ModuleList([FixedConv2d(_conv(c)) for c in self.head_out]),
                    "linear": nn.ModuleList([FixedConv2d(self.linear)] if self.linear is not None else []),
                }
            ).to(dev)
        return self._fixed

    def forward_fixed(self, y_hat_int: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Integer activations (units 2^-ACT_BITS, float64) -> integer reconstructions."""
        fixed = self.fixed()
        up, td_down, refine, down, head_mid, head_out, linear = (
            cast(nn.ModuleList, fixed[name])
            for name in ("up", "td_down", "refine", "down", "head_mid", "head_out", "linear")
        )
        act = fixed_leaky_relu
        k = len(sizes)
        lv = self.cfg.level
        r: list[torch.Tensor] = [y_hat_int] * k
        t = y_hat_int
        for i in reversed(range(lv + 1)):
            t = act(_fit(F.pixel_shuffle(up[i](t), cast(SubpelUp, self.up[i]).factor), *sizes[i]))
            t = act(refine[i](t))
            r[i] = t
        t = r[lv]
        for i in range(lv + 1, k):
            t = act(_fit(td_down[i - lv - 1](t), *sizes[i]))
            t = act(refine[i](t))
            r[i] = t
        lin = self._unstack(linear[0](y_hat_int), sizes) if len(linear) else None
        out = []
        m = None
        for i in range(k):
            if m is None:
                m = r[i]
            else:
                m = (r[i] + act(_fit(down[i - 1](m), *sizes[i]))).clamp_(-ACT_LIMIT, ACT_LIMIT)
            o = head_out[i](act(head_mid[i](m)))
            out.append(o if lin is None else (o + lin[i]).clamp_(-ACT_LIMIT, ACT_LIMIT))
        return out


def checkerboard_anchor(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(1, 1, h, w) bool, True at anchors ((i + j) even): decoded first, from the hyperprior only."""
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return ((i + j) % 2 == 0).view(1, 1, h, w)


def checkerboard_mask(k: int = 5) -> torch.Tensor:
    """(k, k) taps that see anchors from a non-anchor position: (dy + dx) odd."""
    d = torch.arange(k) - k // 2
    return ((d.view(-1, 1) + d.view(1, -1)) % 2 != 0).float()


def context_mask(groups: list[tuple[int, int]], k: int = 5) -> torch.Tensor:
    """(M, M, k, k) taps of the context convolution (output channel, input channel): an input
    channel of an earlier group is seen at every tap (that group is decoded everywhere), one of
    the same group through the checkerboard taps (its anchors), one of a later group not at all.
    With one group this is the checkerboard mask for every channel pair."""
    m = groups[-1][1]
    group_of = torch.empty(m, dtype=torch.int64)
    for g, (a, b) in enumerate(groups):
        group_of[a:b] = g
    earlier = (group_of.view(1, -1) < group_of.view(-1, 1)).float().view(m, m, 1, 1)
    same = (group_of.view(1, -1) == group_of.view(-1, 1)).float().view(m, m, 1, 1)
    return earlier.expand(m, m, k, k) + same * checkerboard_mask(k).view(1, 1, k, k)


def coding_passes(
    groups: list[tuple[int, int]], h: int, w: int, device: torch.device | None = None
) -> list[torch.Tensor]:
    """The selection (1, M, h, w) bool of every pass, in coding order: for every channel group,
    its anchors, then its non-anchors."""
    m = groups[-1][1]
    anchor = checkerboard_anchor(h, w, device)
    out = []
    for a, b in groups:
        ch = torch.zeros(1, m, 1, 1, dtype=torch.bool, device=device)
        ch[:, a:b] = True
        out += [ch & anchor, ch & ~anchor]
    return out


SymbolsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (idx, mu, selection) -> symbols


def _quantiser(y_g: torch.Tensor) -> SymbolsFn:
    """Encoder side of a pass of the schedule: round(y_g - mu) with mu in units of 2^-ACT_BITS."""
    y_g64 = y_g.to(torch.float64)

    def symbols(idx: torch.Tensor, mu: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        return torch.round(y_g64 - mu / float(1 << ACT_BITS)).to(torch.int64)

    return symbols


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


def _crc32(*arrays: np.ndarray) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a, dtype="<i4").tobytes(), crc)
    return crc & 0xFFFFFFFF


@dataclass
class CompressedLatents:
    """Output of `FenetCodec.compress`: the two rANS strings and their check values."""

    z_string: bytes
    y_string: bytes
    z_crc32: int
    y_crc32: int
    phi: int
    sizes: list[tuple[int, int]]  # (H, W) per scale; everything else derives from these


@dataclass
class DecodedLatents:
    z_symbols: np.ndarray  # int32 (Nh, hz, wz)
    y_symbols: np.ndarray  # int32 (M, hy, wy)
    y_indexes: np.ndarray  # int32 scale-table indices (M, hy, wy)
    y_hat_g: np.ndarray  # int64 (M, hy, wy): symbols + means before the inverse gain, units of 2^-ACT_BITS
    y_hat: torch.Tensor  # (1, M, hy, wy) after the inverse gain


class FenetCodec(nn.Module):
    """FENet + hyperprior + checkerboard context + gain units + DRNet."""

    ctx_mask: torch.Tensor  # buffers (registered in __init__)
    feature_scale: torch.Tensor
    feature_mean: torch.Tensor

    def __init__(self, cfg: FenetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_h, m, q = cfg.hyper_channels, cfg.latent_channels, cfg.num_qualities
        self.fenet = FENet(cfg)
        self.drnet = DRNet(cfg)
        self.h_a = nn.Sequential(
            conv(m, n_h), nn.LeakyReLU(0.1), conv(n_h, n_h, 3, 2), nn.LeakyReLU(0.1), conv(n_h, n_h)
        )
        # h_s, ctx and ep use only stride-1 convs, ReLU, pixel shuffle and cropping: fixed-point exact.
        self.h_s_in = conv(n_h, n_h)
        self.h_s_up = SubpelUp(n_h, n_h)
        self.h_s_out = conv(n_h, 2 * m)
        self.ctx = conv(m, m, 5)
        self.register_buffer("ctx_mask", context_mask(cfg.groups, 5), persistent=False)
        self.ep1 = conv(3 * m, 2 * m, 1)
        self.ep2 = conv(2 * m, 2 * m, 1)
        self.entropy_bottleneck = EntropyBottleneck(n_h)
        self.gaussian_conditional = GaussianConditional(None)
        # gain units: rows are quality indices; larger gain -> finer quantisation -> more bits
        g = torch.exp(torch.linspace(math.log(0.5), math.log(4.0), q)).view(q, 1)
        self.gain = nn.Parameter(g.repeat(1, m))
        self.inv_gain = nn.Parameter((1.0 / g).repeat(1, m))
        self.hyper_gain = nn.Parameter(torch.ones(q, n_h))
        self.hyper_inv_gain = nn.Parameter(torch.ones(q, n_h))
        # with channel groups: one more factor per group on every quality's gain (and its inverse
        # on the inverse gain): the group's dynamic range, learned jointly for its channels
        self.group_gain = nn.Parameter(torch.ones(len(cfg.channel_groups))) if cfg.channel_groups else None
        self.register_buffer("feature_scale", torch.ones(len(cfg.scales)))
        # per-channel means of every scale (concatenated), removed before FENet and added back after DRNet
        self.register_buffer("feature_mean", torch.zeros(sum(s.channels for s in cfg.scales)))
        self._fixed: dict[str, FixedConv2d] | None = None

    # -- helpers ---------------------------------------------------------------

    def set_feature_scale(self, scale: torch.Tensor, mean: torch.Tensor | None = None) -> None:
        """Normalisation: x_norm = (x - mean[c]) / scale[i] for channel c of scale i."""
        self.feature_scale.copy_(scale.to(self.feature_scale))
        if mean is not None:
            self.feature_mean.copy_(mean.to(self.feature_mean))

    def _mean(self, i: int) -> torch.Tensor:
        start = sum(s.channels for s in self.cfg.scales[:i])
        return self.feature_mean[start : start + self.cfg.scales[i].channels].view(1, -1, 1, 1)

    def gain_table(self, which: str) -> torch.Tensor:
        """(Q, C) |gains| of every quality index; for y's gains times (inverse gains divided by)
        the channel's group gain."""
        t = getattr(self, which).abs()
        if self.group_gain is not None and which in ("gain", "inv_gain"):
            sizes = torch.tensor(self.cfg.channel_groups, device=t.device)
            per_channel = torch.repeat_interleave(self.group_gain.abs(), sizes)
            t = t * per_channel if which == "gain" else t / per_channel
        return t

    def _gains(self, phi: torch.Tensor, which: str) -> torch.Tensor:
        return self.gain_table(which)[phi].unsqueeze(-1).unsqueeze(-1)  # (B, C, 1, 1)

    def _check_phi(self, phi: int) -> None:
        if not 0 <= int(phi) < self.cfg.num_qualities:
            raise ValueError(f"quality index phi must be in 0..{self.cfg.num_qualities - 1}, got {phi}")

    def latent_sizes(self, sizes: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
        hy, wy = sizes[self.cfg.level]
        if self.cfg.latent_downsample:
            hy, wy = _half(hy), _half(wy)
        return (hy, wy), (_half(hy), _half(wy))

    def symbol_counts(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """(latent symbols, hyper-latent symbols) of an image whose scales have `sizes`."""
        (hy, wy), (hz, wz) = self.latent_sizes(sizes)
        return self.cfg.latent_channels * hy * wy, self.cfg.hyper_channels * hz * wz

    def check_symbol_counts(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """symbol_counts, or SizeLimitError when a string would hold more than the decoder's
        limit (codec.inner.rans.MAX_SYMBOLS; bitstream_spec.md, section 7.5)."""
        n_y, n_z = self.symbol_counts(sizes)
        if max(n_y, n_z) > rans.MAX_SYMBOLS:
            raise SizeLimitError(
                f"the latent of these scale sizes has {n_y} symbols, more than the limit {rans.MAX_SYMBOLS}"
            )
        return n_y, n_z

    def _normalised(self, features: Features | list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [features[s.name] for s in self.cfg.scales] if isinstance(features, dict) else list(features)
        if len(xs) != len(self.cfg.scales):
            raise FenetConfigError(f"expected {len(self.cfg.scales)} scales, got {len(xs)}")
        return [(x - self._mean(i)) / self.feature_scale[i] for i, x in enumerate(xs)]

    def stack(self, features: Features | list[torch.Tensor]) -> torch.Tensor:
        """The normalised scales stacked space-to-depth (the linear path's input)."""
        return stack_at_level(self._normalised(features), self.cfg)

    @torch.no_grad()
    def init_linear_path(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        """Start at PCA: y = P (s - mean), rec = P^T y_hat + mean (s: the stack). The
        convolutional paths' last layers are zeroed, so the model starts as exactly
        this linear transform; the gain units then set each quality's step size."""
        if not self.cfg.linear_path:
            raise FenetConfigError("init_linear_path needs a model with linear_path=True")
        m, d = self.cfg.latent_channels, self.cfg.stacked_channels
        mean = torch.as_tensor(mean, dtype=torch.float64)
        comp = torch.as_tensor(components, dtype=torch.float64)
        if mean.shape != (d,) or comp.shape != (m, d):
            raise FenetConfigError(f"PCA needs mean ({d},) and components ({m}, {d})")
        linear_path.set_conv(self.fenet.linear, comp.view(m, d, 1, 1), -comp @ mean)
        linear_path.set_conv(self.drnet.linear, comp.t().contiguous().view(d, m, 1, 1), mean)
        last = cast(nn.Sequential, self.fenet.blocks[self.cfg.level])[-1]
        for c in (last, *self.drnet.head_out):
            linear_path.zero_conv(c)
        self.invalidate_fixed()

    def _h_s(self, z_hat: torch.Tensor, hy: int, wy: int) -> torch.Tensor:
        t = F.relu(self.h_s_in(z_hat))
        t = F.relu(_fit(self.h_s_up(t), hy, wy))
        return self.h_s_out(t)

    def _ep(self, hp: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.ep2(F.relu(self.ep1(torch.cat([hp, ctx], dim=1))))
        scales, means = out.chunk(2, dim=1)
        return scales, means

    # -- training forward (float, noise / straight-through quantisation) -----------

    def forward(self, features: Features | list[torch.Tensor], phi: torch.Tensor) -> dict:
        """Returns reconstructions (de-normalised), normalised targets and likelihoods.
        `phi`: (B,) int64 quality index per sample."""
        xs = self._normalised(features)
        y_g, z_g = self.analyse(xs, phi)
        out = self.synthesise_soft(y_g, z_g, phi, [(int(x.shape[-2]), int(x.shape[-1])) for x in xs])
        return {**out, "target_norm": xs}

    def analyse(self, xs: list[torch.Tensor], phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised scales -> (y_g, z_g): the latent and the hyper-latent in the gained domain
        of quality index `phi` ((B,) int64), what the entropy coder quantises."""
        y_g = self.fenet(xs) * self._gains(phi, "gain")
        return y_g, self.h_a(y_g) * self._gains(phi, "hyper_gain")

    def synthesise_soft(
        self,
        y_g: torch.Tensor,
        z_g: torch.Tensor,
        phi: torch.Tensor,
        sizes: list[tuple[int, int]],
        noise: bool | None = None,
    ) -> dict:
        """The differentiable decoder side of (y_g, z_g): straight-through rounding where the
        codec rounds, likelihoods with additive uniform noise (`noise`: the entropy models'
        training flag by default). -> {"rec_norm": normalised reconstruction per scale,
        "likelihoods": {"y", "z"}}."""
        _, z_lik = self.entropy_bottleneck(z_g, training=noise)
        med = self.entropy_bottleneck._get_medians()
        z_hat = (_ste_round(z_g - med) + med) * self._gains(phi, "hyper_inv_gain")
        hy, wy = y_g.shape[-2:]
        hp = self._h_s(z_hat, hy, wy)
        # the coding passes of the integer path (coding_passes), in float: each pass's entropy
        # parameters from the hyperprior and the context of what the passes before it decoded
        known = torch.zeros_like(y_g)
        scales = torch.zeros_like(y_g)
        means = torch.zeros_like(y_g)
        for p, sel in enumerate(coding_passes(self.cfg.groups, hy, wy, y_g.device)):
            ctx = (
                torch.zeros_like(y_g)
                if p == 0
                else F.conv2d(known, self.ctx.weight * self.ctx_mask, self.ctx.bias, padding=2)
            )
            s_p, mu_p = self._ep(hp, ctx)
            scales = torch.where(sel, s_p, scales)
            means = torch.where(sel, mu_p, means)
            known = known + (_ste_round(y_g - mu_p) + mu_p) * sel
        _, y_lik = self.gaussian_conditional(y_g, scales, means, training=noise)
        y_hat = (_ste_round(y_g - means) + means) * self._gains(phi, "inv_gain")
        rec = self.drnet(y_hat, sizes)
        return {"rec_norm": rec, "likelihoods": {"y": y_lik, "z": z_lik}}

    def denormalise(self, rec_norm: list[torch.Tensor]) -> list[torch.Tensor]:
        """Normalised scales -> feature scales (the inverse of the encoder's normalisation)."""
        return [r * self.feature_scale[i] + self._mean(i) for i, r in enumerate(rec_norm)]

    def refine_latents(
        self,
        features: Features | list[torch.Tensor],
        phi: int,
        distortion: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor],
        lam: float,
        steps: int,
        lr: float = REFINE_LR,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder-side latent refinement: (y_g, z_g) of one image optimised for that image,
        starting at the analysis transform's, by `steps` Adam steps on the training objective

            bits(y, z) / covered input pixels + lam * distortion(rec_norm, target_norm)

        through the differentiable decoder side (synthesise_soft, likelihoods with noise), the
        model's parameters fixed. The decoder is unchanged: the result goes to compress_latents
        like the analysis's own. The step size decays by cosine to 0; the latents of the step
        with the lowest objective at hard quantisation (the analysis's included) are returned,
        so refinement never returns worse latents by the objective it measures."""
        self._check_phi(phi)
        xs = [x.detach() for x in self._normalised(features)]
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in xs]
        pixels = float(sizes[0][0] * self.cfg.scales[0].stride * sizes[0][1] * self.cfg.scales[0].stride)
        phi_t = torch.tensor([phi], device=xs[0].device)
        with torch.no_grad():
            y0, z0 = self.analyse(xs, phi_t)
        y_g = y0.clone().requires_grad_(True)
        z_g = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([y_g, z_g], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))

        def objective(noise: bool) -> torch.Tensor:
            out = self.synthesise_soft(y_g, z_g, phi_t, sizes, noise=noise)
            bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
            return bits / pixels + lam * distortion(out["rec_norm"], xs).sum()

        best = (float("inf"), y0, z0)
        dev = xs[0].device
        requires = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        # the noise of the rate term from a generator seeded here: the same image gives the same
        # stream on every run, and the caller's random state is left as it was
        try:
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(REFINE_SEED)
                for step in range(steps + 1):
                    with torch.no_grad():  # the objective at hard quantisation, as the codec codes it
                        hard = float(objective(noise=False))
                    if hard < best[0]:
                        best = (hard, y_g.detach().clone(), z_g.detach().clone())
                    if step == steps:
                        break
                    opt.zero_grad(set_to_none=True)
                    objective(noise=True).backward()
                    opt.step()
                    sched.step()
        finally:
            for p, r in zip(self.parameters(), requires):
                p.requires_grad_(r)
        return best[1], best[2]

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()

    # -- inference: fixed-point entropy parameters ------------------------------------

    def update(self, force: bool = True) -> None:
        """Build the CDF tables (after training). They are stored in the state dict,
        so a decoder never rebuilds them with its own float math."""
        self.gaussian_conditional.update_scale_table(
            torch.exp(torch.linspace(math.log(SCALE_TABLE[0]), math.log(SCALE_TABLE[1]), SCALE_TABLE[2])).tolist(),
            force=force,
        )
        self.entropy_bottleneck.update(force=force)
        self.invalidate_fixed()

    def fixed_layers(self) -> dict[str, FixedConv2d]:
        if self._fixed is None:
            dev = self.ep1.weight.device
            self._fixed = {
                "h_s_in": FixedConv2d(self.h_s_in).to(dev),
                "h_s_up": FixedConv2d(self.h_s_up.conv).to(dev),
                "h_s_out": FixedConv2d(self.h_s_out).to(dev),
                "ctx": FixedConv2d(self.ctx, self.ctx_mask.expand_as(self.ctx.weight)).to(dev),
                "ep1": FixedConv2d(self.ep1).to(dev),
                "ep2": FixedConv2d(self.ep2).to(dev),
            }
        return self._fixed

    def invalidate_fixed(self) -> None:
        self._fixed = None
        self.drnet._fixed = None

    def _scale_thresholds(self) -> torch.Tensor:
        """floor(table_k * 2^ACT_BITS) for all table entries but the last (int64):
        index = #{k : scale_int > threshold_k}, CompressAI's build_indexes in integers."""
        t = self.gaussian_conditional.scale_table
        if t.numel() == 0:
            raise FenetWeightsError("entropy model tables missing: call update() after training")
        return torch.floor(t[:-1].to(torch.float64) * float(1 << ACT_BITS)).to(torch.int64)

    def hyper_params_fixed(self, z_hat: torch.Tensor, hy: int, wy: int) -> torch.Tensor:
        """z_hat (after inverse gain) -> hyperprior parameters, integers in units of 2^-ACT_BITS."""
        fx = self.fixed_layers()
        t = fixed_relu(fx["h_s_in"](quantize_activation(z_hat)))
        t = F.pixel_shuffle(fx["h_s_up"](t), 2)
        t = fixed_relu(_fit(t, hy, wy))
        return fx["h_s_out"](t)

    def entropy_params_fixed(
        self, hp_int: torch.Tensor, y_hat_g_int: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (scale indices int64, means int64 in units of 2^-ACT_BITS on the 2^-MEAN_BITS grid)."""
        fx = self.fixed_layers()
        if y_hat_g_int is None:
            ctx = hp_int.new_zeros(hp_int.shape[0], self.cfg.latent_channels, *hp_int.shape[-2:])
        else:
            ctx = fx["ctx"](y_hat_g_int)
        out = fx["ep2"](fixed_relu(fx["ep1"](torch.cat([hp_int, ctx], dim=1))))
        s_int, mu_int = out.to(torch.int64).chunk(2, dim=1)
        thr = self._scale_thresholds().to(s_int.device)
        idx = (s_int.unsqueeze(-1) > thr).sum(dim=-1)
        step = 1 << (ACT_BITS - MEAN_BITS)
        mu_q = torch.div(mu_int + step // 2, step, rounding_mode="floor") * step
        return idx, mu_q

    def coded_passes(
        self, hp_int: torch.Tensor, symbols: SymbolsFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The coding schedule of the integer path, the one place the encoder, the decoder and
        forward_quantised run it (bitstream_spec.md, section 7.5). For every pass of
        `coding_passes` (each channel group's anchors, then its non-anchors):

        entropy parameters from the hyperprior and the context of y_hat decoded so far (the
        first pass: from the hyperprior alone); the pass's symbols; y_hat at the pass's
        positions (symbols * 2^ACT_BITS + means, clamped) added to what is decoded.

        With one channel group these are the two checkerboard passes of the first models.
        `symbols(idx, mu, selection)` returns the int64 symbols of a pass (values outside its
        selection are ignored): quantised on the encoder side, entropy decoded on the decoder
        side. Returns (symbols, scale indices, means), each (1, M, h, w) int64, every position
        from its own pass, and the passes' selections."""
        hy, wy = hp_int.shape[-2:]
        passes = coding_passes(self.cfg.groups, hy, wy, hp_int.device)
        shape = (1, self.cfg.latent_channels, hy, wy)
        sym = torch.zeros(shape, dtype=torch.int64, device=hp_int.device)
        idx = torch.zeros_like(sym)
        mu = torch.zeros_like(sym)
        known = torch.zeros(shape, dtype=torch.float64, device=hp_int.device)
        for p, sel in enumerate(passes):
            idx_p, mu_p = self.entropy_params_fixed(hp_int, None if p == 0 else known)
            sel_full = sel.expand(shape)
            sym_p = symbols(idx_p, mu_p, sel_full)
            sym = torch.where(sel_full, sym_p, sym)
            idx = torch.where(sel_full, idx_p, idx)
            mu = torch.where(sel_full, mu_p, mu)
            y_p = ((sym_p * (1 << ACT_BITS) + mu_p) * sel_full).clamp(-ACT_LIMIT, ACT_LIMIT)
            known = known + y_p.to(torch.float64)
        return sym, idx, mu, [p.expand(shape) for p in passes]

    def _cdf_lists(self) -> tuple[list, list, list]:
        gc = self.gaussian_conditional
        return (
            gc._quantized_cdf.tolist(),
            gc._cdf_length.reshape(-1).int().tolist(),
            gc._offset.reshape(-1).int().tolist(),
        )

    def _z_hat(self, z_symbols_string: bytes, zshape: tuple[int, int], phi: int) -> tuple[torch.Tensor, np.ndarray]:
        eb = self.entropy_bottleneck
        dev = self.feature_scale.device
        n_z = self.cfg.hyper_channels * zshape[0] * zshape[1]
        # the string padded so that no string can take CompressAI's decoder out of its buffer
        z_hat_g = eb.decompress([rans.padded(z_symbols_string, n_z)], zshape)  # symbols + medians, element-wise
        med = eb._get_medians().detach().view(1, -1, 1, 1)
        z_sym = torch.round(z_hat_g - med).to(torch.int32)
        return z_hat_g.to(dev) * self.hyper_inv_gain.abs()[phi].view(1, -1, 1, 1), z_sym[0].cpu().numpy()

    @torch.no_grad()
    def compress(self, features: Features | list[torch.Tensor], phi: int) -> CompressedLatents:
        """One image (batch 1) -> rANS strings of z and y at quality index `phi`."""
        self._check_phi(phi)
        xs = self._normalised(features)
        if xs[0].shape[0] != 1:
            raise ValueError("compress() takes one image (batch size 1)")
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in xs]
        self.check_symbol_counts(sizes)  # a stream no decoder would accept is not written
        y_g, z_g = self.analyse(xs, torch.tensor([phi], device=xs[0].device))
        return self.compress_latents(y_g, z_g, phi, sizes)

    @torch.no_grad()
    def compress_latents(
        self, y_g: torch.Tensor, z_g: torch.Tensor, phi: int, sizes: list[tuple[int, int]]
    ) -> CompressedLatents:
        """(y_g, z_g) of one image (analyse's, or refine_latents') -> rANS strings of z and y."""
        self._check_phi(phi)
        self.check_symbol_counts(sizes)
        (hy, wy), (hz, wz) = self.latent_sizes(sizes)
        want_y, want_z = (1, self.cfg.latent_channels, hy, wy), (1, self.cfg.hyper_channels, hz, wz)
        if tuple(y_g.shape) != want_y or tuple(z_g.shape) != want_z:
            raise ValueError(f"latents of shape {tuple(y_g.shape)} / {tuple(z_g.shape)} do not fit scales {sizes}")
        eb = self.entropy_bottleneck
        z_string = eb.compress(z_g)[0]
        z_hat, z_sym = self._z_hat(z_string, (hz, wz), phi)
        hp = self.hyper_params_fixed(z_hat, hy, wy)
        sym, idx, _, passes = self.coded_passes(hp, _quantiser(y_g))
        enc = BufferedRansEncoder()
        cdf, cdf_len, offs = self._cdf_lists()
        for sel in passes:  # one rANS string, pass after pass
            enc.encode_with_indexes(sym[sel].int().tolist(), idx[sel].int().tolist(), cdf, cdf_len, offs)
        y_string = enc.flush()
        y_sym = sym[0].cpu().numpy().astype(np.int32)
        y_idx = idx[0].cpu().numpy().astype(np.int32)
        return CompressedLatents(
            z_string=z_string,
            y_string=y_string,
            z_crc32=_crc32(z_sym),
            y_crc32=_crc32(y_sym, y_idx),
            phi=int(phi),
            sizes=sizes,
        )

    @torch.no_grad()
    def decode_latents(
        self,
        z_string: bytes,
        y_string: bytes,
        phi: int,
        sizes: list[tuple[int, int]],
        z_crc32: int | None = None,
        y_crc32: int | None = None,
    ) -> DecodedLatents:
        """rANS strings -> integer symbols, scale indices and y_hat; checks the CRCs when given."""
        self._check_phi(phi)
        n_y, _ = self.check_symbol_counts(sizes)
        (hy, wy), (hz, wz) = self.latent_sizes(sizes)
        z_hat, z_sym = self._z_hat(z_string, (hz, wz), phi)
        if z_crc32 is not None and _crc32(z_sym) != z_crc32:
            raise LatentChecksumError(
                f"hyper-latent symbols CRC32 0x{_crc32(z_sym):08x} != 0x{z_crc32:08x}: different entropy model"
            )
        hp = self.hyper_params_fixed(z_hat, hy, wy)
        dec = RansDecoder()
        dec.set_stream(rans.padded(y_string, n_y))  # see codec/inner/rans.py
        cdf, cdf_len, offs = self._cdf_lists()

        def decoded(idx: torch.Tensor, mu: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(idx.shape, dtype=torch.int64, device=idx.device)
            vals = dec.decode_stream(idx[sel].int().tolist(), cdf, cdf_len, offs)
            out[sel] = torch.tensor(vals, dtype=torch.int64, device=idx.device)
            return out

        sym, idx, mu, _ = self.coded_passes(hp, decoded)
        y_sym = sym[0].cpu().numpy().astype(np.int32)
        y_idx = idx[0].cpu().numpy().astype(np.int32)
        if y_crc32 is not None and _crc32(y_sym, y_idx) != y_crc32:
            raise LatentChecksumError(
                f"latent symbols CRC32 0x{_crc32(y_sym, y_idx):08x} != 0x{y_crc32:08x}: "
                "the decoder derived different entropy parameters (model or platform mismatch)"
            )
        y_hat_g = sym * (1 << ACT_BITS) + mu
        return DecodedLatents(
            z_symbols=z_sym,
            y_symbols=y_sym,
            y_indexes=y_idx,
            y_hat_g=y_hat_g[0].cpu().numpy(),
            y_hat=self.dequantize_latent(y_hat_g, phi),
        )

    def dequantize_latent(self, y_hat_g_int: torch.Tensor, phi: int) -> torch.Tensor:
        """Integer latent (units 2^-ACT_BITS, gained domain) -> y_hat after the inverse gain (float32)."""
        y = (y_hat_g_int.to(torch.float64) / float(1 << ACT_BITS)).float()
        return y * self.gain_table("inv_gain")[phi].view(1, -1, 1, 1).to(y.device)

    @torch.no_grad()
    def reconstruct(self, y_hat: torch.Tensor, sizes: list[tuple[int, int]]) -> Features:
        """DRNet in fixed point (bit-exact everywhere), then de-normalisation (element-wise)."""
        rec = self.drnet.forward_fixed(quantize_activation(y_hat), [(int(s[0]), int(s[1])) for s in sizes])
        return {
            s.name: (r / float(1 << ACT_BITS)).float() * self.feature_scale[i] + self._mean(i)
            for i, (s, r) in enumerate(zip(self.cfg.scales, rec))
        }

    def decompress(self, c: CompressedLatents) -> Features:
        d = self.decode_latents(c.z_string, c.y_string, c.phi, c.sizes, c.z_crc32, c.y_crc32)
        return self.reconstruct(d.y_hat, c.sizes)

    @torch.no_grad()
    def forward_quantised(self, features: Features | list[torch.Tensor], phi: int) -> tuple[torch.Tensor, Features]:
        """Inference forward pass without entropy coding: the same hard quantisation
        and fixed-point entropy parameters as compress(). Returns (y_hat, reconstruction)."""
        self._check_phi(phi)
        xs = self._normalised(features)
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in xs]
        y = self.fenet(xs)
        phi_t = torch.tensor([phi], device=y.device)
        y_g = y * self._gains(phi_t, "gain")
        z_g = self.h_a(y_g) * self._gains(phi_t, "hyper_gain")
        med = self.entropy_bottleneck._get_medians().detach()
        z_hat = (torch.round(z_g - med) + med) * self.hyper_inv_gain.abs()[phi].view(1, -1, 1, 1)
        hy, wy = y.shape[-2:]
        hp = self.hyper_params_fixed(z_hat, hy, wy)
        sym, _, mu, _ = self.coded_passes(hp, _quantiser(y_g))
        y_hat = self.dequantize_latent(sym * (1 << ACT_BITS) + mu, phi)
        return y_hat, self.reconstruct(y_hat, sizes)


# -- channel order and channel groups --------------------------------------------------


@torch.no_grad()
def permute_latent_channels(model: FenetCodec, order: torch.Tensor | list[int]) -> None:
    """Renumber y's channels in place: new channel j is old channel order[j]. Every weight
    indexed by a latent channel moves with it (FENet's output rows, DRNet's and h_a's input
    columns, the gains, h_s's and ep's (scale, mean) rows, the context's rows and columns, ep's
    input columns), so the permuted model codes the same image to the same reconstruction with
    the same bits, only with its channels in another order (tests/unit/test_fenet.py)."""
    m = model.cfg.latent_channels
    o = torch.as_tensor(order, dtype=torch.int64)
    if sorted(o.tolist()) != list(range(m)):
        raise FenetConfigError(f"a channel order must be a permutation of 0..{m - 1}")
    if model.cfg.channel_groups:
        raise FenetConfigError("permute the channels before splitting y into channel groups")
    two = torch.cat([o, o + m])

    def rows(c: nn.Conv2d, index: torch.Tensor) -> None:
        c.weight.copy_(c.weight[index.to(c.weight.device)])
        if c.bias is not None:
            c.bias.copy_(c.bias[index.to(c.bias.device)])

    def cols(c: nn.Conv2d, index: torch.Tensor) -> None:
        c.weight.copy_(c.weight[:, index.to(c.weight.device)])

    lv = model.cfg.level
    rows(_conv(cast(nn.Sequential, model.fenet.blocks[lv])[-1]), o)
    if model.fenet.linear is not None:
        rows(model.fenet.linear, o)
    cols(cast(SubpelUp, model.drnet.up[lv]).conv, o)
    if model.drnet.linear is not None:
        cols(model.drnet.linear, o)
    cols(_conv(model.h_a[0]), o)
    rows(model.h_s_out, two)
    rows(model.ctx, o)
    cols(model.ctx, o)
    cols(model.ep1, torch.cat([two, o + 2 * m]))
    rows(model.ep2, two)
    for name in ("gain", "inv_gain"):
        g = getattr(model, name)
        g.copy_(g[:, o.to(g.device)])
    model.invalidate_fixed()


@torch.no_grad()
def with_channel_groups(model: FenetCodec, groups: tuple[int, ...]) -> FenetCodec:
    """A copy of `model` (whose channels are already in coding order) that codes y in these
    channel groups. Every weight is kept; the context taps the new mask opens (earlier groups
    at every position) start at zero, so the new model starts as the old one with the context
    it loses (later groups' anchors) cut; its group gains start at 1."""
    cfg = FenetConfig.from_json({**model.cfg.to_json(), "channel_groups": list(groups)})
    new = FenetCodec(cfg).to(model.feature_scale.device)
    sd = model.state_dict()
    sd.pop("group_gain", None)
    load_fenet_state(new, sd, strict=False)
    opened = (new.ctx_mask > 0) & ~(model.ctx_mask.expand_as(new.ctx_mask) > 0)
    new.ctx.weight[opened] = 0.0
    new.invalidate_fixed()
    return new


# -- weights files ------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_fenet(model: FenetCodec, path: str | Path) -> str:
    """Write {"config", "state_dict"} (float32 weights + CDF tables) and its record
    (NAME.json: weights_sha256, kept fields of an existing record); returns the sha256."""
    return save_weights(model, path, "fenet_drnet")


def save_weights(model: nn.Module, path: str | Path, kind: str) -> str:
    """save_fenet for any learned model with a `cfg.to_json()`: the weights file and its record
    (model `kind`, config, weights_sha256; other fields of an existing record kept)."""
    cfg = cast(Any, model).cfg
    sd = {k: (v.float() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_json(), "state_dict": sd}, path)
    digest = file_sha256(path)
    js = path.with_suffix(".json")
    try:
        record = json.loads(js.read_text()) if js.is_file() else {}
    except ValueError:
        record = {}
    record.update(model=kind, config=cfg.to_json(), weights_sha256=digest)
    js.write_text(json.dumps(record, indent=2) + "\n")
    return digest


def load_fenet_state(model: FenetCodec, state_dict: dict, strict: bool = True) -> None:
    """Load a state dict including the (variable-size) CDF buffers of the entropy models."""
    for mod_name in ("entropy_bottleneck", "gaussian_conditional"):
        mod = getattr(model, mod_name)
        for buf in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"):
            key = f"{mod_name}.{buf}"
            if key in state_dict and hasattr(mod, buf):
                setattr(mod, buf, torch.empty_like(state_dict[key]))
    model.load_state_dict(state_dict, strict=strict)
    model.invalidate_fixed()


def shipped_weights_paths(name: str = "fenet_nanodet_neck") -> tuple[Path, Path]:
    return WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}.json"


def model_from_file(pt: Path, record: dict) -> FenetCodec:
    """Builder of the codec-model registry: the model of a verified weights file."""
    blob = torch.load(pt, map_location="cpu", weights_only=True)
    model = FenetCodec(FenetConfig.from_json(blob["config"]))
    load_fenet_state(model, blob["state_dict"])
    return model.eval()


def load_fenet(path: str | Path | None = None) -> tuple[FenetCodec, str]:
    """Load a FENet/DRNet codec through the one verifying loader (codec/models/registry.py);
    returns (model in eval mode, weights sha256 hex). CodecModelError if the file is
    missing, has no record, does not match it, or cannot be read."""
    from .registry import load_weights

    pt = Path(path) if path is not None else shipped_weights_paths()[0]
    model, _, digest = load_weights(pt, model_from_file, "fenet_drnet")
    return model, digest


__all__ = [
    "CompressedLatents",
    "DRNet",
    "DecodedLatents",
    "ENTROPY_PRECISION",
    "FENet",
    "FenetCodec",
    "FenetConfig",
    "FenetConfigError",
    "FenetWeightsError",
    "LatentChecksumError",
    "MEAN_BITS",
    "checkerboard_anchor",
    "checkerboard_mask",
    "coding_passes",
    "context_mask",
    "count_parameters",
    "file_sha256",
    "load_fenet",
    "load_fenet_state",
    "model_from_file",
    "permute_latent_channels",
    "save_fenet",
    "shipped_weights_paths",
    "with_channel_groups",
]
