"""Multi-scale feature fusion (MSFF) and reconstruction (MSFR).

MSFF maps the ordered scales of a split point (finest first, strides powers of
two apart) to one tensor at the coarsest stride with `fused_channels` channels;
MSFR maps that tensor back to every scale. Both are written over
`SplitPoint.scales` only, so another network's split point (an R-CNN FPN with
five 256-channel scales at strides 4..64) needs no code, only its config.

Trained with selective learning (SLS): a random number n of leading fused
channels is kept and channels n..C-1 are zeroed before MSFR, so low channel
indices learn to carry the most and one model serves every kept-channel count.

Features are normalised by fixed per-scale factors (`feature_scale`, computed on
the training set and stored as buffers in the state dict) before fusion, and the
reconstruction is multiplied back.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from codec.errors import CodecModelError
from codec.files import file_sha256
from codec.vision.base import Features, ScaleInfo, SplitPoint

from . import linear_path
from .fixed_point import WEIGHT_BITS, FixedConv2d

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class MsffConfigError(ValueError):
    """A split point or model configuration that MSFF/MSFR cannot be built for."""


class MsffWeightsError(CodecModelError):
    """Shipped MSFF/MSFR weights are missing or do not match their recorded sha256."""


@dataclass(frozen=True)
class MsffConfig:
    """Hyper-parameters of an MSFF/MSFR pair (stored beside the weights)."""

    scales: tuple[ScaleInfo, ...]
    fused_channels: int = 256  # C: channels of the fused single-scale tensor
    width: int = 80  # internal width of the per-scale branches
    fuse_blocks: int = 1  # residual blocks after fusion / before reconstruction
    # a linear path beside the convolutional one: MSFF adds a 1x1 projection of the
    # space-to-depth stacked scales to Z, MSFR adds a 1x1 reconstruction (pixel-shuffled
    # back to every scale) to its heads; initialised from PCA of training features
    # (init_linear_path), so the ordered principal components are the starting point
    linear_path: bool = False
    # index of the scale at whose stride Z lies (-1: the coarsest, the first models). With
    # fusion_scale L < k-1 the finer scales are fused down into L as above, the coarser ones
    # enter L through a 1x1 conv and pixel shuffle (MSFF) and leave it through stride-2 convs
    # (MSFR); the linear path moves them depth-to-space (exact). bitstream_spec.md, 7.4.
    fusion_scale: int = -1

    def __post_init__(self) -> None:
        k = len(self.scales)
        if k and not -k <= self.fusion_scale < k:
            raise MsffConfigError(f"fusion_scale {self.fusion_scale} is not a scale index of {k} scales")

    @property
    def level(self) -> int:
        """fusion_scale as a non-negative index."""
        return self.fusion_scale % len(self.scales)

    @classmethod
    def for_split_point(cls, split_point: SplitPoint, **kwargs: Any) -> MsffConfig:
        return cls(scales=tuple(split_point.scales), **kwargs)

    def to_json(self) -> dict:
        d = asdict(self)
        d["scales"] = [asdict(s) for s in self.scales]
        return d

    @classmethod
    def from_json(cls, d: dict) -> MsffConfig:
        d = dict(d)
        d["scales"] = tuple(ScaleInfo(**s) for s in d["scales"])
        return cls(**d)


def _check_config(cfg: MsffConfig) -> list[int]:
    """Validate the scales; return log2(fusion stride / stride) per scale (negative for the
    scales coarser than the fusion scale)."""
    if not cfg.scales:
        raise MsffConfigError("a split point needs at least one scale")
    if cfg.fused_channels < 1 or cfg.width < 1 or cfg.fuse_blocks < 0:
        raise MsffConfigError("fused_channels and width must be positive, fuse_blocks non-negative")
    strides = [s.stride for s in cfg.scales]
    if strides != sorted(strides) or len(set(strides)) != len(strides):
        raise MsffConfigError(f"scales must be ordered finest first with distinct strides, got {strides}")
    coarsest = strides[-1]
    levels = []
    for s in cfg.scales:
        ratio = coarsest // s.stride
        if coarsest % s.stride or ratio & (ratio - 1):
            raise MsffConfigError(f"stride {s.stride} of {s.name!r} is not a power-of-two divisor of {coarsest}")
        levels.append(int(math.log2(ratio)))
    top = levels[cfg.level]
    for s, lev in zip(cfg.scales[cfg.level + 1 :], levels[cfg.level + 1 :]):
        q = 1 << (top - lev)
        if s.channels % (q * q):
            raise MsffConfigError(f"scale {s.name!r}: {s.channels} channels cannot be shuffled depth-to-space by {q}")
    return [lev - top for lev in levels]


def stacked_channels(cfg: MsffConfig) -> int:
    """Channels of every scale stacked at the fusion stride (space-to-depth for the finer
    scales, depth-to-space for the coarser ones)."""
    return linear_path.stacked_channels_at([s.channels for s in cfg.scales], [s.stride for s in cfg.scales], cfg.level)


def _strides(cfg: MsffConfig) -> list[int]:
    return [s.stride for s in cfg.scales]


def _fit(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop (or replicate-pad) the last two dims to `size`: with ceil-division
    sizes, a stride-2 chain followed by 2x upsampling can be one sample off."""
    h, w = size
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph > 0 or pw > 0:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(ch // 2, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


class Msff(nn.Module):
    """Scales -> one (N, C, H/S, W/S) tensor at the coarsest stride S.

    Each finer scale goes through log2(S / stride) stride-2 3x3 convs (a 1x1 conv
    for the coarsest); the branches are concatenated and fused to C channels."""

    feature_scale: torch.Tensor  # buffer

    def __init__(self, cfg: MsffConfig) -> None:
        super().__init__()
        self.cfg = cfg
        levels = _check_config(cfg)
        w = cfg.width
        self.branches = nn.ModuleDict()
        for s, n_down in zip(cfg.scales, levels):
            layers: list[nn.Module] = []
            cin = s.channels
            for _ in range(n_down):
                layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1), nn.LeakyReLU(0.1)]
                cin = w
            if n_down == 0:
                layers += [nn.Conv2d(cin, w, 1), nn.LeakyReLU(0.1)]
            if n_down < 0:  # coarser than the fusion scale: 1x1 conv and pixel shuffle up
                q = 1 << -n_down
                layers += [nn.Conv2d(cin, w * q * q, 1), nn.PixelShuffle(q), nn.LeakyReLU(0.1)]
            self.branches[s.name] = nn.Sequential(*layers)
        self.fuse_in = nn.Conv2d(w * len(cfg.scales), w * 2, 1)
        self.blocks = nn.Sequential(*[ResBlock(w * 2) for _ in range(cfg.fuse_blocks)])
        self.fuse_out = nn.Conv2d(w * 2, cfg.fused_channels, 1)
        self.linear = nn.Conv2d(stacked_channels(cfg), cfg.fused_channels, 1) if cfg.linear_path else None
        self.register_buffer("feature_scale", torch.ones(len(cfg.scales)))

    def stack(self, features: Features) -> torch.Tensor:
        """Normalised scales, each moved to the fusion stride (finer scales space-to-depth,
        cropped or edge-padded to exactly r times the fusion scale's size; coarser ones
        depth-to-space), concatenated."""
        xs = [features[s.name].float() / self.feature_scale[i] for i, s in enumerate(self.cfg.scales)]
        return linear_path.stack_at(xs, _strides(self.cfg), self.cfg.level, _fit)

    def forward(self, features: Features) -> torch.Tensor:
        missing = [s.name for s in self.cfg.scales if s.name not in features]
        if missing:
            raise MsffConfigError(f"features lack scales {missing}")
        fused = features[self.cfg.scales[self.cfg.level].name].shape[-2:]
        outs = []
        for i, s in enumerate(self.cfg.scales):
            x = features[s.name].float() / self.feature_scale[i]
            outs.append(_fit(self.branches[s.name](x), (fused[0], fused[1])))
        z = F.leaky_relu(self.fuse_in(torch.cat(outs, 1)), 0.1)
        z = self.fuse_out(self.blocks(z))
        if self.linear is not None:
            z = z + self.linear(self.stack(features))
        return z


class Msfr(nn.Module):
    """One fused tensor -> every scale, coarsest to finest (top-down): each finer
    level upsamples the previous one (1x1 conv + pixel shuffle) and refines it
    with a 3x3 conv; a 1x1 head per scale maps to the scale's channels."""

    feature_scale: torch.Tensor  # buffer

    def __init__(self, cfg: MsffConfig) -> None:
        super().__init__()
        self.cfg = cfg
        levels = _check_config(cfg)
        w = cfg.width
        self.trunk_in = nn.Conv2d(cfg.fused_channels, w * 2, 1)
        self.blocks = nn.Sequential(*[ResBlock(w * 2) for _ in range(cfg.fuse_blocks)])
        self.trunk_out = nn.Conv2d(w * 2, w, 1)
        self.up = nn.ModuleDict()
        self.down = nn.ModuleDict()  # scales coarser than the fusion scale: stride-2 convs from the trunk
        self.heads = nn.ModuleDict()
        for s, lev in zip(cfg.scales, levels):
            if lev < 0:
                self.down[s.name] = nn.Sequential(
                    *[m for _ in range(-lev) for m in (nn.Conv2d(w, w, 3, stride=2, padding=1), nn.LeakyReLU(0.1))]
                )
        # scales from the fusion scale to the finest; factor relative to the previous (coarser) one
        prev = 0
        for s, lev in reversed(list(zip(cfg.scales, levels))):
            if lev < 0:
                self.heads[s.name] = nn.Conv2d(w, s.channels, 1)
                continue
            r = 1 << (lev - prev)
            if r > 1:
                self.up[s.name] = nn.Sequential(
                    nn.Conv2d(w, w * r * r, 1),
                    nn.PixelShuffle(r),
                    nn.LeakyReLU(0.1),
                    nn.Conv2d(w, w, 3, padding=1),
                    nn.LeakyReLU(0.1),
                )
            self.heads[s.name] = nn.Conv2d(w, s.channels, 1)
            prev = lev
        self.linear = nn.Conv2d(cfg.fused_channels, stacked_channels(cfg), 1) if cfg.linear_path else None
        self.register_buffer("feature_scale", torch.ones(len(cfg.scales)))

    def unstack(self, stacked: torch.Tensor, sizes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Inverse of Msff.stack (without the normalisation): each scale back from the fusion
        stride, cropped."""
        scales = self.cfg.scales
        parts = linear_path.unstack_from(
            stacked, [s.channels for s in scales], _strides(self.cfg), self.cfg.level,
            [sizes[s.name] for s in scales], _fit,
        )  # fmt: skip
        return {s.name: p for s, p in zip(scales, parts)}

    def forward(self, z: torch.Tensor, sizes: dict[str, tuple[int, int]]) -> Features:
        y = F.leaky_relu(self.trunk_out(self.blocks(F.leaky_relu(self.trunk_in(z), 0.1))), 0.1)
        lin = self.unstack(self.linear(z), sizes) if self.linear is not None else None
        out: dict[str, torch.Tensor] = {}
        for i in range(self.cfg.level + 1, len(self.cfg.scales)):  # coarser than the fusion scale
            s = self.cfg.scales[i]
            head = self.heads[s.name](_fit(self.down[s.name](y), sizes[s.name]))
            if lin is not None:
                head = head + lin[s.name]
            out[s.name] = head * self.feature_scale[i]
        for i in reversed(range(self.cfg.level + 1)):
            s = self.cfg.scales[i]
            if s.name in self.up:
                y = self.up[s.name](y)
            y = _fit(y, sizes[s.name])
            head = self.heads[s.name](y)
            if lin is not None:
                head = head + lin[s.name]
            out[s.name] = head * self.feature_scale[i]
        return OrderedDict((s.name, out[s.name]) for s in self.cfg.scales)


# -- integer-exact MSFR (decoder side) ---------------------------------------------
# The decoder's reconstruction must be bit-identical across runs, thread counts and
# machines (conformance md5 of the reconstructed features). Weights are rounded to
# multiples of 2^-EXACT_WEIGHT_BITS, activations to multiples of 2^-EXACT_ACT_BITS;
# a convolution is the one fixed-point engine of codec/models/fixed_point.py
# (FixedConv2d: unfold + float64 matmul on these integers, exact and so independent
# of summation order while every partial sum stays below 2^53, checked per layer
# when the exact decoder is built), here with MSFR's finer activation grid.
EXACT_WEIGHT_BITS = WEIGHT_BITS  # 14
EXACT_ACT_BITS = 16
EXACT_ACT_LIMIT = 1 << 30


def _exact_conv(conv: nn.Module) -> FixedConv2d:
    """A trained MSFR convolution on the exact grid (the one fixed-point engine,
    codec/models/fixed_point.py, with MSFR's activation grid and clamp)."""
    return FixedConv2d(cast(nn.Conv2d, conv), act_bits=EXACT_ACT_BITS, act_limit=EXACT_ACT_LIMIT)


def _exact_leaky(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, torch.floor(x * 0.1), x)


def to_exact_activation(x: torch.Tensor) -> torch.Tensor:
    """Real tensor -> integer-valued float64 in units of 2^-EXACT_ACT_BITS (element-wise, exact)."""
    return torch.round(x.double() * float(1 << EXACT_ACT_BITS)).clamp_(-EXACT_ACT_LIMIT, EXACT_ACT_LIMIT)


class ExactMsfr(nn.Module):
    """The MSFR graph of a trained `Msfr` in integer-exact fixed point."""

    def __init__(self, msfr: Msfr) -> None:
        super().__init__()
        self.cfg = msfr.cfg
        self.trunk_in = _exact_conv(msfr.trunk_in)
        blocks = [cast(ResBlock, b) for b in msfr.blocks]
        self.blocks = nn.ModuleList(nn.ModuleList([_exact_conv(b.conv1), _exact_conv(b.conv2)]) for b in blocks)
        self.trunk_out = _exact_conv(msfr.trunk_out)
        ups = {k: cast(nn.Sequential, u) for k, u in msfr.up.items()}
        self.up = nn.ModuleDict(
            {
                k: nn.ModuleList([_exact_conv(cast(nn.Conv2d, u[0])), _exact_conv(cast(nn.Conv2d, u[3]))])
                for k, u in ups.items()
            }
        )
        self.shuffle = {k: cast(nn.PixelShuffle, u[1]).upscale_factor for k, u in ups.items()}
        self.down = nn.ModuleDict(
            {
                k: nn.ModuleList([_exact_conv(cast(nn.Conv2d, c)) for c in cast(nn.Sequential, d)[::2]])
                for k, d in msfr.down.items()
            }
        )
        self.heads = nn.ModuleDict({k: _exact_conv(cast(nn.Conv2d, h)) for k, h in msfr.heads.items()})
        self.linear = _exact_conv(msfr.linear) if msfr.linear is not None else None
        self._unstack = msfr.unstack
        self.feature_scale = msfr.feature_scale.detach().double().clone()

    @torch.no_grad()
    def forward(self, z: torch.Tensor, sizes: dict[str, tuple[int, int]]) -> Features:
        """z: real (1, C, h, w) tensor (exactly representable values are kept exactly)."""
        a = to_exact_activation(z)
        lin = self._unstack(self.linear(a), sizes) if self.linear is not None else None
        y = _exact_leaky(self.trunk_in(a))
        for pair in self.blocks:
            c1, c2 = cast(nn.ModuleList, pair)
            y = y + c2(_exact_leaky(c1(y)))
        y = _exact_leaky(self.trunk_out(y))
        out: dict[str, torch.Tensor] = {}
        for i in range(self.cfg.level + 1, len(self.cfg.scales)):  # coarser than the fusion scale
            s = self.cfg.scales[i]
            t = y
            for c in cast(nn.ModuleList, self.down[s.name]):
                t = _exact_leaky(c(t))
            head = self.heads[s.name](_fit(t, sizes[s.name]))
            if lin is not None:
                head = head + lin[s.name]
            out[s.name] = (head / float(1 << EXACT_ACT_BITS) * self.feature_scale[i]).to(torch.float32)
        for i in reversed(range(self.cfg.level + 1)):
            s = self.cfg.scales[i]
            if s.name in self.up:
                conv1, conv3 = cast(nn.ModuleList, self.up[s.name])
                y = _exact_leaky(conv3(_exact_leaky(F.pixel_shuffle(conv1(y), self.shuffle[s.name]))))
            y = _fit(y, sizes[s.name])
            head = self.heads[s.name](y)
            if lin is not None:
                head = head + lin[s.name]  # both in units of 2^-16, |sum| < 2^31: exact
            real = head / float(1 << EXACT_ACT_BITS) * self.feature_scale[i]
            out[s.name] = real.to(torch.float32)
        return OrderedDict((s.name, out[s.name]) for s in self.cfg.scales)


class MsffCodecModel(nn.Module):
    """MSFF + MSFR pair with the SLS channel mask between them."""

    def __init__(self, cfg: MsffConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.msff = Msff(cfg)
        self.msfr = Msfr(cfg)

    def set_feature_scale(self, scale: torch.Tensor) -> None:
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if scale.shape != (len(self.cfg.scales),) or not bool((scale > 0).all()):
            raise MsffConfigError("feature_scale needs one positive factor per scale")
        self.msff.feature_scale.copy_(scale)
        self.msfr.feature_scale.copy_(scale)

    def forward(self, features: Features, kept_channels: int | torch.Tensor | None = None) -> Features:
        z = self.msff(features)
        if kept_channels is not None:
            z = sls_mask(z, kept_channels)
        sizes = {s.name: tuple(features[s.name].shape[-2:]) for s in self.cfg.scales}
        return self.msfr(z, sizes)  # type: ignore[arg-type]


@torch.no_grad()
def init_linear_path(model: MsffCodecModel, mean: torch.Tensor, components: torch.Tensor) -> None:
    """Start a linear-path model at PCA: Z = P (s - mean) and rec = P^T Z + mean, where s is
    the normalised space-to-depth stack (Msff.stack), `mean` its (D,) training mean and
    `components` the (C, D) leading principal directions, most variance first. The
    convolutional paths' last layers are zeroed, so at initialisation the model is exactly
    the PCA transform; training then adds what a linear map cannot do. PCA orders Z's
    channels by importance and is the best linear code for every number of kept channels
    at once, which is what selective learning asks of the channel order."""
    cfg = model.cfg
    if not cfg.linear_path:
        raise MsffConfigError("init_linear_path needs a model with linear_path=True")
    c, d = cfg.fused_channels, stacked_channels(cfg)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    comp = torch.as_tensor(components, dtype=torch.float64)
    if mean.shape != (d,) or comp.shape != (c, d):
        raise MsffConfigError(
            f"PCA needs mean ({d},) and components ({c}, {d}), got {tuple(mean.shape)}, {tuple(comp.shape)}"
        )
    linear_path.set_conv(model.msff.linear, comp.view(c, d, 1, 1), -comp @ mean)
    linear_path.set_conv(model.msfr.linear, comp.t().contiguous().view(d, c, 1, 1), mean)
    for conv in (model.msff.fuse_out, *model.msfr.heads.values()):
        linear_path.zero_conv(conv)


def sls_mask(z: torch.Tensor, kept_channels: int | torch.Tensor) -> torch.Tensor:
    """Zero channels n..C-1 of z (N, C, H, W). `kept_channels` is one n for the
    batch or a (N,) tensor with one n per sample; 0 <= n <= C."""
    c = z.shape[1]
    n = torch.as_tensor(kept_channels, device=z.device).reshape(-1, 1)
    if bool((n < 0).any()) or bool((n > c).any()):
        raise ValueError(f"kept_channels must lie in 0..{c}")
    keep = (torch.arange(c, device=z.device).reshape(1, -1) < n).to(z.dtype)
    return z * keep[:, :, None, None]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shipped_weights_paths(name: str = "msff_nanodet_neck") -> tuple[Path, Path]:
    return WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}.json"


def load_msff(path: str | Path | None = None) -> tuple[MsffCodecModel, dict, str]:
    """Load an MSFF/MSFR pair from `<name>.pt` + `<name>.json` (default: the shipped
    NanoDet neck model) through the one verifying loader (codec/models/registry.py).
    Returns (model in eval mode, json record, weights sha256); CodecModelError if the
    file is missing, has no record, does not match it, or cannot be read."""
    from .registry import load_weights

    pt = Path(path) if path is not None else shipped_weights_paths()[0]
    return load_weights(pt, model_from_file, "msff_msfr")


def model_from_file(pt: Path, record: dict) -> MsffCodecModel:
    """Builder of the codec-model registry: the model of a verified weights file."""
    model = MsffCodecModel(MsffConfig.from_json(record["config"]))
    model.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
    return model.eval()


__all__ = [
    "ExactMsfr",
    "Msff",
    "MsffCodecModel",
    "MsffConfig",
    "MsffConfigError",
    "MsffWeightsError",
    "Msfr",
    "count_parameters",
    "file_sha256",
    "init_linear_path",
    "load_msff",
    "model_from_file",
    "shipped_weights_paths",
    "sls_mask",
    "stacked_channels",
]
