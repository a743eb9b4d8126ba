"""What the training entry points share: their data, loss, loop and dev options, the
training data and dev set of a run, the optimiser schedule, and the record a shipped
weights file carries. ``tools/train_fenet.py`` and ``tools/train_msff.py`` are thin
entry points over this module, ``loop.py`` (the resumable loop), ``task.py`` (the
task-aware distortion) and ``dev.py`` (dev sets and their evaluation)."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec.files import file_sha256
from codec.training import data as tdata
from codec.training import dev as tdev
from codec.training.loop import Checkpoint, MinuteLog, RunState, train

# labelled dev sets under the assets folder (choosing checkpoints on them is tuning on a report set:
# only when asked for, the default is the held-out training images)
DEV_SETS = {
    "val2017-103": ("coco/val2017-103/images", "coco/val2017-103/annotations/instances_val2017_103.json"),
    "coco128": ("coco/coco128/images", "coco/coco128/annotations/instances_train2017.json"),
}


def add_data_args(ap: argparse.ArgumentParser, views: int = 4) -> None:
    ap.add_argument("--images", default=None, help="training images (default: <assets>/train-images)")
    ap.add_argument("--network", default="nanodet")
    ap.add_argument("--split", default="neck")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: <user cache>/fcm-codec/msff)")
    ap.add_argument("--views", type=int, default=views, help="augmented views per image")
    ap.add_argument("--holdout", type=int, default=64, help="images left out (the heldout dev set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pca-views", type=int, default=400, help="cached views the PCA is computed from")


def add_loss_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--scale-weights", default=None, help="comma-separated feature-MSE weight per scale (default 1)")
    ap.add_argument("--feature-weight", type=float, default=1.0, help="weight of the feature MSE in D")
    ap.add_argument("--task-weight", type=float, default=0.0, help="weight of the task loss in D (0: off)")
    ap.add_argument("--task-box-weight", type=float, default=1.0, help="box term weight inside the task loss")
    ap.add_argument("--ceiling", action="store_true", help="train the transform pair alone (no quantisation/rate)")


def add_loop_args(ap: argparse.ArgumentParser, steps: int = 4000, lr: float = 1e-3) -> None:
    ap.add_argument("--init", default=None, help="start from these weights (.pt with its .json record)")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--lr-floor", type=float, default=0.03, help="final LR as a fraction of --lr (cosine)")
    ap.add_argument("--time-limit", type=float, default=0.0, help="stop this call after so many minutes (0: none)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-every", type=float, default=5.0, help="minutes between checkpoints")
    ap.add_argument("--dev", default="heldout", choices=("heldout", "none", *DEV_SETS), help="dev set")
    ap.add_argument("--dev-every", type=float, default=15.0, help="training minutes between dev evaluations")
    ap.add_argument("--dev-limit", type=int, default=None, help="first N dev images only")
    ap.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    ap.add_argument(
        "--reset-best",
        action="store_true",
        help="with --resume after a change of the loss (e.g. other --lambdas): dev figures before it are not "
        "comparable, so the best is chosen among the evaluations from now on (one runs at the end)",
    )
    ap.add_argument("--out", required=True, help="output weights .pt (json written beside it)")


class TrainingSetupError(ValueError):
    """The run cannot start (missing images, inconsistent options): one line, exit 2."""


@dataclass
class TrainingData:
    """The training images of a run and their NN part 1 feature cache."""

    net: object
    split_point: object
    names: list[str]
    strides: list[int]
    images_root: Path
    all_files: list[str]
    train_files: list[str]
    held: list[str]
    cache: dict[str, np.ndarray]
    n_rows: int
    views: int
    seed: int

    def record(self) -> dict:
        return tdata.data_record(self.images_root, self.all_files, self.train_files, self.held, self.views, self.seed)


def prepare_data(args: argparse.Namespace) -> TrainingData:
    """Seeds and threads, the network, the train/held-out split and the (built once) feature cache."""
    from codec.vision import get_network

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images_root = Path(args.images) if args.images else tdata.assets_dir() / "train-images"
    if not images_root.is_dir():
        raise TrainingSetupError(f"training images not found: {images_root}")
    cache_root = Path(args.cache_dir) if args.cache_dir else tdata.default_cache_root()
    all_files = tdata.list_images(images_root)
    train_files, held = tdata.split_train_images(all_files, args.holdout, args.seed)
    net = get_network(args.network)
    sp = net.split_points[args.split]
    names = sp.scale_names()
    cache_path = tdata.build_cache(net, args.split, images_root, train_files, args.views, args.seed, cache_root)
    cache = tdata.load_cache(cache_path, names)
    n_rows = len(cache[names[0]])
    print(f"cache: {cache_path} ({n_rows} views)", flush=True)
    return TrainingData(
        net, sp, names, [s.stride for s in sp.scales], images_root, all_files, train_files, held, cache, n_rows,
        args.views, args.seed,
    )  # fmt: skip


def scale_weights(args: argparse.Namespace, n_scales: int, device: torch.device) -> torch.Tensor:
    w = torch.tensor([float(v) for v in args.scale_weights.split(",")]) if args.scale_weights else torch.ones(n_scales)
    if len(w) != n_scales:
        raise TrainingSetupError(f"--scale-weights needs {n_scales} values")
    return w.to(device)


def cosine_schedule(opt: torch.optim.Optimizer, steps: int, floor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay from --lr to floor * --lr over `steps` (then flat)."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )


def make_dev_set(args: argparse.Namespace, data: TrainingData, log: MinuteLog) -> tuple[tdev.DevSet | None, dict]:
    """The run's dev set (None with --dev none) and its uncompressed figures (logged)."""
    if args.dev == "none":
        return None, {}
    t0 = time.time()
    if args.dev == "heldout":
        dev_set = tdev.heldout_dev_set(data.net, args.split, data.images_root, data.held[: args.dev_limit])
    else:
        root = tdata.assets_dir()
        imgs, ann = DEV_SETS[args.dev]
        dev_set = tdev.coco_dev_set(data.net, args.split, root / imgs, root / ann, args.dev_limit, args.dev)
    ref = tdev.evaluate_uncompressed(dev_set, data.net, args.split)
    masks = f", mask mAP@0.5 {ref['segm_map50']:.4f}" if "segm_map50" in ref else ""
    log.write(
        f"dev set {dev_set.name}: {len(dev_set)} images, uncompressed mAP@0.5 {ref['map50']:.4f}{masks} "
        f"({time.time() - t0:.0f} s)"
    )
    return dev_set, ref


def start_run(
    args: argparse.Namespace,
    argv: list[str] | None,
    tool: str,
    checkpoint: Checkpoint,
    state: RunState,
    init_record: dict | None,
    device: torch.device,
) -> tuple[RunState, str]:
    """Resume (with --resume and a checkpoint) and note this call in the run's list of calls."""
    if args.resume and checkpoint.exists():
        state = checkpoint.load(device)
        print(f"resumed at step {state.step} ({state.train_seconds / 60:.1f} training minutes)", flush=True)
        if init_record:  # a later call may know more about the starting point
            state.extra["init"] = {**(state.extra.get("init") or {}), **init_record}
        if args.reset_best:
            state.best_figure, state.best_step = float("-inf"), -1
            state.dev_history.append({"step": state.step, "reset_best": True})
    command = f"python -m tools.{tool} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    state.extra.setdefault("calls", []).append({"command": command, "from_step": state.step})
    return state, command


def run_and_ship(
    args: argparse.Namespace,
    *,
    state: RunState,
    step_fn: Callable[[int], dict[str, float]],
    sched: torch.optim.lr_scheduler.LRScheduler,
    checkpoint: Checkpoint,
    log: MinuteLog,
    dev_fn: Callable[[RunState], tuple[float, dict]] | None,
    on_best: Callable[[RunState, dict], None] | None,
    out: Path,
    export: Callable[[Path], str],
) -> tuple[RunState, str]:
    """The loop with the run's options (loop.train), then the shipped file `out`: the best dev
    checkpoint (`<out>.best.pt`), or `export(out)` of the last state without a dev set.
    Returns (the final state, the sha256 of `out`)."""
    state = train(
        state=state,
        steps=args.steps,
        step_fn=step_fn,
        lr_fn=lambda: float(sched.get_last_lr()[0]),
        checkpoint=checkpoint,
        log=log,
        time_limit_min=args.time_limit,
        ckpt_every_min=args.ckpt_every,
        dev_every_min=args.dev_every if dev_fn is not None else 0.0,
        dev_fn=dev_fn,
        on_best=on_best,
    )
    best = out.with_suffix(".best.pt")
    if dev_fn is not None and best.is_file():
        out.write_bytes(best.read_bytes())
        return state, file_sha256(out)
    return state, export(out)


def dev_record(args: argparse.Namespace, dev_set: tdev.DevSet | None, state: RunState, figure: str) -> dict | None:
    if dev_set is None:
        return None
    return {
        "set": dev_set.name,
        "images": len(dev_set),
        "uncompressed": state.extra.get("dev_uncompressed"),
        "figure": figure,
        "best_step": state.best_step,
        "best_figure": state.best_figure,
        "history": state.dev_history,
    }
