"""Per-scale variable-rate learned feature codec: every scale of a split point coded by
its own small hyperprior codec with gain units, so that each scale has its own quality
index phi_i (the base codec of MFIBA, codec/allocation/mfiba.py, and the layer-wise
baseline of fused multi-scale codecs).

Each scale's codec is a one-scale `FenetCodec` of codec/models/fenet.py (analysis
transform with GDN, hyperprior, checkerboard context, gain units, DRNet synthesis): the
same building blocks, the same fixed-point entropy parameters and rANS strings, so that
decoding is bit-exact exactly as in learned_e2e. For scale i (stride s_i):

    y_i = FENet_i((x_i - mean_i) / sigma_i) + P_i (x_i - mean_i) / sigma_i
                                        (M x H_i x W_i: y at the scale's own stride; P_i the
                                         linear path, initialised by PCA of the training features)
    y_i, z_i coded at quality phi_i     (gain row phi_i of codec i)
    x_hat_i = (DRNet_i(y_hat_i) + P_i^T y_hat_i) * sigma_i + mean_i

(``latent_downsample`` places y at twice the scale's stride instead, without the linear path.)

The scales share nothing, so any allocation (phi_1, ..., phi_k) is decodable, and a
scale's bits depend on its own phi only. Training draws every scale's phi
independently (tools/train_fenet_ps.py), so mixed allocations are in distribution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from codec.vision.base import Features, ScaleInfo, SplitPoint

from .fenet import CompressedLatents, DecodedLatents, FenetCodec, FenetConfig, FenetConfigError, load_fenet_state

MODEL_KIND = "fenet_ps"


@dataclass(frozen=True)
class PerScaleConfig:
    """Hyper-parameters of every scale's codec (the same for all scales; stored in the weights)."""

    scales: tuple[ScaleInfo, ...]
    width: int = 48  # N: channels inside each analysis / synthesis transform
    latent_channels: int = 64  # M: channels of each y_i
    hyper_channels: int = 32  # channels of each z_i
    latent_downsample: bool = False  # y at twice the scale's stride (True) or at its stride
    linear_path: bool = True  # the 1x1 linear path beside the convolutional one (needs y at the scale's stride)
    num_qualities: int = 8  # phi_i = 0 (lowest rate) .. num_qualities-1, per scale
    lambdas: tuple[float, ...] = field(default=(0.03, 0.08, 0.2, 0.5, 1.2, 3.0, 8.0, 20.0))  # training only

    @classmethod
    def for_split_point(cls, split_point: SplitPoint, **kwargs) -> PerScaleConfig:
        return cls(scales=tuple(split_point.scales), **kwargs)

    def __post_init__(self) -> None:
        if not self.scales:
            raise FenetConfigError("a per-scale codec needs at least one scale")
        if len(self.lambdas) != self.num_qualities:
            raise FenetConfigError(f"{len(self.lambdas)} lambdas for {self.num_qualities} quality indices")
        for i in range(len(self.scales)):
            self.scale_config(i)  # each scale's own checks (FenetConfig)

    def scale_config(self, i: int) -> FenetConfig:
        """The one-scale FenetConfig of scale i."""
        return FenetConfig(
            scales=(self.scales[i],),
            width=self.width,
            latent_channels=self.latent_channels,
            hyper_channels=self.hyper_channels,
            latent_downsample=self.latent_downsample,
            num_qualities=self.num_qualities,
            lambdas=self.lambdas,
            linear_path=self.linear_path,
        )

    def to_json(self) -> dict:
        d = asdict(self)
        d["scales"] = [asdict(s) for s in self.scales]
        d["lambdas"] = list(self.lambdas)
        return d

    @classmethod
    def from_json(cls, d: dict) -> PerScaleConfig:
        d = dict(d)
        d["scales"] = tuple(ScaleInfo(**s) for s in d["scales"])
        d["lambdas"] = tuple(d["lambdas"])
        return cls(**d)


class PerScaleCodec(nn.Module):
    """One FenetCodec per scale, in the split point's order."""

    def __init__(self, cfg: PerScaleConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.codecs = nn.ModuleList([FenetCodec(cfg.scale_config(i)) for i in range(len(cfg.scales))])

    def codec(self, i: int) -> FenetCodec:
        c = self.codecs[i]
        if not isinstance(c, FenetCodec):  # ModuleList items are typed Module
            raise TypeError("codecs holds FenetCodec modules only")
        return c

    @property
    def num_scales(self) -> int:
        return len(self.cfg.scales)

    def scale_list(self, features: Features | list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [features[s.name] for s in self.cfg.scales] if isinstance(features, dict) else list(features)
        if len(xs) != self.num_scales:
            raise FenetConfigError(f"expected {self.num_scales} scales, got {len(xs)}")
        return xs

    def check_phis(self, phis: list[int] | tuple[int, ...]) -> list[int]:
        if len(phis) != self.num_scales:
            raise ValueError(f"{len(phis)} quality indices for {self.num_scales} scales")
        out = []
        for p in phis:
            if isinstance(p, bool) or not 0 <= int(p) < self.cfg.num_qualities:
                raise ValueError(f"quality index phi must be in 0..{self.cfg.num_qualities - 1}, got {p!r}")
            out.append(int(p))
        return out

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Per-channel means (all scales concatenated) and per-scale RMS, as FenetCodec's buffers."""
        start = 0
        for i, s in enumerate(self.cfg.scales):
            self.codec(i).set_feature_scale(scale[i : i + 1], mean[start : start + s.channels])
            start += s.channels

    # -- training ---------------------------------------------------------------------

    def forward(self, features: Features | list[torch.Tensor], phis: torch.Tensor) -> list[dict]:
        """`phis`: (B, S) int64, the quality index of every sample and scale. One FenetCodec
        forward result per scale (normalised reconstruction and target, likelihoods)."""
        xs = self.scale_list(features)
        return [self.codec(i)([x], phis[:, i]) for i, x in enumerate(xs)]

    def aux_loss(self) -> torch.Tensor:
        return torch.stack([self.codec(i).aux_loss() for i in range(self.num_scales)]).sum()

    def denormalise(self, i: int, rec_norm: torch.Tensor) -> torch.Tensor:
        c = self.codec(i)
        return rec_norm * c.feature_scale[0] + c._mean(0)

    def transform_only(self, features: Features | list[torch.Tensor]) -> list[torch.Tensor]:
        """Analysis -> synthesis without quantisation or gains (the ceiling), de-normalised."""
        out = []
        for i, x in enumerate(self.scale_list(features)):
            c = self.codec(i)
            xn = c._normalised([x])
            out.append(self.denormalise(i, c.drnet(c.fenet(xn), [tuple(xn[0].shape[-2:])])[0]))
        return out

    # -- inference ----------------------------------------------------------------------

    def update(self, force: bool = True) -> None:
        for i in range(self.num_scales):
            self.codec(i).update(force=force)

    def compress_scale(self, i: int, x: torch.Tensor, phi: int) -> CompressedLatents:
        return self.codec(i).compress([x], phi)

    def compress(self, features: Features | list[torch.Tensor], phis: list[int]) -> list[CompressedLatents]:
        """One image (batch 1) -> the rANS strings of every scale at its quality index."""
        phis = self.check_phis(phis)
        return [self.compress_scale(i, x, p) for i, (x, p) in enumerate(zip(self.scale_list(features), phis))]

    def decode_scale(
        self, i: int, z_string: bytes, y_string: bytes, phi: int, size: tuple[int, int],
        z_crc32: int | None = None, y_crc32: int | None = None,
    ) -> DecodedLatents:  # fmt: skip
        return self.codec(i).decode_latents(z_string, y_string, phi, [size], z_crc32, y_crc32)

    def reconstruct_scale(self, i: int, y_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        c = self.codec(i)
        return c.reconstruct(y_hat, [size])[self.cfg.scales[i].name]

    def decompress(self, compressed: list[CompressedLatents]) -> Features:
        out = {}
        for i, c in enumerate(compressed):
            d = self.decode_scale(i, c.z_string, c.y_string, c.phi, c.sizes[0], c.z_crc32, c.y_crc32)
            out[self.cfg.scales[i].name] = self.reconstruct_scale(i, d.y_hat, c.sizes[0])
        return out

    @torch.no_grad()
    def forward_quantised_scale(self, i: int, x: torch.Tensor, phi: int) -> torch.Tensor:
        """Scale i's reconstruction at quality phi as the decoder gives it, without rANS
        (the same hard quantisation and fixed-point entropy parameters as compress)."""
        return self.codec(i).forward_quantised([x], phi)[1][self.cfg.scales[i].name]


# -- weights files ------------------------------------------------------------------------


def save_fenet_ps(model: PerScaleCodec, path: str | Path) -> str:
    """{"config", "state_dict"} and the record NAME.json (weights_sha256, kept fields); -> sha256."""
    from .fenet import save_weights

    return save_weights(model, path, MODEL_KIND)


def load_state(model: PerScaleCodec, state_dict: dict) -> None:
    """Load a state dict including every scale's (variable-size) CDF buffers."""
    for i in range(model.num_scales):
        prefix = f"codecs.{i}."
        sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        load_fenet_state(model.codec(i), sub)
    extra = [k for k in state_dict if not k.startswith("codecs.") or int(k.split(".")[1]) >= model.num_scales]
    if extra:
        raise KeyError(f"unexpected keys in a per-scale codec state dict: {extra[:3]}")


def model_from_file(pt: Path, record: dict) -> PerScaleCodec:
    """Builder of the codec-model registry: the model of a verified weights file."""
    blob = torch.load(pt, map_location="cpu", weights_only=True)
    model = PerScaleCodec(PerScaleConfig.from_json(blob["config"]))
    load_state(model, blob["state_dict"])
    return model.eval()


def load_fenet_ps(path: str | Path) -> tuple[PerScaleCodec, str]:
    """Through the one verifying loader (codec/models/registry.py): (model in eval mode, sha256 hex)."""
    from .registry import load_weights

    model, _, digest = load_weights(Path(path), model_from_file, MODEL_KIND)
    return model, digest


__all__ = [
    "MODEL_KIND",
    "PerScaleCodec",
    "PerScaleConfig",
    "load_fenet_ps",
    "load_state",
    "model_from_file",
    "save_fenet_ps",
]
