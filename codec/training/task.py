"""Task-aware distortion: the frozen NN part 2 on reconstructed features against
NN part 2 on the original features (knowledge distillation through the task heads).

For NanoDet (GFL heads, split ``neck``) the heads give, per level and position,
80 class logits and 4 x 11 distance-distribution logits. With teacher outputs t (on
the original features) and student outputs s (on the reconstruction):

* class term: binary cross-entropy of sigmoid(s) against the soft targets
  sigmoid(t), focal-weighted by |sigmoid(s) - sigmoid(t)|^gamma (the quality focal
  loss of GFL, which NanoDet was trained with), summed over positions and classes
  and divided by the summed teacher confidence (max class score per position), so
  the term does not depend on the crop size or the number of objects;
* box term: KL(softmax(t) || softmax(s)) of each side's distance distribution,
  weighted by the teacher's max class score at that position (boxes matter where
  the teacher sees an object), with the same normaliser.

``task = cls + box_weight * box``. The heads' parameters are frozen (no gradient),
but gradients flow through them into the codec.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class TaskLossError(ValueError):
    """The network has no task heads this loss knows."""


@dataclass(frozen=True)
class TaskLossConfig:
    gamma: float = 2.0
    box_weight: float = 1.0
    min_confidence: float = 1.0  # floor of the normaliser (teacher confidence summed over positions)


class NanoDetHeadLoss(nn.Module):
    """Distillation through NanoDet's GFL heads (split point ``neck``)."""

    def __init__(self, net, split: str, cfg: TaskLossConfig | None = None) -> None:
        super().__init__()
        if getattr(net, "name", None) != "nanodet" or split != "neck":
            raise TaskLossError(
                f"the task loss needs NanoDet's neck split point (the heads' input), got {net.name}/{split}"
            )
        from codec.vision.nanodet import NUM_CLASSES

        self.num_classes = NUM_CLASSES
        # a frozen copy: moving the loss to a training device leaves the network where it is
        self.head = copy.deepcopy(net.model.head)
        for p in self.head.parameters():
            p.requires_grad_(False)
        self.cfg = cfg or TaskLossConfig()

    def logits(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level: (class logits (B, HW, 80), distribution logits (B, HW, 4, 11))."""
        out = []
        for conv, pred, f in zip(self.head.convs, self.head.outs, feats):
            y = pred(conv(f)).flatten(2).transpose(1, 2)
            b, hw, _ = y.shape
            out.append((y[..., : self.num_classes], y[..., self.num_classes :].reshape(b, hw, 4, -1)))
        return out

    @torch.no_grad()
    def teacher(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(c.sigmoid(), d.log_softmax(-1)) for c, d in self.logits(feats)]

    def forward(
        self, rec: list[torch.Tensor], teacher: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (task loss per sample (B,), class term (B,), box term (B,))."""
        cls_parts, box_parts, norm_parts = [], [], []
        for (s_cls, s_dist), (t_prob, t_logp) in zip(self.logits(rec), teacher):
            p = s_cls.sigmoid()
            bce = F.binary_cross_entropy_with_logits(s_cls, t_prob, reduction="none")
            cls_parts.append((bce * (p - t_prob).abs().pow(self.cfg.gamma)).sum(dim=(1, 2)))
            conf = t_prob.max(dim=-1).values  # (B, HW)
            kl = (t_logp.exp() * (t_logp - s_dist.log_softmax(-1))).sum(-1).mean(-1)  # (B, HW)
            box_parts.append((kl * conf).sum(dim=1))
            norm_parts.append(conf.sum(dim=1))
        norm = torch.stack(norm_parts).sum(0).clamp(min=self.cfg.min_confidence)
        cls_term = torch.stack(cls_parts).sum(0) / norm
        box_term = torch.stack(box_parts).sum(0) / norm
        return cls_term + self.cfg.box_weight * box_term, cls_term, box_term


def task_loss_for(net, split: str, cfg: TaskLossConfig | None = None) -> nn.Module:
    """The task loss of a split network (only NanoDet's neck split so far)."""
    return NanoDetHeadLoss(net, split, cfg)
