"""Measure the task importance of every latent channel of a learned_e2e model
(codec/training/importance.py) on training-cache batches, and say how well the model's
channel order follows it: the share of the importance each channel group holds and the
Spearman rank correlation between channel index and importance (-1: channels in exactly
descending importance, the order a channel-grouped model codes them in).

    python -m tools.channel_importance --weights codec/models/weights/fenet_nanodet_neck_g4.pt
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank), via scipy."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> int:
    from codec.errors import CodecModelError
    from codec.models.fenet import load_fenet
    from codec.training import common
    from codec.training import data as tdata
    from codec.training.importance import channel_importance, group_shares
    from codec.training.task import TaskLossConfig, task_loss_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_data_args(ap, views=4)
    ap.add_argument("--weights", required=True, help="a learned_e2e weights file (.pt with its .json record)")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--phi", type=int, default=None, help="quality index (default: the top one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the per-channel figures as JSON")
    args = ap.parse_args(argv)
    try:
        model, _ = load_fenet(args.weights)
        data = common.prepare_data(args)
    except (CodecModelError, common.TrainingSetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    task = task_loss_for(data.net, args.split, TaskLossConfig())
    rng = np.random.default_rng(args.seed + 7)
    batches = [tdata.sample_batch(data.cache, data.names, data.strides, args.batch, rng) for _ in range(args.batches)]
    imp = channel_importance(model, task, batches, args.phi)
    groups = model.cfg.groups
    out = {
        "weights": args.weights,
        "channel_groups": list(model.cfg.channel_groups),
        "group_shares": group_shares(imp, groups),
        "spearman_index_importance": round(spearman(np.arange(len(imp)), imp), 4),
        "top8_share": group_shares(np.sort(imp)[::-1], [(0, 8), (8, len(imp))])[0],
    }
    if args.json:
        out["importance"] = [round(float(v), 6) for v in imp]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
