"""How many fused channels do NanoDet's neck features need? A linear bound.

Fits PCA to the normalised space-to-depth stack of the split point's scales (the
linear path of codec/models/msff.py) on the cached training features of
tools/train_msff.py (train-images only), then replaces the features of a labelled
COCO set by their projection onto the first K components (no quantisation, no
VVC) and measures mAP with NN part 2. This is what a PCA-initialised MSFF/MSFR
starts from, before any training step.

    python tools/pca_probe.py --dataset val2017-103 --limit 32 --ks 16,32,64,128,192,256
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from codec.models.msff import MsffCodecModel, MsffConfig, stacked_channels  # noqa: E402
from codec.pipeline import load_image  # noqa: E402
from codec.vision import get_network  # noqa: E402
from ctc.coco_eval import evaluate_detections  # noqa: E402
from tools.eval_network import DATASETS  # noqa: E402
from tools.train_msff import assets_dir, feature_scales, filled_rows, load_cache, pca_of_cache  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="feature cache folder of tools/train_msff.py (p3.npy, ...)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="val2017-103")
    ap.add_argument("--limit", type=int, default=32, help="first N images by id")
    ap.add_argument("--ks", default="16,32,64,128,192,256", help="numbers of kept components")
    ap.add_argument("--pca-views", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = sorted(int(k) for k in args.ks.split(","))

    net = get_network("nanodet")
    sp = net.split_points["neck"]
    names = sp.scale_names()
    cache = load_cache(Path(args.cache), names)
    n_rows = filled_rows(cache, names)
    cfg = MsffConfig.for_split_point(sp, fused_channels=max(ks), linear_path=True)
    model = MsffCodecModel(cfg).eval()
    model.set_feature_scale(feature_scales(cache, names, n_rows))
    mean, comp, explained = pca_of_cache(model.msff.stack, cache, names, n_rows, args.pca_views, max(ks))
    print(
        f"PCA of {stacked_channels(cfg)}-channel stacks over {min(args.pca_views, n_rows)} cached training views; "
        f"{max(ks)} components hold {100 * explained:.2f} % of the variance"
    )

    root = assets_dir()
    images, annotations = (root / p for p in DATASETS[args.dataset])
    infos = sorted(json.loads(Path(annotations).read_text())["images"], key=lambda i: i["id"])[: args.limit]
    results: dict[int, list[dict]] = {k: [] for k in ks}
    results[0] = []  # uncompressed
    mean_v = mean.view(1, -1, 1, 1)
    with torch.no_grad():
        for info in infos:
            x, pre = net.preprocess(load_image(Path(images) / info["file_name"]))
            feats = net.part1(x, "neck")
            sizes = {n: tuple(feats[n].shape[-2:]) for n in names}
            results[0] += net.part2(feats, "neck", pre).to_coco(info["id"])
            centred = model.msff.stack(feats).double() - mean_v
            for k in ks:
                p = comp[:k]
                z = torch.einsum("cd,ndhw->nchw", p, centred)
                rec = torch.einsum("cd,nchw->ndhw", p, z) + mean_v
                parts = model.msfr.unstack(rec.float(), sizes)
                out = {n: parts[n] * model.msff.feature_scale[i] for i, n in enumerate(names)}
                results[k] += net.part2(out, "neck", pre).to_coco(info["id"])
    ids = [i["id"] for i in infos]
    print(f"{args.dataset}, first {len(ids)} images by id: mAP@0.5 / mAP@[.5:.95] in %")
    for k in [0, *ks]:
        m = evaluate_detections(results[k], annotations, ids)
        label = "uncompressed" if k == 0 else f"K = {k}"
        print(f"  {label:>12}: {100 * m['map50']:.1f} / {100 * m['map']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
