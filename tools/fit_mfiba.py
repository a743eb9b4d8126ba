"""Fit MFIBA's offline models for a learned_ps codec model on training images and print
their fit (codec/allocation/mfiba.py):

* the task loss-rate model d_i = w_i alpha R_i^(-beta) against a quadratic model
  d_i = w_i (c2 R_i^2 + c1 R_i + c0) (Pearson correlation and RMSE of the predicted task
  losses; the shape of the MFIBA paper's Table 1);
* the rate-phi model R_i(phi) = a_i phi + b_i of every scale (its correlation and RMSE;
  the paper's Table 2).

Every image of the fitting set is precoded at every quality index of every scale (exact
bits of the rANS strings, the decoder's reconstruction): scale i alone replaced, d_i(phi)
is the task loss against NN part 2's output on the uncompressed features; w_i is MFIP's
importance from the levels ``--levels``. Writes NAME.mfiba.json beside the weights (or
``--out``), which learned_ps reads for ``--target-bpp`` / ``--lambda``.

    python -m tools.fit_mfiba --weights codec/models/weights/fenet_ps_nanodet_neck.pt --count 40 --threads 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="learned_ps codec-model weights (.pt beside its .json)")
    ap.add_argument("--images", default=None, help="training images (default <assets>/train-images)")
    ap.add_argument("--count", type=int, default=40, help="images of the fitting set")
    ap.add_argument("--holdout", type=int, default=64, help="the training programme's held-out images (not used)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", default="2,4,6", help="MFIP's precoding levels")
    ap.add_argument("--network", default="nanodet")
    ap.add_argument("--split", default="neck")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="output JSON (default NAME.mfiba.json beside the weights)")
    ap.add_argument("--rows", default=None, help="also write the measured rows (image, scale, phi, R, d, w) here")
    return ap.parse_args(argv)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def fit_task_rate(d: np.ndarray, w: np.ndarray, r: np.ndarray) -> dict:
    """alpha, beta of d = w alpha R^-beta (least squares on the losses, from the log-domain
    fit), and the quadratic d = w (c2 R^2 + c1 R + c0) (linear least squares); their fits."""
    from scipy.optimize import curve_fit

    ok = (d > 0) & (w > 0) & (r > 0)
    slope, icept = np.polyfit(np.log(r[ok]), np.log(d[ok] / w[ok]), 1)
    p0 = (float(np.exp(icept)), float(max(-slope, 1e-3)))

    def cauchy(x, alpha, beta):
        return x[1] * alpha * x[0] ** (-beta)

    try:
        (alpha, beta), _ = curve_fit(cauchy, np.vstack([r, w]), d, p0=p0, bounds=([1e-12, 1e-4], [1e6, 20.0]))
    except RuntimeError:  # no convergence: the log-domain fit
        alpha, beta = p0
    pred_c = cauchy(np.vstack([r, w]), alpha, beta)
    design = np.stack([w * r**2, w * r, w], axis=1)
    coef, *_ = np.linalg.lstsq(design, d, rcond=None)
    pred_q = design @ coef
    return {
        "alpha": float(alpha),
        "beta": float(beta),
        "log_domain_start": {"alpha": p0[0], "beta": p0[1]},
        "cauchy": {"pearson": pearson(d, pred_c), "rmse": rmse(d, pred_c)},
        "quadratic": {"c2": float(coef[0]), "c1": float(coef[1]), "c0": float(coef[2]),
                      "pearson": pearson(d, pred_q), "rmse": rmse(d, pred_q)},
        "points": int(len(d)),
    }  # fmt: skip


def fit_rate_phi(phi: np.ndarray, r: np.ndarray) -> dict:
    a, b = np.polyfit(phi, r, 1)
    pred = a * phi + b
    return {"a": float(a), "b": float(b), "pearson": pearson(r, pred), "rmse": rmse(r, pred),
            "mean_rate": float(r.mean()), "points": int(len(r))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from codec.allocation import mfiba
    from codec.models.fenet_ps import load_fenet_ps
    from codec.pipeline import load_image
    from codec.training import data as tdata
    from codec.vision import get_network

    model, digest = load_fenet_ps(args.weights)
    net = get_network(args.network)
    sp = net.split_points[args.split]
    if tuple(model.cfg.scales) != tuple(sp.scales):
        print(f"error: {args.weights} is not for {args.network}/{args.split}", file=sys.stderr)
        return 2
    levels = [int(v) for v in args.levels.split(",")]
    root = Path(args.images) if args.images else tdata.assets_dir() / "train-images"
    train, _held = tdata.split_train_images(tdata.list_images(root), args.holdout, args.seed)
    rng = np.random.default_rng(args.seed + 11)
    files = sorted(rng.choice(train, size=min(args.count, len(train)), replace=False).tolist())
    q, k = model.cfg.num_qualities, len(sp.scales)
    rows = []  # (image, scale, phi, R bits/position, d, w)
    t0 = time.time()
    for n, rel in enumerate(files):
        with torch.inference_mode():
            x, _prep = net.preprocess(load_image(root / rel))
            feats = net.part1(x, args.split)
        xs = [feats[s.name].clone() for s in sp.scales]
        probe = mfiba.ImageProbe(model, xs, mfiba.task_loss_function(net, args.split, xs))
        w, _ = mfiba.mfip(probe, levels)
        for i in range(k):
            for p in range(q):
                rows.append((n, i, p, probe.rate(i, p), probe.scale_loss(i, p), float(w[i])))
        if n % 5 == 0:
            print(f"{n + 1}/{len(files)} images, {time.time() - t0:.0f} s", flush=True)
    a = np.array(rows, dtype=np.float64)
    scale_idx, phi, rate, d, w = a[:, 1].astype(int), a[:, 2], a[:, 3], a[:, 4], a[:, 5]
    task_fit = fit_task_rate(d, w, rate)
    rate_fits = [fit_rate_phi(phi[scale_idx == i], rate[scale_idx == i]) for i in range(k)]
    names = [s.name for s in sp.scales]

    print("\nTable 1: task loss-rate model d_i = w_i alpha R_i^-beta against a quadratic model")
    print(f"  {'model':<34} {'Pearson r':>10} {'RMSE':>10}")
    label = f"Cauchy  (alpha {task_fit['alpha']:.4g}, beta {task_fit['beta']:.4g})"
    print(f"  {label:<34} "
          f"{task_fit['cauchy']['pearson']:>10.4f} {task_fit['cauchy']['rmse']:>10.4g}")  # fmt: skip
    print(f"  {'quadratic':<34} {task_fit['quadratic']['pearson']:>10.4f} {task_fit['quadratic']['rmse']:>10.4g}")
    print(f"  ({task_fit['points']} points: {len(files)} training images x {k} scales x {q} phi)")
    print("\nTable 2: rate-phi model R_i(phi) = a_i phi + b_i (bits per position of the scale)")
    print(f"  {'scale':<6} {'a_i':>9} {'b_i':>9} {'Pearson r':>10} {'RMSE':>9} {'mean R':>9}")
    for name, f in zip(names, rate_fits):
        cols = f"{f['a']:>9.4f} {f['b']:>9.4f} {f['pearson']:>10.4f} {f['rmse']:>9.4f} {f['mean_rate']:>9.4f}"
        print(f"  {name:<6} {cols}")

    fitted = mfiba.FittedModels(
        alpha=task_fit["alpha"],
        beta=task_fit["beta"],
        rate_phi=tuple(mfiba.RatePhiLine(f["a"], f["b"]) for f in rate_fits),
        scales=tuple(names),
        num_qualities=q,
        codec_weights_sha256=digest,
        record={
            "command": "python -m tools.fit_mfiba " + " ".join(shlex.quote(v) for v in (argv or sys.argv[1:])),
            "images": {
                "root": root.name,
                "count": len(files),
                "files_sha256": tdata.file_list_sha256(files),
                "from": "the training split (codec.training.data.split_train_images), never the dev set",
            },
            "levels": levels,
            "task_loss": "distillation through NN part 2's heads against the uncompressed features "
            "(codec/training/task.py), scale i alone replaced by its reconstruction",
            "rate_unit": "bits of the scale's rANS strings per position of the scale",
            "table1_task_rate": task_fit,
            "table2_rate_phi": dict(zip(names, rate_fits)),
            "seconds": round(time.time() - t0, 1),
        },  # fmt: skip
    )
    out = Path(args.out) if args.out else mfiba.fitted_path(args.weights)
    out.write_text(json.dumps(fitted.to_json(), indent=2) + "\n")
    if args.rows:
        Path(args.rows).write_text(json.dumps({"columns": ["image", "scale", "phi", "rate", "d", "w"], "rows": rows}))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
