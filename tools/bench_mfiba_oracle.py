"""The ceiling of per-scale allocation for learned_ps: what MFIBA could gain at best, with
the task loss of every allocation measured instead of predicted (issue 10).

MFIBA predicts each scale's importance from a few precodings and allocates by a model of
loss against rate. Its ceiling, for the loss it optimises, is the allocation that picks,
for every image, the combination of per-scale quality indices with the lowest *measured*
task loss (the same label-free distillation loss through NN part 2,
``mfiba.task_loss_function``) among all Q^scales combinations (for NanoDet the loss of a
combination is the sum of its scales' own losses, checked per image: see
``combination_losses``). Two such oracles:

* ``oracle-target`` (per image, the bench's targets): the lowest measured loss among the
  combinations whose container fits in T x pixels (none fits: the smallest). The same
  budget per image as ``--target-bpp``, so its BD-rate against uniform phi is the most any
  target-driven allocation of this codec could gain by choosing per-scale indices against
  this loss;
* ``oracle-lambda`` (a common lambda' over the set): per image the combination minimising
  loss + lambda' x bpp. This also moves bits between images, which one phi per point and a
  target per image do not: the gain of allocating across images as well.

If the oracles gain little, no importance predictor can gain more with this base codec and
this loss; if they gain much, the predictor is what loses it. Bits and features are the
container's exact sizes and the decoder's reconstructions (``mfiba.ImageProbe``, the probe
MFIBA itself runs; ``tools/bench_mfiba.py --check`` ties it to the real encoder and decoder).

    python -m tools.bench_mfiba_oracle --dataset val2017-103 --json docs/mfiba/oracle_val2017-103.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from tools.bench_mfiba import DEFAULT_TARGETS, bd_against, labelled_set, learned_ps_model, positive_floats

CHECKED_COMBINATIONS = 4
ADDITIVE_TOLERANCE = 1e-4
DEFAULT_LAMBDAS = "0.01,0.03,0.1,0.3,1,3,10,30"  # lambda' on loss + lambda' x bpp: spans phi 7 .. 0 (shipped model)


def choose_within_budget(losses: np.ndarray, bits: np.ndarray, budget: float) -> int:
    """The index of the lowest loss among the combinations with bits <= budget (ties: fewer
    bits); none fits: the combination with the fewest bits."""
    fits = np.flatnonzero(bits <= budget)
    if fits.size == 0:
        return int(np.argmin(bits))
    return int(min(fits, key=lambda c: (losses[c], bits[c])))


def choose_for_lambda(losses: np.ndarray, bpp: np.ndarray, lam: float) -> int:
    """The index minimising loss + lam x bpp (ties: fewer bits)."""
    cost = losses + lam * bpp
    best = np.flatnonzero(cost == cost.min())
    return int(best[np.argmin(bpp[best])])


def combination_losses(
    probe, combos: list[tuple[int, ...]], phis: list[int], rng: np.random.Generator, deviation: list[float]
) -> np.ndarray:
    """The measured task loss of every combination. NanoDet's heads see one level each and the
    distillation loss of the uncompressed level is 0, so the loss of a combination is the sum
    of its scales' losses alone (MFIP's d_i(phi), |scales| x |phis| evaluations instead of
    |phis|^|scales|). That is checked on CHECKED_COMBINATIONS random combinations per image
    (their largest relative deviation is appended to `deviation`); where it does not hold,
    every combination is evaluated."""
    per_scale = np.array([[probe.scale_loss(i, p) for p in phis] for i in range(probe.num_scales)])
    index = {p: j for j, p in enumerate(phis)}
    additive = np.array([sum(per_scale[i, index[p]] for i, p in enumerate(c)) for c in combos])
    picks = rng.choice(len(combos), size=min(CHECKED_COMBINATIONS, len(combos)), replace=False)
    worst = max(abs(probe.loss(combos[c]) - additive[c]) / max(abs(probe.loss(combos[c])), 1e-9) for c in picks)
    deviation.append(float(worst))
    if worst <= ADDITIVE_TOLERANCE:
        return additive
    return np.array([probe.loss(c) for c in combos])


def bd_rates(points: dict[str, list[dict]]) -> dict[str, dict]:
    """BD-rates (pchip, both curve kinds, both metrics) of the oracles against uniform phi, printed."""
    bd: dict[str, dict] = {}
    for kind in ("oracle-target", "oracle-lambda"):
        bd[kind] = {m: bd_against(points["uniform-phi"], points[kind], m) for m in ("map50", "map")}
        cells = "  ".join(
            f"{m} {bd[kind][m][k]['bd_rate']:+.1f} % ({k}, overlap {bd[kind][m][k]['overlap']:.0%})"
            if bd[kind][m][k]["bd_rate"] is not None else f"{m} n/a ({k}: {bd[kind][m][k]['error']})"
            for m in ("map50", "map") for k in ("front", "monotone")
        )  # fmt: skip
        print(f"BD-rate of {kind} against uniform phi: {cells}")
    return bd


def report(args: argparse.Namespace, targets: list[float], lambdas: list[float]) -> int:
    """--results: the BD-rates of an earlier run's points again, on the --targets and --lambdas
    given (each point is chosen per image on its own, so a subset is what a run of that subset
    measures); nothing is measured."""
    try:
        earlier = json.loads(args.results.read_text())
        points = earlier["points"]
        keep = {"oracle-target": ("target_bpp", targets), "oracle-lambda": ("lambda", lambdas)}
        for kind, (field, values) in keep.items():
            points[kind] = [p for p in points[kind] if any(abs(p[field] - v) <= 1e-12 * v for v in values)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: --results {args.results}: {e}", file=sys.stderr)
        return 2
    earlier["points"] = points
    earlier["bd_rate_vs_uniform_phi"] = bd_rates(points)
    earlier["report_command"] = "python -m tools.bench_mfiba_oracle " + " ".join(args.argv)
    if args.json:
        args.json.write_text(json.dumps(earlier, indent=2) + "\n")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tools.train_fenet import DEV_SETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="val2017-103", choices=sorted(DEV_SETS))
    ap.add_argument("--limit", type=int, default=None, help="first N images (by id) only")
    ap.add_argument("--codec-weights", default=None, help="learned_ps weights (default: the shipped model)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="target bpp values of oracle-target")
    ap.add_argument("--lambdas", default=DEFAULT_LAMBDAS, help="lambda' values of oracle-lambda")
    ap.add_argument("--phis", default=None, help="the quality indices combined (default: all of the model's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--results", type=Path, default=None,
                    help="report an earlier --json on the --targets / --lambdas given (nothing measured)")  # fmt: skip
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")
    if args.phis is not None:
        try:
            args.phi_list = sorted({int(v) for v in args.phis.split(",")})
        except ValueError:
            ap.error("--phis takes comma-separated integers")
    else:
        args.phi_list = None
    if args.json is not None and not args.json.parent.is_dir():
        ap.error(f"--json {args.json}: {args.json.parent} is not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = positive_floats(args.targets, "--targets")
    lambdas = positive_floats(args.lambdas, "--lambdas")
    if args.results is not None:
        return report(args, targets, lambdas)
    import torch

    from codec.allocation import mfiba
    from codec.modes import learned_ps
    from codec.pipeline import build_bitstream
    from codec.training import dev as tdev
    from codec.vision import get_network
    from ctc.coco_eval import evaluate_detections

    torch.set_num_threads(args.threads)
    found = labelled_set(args.dataset)
    if found is None:
        return 2
    root, imgs_rel, ann_rel = found
    t0 = time.time()
    net = get_network("nanodet")
    sp = net.split_points["neck"]
    model, model_id, digest = learned_ps_model(sp, args.codec_weights)
    q = model.cfg.num_qualities
    phis = args.phi_list if args.phi_list is not None else list(range(q))
    if min(phis) < 0 or max(phis) >= q:
        print(f"error: --phis must be within 0..{q - 1}", file=sys.stderr)
        return 2
    dev = tdev.coco_dev_set(net, "neck", root / imgs_rel, root / ann_rel, args.limit, args.dataset)
    print(f"{args.dataset}: {len(dev)} images, features in {time.time() - t0:.0f} s", flush=True)

    configs = [("uniform-phi", p) for p in phis]
    configs += [("oracle-target", t) for t in targets] + [("oracle-lambda", lam) for lam in lambdas]
    rng = np.random.default_rng(0)
    deviation: list[float] = []  # of the additive shortcut, on the combinations checked
    dets: dict[tuple[str, float], list] = {c: [] for c in configs}
    bits_of: dict[tuple[str, float], list[int]] = {c: [] for c in configs}
    chosen: dict[tuple[str, float], list[tuple[int, ...]]] = {c: [] for c in configs}
    for n, img in enumerate(dev.images):
        arrays = learned_ps._checked_arrays(img.features, sp)
        xs = [torch.from_numpy(a).unsqueeze(0) for _, a in arrays]
        probe = mfiba.ImageProbe(model, xs, mfiba.task_loss_function(net, "neck", xs))

        def container_bits(header, units, img=img) -> int:
            return 8 * len(build_bitstream(net, sp, img.prep, learned_ps.MODE_ID, header, units))

        overhead = container_bits(*learned_ps.header_and_units(arrays, [0] * len(arrays), model_id, digest, None))
        combos = list(itertools.product(phis, repeat=len(arrays)))
        losses = combination_losses(probe, combos, phis, rng, deviation)
        bits = np.array([overhead + sum(probe.bits(i, p) for i, p in enumerate(c)) for c in combos], dtype=np.float64)
        for kind, value in configs:
            if kind == "uniform-phi":
                c = combos.index((value,) * len(arrays))
            elif kind == "oracle-target":
                c = choose_within_budget(losses, bits, value * img.pixels)
            else:
                c = choose_for_lambda(losses, bits / img.pixels, value)
            feats = {name: probe.rec(i, p) for i, ((name, _), p) in enumerate(zip(arrays, combos[c]))}
            with torch.inference_mode():
                dets[(kind, value)] += net.part2(feats, "neck", img.prep).to_coco(img.image_id)
            bits_of[(kind, value)].append(int(bits[c]))
            chosen[(kind, value)].append(combos[c])
        if (n + 1) % 10 == 0 or n + 1 == len(dev):
            print(f"{n + 1}/{len(dev)} images ({len(combos)} combinations each), {time.time() - t0:.0f} s", flush=True)

    ids = [i.image_id for i in dev.images]
    pixels = sum(i.pixels for i in dev.images)
    points: dict[str, list[dict]] = {}
    for kind, value in configs:
        m = evaluate_detections(dets[(kind, value)], dev.annotation_file, ids)
        bpp = sum(bits_of[(kind, value)]) / pixels
        point = {"bpp": round(bpp, 6), "map50": round(m["map50"], 5), "map": round(m["map"], 5),
                 {"uniform-phi": "phi", "oracle-target": "target_bpp", "oracle-lambda": "lambda"}[kind]: value,
                 "phis_mean": [round(float(v), 3) for v in np.mean(chosen[(kind, value)], axis=0)]}  # fmt: skip
        points.setdefault(kind, []).append(point)
    ref = tdev.evaluate_uncompressed(dev, net, "neck")
    print(f"uncompressed mAP@0.5 {ref['map50']:.4f}  mAP {ref['map']:.4f}; the loss of a combination against "
          f"the sum of its scales' losses: largest relative deviation {max(deviation):.2e}")  # fmt: skip
    print(f"{'allocation':<14} {'setting':>9} {'bpp':>8} {'mAP@0.5':>8} {'mAP':>7}  mean phi per scale")
    for kind, pts in points.items():
        for pt in pts:
            setting = pt.get("phi", pt.get("target_bpp", pt.get("lambda")))
            print(f"{kind:<14} {setting:>9} {pt['bpp']:8.4f} {pt['map50']:8.4f} {pt['map']:7.4f}  {pt['phis_mean']}")
    bd = bd_rates(points)
    out = {
        "command": "python -m tools.bench_mfiba_oracle " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "images": len(dev),
        "codec_model": str(args.codec_weights or "fenet_ps_nanodet_neck"),
        "codec_weights_sha256": digest.hex(),
        "phis": phis,
        "uncompressed": {"map50": round(ref["map50"], 5), "map": round(ref["map"], 5)},
        "additive_loss_max_relative_deviation": max(deviation),
        "points": points,
        "bd_rate_vs_uniform_phi": bd,
        "seconds": round(time.time() - t0, 1),
    }
    print(f"({out['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
