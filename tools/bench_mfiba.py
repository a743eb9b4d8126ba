"""MFIBA against uniform allocation, and the rate control of ``--target-bpp``, on a
labelled COCO set (learned_ps; codec/allocation/mfiba.py; issue 10, item 6).

For every image of the set, NN part 1 runs once and every allocation is computed with the
allocation code the encoder runs (``mfiba.allocate``, the same probe sharing a
``ProbeStore`` between targets, as its docstring allows: the result is the one a fresh
encoder gives):

* ``uniform-phi``: one phi for every scale, phi = 0 .. Q-1 (the codec's own rate points);
* per target bpp T and allocation A in ``--allocations`` (uniform, mfiba, mfiba_ft, exhaustive): the
  allocation ``fcm_enc --mode learned_ps --target-bpp T --allocation A`` chooses;
* per lambda' L in ``--lambdas`` and allocation A in ``--lambda-allocations`` (mfiba, mfiba_ft,
  exhaustive; the points named ``A-lambda``): the allocation ``fcm_enc --mode learned_ps
  --lambda L --allocation A`` chooses. One lambda' for the whole set also moves bits between
  images (tools/bench_mfiba_oracle.py measured the ceiling of both kinds). Its scale is
  MFIBA's: lambda' * sum_i R_i / k_i = lambda' * latent bits / A_0 (A_0: positions of the finest
  scale), not bpp.

The bits of a point are the container's exact size (the header the mode writes, through
the pipeline's container builder, plus the rANS strings' bytes), the features NN part 2
sees are the decoder's fixed-point reconstruction. ``--check N`` runs the real
``encode_image`` / ``decode_bitstream`` for every configuration of the first N images
and fails unless the container sizes and the decoded features are identical to those
used here (so the shortcut cannot drift from the real path).

``--times N`` times the real path on the first N images (the paper's Table 6 shape; medians,
seconds, this machine, ``--threads``): NN part 1; per allocation at ``--time-target`` bpp the
precoding (MFIP's levels, or all phi for exhaustive: codings and task losses from an empty
probe), the allocation (the rest of the encoder's time beyond precoding and final coding),
the final coding (the encoder with the allocation's phis given), the decoding, NN part 2.

Printed and written (``--json``): mAP@0.5 and mAP@[.5:.95] of every point, BD-rate
(pchip, rate-accuracy front and MPEG's monotone fit) of each target-driven allocation
against uniform phi (and of each lambda'-driven one), and the rate-control error per target (mean and max of
|bpp_image / T - 1| over images, and the set's bpp against T).

    python -m tools.bench_mfiba --dataset val2017-103 --json docs/mfiba/val2017-103.json
    python -m tools.bench_mfiba --dataset coco128 --limit 32 --allocations uniform,mfiba
    python -m tools.bench_mfiba --allocations uniform --lambdas 7e-5,2e-4,7e-4,2e-3,7e-3,0.02,0.07,0.2 \
        --lambda-allocations mfiba,exhaustive
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_TARGETS = "0.02,0.03,0.045,0.07,0.12,0.2,0.33,0.5"  # spans uniform phi 1..7 of the shipped model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tools.train_fenet import DEV_SETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="val2017-103", choices=sorted(DEV_SETS))
    ap.add_argument("--limit", type=int, default=None, help="first N images (by id) only")
    ap.add_argument("--codec-weights", default=None, help="learned_ps weights (default: the shipped model)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="target bpp values (comma-separated)")
    ap.add_argument("--allocations", default="uniform,mfiba,mfiba_ft", help="allocations driven by the targets")
    ap.add_argument("--lambdas", default="", help="lambda' values (comma-separated; none: no lambda'-driven points)")
    ap.add_argument(
        "--lambda-allocations",
        default="exhaustive",
        help="allocations driven by --lambdas: mfiba, mfiba_ft, exhaustive",
    )
    ap.add_argument(
        "--fitted",
        type=Path,
        default=None,
        help="MFIBA's fitted models from this file (tools/fit_mfiba --out; needs --check 0)",
    )
    ap.add_argument("--levels", default="2,4,6", help="MFIP's precoding levels (--mfip-levels)")
    ap.add_argument("--check", type=int, default=1, help="images checked against the real encoder and decoder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--times", type=int, default=0, help="time the real encoder's phases on the first N images")
    ap.add_argument("--time-target", type=float, default=0.07, help="with --times: the target bpp timed")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    return ap.parse_args(argv)


def positive_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        print(f"error: {what} must be comma-separated positive numbers, got {text!r}", file=sys.stderr)
        raise SystemExit(2)  # a usage error, as argparse's
    return values


def labelled_set(dataset: str) -> tuple[Path, str, str] | None:
    """(assets root, images folder, annotation file) of a DEV_SETS entry; None, with the error
    printed, where the assets do not hold it (the caller exits 2)."""
    from codec.training import data as tdata
    from tools.train_fenet import DEV_SETS

    root = tdata.assets_dir()
    imgs_rel, ann_rel = DEV_SETS[dataset]
    if not (root / ann_rel).is_file():
        print(f"error: {dataset} not found under {root} (set FCM_ASSETS)", file=sys.stderr)
        return None
    return root, imgs_rel, ann_rel


def learned_ps_model(sp, codec_weights: str | None):
    """The learned_ps codec model the encoder would use: (model, model_id, weights digest)."""
    from codec.modes import learned_ps
    from codec.pipeline import resolve_mode

    params = resolve_mode("learned_ps", {"codec_weights": codec_weights})[1]
    return learned_ps._model_of(sp, params)


def bd_against(anchor: list[dict], test: list[dict], metric: str) -> dict:
    """BD-rate (pchip) of `test` against `anchor` on both of the CTC's monotone curve kinds."""
    from ctc.bd_rate import BDError, bd_rate_result, monotone_fit

    out: dict = {}
    for kind in ("front", "monotone"):

        def curve(points: list[dict], kind: str = kind) -> tuple[list[float], list[float]]:
            pts = sorted({p["bpp"]: p for p in points}.values(), key=lambda p: p["bpp"])  # a repeated point once
            if kind == "monotone":
                return [p["bpp"] for p in pts], [
                    float(v) for v in monotone_fit([p["bpp"] for p in pts], [p[metric] for p in pts], 0.0, 1.0)
                ]
            front: list[dict] = []
            for p in pts:
                if not front or p[metric] > front[-1][metric]:
                    front.append(p)
            return [p["bpp"] for p in front], [p[metric] for p in front]

        try:
            r = bd_rate_result(*curve(anchor), *curve(test), "pchip")
            out[kind] = {"bd_rate": round(r.value, 2), "overlap": round(r.overlap, 3)}
        except BDError as e:
            out[kind] = {"bd_rate": None, "error": str(e)}
    return out


def summarise(points: dict[str, list[dict]], allocations: list[str], anchor: str, label: str) -> tuple[dict, dict]:
    """Per driven allocation (a target-driven one, or ``A-lambda``): its BD-rates against the
    `anchor` curve (both metrics, both curve kinds) and, target-driven, its rate control (mean of
    the per-target mean |bpp/T - 1|, the worst image); printed with `label` naming the anchor.
    Returns (BD-rates, rate control) by allocation."""
    bd_all: dict[str, dict] = {}
    control: dict[str, dict] = {}
    for a in allocations:
        bd = bd_all[a] = {m: bd_against(points[anchor], points[a], m) for m in ("map50", "map")}
        driven = "lambda'-driven" if a.endswith("-lambda") else "target-driven"
        cells = "  ".join(
            f"{m} {bd[m][k]['bd_rate']:+.1f} % ({k}, overlap {bd[m][k]['overlap']:.0%})"
            if bd[m][k]["bd_rate"] is not None else f"{m} n/a ({k}: {bd[m][k]['error']})"
            for m in ("map50", "map") for k in ("front", "monotone")
        )  # fmt: skip
        print(f"BD-rate of {a} ({driven}) against {label}: {cells}")
        if a.endswith("-lambda"):
            continue
        errs = [float(pt["mean_abs_error"]) for pt in points[a]]
        worst = max(pt["max_abs_error"] for pt in points[a])
        control[a] = {"mean_abs_error": round(float(np.mean(errs)), 4), "max_abs_error": worst}
        print(f"rate control of {a}: mean |bpp/target - 1| {100 * control[a]['mean_abs_error']:.1f} % "
              f"(max {100 * control[a]['max_abs_error']:.1f} %)")  # fmt: skip
    return bd_all, control


def time_phases(
    image, net, sp, model, fitted, allocations: list[str], target: float, levels: list[int], codec_weights: str | None
) -> dict[str, float]:
    """Seconds of each phase of one image's real encode/decode (--times; module docstring)."""
    from codec.allocation import mfiba
    from codec.modes import learned_ps
    from codec.pipeline import decode_bitstream, encode_image, resolve_mode

    out: dict[str, float] = {}
    for a in allocations:
        given = {"target_bpp": target, "allocation": a, "mfip_levels": ",".join(map(str, levels))}
        mode, params = resolve_mode("learned_ps", {**given, "codec_weights": codec_weights})
        enc = encode_image(image, net, "neck", mode, params)
        out["nn_part1"] = min(out.get("nn_part1", float("inf")), enc.timings["nn_part1"])
        arrays = learned_ps._checked_arrays(enc.features, sp)
        xs = [torch.from_numpy(x).unsqueeze(0) for _, x in arrays]
        t0 = time.perf_counter()
        probe = mfiba.ImageProbe(model, xs, mfiba.task_loss_function(net, "neck", xs), mfiba.ProbeStore())
        for i in range(len(xs)):  # what allocate() precodes: the rates at MFIP's levels, and their losses
            for p in range(model.cfg.num_qualities) if a == "exhaustive" else levels:
                probe.bits(i, p)
                if a != "uniform":
                    probe.scale_loss(i, p)
        precoding = time.perf_counter() - t0
        dec = decode_bitstream(enc.bitstream, net, codec_weights)
        phis = [sc.phi_index for sc in dec.header.mode.scales]  # the allocation the encoder wrote
        mode, params = resolve_mode("learned_ps", {"phis": ",".join(map(str, phis)), "codec_weights": codec_weights})
        final = encode_image(image, net, "neck", mode, params).timings["encode"]
        t0 = time.perf_counter()
        with torch.inference_mode():
            net.part2({k: torch.as_tensor(v) for k, v in dec.features.items()}, "neck", enc.preprocessing)
        out["nn_part2"] = time.perf_counter() - t0
        out[f"{a}:precoding"] = precoding
        out[f"{a}:allocation"] = max(0.0, enc.timings["encode"] - precoding - final)
        out[f"{a}:final_coding"] = final
        out[f"{a}:decoding"] = dec.timings["decode"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from codec.allocation import mfiba
    from codec.allocation.options import ALLOCATIONS
    from codec.modes import learned_ps
    from codec.modes.base import EncodeContext
    from codec.pipeline import build_bitstream, decode_bitstream, encode_image, load_image, resolve_mode
    from codec.training import dev as tdev
    from codec.vision import get_network
    from ctc.coco_eval import evaluate_detections

    torch.set_num_threads(args.threads)
    targets = positive_floats(args.targets, "--targets")
    allocations = [a.strip() for a in args.allocations.split(",") if a.strip()]
    for a in allocations:
        if a not in ALLOCATIONS:
            print(f"error: unknown allocation {a!r} ({', '.join(ALLOCATIONS)})", file=sys.stderr)
            return 2
    lambdas = positive_floats(args.lambdas, "--lambdas") if args.lambdas.strip() else []
    lambda_allocations = [a.strip() for a in args.lambda_allocations.split(",") if a.strip()] if lambdas else []
    for a in lambda_allocations:
        if a not in ALLOCATIONS or a == "uniform":
            print(f"error: --lambda-allocations: {a!r} is not one of mfiba, mfiba_ft, exhaustive", file=sys.stderr)
            return 2
    levels = [int(v) for v in args.levels.split(",")]
    found = labelled_set(args.dataset)
    if found is None:
        return 2
    root, imgs_rel, ann_rel = found
    t0 = time.time()
    net = get_network("nanodet")
    sp = net.split_points["neck"]
    model, model_id, digest = learned_ps_model(sp, args.codec_weights)
    if args.fitted is not None:  # an alternative fit: the encoder would not use it, so nothing to check against
        if args.check or args.times:
            print("error: --fitted needs --check 0 and no --times (the encoder uses the weights' own fit)",
                  file=sys.stderr)  # fmt: skip
            return 2
        try:
            fitted = mfiba.FittedModels.from_json(json.loads(args.fitted.read_text()))
        except (OSError, ValueError, mfiba.EncodeError) as e:
            print(f"error: --fitted {args.fitted}: {e}", file=sys.stderr)
            return 2
        if fitted.codec_weights_sha256 != digest.hex():
            print(f"error: --fitted {args.fitted} is for other codec weights", file=sys.stderr)
            return 2
    else:
        fitted = mfiba.load_fitted(args.codec_weights, model_id, digest)
    q = model.cfg.num_qualities
    dev = tdev.coco_dev_set(net, "neck", root / imgs_rel, root / ann_rel, args.limit, args.dataset)
    meta = {i["id"]: i for i in json.loads((root / ann_rel).read_text())["images"]}
    print(f"{args.dataset}: {len(dev)} images, features in {time.time() - t0:.0f} s", flush=True)

    # (points' name, allocation, target bpp, lambda', phi)
    configs = [("uniform-phi", "uniform", None, None, phi) for phi in range(q)]
    configs += [(a, a, t, None, None) for a in allocations for t in targets]
    configs += [(f"{a}-lambda", a, None, lam, None) for a in lambda_allocations for lam in lambdas]
    keys = [f"{n}|{t}|{lam}|{p}" for n, _, t, lam, p in configs]
    results: dict[str, list[dict]] = {k: [] for k in keys}  # COCO detections
    per_image: dict[str, list[dict]] = {k: [] for k in keys}
    checked = 0
    driven = [n for n in dict.fromkeys(n for n, *_ in configs) if n != "uniform-phi"]
    t_alloc = {n: 0.0 for n in driven}
    for n, img in enumerate(dev.images):
        arrays = learned_ps._checked_arrays(img.features, sp)
        xs = [torch.from_numpy(a).unsqueeze(0) for _, a in arrays]
        task_loss = mfiba.task_loss_function(net, "neck", xs)
        store = mfiba.ProbeStore()
        probe = mfiba.ImageProbe(model, xs, task_loss, store)

        def container_bits(header, units, img=img) -> int:
            return 8 * len(build_bitstream(net, sp, img.prep, learned_ps.MODE_ID, header, units))

        context = EncodeContext(net, "neck", img.prep, container_bits)
        empty = learned_ps.header_and_units(arrays, [0] * len(arrays), model_id, digest, None)
        overhead = container_bits(*empty)
        for key, (name, a, t, lam, p) in zip(keys, configs):
            if p is not None:
                phis = [p] * len(arrays)
            else:
                t1 = time.time()
                plan = mfiba.allocate(model, fitted, arrays, context, lam=lam, allocation=a, levels=levels,
                                      target_bits=None if t is None else t * img.pixels - overhead,
                                      store=store, task_loss=task_loss)  # fmt: skip
                t_alloc[name] += time.time() - t1
                phis = plan.phis
            bits = overhead + sum(probe.bits(i, ph) for i, ph in enumerate(phis))
            feats = {name: probe.rec(i, ph) for i, ((name, _), ph) in enumerate(zip(arrays, phis))}
            with torch.inference_mode():
                dets = net.part2(feats, "neck", img.prep)
            results[key] += dets.to_coco(img.image_id)
            per_image[key].append({"image_id": img.image_id, "phis": list(phis), "bits": bits,
                                   "bpp": bits / img.pixels})  # fmt: skip
            if n < args.check:  # the real encoder and decoder give the same container size and features
                if p is not None:
                    p_real: dict = {"phi": p}
                else:
                    p_real = {"target_bpp": t} if t is not None else {"lambda_": lam}
                    p_real.update(allocation=a, mfip_levels=args.levels)
                mode, params = resolve_mode("learned_ps", {**p_real, "codec_weights": args.codec_weights})
                image = load_image(root / imgs_rel / meta[img.image_id]["file_name"])
                enc = encode_image(image, net, "neck", mode, params)
                dec = decode_bitstream(enc.bitstream, net, args.codec_weights)
                same = 8 * len(enc.bitstream) == bits and all(
                    torch.equal(torch.as_tensor(dec.features[name]).reshape(feats[name].shape), feats[name])
                    for name in feats
                )
                if not same:
                    print(f"error: image {img.image_id} {key}: the real encoder/decoder differ "
                          f"({8 * len(enc.bitstream)} bits against {bits})", file=sys.stderr)  # fmt: skip
                    return 1
                checked += 1
        if (n + 1) % 10 == 0 or n + 1 == len(dev):
            print(f"{n + 1}/{len(dev)} images, {time.time() - t0:.0f} s", flush=True)

    timed: list[dict[str, float]] = []
    for n, img in enumerate(dev.images[: args.times]):
        image = load_image(root / imgs_rel / meta[img.image_id]["file_name"])
        if n == 0:  # untimed: the first calls load the models
            time_phases(image, net, sp, model, fitted, ["mfiba"], args.time_target, levels, args.codec_weights)
        timed.append(time_phases(image, net, sp, model, fitted, ["uniform", "mfiba", "mfiba_ft", "exhaustive"],
                                 args.time_target, levels, args.codec_weights))  # fmt: skip
    ids = [i.image_id for i in dev.images]
    pixels = sum(i.pixels for i in dev.images)
    ref = tdev.evaluate_uncompressed(dev, net, "neck")
    points: dict[str, list[dict]] = {}
    for key, (name, _, t, lam, p) in zip(keys, configs):
        m = evaluate_detections(results[key], dev.annotation_file, ids)
        bpp = sum(r["bits"] for r in per_image[key]) / pixels
        point = {"bpp": round(bpp, 6), "map50": round(m["map50"], 5), "map": round(m["map"], 5)}
        if p is not None:
            point["phi"] = p
        elif lam is not None:
            phis_mean = np.mean([r["phis"] for r in per_image[key]], axis=0)
            point.update(lambda_=lam, phis_mean=[round(float(v), 3) for v in phis_mean])
        else:
            err = np.array([r["bpp"] / t - 1 for r in per_image[key]])
            phis_mean = np.mean([r["phis"] for r in per_image[key]], axis=0)
            point.update(target_bpp=t, mean_abs_error=round(float(np.abs(err).mean()), 4),
                         max_abs_error=round(float(np.abs(err).max()), 4), set_error=round(bpp / t - 1, 4),
                         phis_mean=[round(float(v), 3) for v in phis_mean])  # fmt: skip
        points.setdefault(name, []).append(point)
    out: dict = {
        "command": "python -m tools.bench_mfiba " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "images": len(dev),
        "codec_model": str(args.codec_weights or "fenet_ps_nanodet_neck"),
        "codec_weights_sha256": digest.hex(),
        "levels": levels,
        "fitted": str(args.fitted) if args.fitted else "the weights' own (NAME.mfiba.json)",
        "rate_model": fitted.rate_model,
        "uncompressed": {"map50": round(ref["map50"], 5), "map": round(ref["map"], 5)},
        "checked_configurations": checked,
        "allocation_seconds_per_image": {a: round(v / len(dev), 3) for a, v in t_alloc.items()},
        "points": points,
        "bd_rate_vs_uniform_phi": {},
        "rate_control": {},
    }
    print(f"uncompressed mAP@0.5 {ref['map50']:.4f}  mAP {ref['map']:.4f}; {checked} configurations checked "
          f"against the real encoder/decoder")  # fmt: skip
    print(f"{'allocation':<12} {'target':>7} {'bpp':>8} {'mAP@0.5':>8} {'mAP':>7}  {'mean |err|':>10} {'max |err|':>9}")
    for a, pts in points.items():
        for pt in pts:
            tgt = (f"{pt['target_bpp']:.3f}" if "target_bpp" in pt
                   else f"l {pt['lambda_']:.2g}" if "lambda_" in pt else f"phi {pt['phi']}")  # fmt: skip
            errs = (f"{100 * pt['mean_abs_error']:9.1f} % {100 * pt['max_abs_error']:8.1f} %"
                    if "target_bpp" in pt else "")  # fmt: skip
            print(f"{a:<12} {tgt:>7} {pt['bpp']:8.4f} {pt['map50']:8.4f} {pt['map']:7.4f}  {errs}")
    if timed:
        med = {k: round(float(np.median([t[k] for t in timed])), 4) for k in timed[0]}
        out["times"] = {"images": len(timed), "target_bpp": args.time_target, "threads": args.threads,
                        "median_seconds": med}  # fmt: skip
        print(f"median seconds over {len(timed)} images at {args.time_target} bpp ({args.threads} thread(s)): "
              f"NN part 1 {med['nn_part1']:.3f}, NN part 2 {med['nn_part2']:.3f}")  # fmt: skip
        print(f"{'allocation':<12} {'precoding':>9} {'allocation':>10} {'coding':>7} {'decoding':>8}")
        for a in ("uniform", "mfiba", "mfiba_ft", "exhaustive"):
            print(f"{a:<12} {med[a + ':precoding']:9.3f} {med[a + ':allocation']:10.3f} "
                  f"{med[a + ':final_coding']:7.3f} {med[a + ':decoding']:8.3f}")  # fmt: skip
    out["bd_rate_vs_uniform_phi"], out["rate_control"] = summarise(points, driven, "uniform-phi", "uniform phi")
    out["seconds"] = round(time.time() - t0, 1)
    print(f"({out['seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
