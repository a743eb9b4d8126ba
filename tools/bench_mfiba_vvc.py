"""MFIBA against one QP for every scale, and the rate control of ``--target-bpp``, for the
VVC base codec (mode mpeg_anchor_ps: one frame and one QP per scale; issue 10, item 5) on a
labelled COCO set.

For every image NN part 1 runs once; every scale is coded by the mode's own ScaleCoder
(``mpeg_anchor_ps.VvcScaleCoder``: the encoder's VVC picture and the decoder's
reconstruction), shared by all configurations of the image through one ``ProbeStore`` (the
scales are coded independently, so a configuration's container is the header plus its
scales' pictures, whatever else was coded):

* ``uniform-qp``: one QP for every scale, QP in ``--qps`` (the anchor's rate points);
* per target bpp T and allocation A in ``--allocations`` (uniform, mfiba, mfiba_ft): the
  QPs ``fcm_enc --mode mpeg_anchor_ps --target-bpp T --allocation A`` chooses
  (``mpeg_anchor_ps.allocate``, the encoder's own call).

``--check N`` runs the real ``encode_image`` / ``decode_bitstream`` on the first N images
for QP 37 and the middle target of every allocation and fails unless the container size
and the decoded features are those used here.

Printed (and written with ``--json``): mAP@0.5 and mAP@[.5:.95] of every point, BD-rate
(pchip; the rate-accuracy front and MPEG's monotone fit) of each target-driven allocation
against uniform QP, and the rate-control error (mean and max of |bpp_image / T - 1|).

    python -m tools.bench_mfiba_vvc --dataset val2017-103 --limit 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.allocation.options import ALLOCATIONS
from codec.errors import EncodeError
from tools.bench_mfiba import labelled_set, positive_floats, summarise  # one set-up, argument check and summary

DEFAULT_TARGETS = "0.015,0.025,0.04,0.065,0.1,0.16,0.25"
DEFAULT_QPS = "22,27,32,37,42,47,52"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tools.train_fenet import DEV_SETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="val2017-103", choices=sorted(DEV_SETS))
    ap.add_argument("--limit", type=int, default=20, help="first N images (by id) only")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="target bpp values (comma-separated)")
    ap.add_argument("--qps", default=DEFAULT_QPS, help="the uniform-QP anchor's QPs")
    ap.add_argument("--allocations", default="uniform,mfiba", help="allocations driven by the targets")
    ap.add_argument("--levels", default="27,37,47", help="MFIP's precoding QPs (--mfip-levels)")
    ap.add_argument("--preset", default="faster")
    ap.add_argument("--check", type=int, default=1, help="images checked against the real encoder and decoder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from codec.allocation import mfiba
    from codec.modes import mpeg_anchor, mpeg_anchor_ps
    from codec.modes.base import EncodeContext, scale_arrays
    from codec.pipeline import build_bitstream, decode_bitstream, encode_image, load_image, resolve_mode
    from codec.training import dev as tdev
    from codec.vision import get_network
    from ctc.coco_eval import evaluate_detections

    torch.set_num_threads(args.threads)
    targets = positive_floats(args.targets, "--targets")
    try:
        uniform_qps = mpeg_anchor_ps.parse_qps(args.qps, "--qps")
    except EncodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    allocations = [a.strip() for a in args.allocations.split(",") if a.strip()]
    if any(a not in ALLOCATIONS for a in allocations):
        print(f"error: allocations are {', '.join(ALLOCATIONS)}", file=sys.stderr)
        return 2
    found = labelled_set(args.dataset)
    if found is None:
        return 2
    root, imgs_rel, ann_rel = found
    t0 = time.time()
    net = get_network("nanodet")
    sp = net.split_points["neck"]
    lo32, hi32 = mpeg_anchor.encoder_range(sp, None, None)
    pid = mpeg_anchor.encoder_preset(args.preset)
    dev = tdev.coco_dev_set(net, "neck", root / imgs_rel, root / ann_rel, args.limit, args.dataset)
    meta = {i["id"]: i for i in json.loads((root / ann_rel).read_text())["images"]}
    print(f"{args.dataset}: {len(dev)} images, features in {time.time() - t0:.0f} s", flush=True)

    configs: list[tuple[str, float | None, int | None]] = [("uniform-qp", None, qp) for qp in uniform_qps]
    configs += [(a, t, None) for a in allocations for t in targets]
    keys = [f"{a}|{t}|{qp}" for a, t, qp in configs]
    results: dict[str, list[dict]] = {k: [] for k in keys}
    per_image: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    t_alloc = {a: 0.0 for a in allocations}
    checked, encodes = 0, 0
    mid = targets[len(targets) // 2]
    for n, img in enumerate(dev.images):
        arrays = scale_arrays(img.features, sp)  # what the mode's encoder codes
        xs = [torch.from_numpy(a).unsqueeze(0) for _, a in arrays]
        task_loss = mfiba.task_loss_function(net, "neck", xs)
        store = mfiba.ProbeStore()
        coder = mpeg_anchor_ps.VvcScaleCoder(lo32, hi32, args.preset)
        probe = mfiba.ImageProbe(coder, xs, task_loss, store)

        def container_bits(header, units, img=img) -> int:
            return 8 * len(build_bitstream(net, sp, img.prep, mpeg_anchor_ps.MODE_ID, header, units))

        context = EncodeContext(net, "neck", img.prep, container_bits)
        empty = mpeg_anchor_ps.header_and_units(arrays, [0] * len(arrays), pid, lo32, hi32, None)
        overhead = container_bits(*empty)
        for (a, t, qp), key in zip(configs, keys):
            qps: list[int]
            if t is None:
                qps = [int(qp or 0)] * len(arrays)
            else:
                params = mpeg_anchor_ps.Params(target_bpp=t, allocation=a, mfip_levels=args.levels, preset=args.preset)
                t1 = time.time()
                qps = mpeg_anchor_ps.allocate(arrays, coder, pid, params, context, store=store, task_loss=task_loss)
                t_alloc[a] += time.time() - t1
            qs = [mpeg_anchor_ps.quality_of(v) for v in qps]
            bits = overhead + sum(probe.bits(i, q) for i, q in enumerate(qs))
            feats = {name: probe.rec(i, q) for i, ((name, _), q) in enumerate(zip(arrays, qs))}
            with torch.inference_mode():
                dets = net.part2(feats, "neck", img.prep)
            results[key] += dets.to_coco(img.image_id)
            per_image[key].append({"image_id": img.image_id, "qps": qps, "bits": bits, "bpp": bits / img.pixels})
            if n < args.check and (qp == 37 or t == mid):
                p_real = {"qp": qp} if t is None else {"target_bpp": t, "allocation": a, "mfip_levels": args.levels}
                mode, params_real = resolve_mode("mpeg_anchor_ps", {**p_real, "preset": args.preset})
                image = load_image(root / imgs_rel / meta[img.image_id]["file_name"])
                enc = encode_image(image, net, "neck", mode, params_real)
                dec = decode_bitstream(enc.bitstream, net)
                same = 8 * len(enc.bitstream) == bits and all(
                    torch.equal(torch.as_tensor(dec.features[name]).reshape(feats[name].shape), feats[name])
                    for name in feats
                )
                if not same:
                    print(f"error: image {img.image_id} {key}: the real encoder/decoder differ "
                          f"({8 * len(enc.bitstream)} bits against {bits})", file=sys.stderr)  # fmt: skip
                    return 1
                checked += 1
        encodes += coder.encodes
        print(f"{n + 1}/{len(dev)} images, {time.time() - t0:.0f} s, {coder.encodes} VVC pictures", flush=True)

    ids = [i.image_id for i in dev.images]
    pixels = sum(i.pixels for i in dev.images)
    ref = tdev.evaluate_uncompressed(dev, net, "neck")
    points: dict[str, list[dict]] = {}
    for (a, t, qp), key in zip(configs, keys):
        m = evaluate_detections(results[key], dev.annotation_file, ids)
        bpp = sum(r["bits"] for r in per_image[key]) / pixels
        point = {"bpp": round(bpp, 6), "map50": round(m["map50"], 5), "map": round(m["map"], 5)}
        if t is None:
            point["qp"] = qp
        else:
            err = np.array([r["bpp"] / t - 1 for r in per_image[key]])
            point.update(target_bpp=t, mean_abs_error=round(float(np.abs(err).mean()), 4),
                         max_abs_error=round(float(np.abs(err).max()), 4), set_error=round(bpp / t - 1, 4),
                         qps_mean=np.mean([r["qps"] for r in per_image[key]], axis=0).round(2).tolist())  # fmt: skip
        points.setdefault(a, []).append(point)
    out: dict = {
        "command": "python -m tools.bench_mfiba_vvc " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "images": len(dev),
        "preset": args.preset,
        "levels": args.levels,
        "uncompressed": {"map50": round(ref["map50"], 5), "map": round(ref["map"], 5)},
        "checked_configurations": checked,
        "vvc_pictures_per_image": round(encodes / len(dev), 1),
        "allocation_seconds_per_image": {a: round(v / len(dev), 2) for a, v in t_alloc.items()},
        "points": points,
        "bd_rate_vs_uniform_qp": {},
        "rate_control": {},
    }
    print(f"uncompressed mAP@0.5 {ref['map50']:.4f}  mAP {ref['map']:.4f}; {checked} configurations checked "
          f"against the real encoder/decoder")  # fmt: skip
    print(f"{'allocation':<12} {'target':>7} {'bpp':>8} {'mAP@0.5':>8} {'mAP':>7}  {'mean |err|':>10} {'max |err|':>9}")
    for a, pts in points.items():
        for pt in pts:
            tgt = f"{pt['target_bpp']:.3f}" if "target_bpp" in pt else f"qp {pt['qp']}"
            errs = (f"{100 * pt['mean_abs_error']:9.1f} % {100 * pt['max_abs_error']:8.1f} %"
                    if "target_bpp" in pt else "")  # fmt: skip
            print(f"{a:<12} {tgt:>7} {pt['bpp']:8.4f} {pt['map50']:8.4f} {pt['map']:7.4f}  {errs}")
    out["bd_rate_vs_uniform_qp"], out["rate_control"] = summarise(points, allocations, "uniform-qp", "uniform QP")
    out["seconds"] = round(time.time() - t0, 1)
    print(f"({out['seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
