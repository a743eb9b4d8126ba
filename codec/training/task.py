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

``task = cls + box_weight * box``.

For YOLOv5s-seg (Segment head, split ``neck``) the head gives, per level, anchor
(3) and position, a box (4 logits), an objectness logit, 80 class logits and 32
mask coefficients, and the Proto branch on p3 gives 32 prototype masks. With the
teacher's objectness o_t = sigmoid(t_obj) and confidence w = o_t * max class score
(the detection score YOLOv5 thresholds and ranks):

* class term: focal-weighted soft-target BCE of the objectness (every anchor and
  position) plus that of the 80 class scores weighted by o_t (a class score only
  matters where the teacher sees an object);
* box term: squared error of 2 sigmoid(.) of the four box logits (the centre offset
  in units of the stride and the square root of the size in units of the anchor,
  the quantities YOLOv5 decodes) summed, plus the mean squared error of the 32 mask
  coefficients, both weighted by w;
* both divided by the summed teacher confidence sum(w) (floored at min_confidence),
  as for NanoDet, so they do not depend on the crop size or the number of objects;
* prototype term: mean squared error of the prototype masks relative to the
  teacher's mean square (a relative error, independent of the objects; added to
  the box term with proto_weight). The Proto branch costs more than the rest of
  the head (two 3x3 convolutions of 128 channels, one at twice p3's resolution), so
  the term is computed on a random window of ``proto_window`` p3 cells (the same
  window for teacher and student; the branch is local, so every window is a fair
  sample of the whole).

The heads' parameters are frozen (no gradient), but gradients flow through them into
the codec.
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
    proto_weight: float = 1.0  # YOLOv5s-seg: weight of the prototype-mask term inside the box term
    min_objectness: float = 1e-3  # YOLOv5s-seg: anchors below this teacher objectness skip the o_t-weighted terms
    proto_window: int = 32  # YOLOv5s-seg: side of the p3 window the prototype term is computed on (0: all)


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


def _focal_bce(s_logit: torch.Tensor, t_prob: torch.Tensor, gamma: float) -> torch.Tensor:
    """Soft-target BCE of sigmoid(s_logit) against t_prob, weighted by |p - t|^gamma (elementwise)."""
    bce = F.binary_cross_entropy_with_logits(s_logit, t_prob, reduction="none")
    return bce * (s_logit.sigmoid() - t_prob).abs().pow(gamma)


@dataclass
class YoloTeacher:
    """What the student is compared with, per level: the teacher's objectness (B, 3, HW), the
    anchors kept (objectness >= min_objectness: batch, anchor and position indices), their raw
    outputs (K, 117), objectness (K,) and confidence (K,); and the prototypes of the p3 window."""

    objectness: list[torch.Tensor]
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    rows: list[torch.Tensor]
    kept_objectness: list[torch.Tensor]
    kept_confidence: list[torch.Tensor]
    norm: torch.Tensor  # (B,) summed teacher confidence over every anchor and level, floored
    proto: torch.Tensor
    window: tuple[int, int, int] | None


class YoloV5SegHeadLoss(nn.Module):
    """Distillation through YOLOv5s-seg's Segment head (split point ``neck``)."""

    def __init__(self, net, split: str, cfg: TaskLossConfig | None = None) -> None:
        super().__init__()
        if getattr(net, "name", None) != "yolov5s_seg" or split != "neck":
            raise TaskLossError(
                f"the task loss needs YOLOv5s-seg's neck split point (the Segment head's input), got "
                f"{getattr(net, 'name', None)}/{split}"
            )
        from codec.vision.yolov5_seg import NUM_ANCHORS, NUM_CLASSES, OUTPUTS

        self.num_classes, self.num_anchors, self.outputs = NUM_CLASSES, NUM_ANCHORS, OUTPUTS
        self.head = copy.deepcopy(net.model.head)  # frozen copy, as for NanoDet
        for p in self.head.parameters():
            p.requires_grad_(False)
        self.cfg = cfg or TaskLossConfig()

    def logits(
        self, feats: list[torch.Tensor], window: tuple[int, int, int] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per level the raw outputs (B, 3, 117, H * W), and the prototypes (B, 32, 2 h, 2 w)
        of the p3 window (y0, x0, size) (all of p3 without one)."""
        levels = []
        for conv, f in zip(self.head.detect, feats):
            y = conv(f)
            b, _, h, w = y.shape
            levels.append(y.view(b, self.num_anchors, self.outputs, h * w))
        p3 = feats[0]
        if window is not None:
            y0, x0, n = window
            p3 = p3[..., y0 : y0 + n, x0 : x0 + n]
        return levels, self.head.proto(p3)

    def window(self, p3: torch.Tensor) -> tuple[int, int, int] | None:
        """A random p3 window for the prototype term (torch's RNG, so a resumed run draws the same)."""
        n = self.cfg.proto_window
        h, w = p3.shape[-2:]
        if n <= 0 or (h <= n and w <= n):
            return None
        n = min(n, h, w)
        y0 = int(torch.randint(0, h - n + 1, ()))
        x0 = int(torch.randint(0, w - n + 1, ()))
        return y0, x0, n

    @torch.no_grad()
    def teacher(self, feats: list[torch.Tensor]) -> YoloTeacher:
        window = self.window(feats[0])
        levels, proto = self.logits(feats, window)
        nc = self.num_classes
        objectness, kept, rows, kept_obj, kept_conf = [], [], [], [], []
        norm = feats[0].new_zeros(feats[0].shape[0])
        for y in levels:
            obj = y[:, :, 4].sigmoid()  # (B, 3, HW)
            b_idx, a_idx, p_idx = (obj >= self.cfg.min_objectness).nonzero(as_tuple=True)
            r = y[b_idx, a_idx, :, p_idx]  # (K, 117)
            o = obj[b_idx, a_idx, p_idx]
            conf = o * r[:, 5 : 5 + nc].sigmoid().max(-1).values
            objectness.append(obj)
            kept.append((b_idx, a_idx, p_idx))
            rows.append(r)
            kept_obj.append(o)
            kept_conf.append(conf)
            norm = norm + obj.new_zeros(obj.shape[0]).index_add(0, b_idx, conf)
        norm_t = norm.clamp(min=self.cfg.min_confidence)
        return YoloTeacher(objectness, kept, rows, kept_obj, kept_conf, norm_t, proto, window)

    def forward(self, rec: list[torch.Tensor], teacher: YoloTeacher) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (task loss per sample (B,), class term (B,), box term (B,), the latter with
        the prototype term)."""
        nc, gamma, t = self.num_classes, self.cfg.gamma, teacher
        s_levels, s_proto = self.logits(rec, t.window)
        cls_term = box_term = rec[0].new_zeros(rec[0].shape[0])
        for i, y in enumerate(s_levels):
            b_idx, a_idx, p_idx = t.kept[i]
            obj = _focal_bce(y[:, :, 4], t.objectness[i], gamma).flatten(1).sum(1)  # every anchor
            # the class, box and coefficient terms are weighted by o_t: only the anchors where it
            # reaches min_objectness are computed (most of the cost otherwise, a negligible part of the sum)
            s_k, t_k = y[b_idx, a_idx, :, p_idx], t.rows[i]
            cls_k = _focal_bce(s_k[:, 5 : 5 + nc], t_k[:, 5 : 5 + nc].sigmoid(), gamma).sum(-1) * t.kept_objectness[i]
            box_k = (2 * s_k[:, :4].sigmoid() - 2 * t_k[:, :4].sigmoid()).pow(2).sum(-1)
            coef_k = (s_k[:, 5 + nc :] - t_k[:, 5 + nc :]).pow(2).mean(-1)
            zeros = obj.new_zeros(obj.shape)
            cls_term = cls_term + obj + zeros.index_add(0, b_idx, cls_k)
            box_term = box_term + zeros.index_add(0, b_idx, (box_k + coef_k) * t.kept_confidence[i])
        proto = (s_proto - t.proto).pow(2).flatten(1).mean(1) / t.proto.pow(2).flatten(1).mean(1).clamp(min=1e-6)
        cls_t = cls_term / t.norm
        box_t = box_term / t.norm + self.cfg.proto_weight * proto
        return cls_t + self.cfg.box_weight * box_t, cls_t, box_t


TASK_LOSSES: dict[str, type[nn.Module]] = {"nanodet": NanoDetHeadLoss, "yolov5s_seg": YoloV5SegHeadLoss}


def task_loss_for(net, split: str, cfg: TaskLossConfig | None = None) -> nn.Module:
    """The task loss of a split network (the networks of TASK_LOSSES, at their neck split point)."""
    name = getattr(net, "name", None)
    if name not in TASK_LOSSES:
        raise TaskLossError(f"no task loss for network {name!r}; there is one for {', '.join(TASK_LOSSES)}")
    return TASK_LOSSES[name](net, split, cfg)
