"""Train the per-scale variable-rate codec of codec/models/fenet_ps.py (one small
hyperprior codec with gain units per scale; the learned_ps mode's model) with the shared
training programme of codec/training (feature cache, task-aware loss, resumable loop,
dev evaluation).

Every sample draws the quality index of every scale independently and uniformly, so
that mixed allocations (what MFIBA chooses) are in distribution. Loss per sample:

    L = sum_i R_i + sum_i lambda[phi_i] * fw * w_i * MSE_i + tw * T(x_hat')

* R_i: bits of scale i's y_i and z_i per network-input pixel covered by the crop;
* MSE_i on features normalised by the scale's RMS;
* T: the task loss of codec/training/task.py (NanoDet's frozen heads on the
  reconstruction against the heads on the original features). It depends on every
  scale at once, so each scale's reconstruction enters it through a gradient scale of
  lambda[phi_i] (x_hat'_i = x_hat_i in value, lambda[phi_i] * dT/dx_hat_i in gradient):
  each scale's codec trades its own rate against the task loss at its own lambda.

``--ceiling`` trains the analysis/synthesis pairs alone (no quantisation, no rate, no
gains): the representation ceiling. Its weights are a warm start (``--init``).

Dev evaluation every ``--dev-every`` training minutes: mAP@0.5 on the dev set (default the
held-out training images with pseudo-labels) through the real container path (the
learned_ps mode's encoder and decoder, the container builder and parser) at uniform
quality indices ``--dev-phis``; the figure is their mean. With ``--ceiling``: the
unquantised transform's mAP@0.5.

Example::

    nohup python -m tools.train_fenet_ps --task-weight 1 --feature-weight 0.1 --steps 9000 \\
        --time-limit 55 --threads 1 --out runs/ps/fenet_ps.pt > runs/ps/train.out 2>&1 &
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

from codec.models.fenet import count_parameters
from codec.models.fenet_ps import PerScaleCodec, PerScaleConfig, load_fenet_ps, load_state, save_fenet_ps
from codec.training import common
from codec.training import data as tdata
from codec.training import dev as tdev
from codec.training.loop import Checkpoint, MinuteLog, RunState
from codec.training.task import TaskLossConfig, task_loss_for


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_data_args(ap, views=4)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--latent-channels", type=int, default=64)
    ap.add_argument("--hyper-channels", type=int, default=32)
    ap.add_argument(
        "--no-linear-path",
        action="store_true",
        help="without the linear path: y at twice each scale's stride (latent_downsample), no PCA start",
    )
    ap.add_argument("--lambdas", default="0.03,0.08,0.2,0.5,1.2,3,8,20", help="lambda per quality index")
    common.add_loss_args(ap)
    common.add_loop_args(ap, steps=9000, lr=1e-3)
    ap.add_argument("--aux-lr", type=float, default=1e-3)
    ap.add_argument("--dev-phis", default="1,3,5,7", help="uniform quality indices of the dev evaluation")
    return ap.parse_args(argv)


def export(model: PerScaleCodec, path: Path) -> str:
    """A copy with its CDF tables built, written with save_fenet_ps; -> sha256."""
    m = copy.deepcopy(model).cpu().eval()
    m.update(force=True)
    return save_fenet_ps(m, path)


def grad_scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x in value, scale * (the gradient) in gradient; `scale` broadcasts against x."""
    return x * scale + (x * (1 - scale)).detach()


def ceiling_eval(model: PerScaleCodec, dev_set: tdev.DevSet, net, sp) -> dict:
    names = sp.scale_names()
    cpu = copy.deepcopy(model).cpu().eval()
    m = tdev.evaluate_transform(dev_set, net, sp.name, lambda f: dict(zip(names, cpu.transform_only(f))))
    return {"map50": round(m["map50"], 5), "map": round(m["map"], 5)}


def container_eval(model: PerScaleCodec, dev_set: tdev.DevSet, net, sp, phis: list[int]) -> dict[str, dict]:
    """Per uniform phi: bpp and mAP through the container (learned_ps's encoder and decoder,
    the container builder and parser) with `model`'s weights in a temporary weights file."""
    from codec.bitstream import parse_container
    from codec.modes import learned_ps
    from codec.pipeline import build_bitstream, weights_hash_bytes

    wh = weights_hash_bytes(net)
    per_phi = {}
    with tempfile.TemporaryDirectory(prefix="fcm-dev-weights-") as tmp:
        wpath = Path(tmp) / f"dev_{time.time_ns()}.pt"
        export(model, wpath)
        loaded, digest = learned_ps.model_for(learned_ps.MODEL_IDS[0], wpath)
        for phi in phis:

            def encode(img, phi=phi):
                phis_i = [phi] * len(sp.scales)
                header, units = learned_ps.encode_with_model(
                    img.features, sp, phis_i, loaded, learned_ps.MODEL_IDS[0], digest
                )
                return build_bitstream(net, sp, img.prep, learned_ps.MODE_ID, header, units, wh)

            def decode(data):
                parsed = parse_container(data)
                syms = learned_ps.decode_symbols(parsed.header, parsed.units, wpath)
                return learned_ps.reconstruct(parsed.header, syms, wpath)

            r = tdev.evaluate_container(dev_set, net, sp.name, encode, decode)
            per_phi[str(phi)] = {"bpp": round(r["bpp"], 5), "map50": round(r["map50"], 5), "map": round(r["map"], 5)}
    return per_phi


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = common.prepare_data(args)
    except common.TrainingSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    net, sp, names, strides = data.net, data.split_point, data.names, data.strides
    cache, n_rows = data.cache, data.n_rows
    device = torch.device(args.device)
    lambdas_list = tuple(float(v) for v in args.lambdas.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = out.with_suffix(".ckpt")
    init_record = None
    pca_record = None
    if args.init:
        model, init_digest = load_fenet_ps(args.init)
        if tuple(model.cfg.lambdas) != lambdas_list:  # training-only: this run's
            cfg = PerScaleConfig.from_json({**model.cfg.to_json(), "lambdas": list(lambdas_list)})
            fresh = PerScaleCodec(cfg)
            fresh.load_state_dict(model.state_dict(), strict=False)
            model = fresh
        init_record = {"weights": Path(args.init).name, "sha256": init_digest}
        init_json = Path(args.init).with_suffix(".json")
        if init_json.is_file():
            prev = json.loads(init_json.read_text())
            init_record.update({k: prev[k] for k in ("command", "steps", "train_hours", "loss", "dev") if k in prev})
    else:
        cfg = PerScaleConfig.for_split_point(
            sp,
            width=args.width,
            latent_channels=args.latent_channels,
            hyper_channels=args.hyper_channels,
            num_qualities=len(lambdas_list),
            lambdas=lambdas_list,
            latent_downsample=args.no_linear_path,
            linear_path=not args.no_linear_path,
        )
        model = PerScaleCodec(cfg)
        feature_mean, feature_scale = tdata.feature_stats(cache, names, n_rows)
        model.set_feature_stats(feature_mean, feature_scale)
        if cfg.linear_path and not (args.resume and ckpt_path.is_file()):
            kept = []
            for i, name in enumerate(names):  # every scale's linear path starts at its own PCA
                c = model.codec(i)
                mean, comp, explained = tdata.pca_of_cache(
                    lambda f, c=c, name=name: c.stack([f[name]]), cache, [name], n_rows, args.pca_views,
                    cfg.latent_channels,
                )  # fmt: skip
                c.init_linear_path(mean, comp)
                kept.append(round(float(explained), 4))
            pca_record = {"views": min(args.pca_views, n_rows), "explained_variance_kept": dict(zip(names, kept))}
            print(f"PCA per scale over {pca_record['views']} views: variance kept {kept}", flush=True)
    cfg = model.cfg
    model.to(device).train()
    task = None
    if args.task_weight > 0:
        task = task_loss_for(net, args.split, TaskLossConfig(box_weight=args.task_box_weight)).to(device)
    lambdas = torch.tensor(lambdas_list, device=device)
    try:
        weights = common.scale_weights(args, len(names), device)
    except common.TrainingSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.ceiling:
        main_params = [p for i in range(model.num_scales) for m in (model.codec(i).fenet, model.codec(i).drnet)
                       for p in m.parameters()]  # fmt: skip
    else:
        main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=args.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=args.aux_lr)
    sched = common.cosine_schedule(opt, args.steps, args.lr_floor)
    rng = np.random.default_rng(args.seed + 2)
    checkpoint = Checkpoint(
        ckpt_path,
        {"model": model, "opt": opt, "aux_opt": aux_opt, "sched": sched},
        rng,
        loaders={"model": lambda sd: load_state(model, sd)},  # the CDF buffers' sizes are the checkpoint's
    )
    state = RunState(extra={"init": init_record, "pca_record": pca_record})
    state, this_command = common.start_run(args, argv, "train_fenet_ps", checkpoint, state, init_record, device)
    log = MinuteLog(out.with_suffix(".log"))
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} train_fenet_ps {' '.join(argv or sys.argv[1:])}")
    log.write(f"config {json.dumps(cfg.to_json())} parameters {count_parameters(model)}")

    dev_fn = on_best = None
    dev_set, ref = common.make_dev_set(args, data, log)
    if dev_set is not None:
        state.extra["dev_uncompressed"] = ref
        phis = [int(v) for v in args.dev_phis.split(",")]

        def dev_fn(st: RunState) -> tuple[float, dict]:
            if args.ceiling:
                m = ceiling_eval(model, dev_set, net, sp)
                return m["map50"], m
            per_phi = container_eval(model, dev_set, net, sp, phis)
            mean = float(np.mean([v["map50"] for v in per_phi.values()]))
            return mean, {"mean_map50": round(mean, 5), "per_phi": per_phi}

        best_path = out.with_suffix(".best.pt")

        def on_best(st: RunState, entry: dict) -> None:
            st.extra["best_sha256"] = export(model, best_path)

    q = cfg.num_qualities
    k = len(names)

    def step_fn(step: int) -> dict[str, float]:
        xs = [t.to(device) for t in tdata.sample_batch(cache, names, strides, args.batch, rng)]
        input_pixels = (xs[0].shape[-2] * strides[0]) * (xs[0].shape[-1] * strides[0])
        teacher = task.teacher(xs) if task is not None else None
        metrics: dict[str, float] = {}
        if args.ceiling:
            recs = model.transform_only(xs)
            mse = torch.stack(
                [(((r - x) / model.codec(i).feature_scale[0]) ** 2).flatten(1).mean(1)
                 for i, (r, x) in enumerate(zip(recs, xs))]
            )  # fmt: skip
            dist = args.feature_weight * (mse * weights.view(-1, 1)).sum(0)
            if task is not None:
                t_loss, t_cls, t_box = task(recs, teacher)
                dist = dist + args.task_weight * t_loss
                metrics.update(cls=float(t_cls.detach().mean()), box=float(t_box.detach().mean()))
            loss = dist.mean()
            bpp = torch.zeros(k, args.batch)
        else:
            phis = torch.from_numpy(rng.integers(0, q, (args.batch, k))).to(device)
            res = model(xs, phis)
            bpp = torch.stack(
                [
                    sum(-torch.log2(lik).flatten(1).sum(1) for lik in r["likelihoods"].values()) / input_pixels
                    for r in res
                ]
            )  # fmt: skip  (S, B)
            mse = torch.stack([((r["rec_norm"][0] - r["target_norm"][0]) ** 2).flatten(1).mean(1) for r in res])
            lam = lambdas[phis].t()  # (S, B)
            loss_b = bpp.sum(0) + args.feature_weight * (lam * mse * weights.view(-1, 1)).sum(0)
            if task is not None:
                recs = [
                    grad_scaled(model.denormalise(i, r["rec_norm"][0]), lam[i].view(-1, 1, 1, 1))
                    for i, r in enumerate(res)
                ]
                t_loss, t_cls, t_box = task(recs, teacher)
                loss_b = loss_b + args.task_weight * t_loss
                metrics.update(cls=float(t_cls.detach().mean()), box=float(t_box.detach().mean()))
            loss = loss_b.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        sched.step()
        aux = torch.zeros(())
        if not args.ceiling:
            aux = model.aux_loss()
            aux_opt.zero_grad(set_to_none=True)
            aux.backward()
            aux_opt.step()
        return {
            "loss": float(loss.detach()),
            "bpp": float(bpp.detach().sum(0).mean()),
            **{f"bpp_{n}": float(bpp[i].detach().mean()) for i, n in enumerate(names)},
            "mse": float(mse.detach().sum(0).mean()),
            **metrics,
            "aux": float(aux.detach()),
        }

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
    )
    record = {
        "model": "fenet_ps",
        "network": args.network,
        "split": args.split,
        "network_weights_sha256": net.weights_sha256(),
        "config": cfg.to_json(),
        "normalisation": "x_norm = (x - per-channel mean) / per-scale RMS (buffers of every scale's codec)",
        "parameters": count_parameters(model),
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
            "rate": None if args.ceiling else "sum over scales of bits(y_i, z_i) per network-input pixel covered",
            "phi": None if args.ceiling else "drawn independently and uniformly per sample and scale",
            "feature_weight": args.feature_weight,
            "task_weight": args.task_weight,
            "task_box_weight": args.task_box_weight,
            "task_gradient": "each scale's reconstruction enters the task loss with gradient scale lambda[phi_i]",
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
            "mAP@0.5 of the unquantised transform"
            if args.ceiling
            else f"mean over uniform phi {args.dev_phis} of mAP@0.5 through the container",
        ),
        "weights_bytes": out.stat().st_size,
        "weights_sha256": digest,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
