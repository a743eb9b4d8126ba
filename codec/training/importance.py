"""Channel importance of a learned feature codec's latent, measured through the task.

The importance of latent channel c is how much the task loss (codec/training/task.py:
NanoDet's frozen heads on the reconstruction against the heads on the original
features, no labels) grows when channel c of y carries no information: y_c replaced by
its mean over the batch, everything else as the codec's top quality index delivers it
(y through that index's gain and inverse gain, unquantised, then DRNet). Averaged over
batches of training-cache views (never an evaluation set).

Why measured and not learned by a side network: the ablation is the definition of the
importance a channel-grouped entropy model needs (which channels the task cannot do
without), it costs one DRNet and head pass per channel and batch, and it adds nothing to
the model or the bitstream. The channels are then renumbered in descending importance
(fenet.permute_latent_channels) and split into groups (fenet.with_channel_groups): the
most important channels are coded first, in the smallest groups, and every later group
is coded with them as context.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


@torch.no_grad()
def channel_importance(model, task, batches: Iterable[list[torch.Tensor]], phi: int | None = None) -> np.ndarray:
    """(M,) mean task-loss increase per latent channel (float64), larger = more important."""
    model.eval()
    phi = model.cfg.num_qualities - 1 if phi is None else int(phi)
    m = model.cfg.latent_channels
    total = np.zeros(m)
    n = 0
    for xs in batches:
        teacher = task.teacher(xs)
        xn = model._normalised(xs)
        sizes = [tuple(x.shape[-2:]) for x in xn]
        t = torch.full((xs[0].shape[0],), phi, dtype=torch.int64, device=xs[0].device)
        y = model.fenet(xn) * model._gains(t, "gain") * model._gains(t, "inv_gain")

        def loss(y_in: torch.Tensor, sizes=sizes, teacher=teacher) -> float:
            rec = [r * model.feature_scale[i] + model._mean(i) for i, r in enumerate(model.drnet(y_in, sizes))]
            return float(task(rec, teacher)[0].mean())

        base = loss(y)
        mean = y.mean(dim=(0, 2, 3), keepdim=True)
        for c in range(m):
            y_c = y.clone()
            y_c[:, c] = mean[:, c]
            total[c] += loss(y_c) - base
        n += 1
    if n == 0:
        raise ValueError("channel_importance needs at least one batch")
    return total / n


def importance_order(importance: np.ndarray) -> list[int]:
    """Channel indices in descending importance (stable: ties keep their order)."""
    return [int(i) for i in np.argsort(-np.asarray(importance), kind="stable")]


def group_shares(importance: np.ndarray, groups: list[tuple[int, int]]) -> list[float]:
    """Share of the total (positive) importance held by each [start, end) channel group."""
    imp = np.clip(np.asarray(importance, dtype=np.float64), 0.0, None)
    tot = float(imp.sum()) or 1.0
    return [round(float(imp[a:b].sum()) / tot, 4) for a, b in groups]


__all__ = ["channel_importance", "group_shares", "importance_order"]
