"""The anchors' encoder strength: VVenC presets against each other on the anchors' own frames.

For each image: the MPEG feature anchor's frame (NN part 1, the recorded set range, clamp and
floor, packing without filler; codec/modes/mpeg_anchor.py) and the image anchor's input (the
platform's BT.601 full-range 4:2:0 conversion), each coded all-intra at the nominal QP with
every preset and decoded. It prints, per preset, the bytes, the PSNR (feature frame: 10-bit
samples, peak 1023; image: RGB, peak 255) and the encode time, then the PSNR BD-rate (pchip,
ctc.bd_rate) of every preset against every other, with the curves' overlap.

Images default to the training images of the assets (unlabeled; never the evaluation sets,
so the choice of preset is not tuned on the images the CTC reports on).

    python -m tools.bench_presets --limit 4 --qps 27,32,37,42 --presets faster,medium,slower
    python -m tools.bench_presets --what image --json presets.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from codec.files import assets_path

DEFAULT_IMAGES = "train-images"


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def feature_frame(network, split: str, image: np.ndarray) -> tuple[np.ndarray, int]:
    """(10-bit frame, fill level) of the MPEG feature anchor for one image."""
    import torch

    from codec.modes import mpeg_anchor
    from codec.modes.base import scale_arrays

    sp = network.split_points[split]
    with torch.inference_mode():
        x, _ = network.preprocess(image)
        feats = network.part1(x, split)
    arrays = scale_arrays({k: v.detach().cpu().numpy() for k, v in feats.items()}, sp)
    lo, hi = mpeg_anchor.check_range(*mpeg_anchor.default_range(sp))
    codes = [mpeg_anchor.quantise(a, lo, hi) for _, a in arrays]
    layout = mpeg_anchor.frame_layout([a.shape for _, a in arrays])
    fill = mpeg_anchor.mid_level(lo, hi)
    return mpeg_anchor.tile(codes, layout, fill), fill


def run(images: list[Path], presets: list[str], qps: list[int], what: list[str], network_name: str) -> dict:
    from codec.inner import vvc
    from codec.pipeline import load_image
    from codec.vision import get_network

    net = get_network(network_name) if "feature" in what else None
    rows: list[dict] = []
    for n, path in enumerate(images):
        img = load_image(path)
        pixels = img.shape[0] * img.shape[1]
        inputs = {}
        if "feature" in what:
            assert net is not None
            inputs["feature"] = feature_frame(net, net.default_split, img)
        if "image" in what:
            inputs["image"] = (img, None)
        for kind, (src, fill) in inputs.items():
            for preset in presets:
                for qp in qps:
                    t0 = time.perf_counter()
                    if kind == "feature":
                        bs = vvc.encode_luma10(src, qp, preset, all_intra=True, chroma_value=fill)
                        t_enc = time.perf_counter() - t0
                        rec = vvc.decode_luma10(bs, src.shape[1], src.shape[0])
                        q = psnr(src, rec, 1023.0)
                    else:
                        bs = vvc.encode_rgb_image_mpeg(src, qp, preset)
                        t_enc = time.perf_counter() - t0
                        rec = vvc.decode_rgb_image_mpeg(bs, src.shape[1], src.shape[0])
                        q = psnr(src, rec, 255.0)
                    row = {
                        "image": path.name,
                        "kind": kind,
                        "preset": preset,
                        "qp": qp,
                        "bytes": len(bs),
                        "bpp": 8.0 * len(bs) / pixels,
                        "psnr": round(q, 4),
                        "encode_s": round(t_enc, 3),
                    }
                    rows.append(row)
                    print(
                        f"[{n + 1}/{len(images)}] {path.name} {kind:7s} {preset:7s} QP {qp:2d}: "
                        f"{len(bs):7d} B  {q:6.2f} dB  {t_enc:7.2f} s",
                        flush=True,
                    )
    return {"rows": rows, "summary": summarise(rows, presets, qps)}


def summarise(rows: list[dict], presets: list[str], qps: list[int]) -> dict:
    """Per kind: per preset and QP the total bytes, mean PSNR and mean encode time over the
    images; BD-rate (PSNR, pchip) of each preset against each other on those curves."""
    from ctc.bd_rate import BDError, bd_rate_result

    out: dict = {}
    for kind in sorted({r["kind"] for r in rows}):
        curves: dict[str, dict] = {}
        for p in presets:
            pts = []
            for qp in qps:
                sel = [r for r in rows if r["kind"] == kind and r["preset"] == p and r["qp"] == qp]
                if sel:
                    pts.append(
                        {
                            "qp": qp,
                            "bytes": int(sum(r["bytes"] for r in sel)),
                            "bpp": float(np.mean([r["bpp"] for r in sel])),
                            "psnr": float(np.mean([r["psnr"] for r in sel])),
                            "encode_s": float(np.mean([r["encode_s"] for r in sel])),
                        }
                    )
            curves[p] = {"points": pts, "encode_s": float(np.mean([q["encode_s"] for q in pts])) if pts else None}
        bd: dict[str, dict] = {}
        for a in presets:
            for t in presets:
                if a == t or len(curves[a]["points"]) < 2 or len(curves[t]["points"]) < 2:
                    continue
                pa, pt = curves[a]["points"], curves[t]["points"]
                try:
                    r = bd_rate_result(
                        [q["bpp"] for q in pa], [q["psnr"] for q in pa], [q["bpp"] for q in pt], [q["psnr"] for q in pt]
                    )
                    bd[f"{t} vs {a}"] = {"bd_rate": round(r.value, 2), "overlap": round(r.overlap, 3)}
                except BDError as e:
                    bd[f"{t} vs {a}"] = {"error": str(e)}
        out[kind] = {"curves": curves, "bd_rate_psnr": bd}
    return out


def print_summary(summary: dict, presets: list[str]) -> None:
    for kind, s in summary.items():
        print(f"\n{kind}: preset, mean bpp / PSNR per QP, mean encode s")
        base = s["curves"][presets[0]]["encode_s"] or 1.0
        for p in presets:
            c = s["curves"][p]
            pts = "  ".join(f"QP{q['qp']} {q['bpp']:.4f}/{q['psnr']:.2f}" for q in c["points"])
            t = c["encode_s"]
            print(f"  {p:7s} {pts}  encode {t:.2f} s ({t / base:.1f} x the time of {presets[0]})")
        print(f"{kind}: PSNR BD-rate (pchip), test vs anchor")
        for k, v in s["bd_rate_psnr"].items():
            txt = v["error"] if "error" in v else f"{v['bd_rate']:+.2f} % (overlap {v['overlap'] * 100:.0f} %)"
            print(f"  {k:20s} {txt}")


def main(argv: list[str] | None = None) -> int:
    from codec.inner.vvc import VVENC_PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=None, help=f"folder of images (default: <assets>/{DEFAULT_IMAGES})")
    ap.add_argument("--limit", type=int, default=4, help="first N images (sorted by name)")
    ap.add_argument("--presets", default="faster,medium,slower")
    ap.add_argument("--qps", default="27,32,37,42")
    ap.add_argument("--what", default="feature,image", help="feature, image or both (comma-separated)")
    ap.add_argument("--network", default="nanodet")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for NN part 1")
    ap.add_argument("--json", default=None, help="write rows and summary here")
    args = ap.parse_args(argv)

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    bad = [p for p in presets if p not in VVENC_PRESETS]
    if bad or not presets:
        ap.error(f"--presets: unknown {', '.join(bad) or '(none)'}; expected from {', '.join(VVENC_PRESETS)}")
    try:
        qps = sorted(int(q) for q in args.qps.split(","))
    except ValueError:
        ap.error(f"--qps: comma-separated integers expected, got {args.qps!r}")
    if not qps or not all(0 <= q <= 63 for q in qps):
        ap.error("--qps: integers in 0..63 expected")
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    if not what or set(what) - {"feature", "image"}:
        ap.error("--what: feature, image or feature,image")
    if args.limit < 1:
        ap.error("--limit must be at least 1")
    root = Path(args.images) if args.images else assets_path() / DEFAULT_IMAGES
    if not root.is_dir():
        print(f"bench_presets: error: image folder {root} not found", file=sys.stderr)
        return 2
    from tools.feature_range import image_files

    images = image_files(root)[: args.limit]
    if not images:
        print(f"bench_presets: error: no images in {root}", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(args.threads)
    res = run(images, presets, qps, what, args.network)
    res["command"] = "python -m tools.bench_presets " + " ".join(argv if argv is not None else sys.argv[1:])
    res["images"] = [p.name for p in images]
    print_summary(res["summary"], presets)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
