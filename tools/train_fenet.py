"""Train the FENet/DRNet learned feature codec of codec/models/fenet.py (multi-rate,
one model for every quality index phi).

Data: NN part 1 features of the training images (default <assets>/train-images,
never the evaluation sets), K augmented views per image (random resized crops,
flips, fixed seed), extracted once into the float16 feature cache of
tools/train_msff.py (same cache key, so both trainings share one extraction; a
cache that another process is still writing is waited for, never rewritten).

Loss per sample, with phi drawn uniformly per sample:

    L = R + lambda[phi] * sum_i w_i * MSE_i

* R in bits per network-input pixel: (bits of y + bits of z) / (H_in * W_in), where
  H_in x W_in are the network-input pixels the (cropped) features cover, i.e.
  (8 * H_p3) x (8 * W_p3) for NanoDet's neck. For a full 416x416 input this is the
  container's bpp convention up to the original-vs-input pixel count ratio.
* MSE_i on features normalised by per-scale RMS (computed on the training set).
* Training crops: aligned random crops of all scales (coarsest-scale size drawn
  from {8, 9, 11, 13}; 13 = the whole 416x416 input), so odd sizes and padding occur.
The entropy bottleneck's quantiles are trained by its auxiliary loss (own optimiser).
At the end `update()` builds the CDF tables, which are saved with the weights.

Example (the reduced CPU configuration of the shipped weights)::

    python tools/train_fenet.py --steps 4000 --batch 8 --threads 1 \\
        --out codec/models/weights/fenet_nanodet_neck.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from codec.models.fenet import (  # noqa: E402
    FenetCodec,
    FenetConfig,
    count_parameters,
    save_fenet,
)
from codec.vision import get_network  # noqa: E402

CROP_SIZES = (8, 9, 11, 13)  # coarsest-scale crop sizes (NanoDet p5 is 13x13 at 416x416)
CROP_PROBS = (0.55, 0.15, 0.15, 0.15)


def _msff_tools():
    """The feature-cache helpers of tools/train_msff.py (list_images, split_train_images,
    build_cache, load_cache, feature_scales, assets_dir, file_list_sha256)."""
    spec = importlib.util.spec_from_file_location("_train_msff", REPO / "tools" / "train_msff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class GrowingCache:
    """Training while another process (tools/train_msff.py) still writes the shared
    cache: its memmaps are shared, entries are written in order. Step s may draw from
    the first min(N, start + floor(s * per_step)) entries (a deterministic schedule,
    so a run is reproducible); if the writer is behind, training waits for it."""

    def __init__(self, path: Path, names: list[str], start: int, per_step: float) -> None:
        self.path, self.names, self.start, self.per_step = path, names, start, per_step
        self.arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r") for n in names}
        self.total = len(self.arrays[names[0]])

    def done(self) -> bool:
        return (self.path / "done.json").is_file()

    def written(self) -> int:
        """Entries completely written (the last scale of an entry is written last)."""
        if self.done():
            return self.total
        last = self.arrays[self.names[-1]]
        lo, hi = 0, self.total  # first all-zero entry by bisection
        while lo < hi:
            mid = (lo + hi) // 2
            if np.any(last[mid]):
                lo = mid + 1
            else:
                hi = mid
        return max(0, lo - 1)  # the entry being written may be incomplete

    def allowed(self, step: int, wait_s: float = 3600) -> int:
        want = min(self.total, self.start + int(step * self.per_step))
        t0 = time.time()
        while self.written() < want:
            if time.time() - t0 > wait_s:
                raise TimeoutError(f"feature cache {self.path} did not reach {want} entries in {wait_s:.0f} s")
            time.sleep(10)
        return want


def cache_key_dir(msff, net, split: str, files: list[str], views: int, seed: int, cache_root: Path) -> Path:
    import hashlib

    key = hashlib.sha256(
        f"{net.name}|{net.weights_sha256()}|{split}|{views}|{seed}|{msff.file_list_sha256(files)}".encode()
    ).hexdigest()[:16]
    return cache_root / f"{net.name}_{split}_{key}"


def sample_batch(
    cache: dict[str, np.ndarray],
    names: list[str],
    strides: list[int],
    batch: int,
    rng: np.random.Generator,
    limit: int | None = None,
) -> list[torch.Tensor]:
    """Aligned random crops of every scale for `batch` random samples (of the first `limit`)."""
    n = len(cache[names[0]]) if limit is None else limit
    idx = np.sort(rng.choice(n, batch, replace=False))
    coarse = names[-1]
    hc, wc = cache[coarse].shape[-2:]
    size = int(rng.choice(CROP_SIZES, p=CROP_PROBS))
    size_h, size_w = min(size, hc), min(size, wc)
    oy, ox = int(rng.integers(0, hc - size_h + 1)), int(rng.integers(0, wc - size_w + 1))
    out = []
    for name, stride in zip(names, strides):
        f = strides[-1] // stride
        a = cache[name][idx, :, oy * f : (oy + size_h) * f, ox * f : (ox + size_w) * f]
        out.append(torch.from_numpy(a.astype(np.float32)))
    flip = rng.random(batch) < 0.5  # extra flips on top of the cached ones
    return [torch.where(torch.from_numpy(flip).view(-1, 1, 1, 1), t.flip(-1), t) for t in out]


def feature_stats(
    cache: dict[str, np.ndarray], names: list[str], n_rows: int, samples: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation from a fixed subset of the first n_rows cached views: per-channel
    means (all scales concatenated) and per-scale RMS after removing them."""
    idx = np.linspace(0, n_rows - 1, min(samples, n_rows)).astype(int)
    means, rms = [], []
    for n in names:
        a = cache[n][idx].astype(np.float64)
        m = a.mean(axis=(0, 2, 3))
        means.append(m)
        rms.append(float(np.sqrt(np.mean(np.square(a - m.reshape(1, -1, 1, 1))))))
    return torch.tensor(np.concatenate(means), dtype=torch.float32), torch.tensor(rms, dtype=torch.float32)


def rd_loss(
    model: FenetCodec, out: dict, phi: torch.Tensor, lambdas: torch.Tensor, weights: torch.Tensor, input_pixels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (loss, bpp per sample, per-scale MSE (S, B))."""
    bits = sum(-torch.log2(lik).flatten(1).sum(dim=1) for lik in out["likelihoods"].values())
    bpp = bits / input_pixels
    mse = torch.stack([((r - t) ** 2).flatten(1).mean(dim=1) for r, t in zip(out["rec_norm"], out["target_norm"])])
    dist = (mse * weights.view(-1, 1)).sum(dim=0)
    return (bpp + lambdas[phi] * dist).mean(), bpp, mse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=None, help="training images (default: <assets>/train-images)")
    ap.add_argument("--network", default="nanodet")
    ap.add_argument("--split", default="neck")
    ap.add_argument(
        "--cache-dir", default=None, help="feature cache (default: the MSFF cache, <user cache>/fcm-codec/msff)"
    )
    ap.add_argument("--views", type=int, default=2, help="augmented views per image")
    ap.add_argument("--holdout", type=int, default=64, help="images left out (same split as train_msff)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=56)
    ap.add_argument("--latent-channels", type=int, default=80)
    ap.add_argument("--hyper-channels", type=int, default=48)
    ap.add_argument("--latent-stride", type=int, default=1, choices=(1, 2), help="y stride / coarsest stride")
    ap.add_argument("--linear-path", action="store_true",
                    help="add the linear path (codec/models/linear_path.py), initialised from PCA of the cache")
    ap.add_argument("--pca-views", type=int, default=400, help="cached views the PCA is computed from")
    ap.add_argument("--lambdas", default="0.03,0.1,0.3,1,3,10", help="lambda per quality index")
    ap.add_argument("--scale-weights", default=None, help="comma-separated distortion weight per scale (default 1)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--aux-lr", type=float, default=1e-3)
    ap.add_argument("--time-limit", type=float, default=0.0, help="stop after this many minutes (0: no limit)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    ap.add_argument("--wait-cache", type=float, default=3600, help="seconds to wait for a cache another process writes")
    ap.add_argument("--grow-start", type=int, default=200, help="growing cache: entries usable at step 0")
    ap.add_argument("--grow-per-step", type=float, default=0.3, help="growing cache: entries added per step")
    ap.add_argument("--out", required=True, help="output weights .pt (json written beside it)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    msff = _msff_tools()
    images_root = Path(args.images) if args.images else msff.assets_dir() / "train-images"
    if not images_root.is_dir():
        print(f"error: training images not found: {images_root}", file=sys.stderr)
        return 2
    cache_root = (
        Path(args.cache_dir)
        if args.cache_dir
        else Path(__import__("platformdirs").user_cache_dir("fcm-codec")) / "msff"
    )
    all_files = msff.list_images(images_root)
    train_files, held = msff.split_train_images(all_files, args.holdout, args.seed)
    net = get_network(args.network)
    sp = net.split_points[args.split]
    names = sp.scale_names()
    strides = [s.stride for s in sp.scales]
    key_dir = cache_key_dir(msff, net, args.split, train_files, args.views, args.seed, cache_root)
    growing = None
    if key_dir.is_dir() and not (key_dir / "done.json").is_file():
        growing = GrowingCache(key_dir, names, args.grow_start, args.grow_per_step)
        print(f"cache {key_dir} is being written ({growing.written()}/{growing.total}); growing schedule", flush=True)
        growing.allowed(0, args.wait_cache)
        cache = growing.arrays
        cache_path = key_dir
    else:
        cache_path = msff.build_cache(net, args.split, images_root, train_files, args.views, args.seed, cache_root)
        cache = msff.load_cache(cache_path, names)
    print(f"cache: {cache_path}", flush=True)
    n_scale = args.grow_start if growing is not None else len(cache[names[0]])
    feature_mean, feature_scale = feature_stats(cache, names, n_scale)

    device = torch.device(args.device)
    lambdas_list = tuple(float(v) for v in args.lambdas.split(","))
    cfg = FenetConfig.for_split_point(
        sp,
        width=args.width,
        latent_channels=args.latent_channels,
        hyper_channels=args.hyper_channels,
        latent_downsample=args.latent_stride == 2,
        num_qualities=len(lambdas_list),
        lambdas=lambdas_list,
        linear_path=args.linear_path,
    )
    model = FenetCodec(cfg)
    model.set_feature_scale(feature_scale, feature_mean)
    pca_record = None
    if args.linear_path and not (args.resume and Path(args.out).with_suffix(".ckpt").is_file()):
        mean, comp, explained = msff.pca_of_cache(
            model.stack, cache, names, n_scale, args.pca_views, cfg.latent_channels
        )
        model.init_linear_path(mean, comp)
        pca_record = {"views": min(args.pca_views, n_scale), "explained_variance_kept": explained}
        print(f"PCA over {pca_record['views']} views: the first {cfg.latent_channels} components hold "
              f"{100 * explained:.2f} % of the variance", flush=True)
    model.to(device)
    lambdas = torch.tensor(lambdas_list, device=device)
    weights = (
        torch.tensor([float(w) for w in args.scale_weights.split(",")])
        if args.scale_weights
        else torch.ones(len(names))
    ).to(device)
    if len(weights) != len(names):
        print(f"error: --scale-weights needs {len(names)} values", file=sys.stderr)
        return 2
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=args.aux_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out.with_suffix(".ckpt")
    step, history = 0, []
    rng = np.random.default_rng(args.seed + 2)
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        sched.load_state_dict(state["sched"])
        step, history = state["step"], state["history"]
        pca_record = state.get("pca_record", pca_record)
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}", flush=True)

    def save_ckpt() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "aux_opt": aux_opt.state_dict(),
                "sched": sched.state_dict(),
                "step": step,
                "history": history,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "pca_record": pca_record,
            },
            tmp,
        )
        os.replace(tmp, ckpt)

    t0 = time.time()
    model.train()
    q = cfg.num_qualities
    while step < args.steps:
        if args.time_limit and time.time() - t0 > args.time_limit * 60:
            print(f"time limit reached at step {step}", flush=True)
            break
        limit = growing.allowed(step, args.wait_cache) if growing is not None else None
        xs = [t.to(device) for t in sample_batch(cache, names, strides, args.batch, rng, limit)]
        phi = torch.from_numpy(rng.integers(0, q, args.batch)).to(device)
        res = model(xs, phi)
        input_pixels = (xs[0].shape[-2] * strides[0]) * (xs[0].shape[-1] * strides[0])
        loss, bpp, mse = rd_loss(model, res, phi, lambdas, weights, input_pixels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        sched.step()
        aux = model.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
        step += 1
        history.append(
            [float(loss), float(aux), float(bpp.mean()), float(mse.mean())]
            + [int(v) for v in phi]
            + [float(v) for v in bpp.detach()]
            + [float(v) for v in mse.detach().sum(0)]
        )
        if step % 50 == 0:
            recent = np.array([h[:4] for h in history[-50:]]).mean(axis=0)
            print(
                f"step {step} loss {recent[0]:.4f} aux {recent[1]:.1f} bpp {recent[2]:.4f} mse {recent[3]:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s",
                flush=True,
            )
        if step % args.ckpt_every == 0:
            save_ckpt()
    save_ckpt()

    model.eval().cpu()
    model.update(force=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = save_fenet(model, out)
    # per-quality averages over the last 400 steps (phi, bpp, summed MSE per sample)
    b = args.batch
    tail = history[-400:]
    per_q: dict[int, list[tuple[float, float]]] = {k: [] for k in range(q)}
    for h in tail:
        phis, bpps, mses = h[4 : 4 + b], h[4 + b : 4 + 2 * b], h[4 + 2 * b : 4 + 3 * b]
        for p_, r_, d_ in zip(phis, bpps, mses):
            per_q[int(p_)].append((r_, d_))
    final = np.array([h[:4] for h in tail]).mean(axis=0)
    try:
        data_folder = "${assets}/" + images_root.resolve().relative_to(msff.assets_dir().resolve()).as_posix()
    except ValueError:
        data_folder = images_root.name
    record = {
        "model": "fenet_drnet",
        "network": args.network,
        "split": args.split,
        "network_weights_sha256": net.weights_sha256(),
        "config": cfg.to_json(),
        "feature_scale": [float(v) for v in model.feature_scale],
        "normalisation": "x_norm = (x - per-channel mean) / per-scale RMS (stored as buffers in the weights)",
        "parameters": count_parameters(model),
        "linear_path_init": pca_record,
        "command": "python tools/train_fenet.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "data": {
            "folder": data_folder,
            "count": len(all_files),
            "sha256_sorted_file_list": msff.file_list_sha256(all_files),
            "train_count": len(train_files),
            "holdout_count": len(held),
            "views_per_image": args.views,
            "augmentation": "cache (tools/train_msff.py): view 0 full image, other views random resized crop "
            "(area 0.25-1, aspect 3/4-4/3), hflip p=0.5, stretch to 416x416; training: aligned feature crops "
            f"(coarsest size from {list(CROP_SIZES)} with p={list(CROP_PROBS)}) and hflip p=0.5",
            "seed": args.seed,
        },
        "rate_unit": "bits per network-input pixel covered by the (cropped) features",
        "cache_schedule": None
        if growing is None
        else {"start": args.grow_start, "per_step": args.grow_per_step, "entries_at_end": growing.allowed(step)},
        "steps": step,
        "batch": args.batch,
        "train_seconds": round(time.time() - t0, 1),
        "device": str(device),
        "threads": args.threads,
        "final_loss": float(final[0]),
        "final_aux_loss": float(final[1]),
        "final_bpp": float(final[2]),
        "final_mse_sum": float(final[3]),
        "final_per_quality": {
            str(k): {"bpp": float(np.mean([r for r, _ in v])), "mse_sum": float(np.mean([d for _, d in v]))}
            for k, v in per_q.items()
            if v
        },
        "weights_bytes": out.stat().st_size,
        "weights_sha256": digest,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
