"""Choose the vvc_msff QP -> kept-channel table from measurement, and evaluate
the mode and its ablations against the anchors.

``tune``: on held-out train-images (the images tools/train_msff.py never trains
on; never COCO128 or val2017-103), encode each image at every (QP, kept count)
pair through the real mode (MSFF, 10-bit quantisation, frame packing, VVC,
exact MSFR), run NN part 2, and score mAP@0.5 against pseudo ground truth (the
uncompressed network's detections with score >= --gt-score; there are no labels
for these images). For each QP the chosen count is the smallest whose mAP@0.5 is
within --tolerance (absolute) of the best count at that QP; the table is then
made non-increasing in QP. Prints the table and writes every measurement to --out.

``eval``: on a labelled COCO set (first --limit images by id), measure bpp and
mAP for the feature anchor, the image anchor, vvc_msff with the shipped table,
vvc_msff without truncation (all channels at every QP) and vvc_msff with other
weights (the no-SLS ablation), and print BD-rates against both anchors.

    python -m tools.tune_truncation tune --images 16 --out tune.json
    python -m tools.tune_truncation eval --dataset val2017-103 --limit 16 --lines feature_anchor,image_anchor \\
        --out anchors.json
    python -m tools.tune_truncation report anchors.json msff.json
    python -m tools.tune_truncation compare tune_shipped.json tune_other.json

``compare``: two ``tune`` outputs of the same images (e.g. two weights files), the second
against the first: BD-rate (pchip, rate-accuracy front) on the points each one's chosen
table codes, and on each QP's best kept count (the most a table could get at those QPs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from codec.bitstream import CodecModelId
from codec.files import assets_path
from codec.modes import vvc_msff
from codec.pipeline import decode_bitstream, encode_features, load_image
from codec.vision import get_network
from ctc.bd_rate import bd_rate
from ctc.coco_eval import evaluate_detections
from tools.train_msff import list_images, split_train_images

COCO_IDS = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
]


class Coder:
    """vvc_msff with a given weights file and kept-channel count, through the data path of
    the apps and the CTC (codec.pipeline: container with network checks, then decoding)."""

    def __init__(self, net, split: str, weights: str | Path | None) -> None:
        self.net, self.split, self.weights = net, split, None if weights is None else str(weights)
        self.sp = net.split_points[split]
        self.model_id = CodecModelId.MSFF_NANODET_NECK if weights else vvc_msff.model_id_for(self.sp)
        self.model, _, self.digest = vvc_msff.model_for(self.model_id, weights)

    def code(self, feats, prep, qp: int, kept: int):
        params = {"qp": qp, "preset": "faster", "kept_channels": kept, "codec_weights": self.weights}
        data = encode_features(feats, self.net, self.split, prep, "vvc_msff", params)
        return len(data), decode_bitstream(data, self.net, self.weights).features


def anchor_code(net, split, feats, prep, qp: int):
    data = encode_features(feats, net, split, prep, "anchor", {"qp": qp})
    return len(data), decode_bitstream(data, net).features


def image_anchor_code(net, split, image: np.ndarray, qp: int):
    from codec.inner import vvc

    bits = vvc.encode_rgb_image(image, qp, "faster")
    rec = vvc.decode_rgb_image(bits, image.shape[1], image.shape[0])
    x, prep = net.preprocess(rec)
    return len(bits), net.part1(x, split), prep


def pseudo_ground_truth(dets_by_image: dict[int, list[dict]], sizes: dict[int, tuple[int, int]], path: Path,
                        min_score: float) -> None:  # fmt: skip
    anns = []
    for iid, dets in dets_by_image.items():
        for d in dets:
            if d["score"] >= min_score:
                x, y, w, h = d["bbox"]
                anns.append(dict(id=len(anns) + 1, image_id=iid, category_id=d["category_id"], bbox=[x, y, w, h],
                                 area=float(w * h), iscrowd=0))  # fmt: skip
    images = [dict(id=i, width=w, height=h, file_name=str(i)) for i, (w, h) in sizes.items()]
    cats = [dict(id=c, name=str(c)) for c in COCO_IDS]
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))


def tune(args: argparse.Namespace) -> int:
    net = get_network("nanodet")
    coder = Coder(net, args.split, args.weights)
    c = coder.model.cfg.fused_channels
    root = assets_path() / "train-images"
    _, held = split_train_images(list_images(root), args.holdout, args.seed)
    held = held[: args.images]
    qps = [int(q) for q in args.qps.split(",")]
    cands = sorted({min(c, int(k)) for k in args.candidates.split(",")})
    results: dict[tuple[int, int], list[dict]] = {(q, k): [] for q in qps for k in cands}
    bits: dict[tuple[int, int], float] = {(q, k): 0.0 for q in qps for k in cands}
    ref, sizes, pixels = {}, {}, 0
    t0 = time.time()
    for iid, rel in enumerate(held, start=1):
        image = load_image(root / rel)
        x, prep = net.preprocess(image)
        feats = net.part1(x, args.split)
        ref[iid] = net.part2(feats, args.split, prep).to_coco(iid)
        sizes[iid] = (image.shape[1], image.shape[0])
        pixels += image.shape[0] * image.shape[1]
        for q in qps:
            for k in cands:
                n, rec = coder.code(feats, prep, q, k)
                bits[(q, k)] += 8 * n
                results[(q, k)] += net.part2(rec, args.split, prep).to_coco(iid)
        print(f"image {iid}/{len(held)} {time.time() - t0:.0f}s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcm_tune_") as tmp:
        gt = Path(tmp, "pseudo_gt.json")
        pseudo_ground_truth(ref, sizes, gt, args.gt_score)
        for (q, k), res in results.items():
            m = evaluate_detections(res, gt, list(sizes))
            rows.append(dict(qp=q, kept=k, bpp=bits[(q, k)] / pixels, map50=m["map50"], map=m["map"]))
    table, prev = {}, c
    for q in qps:
        at_q = [r for r in rows if r["qp"] == q]
        best = max(r["map50"] for r in at_q)
        ok = [r["kept"] for r in at_q if r["map50"] >= best - args.tolerance]
        prev = min(prev, min(ok))
        table[q] = prev
    for r in rows:
        print(f"qp {r['qp']:2d} kept {r['kept']:3d} bpp {r['bpp']:.4f} map50 {r['map50']:.4f} map {r['map']:.4f}")
    print("chosen table:", json.dumps(table))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            images=[f"train-images/{h}" for h in held], holdout=args.holdout, seed=args.seed, gt_score=args.gt_score,
            tolerance=args.tolerance, weights=str(args.weights or "shipped"), rows=rows, table=table,
        ), indent=1) + "\n")  # fmt: skip
    return 0


DATASETS = {
    "val2017-103": ("coco/val2017-103/images", "coco/val2017-103/annotations/instances_val2017_103.json"),
    "coco128": ("coco/coco128/images", "coco/coco128/annotations/instances_train2017.json"),
}


ALL_LINES = ("feature_anchor", "image_anchor", "vvc_msff", "vvc_msff_no_truncation", "vvc_msff_no_sls")


def evaluate(args: argparse.Namespace) -> int:
    from pycocotools.coco import COCO

    net = get_network("nanodet")
    img_dir, ann = (assets_path() / p for p in DATASETS[args.dataset])
    gt = COCO(str(ann))
    ids = sorted(gt.getImgIds())[: args.limit]
    qps = [int(q) for q in args.qps.split(",")]
    names = args.lines.split(",")
    unknown = set(names) - set(ALL_LINES)
    if unknown or ("vvc_msff_no_sls" in names and not args.nosls_weights):
        print(f"error: unknown lines {sorted(unknown)} or vvc_msff_no_sls without --nosls-weights", file=sys.stderr)
        return 2
    coders = {}
    if {"vvc_msff", "vvc_msff_no_truncation"} & set(names):
        coders["main"] = Coder(net, args.split, args.weights)
    if "vvc_msff_no_sls" in names:
        coders["nosls"] = Coder(net, args.split, args.nosls_weights)
    acc = {(name, q): [0, []] for name in names for q in qps}
    ref, pixels = [], 0
    t0 = time.time()
    for n, iid in enumerate(ids, 1):
        info = gt.loadImgs(iid)[0]
        image = load_image(img_dir / info["file_name"])
        pixels += image.shape[0] * image.shape[1]
        x, prep = net.preprocess(image)
        feats = net.part1(x, args.split)
        ref += net.part2(feats, args.split, prep).to_coco(iid)
        for q in qps:
            for name in names:
                if name == "image_anchor":
                    nbytes, f2, prep2 = image_anchor_code(net, args.split, image, q)
                    acc[(name, q)][0] += 8 * nbytes
                    acc[(name, q)][1] += net.part2(f2, args.split, prep2).to_coco(iid)
                    continue
                if name == "feature_anchor":
                    nbytes, rec = anchor_code(net, args.split, feats, prep, q)
                else:
                    coder = coders["nosls" if name == "vvc_msff_no_sls" else "main"]
                    c = coder.model.cfg.fused_channels
                    kept = c if name == "vvc_msff_no_truncation" else vvc_msff.kept_channels_for_qp(q, c)
                    nbytes, rec = coder.code(feats, prep, q, kept)
                acc[(name, q)][0] += 8 * nbytes
                acc[(name, q)][1] += net.part2(rec, args.split, prep).to_coco(iid)
        print(f"image {n}/{len(ids)} {time.time() - t0:.0f}s", flush=True)
    out = {"dataset": args.dataset, "image_ids": ids, "qps": qps, "table": vvc_msff.TRUNCATION_TABLE,
           "uncompressed": evaluate_detections(ref, ann, ids), "lines": {}}  # fmt: skip
    for name in names:
        rows = []
        for q in qps:
            m = evaluate_detections(acc[(name, q)][1], ann, ids)
            rows.append(dict(qp=q, bpp=acc[(name, q)][0] / pixels, map50=m["map50"], map=m["map"]))
            print(f"{name:24s} qp {q:2d} bpp {rows[-1]['bpp']:.4f} map50 {m['map50']:.4f} map {m['map']:.4f}")
        out["lines"][name] = rows
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def report(args: argparse.Namespace) -> int:
    """Merge eval JSONs of the same images and print BD-rates against both anchors."""
    runs = [json.loads(Path(p).read_text()) for p in args.inputs]
    if len({tuple(r["image_ids"]) for r in runs}) != 1:
        print("error: the eval files cover different images", file=sys.stderr)
        return 2
    lines = {k: v for r in runs for k, v in r["lines"].items()}
    bd = {}
    for name in lines:
        for anc in ("feature_anchor", "image_anchor"):
            if name == anc or anc not in lines:
                continue
            for metric in ("map50", "map"):
                a, t = lines[anc], lines[name]
                try:
                    v: float | str = bd_rate([r["bpp"] for r in a], [r[metric] for r in a], [r["bpp"] for r in t],
                                             [r[metric] for r in t])  # fmt: skip
                except Exception as e:  # no overlap of the metric ranges, non-monotone curves
                    v = f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
                bd[f"{name} vs {anc} ({metric})"] = v
    print(f"images: {runs[0]['dataset']} ids {runs[0]['image_ids']}")
    print(f"uncompressed: {runs[0]['uncompressed']}")
    for name, rows in lines.items():
        for r in rows:
            print(f"{name:24s} qp {r['qp']:2d} bpp {r['bpp']:.4f} map50 {r['map50']:.4f} map {r['map']:.4f}")
    for k, v in bd.items():
        print(f"BD-rate {k}: {v if isinstance(v, str) else f'{v:.1f} %'}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(lines=lines, bd_rate_percent=bd), indent=1) + "\n")
    return 0


def tune_curves(tuned: dict) -> dict[str, list[dict]]:
    """The curves of a ``tune`` output: "table" (each QP at its chosen kept count) and
    "best_per_qp" (each QP at the kept count of its highest mAP@0.5, the fewer channels on a tie)."""
    rows, table = tuned["rows"], {int(q): k for q, k in tuned["table"].items()}
    chosen = [r for r in rows if table.get(r["qp"]) == r["kept"]]
    best = []
    for q in sorted({r["qp"] for r in rows}):
        at_q = sorted((r for r in rows if r["qp"] == q), key=lambda r: (-r["map50"], r["kept"]))
        best.append(at_q[0])
    return {"table": chosen, "best_per_qp": best}


def compare(args: argparse.Namespace) -> int:
    """BD-rate of the second tune output against the first, on the same images."""
    from tools.bench_mfiba import bd_against

    ref, test = (json.loads(Path(p).read_text()) for p in args.inputs)
    if ref["images"] != test["images"]:
        print("error: the tune files cover different images", file=sys.stderr)
        return 2
    out: dict = {"reference": args.inputs[0], "test": args.inputs[1], "images": len(ref["images"]), "bd_rate": {}}
    curves_ref, curves_test = tune_curves(ref), tune_curves(test)
    for kind in ("table", "best_per_qp"):
        for name, c in ((ref["weights"], curves_ref[kind]), (test["weights"], curves_test[kind])):
            pts = ", ".join(f"QP{r['qp']}/{r['kept']} {r['bpp']:.4f} {r['map50']:.3f}" for r in c)
            print(f"{kind:11s} {name}: {pts}")
        bd = bd_against(curves_ref[kind], curves_test[kind], "map50")["front"]
        out["bd_rate"][kind] = bd
        cell = f"{bd['bd_rate']:+.1f} % (overlap {bd['overlap']:.0%})" if bd["bd_rate"] is not None else bd["error"]
        print(f"BD-rate mAP@0.5 ({kind}) of {test['weights']} against {ref['weights']}: {cell}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tune", help="choose the QP -> kept-channel table on held-out train-images")
    t.add_argument("--images", type=int, default=16, help="number of held-out images to use")
    t.add_argument("--holdout", type=int, default=64, help="as in tools/train_msff.py")
    t.add_argument("--seed", type=int, default=0, help="as in tools/train_msff.py")
    t.add_argument("--qps", default="22,27,32,37,42,47")
    t.add_argument("--candidates", default="32,64,96,128,192,256")
    t.add_argument("--gt-score", type=float, default=0.35)
    t.add_argument("--tolerance", type=float, default=0.01, help="allowed absolute mAP@0.5 loss per QP")
    e = sub.add_parser("eval", help="measure vvc_msff, ablations and anchors on a labelled set")
    e.add_argument("--dataset", choices=sorted(DATASETS), default="val2017-103")
    e.add_argument("--limit", type=int, default=24)
    e.add_argument("--qps", default="22,27,32,37,42,47")
    e.add_argument("--nosls-weights", default=None)
    e.add_argument("--lines", default=",".join(ALL_LINES[:4]), help=f"comma-separated subset of {ALL_LINES}")
    r = sub.add_parser("report", help="merge eval JSONs and print BD-rates")
    r.add_argument("inputs", nargs="+")
    r.add_argument("--out", default=None)
    c = sub.add_parser("compare", help="BD-rate of one tune output against another (same images)")
    c.add_argument("inputs", nargs=2)
    c.add_argument("--out", default=None)
    for p in (t, e):
        p.add_argument("--split", default="neck")
        p.add_argument("--weights", default=None, help="MSFF weights (default: shipped)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", default=None, help="write the measurements as JSON")
    args = ap.parse_args(argv)
    if args.cmd == "report":
        return report(args)
    if args.cmd == "compare":
        return compare(args)
    torch.set_num_threads(args.threads)
    return tune(args) if args.cmd == "tune" else evaluate(args)


if __name__ == "__main__":
    raise SystemExit(main())
