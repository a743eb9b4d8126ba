"""Train the MSFF/MSFR pair of codec/models/msff.py (vvc_msff's fusion and reconstruction)
with the shared training programme of codec/training (feature cache, task-aware loss,
resumable loop, dev evaluation through the real container path, keep-the-best).

Data: NN part 1 features of the training images (default <assets>/train-images, never
the evaluation sets), `--views` augmented views per image, from the float16 feature
cache shared with tools/train_fenet.py.

Loss per sample (VVC does the rate, so there is no rate term):

    D = feature_weight * sum_i w_i * MSE_i + task_weight * T

* MSE_i on features normalised by per-scale RMS (computed on the training set).
* T: the task loss of codec/training/task.py (NanoDet's frozen heads on the
  reconstruction against the heads on the original features).
* Selective learning (SLS): a random number n of leading fused channels is kept
  per sample (``--no-sls``: all), so one model serves every truncation; Gaussian noise
  relative to the fused tensor's range (``--noise``) stands in for 10-bit quantisation
  and VVC coding error.

``--vvc-qps`` puts the real inner codec in the loop instead of the noise: every
``--vvc-every``-th step the batch's fused tensors (each sample's kept channels, min-max
quantised to 10 bits as the encoder does, tiled one sample under the other into one
picture) are coded by vvenc at a QP drawn from the list and decoded by FFmpeg; the
decoded tensor replaces the fused one in the forward pass and the gradient passes
straight through (d z_hat / d z = 1). MSFR so learns the artefacts of the QPs it will be
used at, which additive white noise does not model (VVC removes detail rather than adding
noise; at QP 42-47 its error is several times the noise's).

With the encoder trained through the straight-through estimator, MSFF drifted towards
tensors VVC codes with fewer bits and more error (in a first run, bits per sample fell by
45 % and the loss rose by 25 % in 9 minutes: the estimator does not see the min-max range
or VVC's loss); ``--freeze-msff`` trains MSFR alone, on the artefacts of the shipped MSFF.

``--ceiling`` trains and evaluates the pair without truncation or noise: its dev
figure (mAP@0.5 of MSFF -> MSFR unquantised) is the accuracy no QP can exceed.

Dev evaluation every ``--dev-every`` training minutes: mAP@0.5 on the dev set
(``heldout``: the 64 held-out training images with the uncompressed detections as
pseudo-labels) through vvc_msff's encoder (with the weights being trained, written to a
temporary file), the container and the bit-exact decoder, at ``--dev-qps`` (each QP
with its kept channels from the truncation table); the figure is the mean over QPs.
The best checkpoint by that figure is what ``--out`` gets.

Example (a long CPU run in the background, resumable with the same command + --resume)::

    nohup python -m tools.train_msff --linear-path --fused-channels 192 --width 48 --task-weight 1 \\
        --feature-weight 1 --steps 30000 --lr 2e-4 --threads 1 --out runs/msff/msff_nanodet_neck.pt \\
        > runs/msff/train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from codec.files import file_sha256
from codec.models.msff import MsffCodecModel, MsffConfig, count_parameters, init_linear_path, load_msff, sls_mask
from codec.training import common
from codec.training import data as tdata
from codec.training import dev as tdev
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
from codec.training.loop import Checkpoint, MinuteLog, RunState
from codec.training.task import TaskLossConfig, task_loss_for

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_data_args(ap, views=4)
    ap.add_argument("--fused-channels", type=int, default=256)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--fuse-blocks", type=int, default=1)
    ap.add_argument(
        "--fusion-scale", type=int, default=-1, help="index of the scale at whose stride Z lies (-1: the coarsest)"
    )
    ap.add_argument(
        "--linear-path",
        action="store_true",
        help="add the linear (space-to-depth + 1x1) path, initialised from PCA of the cache",
    )
    common.add_loss_args(ap)
    ap.add_argument("--noise", type=float, default=0.01, help="max noise std relative to the fused range")
    ap.add_argument("--no-sls", action="store_true", help="ablation: keep all fused channels in training")
    ap.add_argument("--vvc-qps", default="", help="VVC-code the fused tensor at these QPs in training")
    ap.add_argument("--vvc-every", type=int, default=1, help="with --vvc-qps: every N-th step (the others: --noise)")
    ap.add_argument("--vvc-preset", default="faster", help="with --vvc-qps: the vvenc preset")
    ap.add_argument("--freeze-msff", action="store_true", help="train MSFR only (the encoder's MSFF stays as --init)")
    common.add_loop_args(ap, steps=3000, lr=1e-3)
    ap.add_argument("--dev-qps", default="32,37,42", help="VVC QPs of the dev evaluation")
    ap.add_argument("--cache-only", action="store_true", help="build the feature cache and stop")
    return ap.parse_args(argv)


def export(model: MsffCodecModel, path: Path) -> str:
    """The weights file (float32 state dict) of a copy of `model`; -> sha256."""
    m = copy.deepcopy(model).cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.float().contiguous() for k, v in m.state_dict().items()}, path)
    return file_sha256(path)


def _write_record(path: Path, model: MsffCodecModel, digest: str) -> None:
    path.with_suffix(".json").write_text(json.dumps({"config": model.cfg.to_json(), "weights_sha256": digest}))


def parse_qps(text: str) -> list[int]:
    """--vvc-qps: comma-separated VVC QPs in vvc_msff's range; ValueError otherwise."""
    from codec.modes import vvc_msff

    try:
        qps = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--vvc-qps must be comma-separated integers, got {text!r}") from None
    lo, hi = vvc_msff.QP_RANGE
    if not qps or any(not lo <= q <= hi for q in qps):
        raise ValueError(f"--vvc-qps must be QPs in {lo}..{hi}, got {text!r}")
    return qps


def vvc_round_trip(z: torch.Tensor, kept: list[int], qp: int, preset: str) -> tuple[torch.Tensor, int]:
    """The fused batch `z` (B, C, h, w) as vvc_msff's encoder and decoder see it: per sample
    its first kept[b] channels min-max quantised to 10 bits, all samples tiled into one
    picture (one under the other), VVC-coded at `qp`, decoded, dequantised; the other channels
    zero. Returns (z_hat, bits of the VVC stream)."""
    from codec.inner import vvc
    from codec.modes import anchor

    zs = z.detach().float().cpu().numpy()
    codes, ranges = [], []
    for b, n in enumerate(kept):
        q, lo, hi = anchor.quantise(zs[b, :n])
        codes.append(q)
        ranges.append((lo, hi))
    shapes = [q.shape for q in codes]
    layout = anchor.frame_layout(shapes)
    stream = vvc.encode_luma10(anchor.tile(codes, layout), qp, preset)
    frame = vvc.decode_luma10(stream, layout.width, layout.height)
    out = np.zeros_like(zs)
    for b, (q, (lo, hi)) in enumerate(zip(anchor.untile(frame, shapes, layout), ranges)):
        out[b, : q.shape[0]] = anchor.dequantise(q, lo, hi)
    return torch.from_numpy(out).to(z.device, z.dtype), 8 * len(stream)


def ceiling_eval(model: MsffCodecModel, dev_set: tdev.DevSet, net, sp) -> dict:
    """mAP of NN part 2 on MSFF -> MSFR with every fused channel and no quantisation."""
    cpu = copy.deepcopy(model).cpu().eval()
    m = tdev.evaluate_transform(dev_set, net, sp.name, lambda f: cpu(f))
    return {"map50": round(m["map50"], 5), "map": round(m["map"], 5)}


def container_eval(model: MsffCodecModel, dev_set: tdev.DevSet, net, sp, qps: list[int]) -> dict[str, dict]:
    """Per QP: bpp and mAP through vvc_msff's encoder and decoder and the container, with
    `model`'s weights in a temporary weights file, as fcm_enc / fcm_dec would use them."""
    from codec.bitstream import parse_container
    from codec.modes import vvc_msff
    from codec.pipeline import build_bitstream, weights_hash_bytes

    wh = weights_hash_bytes(net)
    model_id = vvc_msff.MODEL_IDS[0]
    per_qp = {}
    with tempfile.TemporaryDirectory(prefix="fcm-dev-weights-") as tmp:
        wpath = Path(tmp) / f"dev_{time.time_ns()}.pt"
        _write_record(wpath, model, export(model, wpath))
        loaded, _, digest = vvc_msff.model_for(model_id, wpath)
        c = loaded.cfg.fused_channels
        for qp in qps:
            kept = vvc_msff.kept_channels_for_qp(qp, c)

            def encode(img, qp=qp, kept=kept):
                header, units = vvc_msff.encode_with_model(
                    img.features, sp, qp, "faster", kept, loaded, model_id, digest
                )
                return build_bitstream(net, sp, img.prep, vvc_msff.MODE_ID, header, units, wh)

            def decode(data):
                parsed = parse_container(data)
                return vvc_msff.MODE.decode(parsed.header, parsed.units, wpath)

            r = tdev.evaluate_container(dev_set, net, sp.name, encode, decode)
            per_qp[str(qp)] = {
                "kept": kept, "bpp": round(r["bpp"], 5), "map50": round(r["map50"], 5), "map": round(r["map"], 5),
            }  # fmt: skip
    return per_qp


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = common.prepare_data(args)
    except common.TrainingSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cache_only:
        return 0
    try:
        vvc_qps = parse_qps(args.vvc_qps) if args.vvc_qps.strip() else []
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if vvc_qps and args.vvc_every < 1:
        print("error: --vvc-every must be at least 1", file=sys.stderr)
        return 2
    net, sp, names, strides = data.net, data.split_point, data.names, data.strides
    device = torch.device(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_suffix(".ckpt")
    resuming = args.resume and ckpt_path.is_file()
    init_record = pca_record = None
    if args.init:
        model, record, init_digest = load_msff(args.init)
        cfg = model.cfg
        init_record = {"weights": Path(args.init).name, "sha256": init_digest}
        init_record.update({k: record[k] for k in ("command", "steps", "train_hours", "loss", "dev") if k in record})
    else:
        cfg = MsffConfig.for_split_point(
            sp, fused_channels=args.fused_channels, width=args.width, fuse_blocks=args.fuse_blocks,
            linear_path=args.linear_path, fusion_scale=args.fusion_scale,
        )  # fmt: skip
        model = MsffCodecModel(cfg)
        model.set_feature_scale(feature_scales(data.cache, names, data.n_rows))
        if args.linear_path and not resuming:
            mean, comp, explained = pca_of_cache(
                model.msff.stack, data.cache, names, data.n_rows, args.pca_views, cfg.fused_channels
            )
            init_linear_path(model, mean, comp)
            pca_record = {"views": min(args.pca_views, data.n_rows), "explained_variance_kept": explained}
            print(
                f"PCA over {pca_record['views']} views: the first {cfg.fused_channels} components hold "
                f"{100 * explained:.2f} % of the variance",
                flush=True,
            )
    scale = model.msff.feature_scale.detach().clone().to(device)
    model.to(device).train()
    try:
        weights = common.scale_weights(args, len(names), device)
    except common.TrainingSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    task = None
    if args.task_weight > 0:
        task = task_loss_for(net, args.split, TaskLossConfig(box_weight=args.task_box_weight)).to(device)
    if args.freeze_msff:
        if not args.init:
            print("error: --freeze-msff needs --init (the MSFF it keeps)", file=sys.stderr)
            return 2
        for prm in model.msff.parameters():
            prm.requires_grad_(False)
    opt = torch.optim.Adam([prm for prm in model.parameters() if prm.requires_grad], lr=args.lr)
    sched = common.cosine_schedule(opt, args.steps, args.lr_floor)
    rng = np.random.default_rng(args.seed + 1)
    checkpoint = Checkpoint(ckpt_path, {"model": model, "opt": opt, "sched": sched}, rng)
    state = RunState(extra={"pca_record": pca_record, "init": init_record})
    state, this_command = common.start_run(args, argv, "train_msff", checkpoint, state, init_record, device)
    log = MinuteLog(out.with_suffix(".log"))
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} train_msff {' '.join(argv or sys.argv[1:])}")
    log.write(f"config {json.dumps(cfg.to_json())} parameters {count_parameters(model)}")

    dev_fn = on_best = None
    dev_set, ref = common.make_dev_set(args, data, log)
    if dev_set is not None:
        state.extra["dev_uncompressed"] = ref
        qps = [int(v) for v in args.dev_qps.split(",")]

        def dev_fn(st: RunState) -> tuple[float, dict]:
            if args.ceiling:
                m = ceiling_eval(model, dev_set, net, sp)
                return m["map50"], m
            per_qp = container_eval(model, dev_set, net, sp, qps)
            mean = float(np.mean([v["map50"] for v in per_qp.values()]))
            return mean, {"mean_map50": round(mean, 5), "per_qp": per_qp}

        def on_best(st: RunState, entry: dict) -> None:
            st.extra["best_sha256"] = export(model, out.with_suffix(".best.pt"))

    c = cfg.fused_channels

    def step_fn(step: int) -> dict[str, float]:
        xs = [t.to(device) for t in tdata.sample_batch(data.cache, names, strides, args.batch, rng)]
        feats = dict(zip(names, xs))
        teacher = task.teacher(xs) if task is not None else None
        with torch.set_grad_enabled(not args.freeze_msff):
            z = model.msff(feats)
        b = z.shape[0]
        metrics = {}
        if not args.ceiling:
            kept = rng.integers(1, c + 1, b) if not args.no_sls else np.full(b, c)
            if not args.no_sls:
                z = sls_mask(z, torch.from_numpy(kept).to(device))
            if vvc_qps and step % args.vvc_every == 0:
                qp = int(rng.choice(vvc_qps))
                z_hat, bits = vvc_round_trip(z, [int(n) for n in kept], qp, args.vvc_preset)
                z = z + (z_hat - z).detach()  # straight-through: VVC's error, the identity's gradient
                metrics.update(vvc_qp=float(qp), vvc_bits_per_sample=bits / b)
            elif args.noise > 0:
                span = (z.amax(dim=(1, 2, 3), keepdim=True) - z.amin(dim=(1, 2, 3), keepdim=True)).detach()
                z = z + torch.randn_like(z) * torch.rand(b, 1, 1, 1, device=device) * args.noise * span
        rec = model.msfr(z, {n: tuple(f.shape[-2:]) for n, f in feats.items()})
        mse = torch.stack([((rec[n] - feats[n]) / scale[i]).pow(2).flatten(1).mean(1) for i, n in enumerate(names)])
        dist = args.feature_weight * (mse * weights.view(-1, 1)).sum(0) / weights.sum()
        if task is not None:
            t_loss, t_cls, t_box = task([rec[n] for n in names], teacher)
            dist = dist + args.task_weight * t_loss
            metrics.update(cls=float(t_cls.detach().mean()), box=float(t_box.detach().mean()))
        loss = dist.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return {"loss": float(loss.detach()), "mse": float(mse.detach().mean()), **metrics}

    t_call = time.time()
    state, digest = common.run_and_ship(
        args,
        state=state,
        step_fn=step_fn,
        sched=sched,
        checkpoint=checkpoint,
        log=log,
        dev_fn=dev_fn,
        on_best=on_best,
        out=out,
        export=lambda path: export(model, path),
    )  # the shipped file: the best dev checkpoint (or the last state without a dev set)
    record = {
        "model": "msff_msfr",
        "network": args.network,
        "split": args.split,
        "network_weights_sha256": net.weights_sha256(),
        "config": cfg.to_json(),
        "feature_scale": [float(v) for v in scale.cpu()],
        "parameters": count_parameters(model),
        "sls": not args.no_sls,
        "linear_path_init": state.extra.get("pca_record"),
        "init": state.extra.get("init"),
        "command": this_command,
        "calls": state.extra.get("calls"),
        "data": {
            **data.record(),
            "augmentation": "cache (codec/training/data.py): view 0 full image, other views random resized crop "
            "(area 0.25-1, aspect 3/4-4/3), hflip p=0.5, stretch to 416x416; training: aligned feature crops "
            f"(coarsest size from {list(tdata.CROP_SIZES)} with p={list(tdata.CROP_PROBS)}) and hflip p=0.5",
        },
        "loss": {
            "feature_weight": args.feature_weight,
            "task_weight": args.task_weight,
            "task_box_weight": args.task_box_weight,
            "noise": 0.0 if args.ceiling else args.noise,
            "vvc_qps": vvc_qps,
            "vvc_every": args.vvc_every if vvc_qps else None,
            "vvc_preset": args.vvc_preset if vvc_qps else None,
            "freeze_msff": args.freeze_msff,
            "ceiling": args.ceiling,
        },
        "steps": state.step,
        "batch": args.batch,
        "lr": args.lr,
        "train_hours": round(state.train_seconds / 3600, 3),
        "this_call_seconds": round(time.time() - t_call, 1),
        "device": str(device),
        "threads": args.threads,
        "dev": common.dev_record(
            args,
            dev_set,
            state,
            "mAP@0.5 of the untruncated, unquantised pair"
            if args.ceiling
            else "mean over the dev QPs of mAP@0.5 through the container",
        ),
        "weights_bytes": out.stat().st_size,
        "weights_sha256": digest,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
