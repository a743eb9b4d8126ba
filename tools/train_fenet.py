"""Train the FENet/DRNet learned feature codec of codec/models/fenet.py (multi-rate,
one model for every quality index phi), with the shared training programme of
codec/training (feature cache, task-aware loss, resumable loop, dev evaluation).

Data: NN part 1 features of the training images (default <assets>/train-images,
never the evaluation sets), `--views` augmented views per image, extracted once
into the float16 feature cache of codec/training/data.py (shared with
tools/train_msff.py).

Loss per sample, with phi drawn uniformly per sample:

    L = R + lambda[phi] * D,   D = feature_weight * sum_i w_i * MSE_i + task_weight * T

* R in bits per network-input pixel: (bits of y + bits of z) / (H_in * W_in), where
  H_in x W_in are the network-input pixels the (cropped) features cover.
* MSE_i on features normalised by per-scale RMS (computed on the training set).
* T: the task loss of codec/training/task.py (NanoDet's frozen heads on the
  reconstruction against the heads on the original features).

``--ceiling`` trains the transform pair alone (FENet -> DRNet, no quantisation, no
rate): its dev figure is the representation ceiling, the accuracy no quality index
can exceed. A ceiling run's weights are a warm start (``--init``) for a full run.

Dev evaluation every ``--dev-every`` training minutes: mAP@0.5 on the dev set
(``heldout``: the 64 held-out training images with the uncompressed detections as
pseudo-labels; or ``val2017-103``), through the real container path (the mean over
``--dev-phis``), or of the unquantised transform with ``--ceiling``. The best
checkpoint by that figure is what ``--out`` gets.

Example (a long CPU run in the background, resumable with the same command + --resume)::

    nohup python -m tools.train_fenet --linear-path --width 64 --latent-channels 96 --hyper-channels 48 \\
        --task-weight 1 --feature-weight 0.1 --steps 20000 --threads 2 \\
        --out runs/fenet/fenet_nanodet_neck.pt > runs/fenet/train.log 2>&1 &
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

from codec.models.fenet import FenetCodec, FenetConfig, count_parameters, load_fenet, load_fenet_state, save_fenet
from codec.training import common
from codec.training import data as tdata
from codec.training import dev as tdev
from codec.training.loop import Checkpoint, MinuteLog, RunState
from codec.training.task import TaskLossConfig, task_loss_for

DEV_SETS = common.DEV_SETS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_data_args(ap, views=4)
    ap.add_argument("--width", type=int, default=56)
    ap.add_argument("--latent-channels", type=int, default=80)
    ap.add_argument("--hyper-channels", type=int, default=48)
    ap.add_argument("--latent-stride", type=int, default=1, choices=(1, 2), help="y stride / coarsest stride")
    ap.add_argument(
        "--latent-scale",
        type=int,
        default=-1,
        help="index of the scale at whose stride y lies (-1: coarsest; 1: NanoDet p4, stride 16)",
    )
    ap.add_argument(
        "--linear-path",
        action="store_true",
        help="add the linear path (codec/models/linear_path.py), initialised from PCA of the cache",
    )
    ap.add_argument("--lambdas", default="0.03,0.1,0.3,1,3,10", help="lambda per quality index")
    common.add_loss_args(ap)
    common.add_loop_args(ap, steps=4000, lr=1e-3)
    ap.add_argument("--aux-lr", type=float, default=1e-3)
    ap.add_argument("--dev-phis", default=None, help="quality indices of the dev evaluation (default: all)")
    ap.add_argument(
        "--channel-groups",
        default=None,
        help="channel-importance context: sizes of y's channel groups in coding order (e.g. 8,8,16,32,64; "
        "sum = latent channels). With --init, the channels are first renumbered by their measured task "
        "importance (codec/training/importance.py)",
    )
    ap.add_argument(
        "--importance-batches", type=int, default=6, help="training batches the channel importance is measured on"
    )
    args = ap.parse_args(argv)
    if args.channel_groups is not None:
        try:
            args.channel_groups = tuple(int(v) for v in args.channel_groups.split(","))
        except ValueError:
            ap.error(f"--channel-groups: comma-separated integers expected, got {args.channel_groups!r}")
    return args


def denormalise(model: FenetCodec, rec_norm: list[torch.Tensor]) -> list[torch.Tensor]:
    return [r * model.feature_scale[i] + model._mean(i) for i, r in enumerate(rec_norm)]


def transform_only(
    model: FenetCodec, xs: list[torch.Tensor], phi: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """FENet -> DRNet without quantisation: (normalised reconstruction, normalised targets).
    With `phi`, y passes that quality index's gain and inverse gain (unrounded), as DRNet sees
    it in the codec: after rate-distortion training the two no longer cancel exactly."""
    xn = model._normalised(xs)
    y = model.fenet(xn)
    if phi is not None:
        t = torch.tensor([phi], device=y.device)
        y = y * model._gains(t, "gain") * model._gains(t, "inv_gain")
    return model.drnet(y, [tuple(x.shape[-2:]) for x in xn]), xn


def export(model: FenetCodec, path: Path) -> str:
    """A copy of the model with its CDF tables built, written with save_fenet; -> sha256."""
    m = copy.deepcopy(model).cpu().eval()
    m.update(force=True)
    return save_fenet(m, path)


def ceiling_eval(model: FenetCodec, dev_set: tdev.DevSet, net, sp, phi: int | None = None) -> dict:
    """mAP of NN part 2 on the unquantised FENet -> DRNet reconstruction (the ceiling); with
    `phi`, through that quality index's gains (the ceiling of a rate-distortion-trained model)."""
    names = sp.scale_names()
    cpu = copy.deepcopy(model).cpu().eval()  # the dev features and NN part 2 live on the CPU
    m = tdev.evaluate_transform(
        dev_set,
        net,
        sp.name,
        lambda f: dict(zip(names, denormalise(cpu, transform_only(cpu, [f[n] for n in names], phi)[0]))),
    )
    return _rounded(m, ("map50", "map", "segm_map50", "segm_map"))


def _rounded(m: dict, keys: tuple[str, ...]) -> dict:
    """The figures of `keys` that `m` has (the mask mAPs only for a network with masks), rounded."""
    return {k: round(m[k], 5) for k in keys if k in m}


def container_eval(model: FenetCodec, dev_set: tdev.DevSet, net, sp, phis: list[int]) -> dict[str, dict]:
    """Per phi: bpp and mAP through the real container path (learned_e2e's encoder and
    decoder, the container builder and parser) with `model`'s weights written to a
    temporary weights file, as fcm_enc / fcm_dec would use them."""
    from codec.bitstream import parse_container
    from codec.modes import learned_e2e
    from codec.pipeline import build_bitstream, weights_hash_bytes

    wh = weights_hash_bytes(net)
    model_id = learned_e2e.model_id_for_network(net.name, sp.name)  # the header the shipped model will write
    per_phi = {}
    with tempfile.TemporaryDirectory(prefix="fcm-dev-weights-") as tmp:
        wpath = Path(tmp) / f"dev_{time.time_ns()}.pt"
        digest = export(model, wpath)
        wpath.with_suffix(".json").write_text(json.dumps({"weights_sha256": digest}))
        m_loaded, digest2 = learned_e2e.model_for(model_id, wpath)
        for phi in phis:

            def encode(img, phi=phi):
                header, units = learned_e2e.encode_with_model(img.features, sp, phi, m_loaded, model_id, digest2)
                return build_bitstream(net, sp, img.prep, learned_e2e.MODE_ID, header, units, wh)

            def decode(data):
                parsed = parse_container(data)
                syms = learned_e2e.decode_symbols(parsed.header, parsed.units, wpath)
                return learned_e2e.reconstruct(parsed.header, syms, wpath)

            r = tdev.evaluate_container(dev_set, net, sp.name, encode, decode)
            per_phi[str(phi)] = _rounded(r, ("bpp", "map50", "map", "segm_map50", "segm_map"))
    return per_phi


def make_dev_fn(args, net, dev_set, sp, model: FenetCodec, phis: list[int]):
    def ceiling(state: RunState) -> tuple[float, dict]:
        m = ceiling_eval(model, dev_set, net, sp)
        return m["map50"], m

    def container(state: RunState) -> tuple[float, dict]:
        per_phi = container_eval(model, dev_set, net, sp, phis)
        mean = float(np.mean([v["map50"] for v in per_phi.values()]))
        return mean, {"mean_map50": round(mean, 5), "per_phi": per_phi}

    return ceiling if args.ceiling else container


def grouped(
    args, model: FenetCodec, data, task, resuming: bool, device: torch.device
) -> tuple[FenetCodec, dict | None]:
    """The model with y coded in args.channel_groups. A fresh conversion first measures every
    channel's task importance on training batches and renumbers the channels in descending
    importance; a resumed run only rebuilds the structure (the checkpoint holds the weights)."""
    from codec.models.fenet import permute_latent_channels, with_channel_groups
    from codec.training import importance as timp

    groups = tuple(args.channel_groups)
    if model.cfg.channel_groups:
        if tuple(model.cfg.channel_groups) != groups:
            raise ValueError(f"--init has channel groups {list(model.cfg.channel_groups)}, not {list(groups)}")
        return model, None
    if sum(groups) != model.cfg.latent_channels or min(groups) < 1:
        raise ValueError(f"--channel-groups {list(groups)} must add up to {model.cfg.latent_channels} channels")
    importance_record = None
    if not resuming:
        if args.init is None:
            raise ValueError("--channel-groups orders the channels of a trained model: give --init")
        rng = np.random.default_rng(args.seed + 7)
        batches = [
            [t.to(device) for t in tdata.sample_batch(data.cache, data.names, data.strides, args.batch, rng)]
            for _ in range(args.importance_batches)
        ]
        t0 = time.time()
        imp = timp.channel_importance(model, task, batches)
        order = timp.importance_order(imp)
        permute_latent_channels(model, order)
        importance_record = {
            "method": "task-loss increase with the channel replaced by its batch mean, top quality index, "
            "unquantised (codec/training/importance.py)",
            "batches": args.importance_batches,
            "batch": args.batch,
            "order": order,
            "importance_sorted": [round(float(imp[i]), 6) for i in order],
            "group_shares": timp.group_shares(
                imp[order], FenetConfig.from_json({**model.cfg.to_json(), "channel_groups": list(groups)}).groups
            ),
            "seconds": round(time.time() - t0, 1),
        }
        print(
            f"channel importance over {args.importance_batches} batches in {importance_record['seconds']} s; "
            f"share per group {importance_record['group_shares']}",
            flush=True,
        )
    return with_channel_groups(model, groups), importance_record


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
    resuming = args.resume and ckpt_path.is_file()
    init_record = None
    if args.init:
        model, init_digest = load_fenet(args.init)
        model.train()
        cfg = model.cfg
        if tuple(cfg.lambdas) != lambdas_list:  # the lambdas are training-only: take this run's
            cfg = FenetConfig.from_json({**cfg.to_json(), "lambdas": list(lambdas_list)})
            model.cfg = cfg
        init_record = {"weights": Path(args.init).name, "sha256": init_digest}
        init_json = Path(args.init).with_suffix(".json")
        if init_json.is_file():  # how the starting point was trained (its own record)
            prev = json.loads(init_json.read_text())
            init_record.update({k: prev[k] for k in ("command", "steps", "train_hours", "loss", "dev") if k in prev})
        pca_record = None
    else:
        cfg = FenetConfig.for_split_point(
            sp,
            width=args.width,
            latent_channels=args.latent_channels,
            hyper_channels=args.hyper_channels,
            latent_downsample=args.latent_stride == 2,
            num_qualities=len(lambdas_list),
            lambdas=lambdas_list,
            linear_path=args.linear_path,
            latent_scale=args.latent_scale,
        )
        model = FenetCodec(cfg)
        feature_mean, feature_scale = tdata.feature_stats(cache, names, n_rows)
        model.set_feature_scale(feature_scale, feature_mean)
        pca_record = None
        if args.linear_path and not resuming:
            mean, comp, explained = tdata.pca_of_cache(
                model.stack, cache, names, n_rows, args.pca_views, cfg.latent_channels
            )
            model.init_linear_path(mean, comp)
            pca_record = {"views": min(args.pca_views, n_rows), "explained_variance_kept": explained}
            print(
                f"PCA over {pca_record['views']} views: the first {cfg.latent_channels} components hold "
                f"{100 * explained:.2f} % of the variance",
                flush=True,
            )
    model.to(device)
    task = None
    importance_record = None
    if args.task_weight > 0 or (args.channel_groups and not resuming):
        task = task_loss_for(net, args.split, TaskLossConfig(box_weight=args.task_box_weight)).to(device)
    if args.channel_groups:
        try:
            model, importance_record = grouped(args, model, data, task, resuming, device)
        except (ValueError, common.TrainingSetupError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        cfg = model.cfg
    if args.task_weight <= 0:
        task = None
    model.train()
    lambdas = torch.tensor(lambdas_list, device=device)
    try:
        weights = common.scale_weights(args, len(names), device)
    except common.TrainingSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.ceiling:
        main_params = [p for p in [*model.fenet.parameters(), *model.drnet.parameters()]]
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
        loaders={"model": lambda sd: load_fenet_state(model, sd)},  # the CDF buffers' sizes are the checkpoint's
    )
    state = RunState(extra={"pca_record": pca_record, "init": init_record, "channel_importance": importance_record})
    state, this_command = common.start_run(args, argv, "train_fenet", checkpoint, state, init_record, device)
    log = MinuteLog(out.with_suffix(".log"))
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} train_fenet {' '.join(argv or sys.argv[1:])}")
    log.write(f"config {json.dumps(cfg.to_json())} parameters {count_parameters(model)}")

    dev_fn = on_best = None
    dev_set, ref = common.make_dev_set(args, data, log)
    if dev_set is not None:
        state.extra["dev_uncompressed"] = ref
        phis = [int(v) for v in args.dev_phis.split(",")] if args.dev_phis else list(range(cfg.num_qualities))
        dev_fn = make_dev_fn(args, net, dev_set, sp, model, phis)
        best_path = out.with_suffix(".best.pt")

        def on_best(st: RunState, entry: dict) -> None:
            digest = export(model, best_path)
            st.extra["best_sha256"] = digest

    q = cfg.num_qualities

    def step_fn(step: int) -> dict[str, float]:
        xs = [t.to(device) for t in tdata.sample_batch(cache, names, strides, args.batch, rng)]
        input_pixels = (xs[0].shape[-2] * strides[0]) * (xs[0].shape[-1] * strides[0])
        teacher = task.teacher(xs) if task is not None else None
        if args.ceiling:
            rec_norm, target = transform_only(model, xs)
            bpp = torch.zeros(args.batch, device=device)
            phi = None
        else:
            phi = torch.from_numpy(rng.integers(0, q, args.batch)).to(device)
            res = model(xs, phi)
            rec_norm, target = res["rec_norm"], res["target_norm"]
            bits = sum(-torch.log2(lik).flatten(1).sum(dim=1) for lik in res["likelihoods"].values())
            bpp = bits / input_pixels
        mse = torch.stack([((r - t) ** 2).flatten(1).mean(dim=1) for r, t in zip(rec_norm, target)])  # (S, B)
        dist = args.feature_weight * (mse * weights.view(-1, 1)).sum(dim=0)
        metrics = {}
        if task is not None:
            t_loss, t_cls, t_box = task(denormalise(model, rec_norm), teacher)
            dist = dist + args.task_weight * t_loss
            metrics.update(cls=float(t_cls.detach().mean()), box=float(t_box.detach().mean()))
        loss = dist.mean() if args.ceiling else (bpp + lambdas[phi] * dist).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        sched.step()
        aux = model.aux_loss() if not args.ceiling else torch.zeros(())
        if not args.ceiling:
            aux_opt.zero_grad(set_to_none=True)
            aux.backward()
            aux_opt.step()
        return {
            "loss": float(loss.detach()),
            "bpp": float(bpp.detach().mean()),
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
    )  # the shipped file: the best dev checkpoint (or the last state without a dev set)
    resize = getattr(getattr(net, "resize_mode", None), "name", "stretch").lower()
    record = {
        "model": "fenet_drnet",
        "network": args.network,
        "split": args.split,
        "network_weights_sha256": net.weights_sha256(),
        "config": cfg.to_json(),
        "normalisation": "x_norm = (x - per-channel mean) / per-scale RMS (stored as buffers in the weights)",
        "parameters": count_parameters(model),
        "linear_path_init": state.extra.get("pca_record"),
        "channel_importance": state.extra.get("channel_importance"),
        "init": state.extra.get("init"),
        "command": this_command,
        "calls": state.extra.get("calls"),  # every call of a resumed run, with the step it started from
        "data": {
            **data.record(),
            "augmentation": "cache (codec/training/data.py): view 0 full image, other views random resized crop "
            f"(area 0.25-1, aspect 3/4-4/3), hflip p=0.5, the network's preprocessing "
            f"({resize} to {net.input_size}x{net.input_size}); "
            "training: aligned feature crops "
            f"(coarsest size from {list(tdata.CROP_SIZES)} with p={list(tdata.CROP_PROBS)}) and hflip p=0.5",
        },
        "loss": {
            "rate": None if args.ceiling else "bits(y, z) per network-input pixel covered",
            "feature_weight": args.feature_weight,
            "task_weight": args.task_weight,
            "task_box_weight": args.task_box_weight,
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
            else "mean over phi of mAP@0.5 through the container",
        ),
        "weights_bytes": out.stat().st_size,
        "weights_sha256": digest,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
