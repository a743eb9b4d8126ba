"""Train the MSFF/MSFR pair of codec/models/msff.py with selective learning (SLS).

Training-image features are extracted ONCE with NN part 1 (K augmented views per
image: random resized crops, flips, fixed seed) and cached as float16 .npy files
under --cache-dir; training then reads only the cache.

Each step draws n uniformly in 0..C per sample and zeroes fused channels n..C-1
before MSFR (``--no-sls`` for the ablation: all channels kept). Loss: weighted MSE
over the reconstructed (normalised) scales, plus an optional task loss through
NanoDet's head (MSE between head outputs of the original and reconstructed
features). Gaussian noise relative to the fused tensor's range is added before
MSFR so that the model tolerates 10-bit quantisation and VVC coding error.

Example (the reduced CPU configuration used for the shipped weights; the exact
command is recorded in codec/models/weights/msff_nanodet_neck.json)::

    python -m tools.train_msff --cache-only --threads 2 --out x.pt
    python -m tools.train_msff --partial-cache <cache dir> --linear-path --fused-channels 192 --width 24 \\
        --steps 100000 --max-minutes 35 --batch 8 --crop 8 --noise 0.02 --task-weight 1 --task-every 4 \\
        --lr 2e-4 --threads 1 --out codec/models/weights/msff_nanodet_neck.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from codec.models.msff import (
    MsffCodecModel,
    MsffConfig,
    count_parameters,
    file_sha256,
    init_linear_path,
)
from codec.training.data import (  # the shared training data (re-exported for tools that import them from here)
    IMAGE_EXTS,
    assets_dir,
    augment,
    build_cache,
    feature_scales,
    file_list_sha256,
    filled_rows,
    list_images,
    load_cache,
    pca_of_cache,
    random_crop,
    split_train_images,
)
from codec.vision import get_network

__all__ = [
    "IMAGE_EXTS",
    "assets_dir",
    "augment",
    "build_cache",
    "feature_scales",
    "file_list_sha256",
    "filled_rows",
    "list_images",
    "load_cache",
    "pca_of_cache",
    "random_crop",
    "split_train_images",
    "main",
]


def _num(v: float) -> float | None:
    """JSON-safe: None for NaN (no training step was run)."""
    return None if math.isnan(float(v)) else float(v)


def out_ckpt(out: str | Path) -> Path:
    return Path(out).with_suffix(".ckpt")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=None, help="training images (default: <assets>/train-images)")
    ap.add_argument("--network", default="nanodet")
    ap.add_argument("--split", default="neck")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: <user cache>/fcm-codec/msff)")
    ap.add_argument("--views", type=int, default=2, help="augmented views per image")
    ap.add_argument("--holdout", type=int, default=64, help="images held out for tune_truncation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fused-channels", type=int, default=256)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--fuse-blocks", type=int, default=1)
    ap.add_argument(
        "--linear-path",
        action="store_true",
        help="add the linear (space-to-depth + 1x1) path, initialised from PCA of the cache",
    )
    ap.add_argument("--pca-views", type=int, default=400, help="cached views the PCA is computed from")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scale-weights", default=None, help="comma-separated loss weight per scale (default 1 each)")
    ap.add_argument("--task-weight", type=float, default=0.0, help="weight of the head-output MSE (0: off)")
    ap.add_argument("--task-every", type=int, default=1, help="apply the task loss every N steps")
    ap.add_argument("--noise", type=float, default=0.01, help="max noise std relative to the fused range")
    ap.add_argument("--no-sls", action="store_true", help="ablation: keep all fused channels in training")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop after this much training wall time (LR follows the larger progress)",
    )
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    ap.add_argument("--out", required=True, help="output weights .pt (json written beside it)")
    ap.add_argument("--cache-only", action="store_true", help="build the feature cache and stop")
    ap.add_argument(
        "--partial-cache",
        default=None,
        help="train on the rows already written by a cache build running in this directory",
    )
    ap.add_argument(
        "--crop",
        type=int,
        default=0,
        help="train on aligned random crops of this many coarsest-scale cells (0: whole maps)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images_root = Path(args.images) if args.images else assets_dir() / "train-images"
    if not images_root.is_dir():
        print(f"error: training images not found: {images_root}", file=sys.stderr)
        return 2
    cache_root = (
        Path(args.cache_dir)
        if args.cache_dir
        else Path(__import__("platformdirs").user_cache_dir("fcm-codec")) / "msff"
    )
    all_files = list_images(images_root)
    train_files, held = split_train_images(all_files, args.holdout, args.seed)
    net = get_network(args.network)
    sp = net.split_points[args.split]
    names = sp.scale_names()
    if args.partial_cache:
        cache_path = Path(args.partial_cache)
    else:
        cache_path = build_cache(net, args.split, images_root, train_files, args.views, args.seed, cache_root)
    print(f"cache: {cache_path}", flush=True)
    if args.cache_only:
        return 0
    cache = load_cache(cache_path, names)
    n_samples = filled_rows(cache, names) if args.partial_cache else len(cache[names[0]])
    strides = [s.stride for s in sp.scales]

    device = torch.device(args.device)
    cfg = MsffConfig.for_split_point(
        sp, fused_channels=args.fused_channels, width=args.width, fuse_blocks=args.fuse_blocks
    )
    if args.linear_path:
        cfg = dataclasses.replace(cfg, linear_path=True)
    model = MsffCodecModel(cfg)
    scale = feature_scales(cache, names, n_samples)
    model.set_feature_scale(scale)
    pca_record = None
    if args.linear_path and not (args.resume and out_ckpt(args.out).is_file()):
        mean, comp, explained = pca_of_cache(
            model.msff.stack, cache, names, n_samples, args.pca_views, cfg.fused_channels
        )
        init_linear_path(model, mean, comp)
        pca_record = {"views": min(args.pca_views, n_samples), "explained_variance_kept": explained}
        print(
            f"PCA over {pca_record['views']} views: the first {cfg.fused_channels} components hold "
            f"{100 * explained:.2f} % of the variance",
            flush=True,
        )
    model.to(device)
    weights = (
        torch.tensor([float(w) for w in args.scale_weights.split(",")])
        if args.scale_weights
        else torch.ones(len(names))
    )
    if len(weights) != len(names):
        print(f"error: --scale-weights needs {len(names)} values", file=sys.stderr)
        return 2
    head = None
    if args.task_weight > 0:
        head = net.model.head.to(device).eval()
        for p in head.parameters():
            p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def lr_at(progress: float) -> float:  # cosine to 2 % of --lr; progress in steps or wall time
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    out = Path(args.out)
    ckpt = out_ckpt(out)
    step, history, elapsed0 = 0, [], 0.0
    rng = np.random.default_rng(args.seed + 1)
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history, elapsed0 = state["step"], state["history"], state["elapsed"]
        pca_record = state.get("pca_record", pca_record)
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}", flush=True)
    t0 = time.time()
    c = cfg.fused_channels
    model.train()
    limit = args.max_minutes * 60.0

    def progress() -> float:
        p = step / args.steps if args.steps > 0 else 1.0  # --steps 0: the initialisation only
        return max(p, (elapsed0 + time.time() - t0) / limit) if limit > 0 else p

    while progress() < 1.0:
        for g in opt.param_groups:
            g["lr"] = lr_at(progress())
        if args.partial_cache and step % 100 == 0:
            n_samples = filled_rows(cache, names)
        idx = np.sort(rng.choice(n_samples, args.batch, replace=False))
        crops = random_crop({n: cache[n][idx] for n in names}, names, strides, args.crop, rng)
        feats = {n: torch.from_numpy(crops[n].astype(np.float32)).to(device) for n in names}
        z = model.msff(feats)
        if not args.no_sls:
            kept = torch.from_numpy(rng.integers(0, c + 1, args.batch)).to(device)
            from codec.models.msff import sls_mask

            z = sls_mask(z, kept)
        if args.noise > 0:
            rngz = (z.amax(dim=(1, 2, 3), keepdim=True) - z.amin(dim=(1, 2, 3), keepdim=True)).detach()
            sigma = torch.rand(args.batch, 1, 1, 1, device=device) * args.noise * rngz
            z = z + torch.randn_like(z) * sigma
        sizes = {n: tuple(feats[n].shape[-2:]) for n in names}
        rec = model.msfr(z, sizes)
        per_scale = torch.stack([((rec[n] - feats[n]) / scale[i]).pow(2).mean() for i, n in enumerate(names)])
        loss = (per_scale * weights.to(device)).sum() / weights.sum()
        task = torch.zeros(())
        if head is not None and step % args.task_every == 0:
            with torch.no_grad():
                ref = head([feats[n] for n in names])
            got = head([rec[n] for n in names])
            task = sum(((a - b) ** 2).mean() + ((da - db) ** 2).mean() for (a, da), (b, db) in zip(got, ref))
            loss = loss + args.task_weight * task
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        history.append([loss.item(), *per_scale.tolist(), float(task.detach())])
        if step % 50 == 0:
            recent = np.mean(history[-50:], axis=0)
            print(
                f"step {step} loss {recent[0]:.4f} mse {' '.join(f'{v:.4f}' for v in recent[1:-1])} "
                f"task {recent[-1]:.4f} lr {opt.param_groups[0]['lr']:.2e} {elapsed0 + time.time() - t0:.0f}s",
                flush=True,
            )
        if step % args.ckpt_every == 0 or progress() >= 1.0:
            tmp = ckpt.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "elapsed": elapsed0 + time.time() - t0,
                    "step": step,
                    "history": history,
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "pca_record": pca_record,
                },
                tmp,
            )
            os.replace(tmp, ckpt)

    model.eval().cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.float().contiguous() for k, v in model.state_dict().items()}, out)
    final = np.mean(history[-100:], axis=0) if history else np.full(len(names) + 2, np.nan)
    try:
        data_folder = images_root.resolve().relative_to(assets_dir().resolve()).as_posix()
        data_folder = "${assets}/" + data_folder
    except ValueError:
        data_folder = images_root.name
    record = {
        "model": "msff_msfr",
        "network": args.network,
        "split": args.split,
        "network_weights_sha256": net.weights_sha256(),
        "config": cfg.to_json(),
        "feature_scale": [float(v) for v in scale],
        "parameters": count_parameters(model),
        "sls": not args.no_sls,
        "linear_path_init": pca_record,
        "command": "python -m tools.train_msff " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "data": {
            "folder": data_folder,
            "count": len(all_files),
            "sha256_sorted_file_list": file_list_sha256(all_files),
            "train_count": len(train_files),
            "holdout_count": len(held),
            "holdout_seed": args.seed,
            "views_per_image": args.views,
            "cached_views_used": int(n_samples),
            "augmentation": "view 0 full image, other views random resized crop (area 0.25-1, aspect 3/4-4/3); "
            "hflip p=0.5; stretch to 416x416",
        },
        "steps": step,
        "train_seconds": round(elapsed0 + time.time() - t0, 1),
        "batch": args.batch,
        "final_loss": _num(final[0]),
        "final_mse_per_scale": {n: _num(v) for n, v in zip(names, final[1:-1])},
        "final_task_loss": _num(final[-1]),
        "weights_sha256": file_sha256(out),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {record['weights_sha256']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
