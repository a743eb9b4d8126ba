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

``--codec mpeg_anchor_ps`` fits the VVC base codec instead (one QP per scale; quality
index q = 63 - QP): every scale precoded at the QPs ``--qps``, the rate-QP model
ln R_i = a_i q + b_i reported against a linear R_i(QP) = a_i QP + b_i, written under
NETWORK/SPLIT into codec/modes/mpeg_anchor_ps.mfiba.json (or ``--out``):

    python -m tools.fit_mfiba --codec mpeg_anchor_ps --count 6 --qps 22,27,32,37,42,47,52
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
    ap.add_argument("--codec", default="learned_ps", choices=("learned_ps", "mpeg_anchor_ps"))
    ap.add_argument("--weights", default=None, help="learned_ps codec-model weights (.pt beside its .json)")
    ap.add_argument("--qps", default="22,27,32,37,42,47,52", help="mpeg_anchor_ps: the QPs every scale is coded at")
    ap.add_argument("--preset", default="faster", help="mpeg_anchor_ps: the VVenC preset")
    ap.add_argument("--images", default=None, help="training images (default <assets>/train-images)")
    ap.add_argument("--count", type=int, default=40, help="images of the fitting set")
    ap.add_argument("--holdout", type=int, default=64, help="the training programme's held-out images (not used)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rate-model",
        default=None,
        choices=("linear", "log_linear"),
        help="learned_ps: R = a phi + b (the paper's, the default) or ln R = a phi + b; mpeg_anchor_ps: log_linear",
    )
    ap.add_argument("--levels", default=None, help="MFIP's precoding levels (default 2,4,6; QPs 27,37,47 for VVC)")
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


def fit_log_linear(x: np.ndarray, r: np.ndarray) -> tuple[float, float, dict]:
    """ln R = a x + b by least squares: (a, b, its fit measured on R and on ln R)."""
    a, b = np.polyfit(x, np.log(r), 1)
    pred = np.exp(a * x + b)
    return float(a), float(b), {"pearson": pearson(r, pred), "rmse": rmse(r, pred),
                                "pearson_log": pearson(np.log(r), a * x + b)}  # fmt: skip


def fit_rate_phi_log(phi: np.ndarray, r: np.ndarray) -> dict:
    """ln R = a phi + b (learned_ps --rate-model log_linear) against the linear R = a phi + b;
    both measured on R (Pearson r, RMSE in bits per position)."""
    keep = r > 0  # a scale coded to no bits has no logarithm (it has not happened)
    phi, r = phi[keep], r[keep]
    a, b, fit = fit_log_linear(phi, r)
    lin = fit_rate_phi(phi, r)
    return {"a": a, "b": b, "log_linear": fit,
            "linear_phi": {"a": lin["a"], "b": lin["b"], "pearson": lin["pearson"], "rmse": lin["rmse"]},
            "mean_rate": float(r.mean()), "points": int(len(r))}  # fmt: skip


def fit_rate_qp(qp: np.ndarray, r: np.ndarray) -> dict:
    """ln R = a q + b over q = 63 - QP (the model mpeg_anchor_ps uses) against a linear
    R = c QP + d; both fits measured on R (Pearson r, RMSE in bits per position)."""
    a, b, fit = fit_log_linear(63 - qp, r)
    c, d = np.polyfit(qp, r, 1)
    pred_lin = c * qp + d
    return {"a": a, "b": b, "log_linear": fit,
            "linear_qp": {"c": float(c), "d": float(d), "pearson": pearson(r, pred_lin), "rmse": rmse(r, pred_lin)},
            "mean_rate": float(r.mean()), "points": int(len(r))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from codec.allocation import mfiba
    from codec.pipeline import load_image
    from codec.training import data as tdata
    from codec.vision import get_network

    net = get_network(args.network)
    sp = net.split_points[args.split]
    vvc_mode = args.codec == "mpeg_anchor_ps"
    if vvc_mode and args.rate_model == "linear":
        print("error: mpeg_anchor_ps's rate-QP model is log_linear", file=sys.stderr)
        return 2
    log_phi = not vvc_mode and args.rate_model == "log_linear"
    if vvc_mode:
        from codec.modes import mpeg_anchor
        from codec.modes import mpeg_anchor_ps as ps

        lo32, hi32 = mpeg_anchor.encoder_range(sp, None, None)
        grid = [ps.quality_of(int(v)) for v in args.qps.split(",")]
        levels = [ps.quality_of(int(v)) for v in (args.levels or "27,37,47").split(",")]
        q = ps.NUM_QUALITIES
        digest = net.weights_sha256()
    else:
        from codec.models.fenet_ps import load_fenet_ps

        if not args.weights:
            print("error: learned_ps needs --weights", file=sys.stderr)
            return 2
        model, digest = load_fenet_ps(args.weights)
        if tuple(model.cfg.scales) != tuple(sp.scales):
            print(f"error: {args.weights} is not for {args.network}/{args.split}", file=sys.stderr)
            return 2
        levels = [int(v) for v in (args.levels or "2,4,6").split(",")]
        q = model.cfg.num_qualities
        grid = list(range(q))
    root = Path(args.images) if args.images else tdata.assets_dir() / "train-images"
    train, _held = tdata.split_train_images(tdata.list_images(root), args.holdout, args.seed)
    rng = np.random.default_rng(args.seed + 11)
    files = sorted(rng.choice(train, size=min(args.count, len(train)), replace=False).tolist())
    k = len(sp.scales)
    rows = []  # (image, scale, phi, R bits/position, d, w)
    t0 = time.time()
    for n, rel in enumerate(files):
        with torch.inference_mode():
            x, _prep = net.preprocess(load_image(root / rel))
            feats = net.part1(x, args.split)
        xs = [feats[s.name].clone() for s in sp.scales]
        coder = ps.VvcScaleCoder(lo32, hi32, args.preset) if vvc_mode else model
        probe = mfiba.ImageProbe(coder, xs, mfiba.task_loss_function(net, args.split, xs))
        w, _ = mfiba.mfip(probe, levels)
        for i in range(k):
            for p in grid:
                rows.append((n, i, p, probe.rate(i, p), probe.scale_loss(i, p), float(w[i])))
        if n % 5 == 0:
            print(f"{n + 1}/{len(files)} images, {time.time() - t0:.0f} s", flush=True)
    a = np.array(rows, dtype=np.float64)
    scale_idx, phi, rate, d, w = a[:, 1].astype(int), a[:, 2], a[:, 3], a[:, 4], a[:, 5]
    task_fit = fit_task_rate(d, w, rate)
    if vvc_mode:
        rate_fits = [fit_rate_qp(63 - phi[scale_idx == i], rate[scale_idx == i]) for i in range(k)]
    elif log_phi:
        rate_fits = [fit_rate_phi_log(phi[scale_idx == i], rate[scale_idx == i]) for i in range(k)]
    else:
        rate_fits = [fit_rate_phi(phi[scale_idx == i], rate[scale_idx == i]) for i in range(k)]
    names = [s.name for s in sp.scales]

    print("\nTable 1: task loss-rate model d_i = w_i alpha R_i^-beta against a quadratic model")
    print(f"  {'model':<34} {'Pearson r':>10} {'RMSE':>10}")
    label = f"Cauchy  (alpha {task_fit['alpha']:.4g}, beta {task_fit['beta']:.4g})"
    print(f"  {label:<34} "
          f"{task_fit['cauchy']['pearson']:>10.4f} {task_fit['cauchy']['rmse']:>10.4g}")  # fmt: skip
    print(f"  {'quadratic':<34} {task_fit['quadratic']['pearson']:>10.4f} {task_fit['quadratic']['rmse']:>10.4g}")
    print(f"  ({task_fit['points']} points: {len(files)} training images x {k} scales x {len(grid)} levels)")
    if vvc_mode:
        print("\nTable 2: rate-QP model ln R_i = a_i (63 - QP) + b_i against a linear R_i = c_i QP + d_i")
        print(
            f"  {'scale':<6} {'a_i':>8} {'b_i':>8} {'r log-lin':>10} {'RMSE':>8} {'r linear':>9} {'RMSE':>8}"
            f" {'mean R':>8}"
        )
        for name, f in zip(names, rate_fits):
            ll, li = f["log_linear"], f["linear_qp"]
            print(f"  {name:<6} {f['a']:>8.4f} {f['b']:>8.3f} {ll['pearson']:>10.4f} {ll['rmse']:>8.4f} "
                  f"{li['pearson']:>9.4f} {li['rmse']:>8.4f} {f['mean_rate']:>8.4f}")  # fmt: skip
    elif log_phi:
        print("\nTable 2: rate-phi model ln R_i = a_i phi + b_i against a linear R_i = c_i phi + d_i")
        print(f"  {'scale':<6} {'a_i':>8} {'b_i':>8} {'r log-lin':>10} {'RMSE':>8} {'r linear':>9} {'RMSE':>8}")
        for name, f in zip(names, rate_fits):
            ll, li = f["log_linear"], f["linear_phi"]
            print(f"  {name:<6} {f['a']:>8.4f} {f['b']:>8.3f} {ll['pearson']:>10.4f} {ll['rmse']:>8.4f} "
                  f"{li['pearson']:>9.4f} {li['rmse']:>8.4f}")  # fmt: skip
    else:
        print("\nTable 2: rate-phi model R_i(phi) = a_i phi + b_i (bits per position of the scale)")
        print(f"  {'scale':<6} {'a_i':>9} {'b_i':>9} {'Pearson r':>10} {'RMSE':>9} {'mean R':>9}")
        for name, f in zip(names, rate_fits):
            cols = f"{f['a']:>9.4f} {f['b']:>9.4f} {f['pearson']:>10.4f} {f['rmse']:>9.4f} {f['mean_rate']:>9.4f}"
            print(f"  {name:<6} {cols}")

    fitted = mfiba.FittedModels(
        alpha=task_fit["alpha"],
        beta=task_fit["beta"],
        rate_phi=tuple(mfiba.RatePhiLine(f["a"], f["b"], vvc_mode or log_phi) for f in rate_fits),
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
            **(
                {
                    "qps": [int(v) for v in args.qps.split(",")],
                    "preset": args.preset,
                    "range": [float(lo32), float(hi32)],
                    "codec_weights_sha256_is": "the network's weights (VVC has no codec weights)",
                }
                if vvc_mode
                else {}
            ),
            "task_loss": "distillation through NN part 2's heads against the uncompressed features "
            "(codec/training/task.py), scale i alone replaced by its reconstruction",
            "rate_unit": "bits of the scale's VVC picture per position of the scale"
            if vvc_mode
            else "bits of the scale's rANS strings per position of the scale",
            "table1_task_rate": task_fit,
            ("table2_rate_qp" if vvc_mode else "table2_rate_phi"): dict(zip(names, rate_fits)),
            "seconds": round(time.time() - t0, 1),
        },  # fmt: skip
        rate_model="log_linear" if vvc_mode or log_phi else "linear",
    )
    if vvc_mode:
        out = Path(args.out) if args.out else ps.FITTED_FILE
        table = json.loads(out.read_text()) if out.is_file() else {}
        table[ps.fitted_key(args.network, args.split)] = fitted.to_json()
        out.write_text(json.dumps(table, indent=2) + "\n")
    else:
        out = Path(args.out) if args.out else mfiba.fitted_path(args.weights)
        out.write_text(json.dumps(fitted.to_json(), indent=2) + "\n")
    if args.rows:
        Path(args.rows).write_text(json.dumps({"columns": ["image", "scale", "phi", "rate", "d", "w"], "rows": rows}))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
