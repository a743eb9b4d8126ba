"""Time the learned_e2e codec per image against NN part 1 / part 2 (and the VVC anchor).

For each image: NN part 1 (preprocess + part1), FENet encode (analysis + hyper +
fixed-point entropy parameters + rANS), decode split into entropy decoding
(rANS + fixed-point entropy parameters) and DRNet reconstruction (fixed point,
bit-exact; the float DRNet time is shown for reference), NN part 2; optionally
the anchor mode (VVC) encode and decode of the same features. Median seconds
over the images (after one warm-up image), with torch threads as given.

    python -m tools.bench_fenet --images <assets>/coco/coco128 --count 16 --threads 1

`bd` combines fcm_ctc runs made at different commits (each run's cache key covers
its own sources, so anchors computed once need not be recomputed): it reads their
summary.csv files, checks that the reference line (uncompressed) agrees, and
prints BD-rate / BD-mAP of every test codec against every anchor and the
near-lossless rate (ctc.bd_rate, pchip):

    python -m tools.bench_fenet bd --anchors runs/A --tests runs/B --anchor-codecs image_anchor,feature_anchor
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from codec.files import assets_path
from codec.models.fenet import load_fenet
from codec.pipeline import load_image
from codec.vision import get_network


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _read_summary(run: Path) -> list[dict]:
    import csv

    with open(run / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Rate-accuracy front as in ctc.metrics: by rate, keep points that improve the metric."""
    out: list[tuple[float, float]] = []
    for r, m in sorted(points):
        if not out or m > out[-1][1]:
            out.append((r, m))
    return out


def bd_main(argv: list[str]) -> int:
    from ctc.bd_rate import bd_metric, bd_rate, near_lossless_rate

    ap = argparse.ArgumentParser(prog="bench_fenet.py bd", description="BD-rates across fcm_ctc runs")
    ap.add_argument("--anchors", required=True, type=Path, help="run directory holding the anchors")
    ap.add_argument("--tests", required=True, type=Path, nargs="+", help="run directories holding the test codecs")
    ap.add_argument("--anchor-codecs", default="image_anchor,feature_anchor")
    ap.add_argument("--reference", default="uncompressed")
    ap.add_argument("--metric", default="map50")
    ap.add_argument("--max-rel-loss", type=float, default=0.01)
    args = ap.parse_args(argv)
    rows_a = _read_summary(args.anchors)
    curves: dict[str, list[tuple[float, float]]] = {}
    source: dict[str, Path] = {}  # the run each codec's curve comes from
    ref = {}
    runs = list(dict.fromkeys(p.resolve() for p in [args.anchors, *args.tests]))  # a run given twice counts once
    tests = {p.resolve() for p in args.tests}
    for run in runs:
        for r in _read_summary(run):
            if r["codec"] == args.reference:
                ref[str(run)] = (float(r[args.metric]), int(r["n_images"]))
            elif run not in tests and r["codec"] not in args.anchor_codecs.split(
                ","
            ):  # the anchors' run: its anchors only
                continue
            elif source.setdefault(r["codec"], run) != run:
                print(
                    f"note: {r['codec']} of {run} left out (its curve is taken from {source[r['codec']]})",
                    file=sys.stderr,
                )
            else:
                curves.setdefault(r["codec"], []).append((float(r["bpp"]), float(r[args.metric])))
    if len({v for v in ref.values()}) > 1:
        print(f"error: the runs disagree on the reference line: {ref}", file=sys.stderr)
        return 2
    ref_metric = next(iter(ref.values()))[0] if ref else None
    anchors = [a for a in args.anchor_codecs.split(",") if a in curves]
    n_img = {int(r["n_images"]) for r in rows_a}
    print(f"metric {args.metric}; images per point {sorted(n_img)}; reference {args.reference} = {ref_metric}")
    print(f"{'codec':18s} {'anchor':16s} {'BD-rate %':>10s} {'BD-' + args.metric:>12s}")
    for name, pts in curves.items():
        if name in anchors:
            continue
        pts.sort()
        for a in anchors:
            ra, ma = zip(*_front(curves[a]))
            rt, mt = zip(*_front(pts))
            try:
                br = f"{bd_rate(ra, ma, rt, mt):10.1f}"
            except Exception as e:  # no overlap of the metric ranges, too few points, ...
                br = f"{'n/a':>10s}  ({str(e).splitlines()[0][:60]})"
            try:
                bm = f"{bd_metric(ra, ma, rt, mt):12.4f}"
            except Exception:
                bm = f"{'n/a':>12s}"
            print(f"{name:18s} {a:16s} {br} {bm}")
    if ref_metric is not None:
        print(f"near-lossless (< {100 * args.max_rel_loss:.0f} % relative {args.metric} loss):")
        for name, pts in curves.items():
            pts.sort()
            r = near_lossless_rate([p[0] for p in pts], [p[1] for p in pts], ref_metric, args.max_rel_loss)
            best = max(p[1] for p in pts)
            print(f"  {name:18s} {'none' if r is None else f'{r:.5f} bpp'} (best {args.metric} {best:.4f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bd"]:
        return bd_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=None, help="image folder (default: <assets>/coco/coco128, recursive)")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--phi", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="FENet weights (default: shipped)")
    ap.add_argument("--no-anchor", action="store_true", help="skip the VVC anchor comparison")
    ap.add_argument("--anchor-qp", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.images) if args.images else assets_path() / "coco" / "coco128"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.count + 1]
    if len(files) < 2:
        print(f"error: need at least 2 images under {root}", file=sys.stderr)
        return 2
    net = get_network("nanodet")
    split = net.default_split
    model, digest = load_fenet(args.weights)
    rows: dict[str, list[float]] = {}
    bits = []
    for k, f in enumerate(files):
        image = load_image(f)
        with torch.inference_mode():
            (x, meta), t_pre = _timed(net.preprocess, image)
            feats, t_p1 = _timed(net.part1, x, split)
        c, t_enc = _timed(model.compress, feats, args.phi)
        d, t_ent = _timed(model.decode_latents, c.z_string, c.y_string, c.phi, c.sizes, c.z_crc32, c.y_crc32)
        rec, t_rec = _timed(model.reconstruct, d.y_hat, c.sizes)
        with torch.no_grad():
            _, t_rec_float = _timed(model.drnet, d.y_hat, c.sizes)
        with torch.inference_mode():
            _, t_p2 = _timed(net.part2, rec, split, meta)
        t = {
            "nn_part1": t_pre + t_p1,
            "fenet_encode": t_enc,
            "decode_entropy": t_ent,
            "decode_drnet_fixed": t_rec,
            "decode_total": t_ent + t_rec,
            "(drnet_float)": t_rec_float,
            "nn_part2": t_p2,
        }
        if not args.no_anchor:
            from codec.pipeline import decode_bitstream, encode_features

            # the anchor through the data path of the apps and the CTC (container included)
            data, t_aenc = _timed(encode_features, feats, net, split, meta, "anchor", {"qp": args.anchor_qp})
            _, t_adec = _timed(decode_bitstream, data, net)
            t["anchor_vvc_encode"] = t_aenc
            t["anchor_vvc_decode"] = t_adec
        if k == 0:
            continue  # warm-up
        bits.append(8 * (len(c.z_string) + len(c.y_string)))
        for key, v in t.items():
            rows.setdefault(key, []).append(v)
    print(
        f"images: {len(files) - 1} from {root} (after 1 warm-up), threads {torch.get_num_threads()}, "
        f"phi {args.phi}, weights sha256 {digest[:12]}..."
    )
    print(f"latent payload: median {int(np.median(bits))} bits/image")
    print(f"{'stage':22s} {'median ms':>10s}")
    for key, v in rows.items():
        print(f"{key:22s} {1000 * float(np.median(v)):10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
