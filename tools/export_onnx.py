"""Export NN part 1 of a split network to ONNX, for the torch-free encoder
(``fcm_enc --engine onnx``, codec/vision/onnx_part1.py).

    python -m tools.export_onnx                          # NanoDet "neck" -> the cache's onnx/nanodet_neck.onnx
    python -m tools.export_onnx -o nanodet_neck.onnx --network nanodet --split neck

Runs where PyTorch is (it needs `onnx` and `onnxscript` too: pip install 'fcm-codec[export]');
the file then goes to the camera, which needs only onnxruntime. The graph is torch.onnx's
export (torch.export based) of the network's part1 for its fixed input size; the metadata
records the network, its id and weights sha256, the split point and its scales and the
preprocessing, so the camera's containers carry what the decoder checks. The export is
checked before it is written: onnxruntime's features against PyTorch's on a test image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from codec.vision.onnx_part1 import FORMAT, META_PREFIX, default_model_path

# the exported features may differ from PyTorch's by float rounding of other kernels: this
# bound (relative to the largest feature magnitude) catches a wrong graph, not rounding
TOLERANCE = 1e-4


def _nanodet_metadata(net) -> dict:
    from codec.vision import nanodet

    if net.normalisation == "nanodet":
        order, mean, std = "BGR", nanodet._MEAN_BGR.flatten().tolist(), nanodet._STD_BGR.flatten().tolist()
    else:  # rgb255: x / 255
        order, mean, std = "RGB", [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]
    return {
        "input_width": net.input_size,
        "input_height": net.input_size,
        "resize_mode": net.resize_mode.name,
        "channel_order": order,
        "mean": mean,
        "std": std,
    }


def _nanodet_part1(net, split: str):
    """NN part 1 of NanoDet as one module: the backbone, then the neck for split "neck"."""
    import torch

    class Part1(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = net.model.backbone
            self.neck = net.model.neck if split == "neck" else None

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = self.backbone(x)
            return tuple(self.neck(feats) if self.neck is not None else feats)

    return Part1().eval()


# networks the export supports: NN part 1 as a module, and the preprocessing OnnxPart1 reproduces
EXPORTERS = {"nanodet": (_nanodet_part1, _nanodet_metadata)}


def export(
    network: str = "nanodet",
    split: str | None = None,
    out: Path | None = None,
    weights: str | None = None,
    net=None,
) -> tuple[Path, float]:
    """Export and check (`net`: the network object, else loaded by name with `weights`);
    returns (path, max relative difference of the features against PyTorch's)."""
    import onnx
    import torch

    from codec.vision import get_network

    if network not in EXPORTERS:
        raise SystemExit(f"export_onnx: network {network!r} is not supported yet (only {', '.join(EXPORTERS)})")
    part1_module, preprocessing = EXPORTERS[network]
    net = net if net is not None else get_network(network, weights=weights)
    split = split or net.default_split
    sp = net.split_points[split]
    out = out or default_model_path(network, split)

    image = _test_image()
    x, _ = net.preprocess(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            part1_module(net, split),
            (x,),
            dynamo=True,
            input_names=["image"],
            output_names=sp.scale_names(),
            verbose=False,
        )
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "part1.onnx"
        program.save(str(raw))
        model = onnx.load(str(raw))
    meta = {
        "format": FORMAT,
        "network": net.name,
        "network_id": int(net.network_id),
        "weights_sha256": net.weights_sha256(),
        "split": sp.name,
        "split_id": sp.split_id,
        "scales": [[s.name, s.channels, s.stride] for s in sp.scales],
        "preprocess": preprocessing(net),
        "exported_with": f"torch {torch.__version__}, onnx {onnx.__version__}",
    }
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, json.dumps(v)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp_out))
    try:
        worst = check(tmp_out, net, split, image)
    except BaseException:
        tmp_out.unlink(missing_ok=True)
        raise
    tmp_out.replace(out)
    return out, worst


def check(path: Path, net, split: str, image: np.ndarray) -> float:
    """onnxruntime's preprocessing and features against PyTorch's on `image`."""
    import torch

    from codec.vision.onnx_part1 import OnnxPart1

    onnx_net = OnnxPart1(path)
    x_ref, prep_ref = net.preprocess(image)
    x, prep = onnx_net.preprocess(image)
    if prep != prep_ref or not np.array_equal(x, x_ref.numpy()):
        raise SystemExit("export_onnx: the ONNX engine's preprocessing differs from the network's")
    with torch.inference_mode():
        ref = net.part1(x_ref, split)
    got = onnx_net.part1(x, split)
    worst = 0.0
    for name, t in ref.items():
        r = t.numpy()
        worst = max(worst, float(np.abs(got[name] - r).max() / max(1e-12, float(np.abs(r).max()))))
    if worst > TOLERANCE:
        raise SystemExit(f"export_onnx: ONNX features differ from PyTorch's by {worst:.3g} (relative), > {TOLERANCE}")
    return worst


def _test_image() -> np.ndarray:
    """A fixed, textured 640 x 480 image (the check needs no data set)."""
    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[0:480, 0:640]
    base = np.stack([np.sin(xx / 23.0), np.cos(yy / 17.0), np.sin((xx + yy) / 31.0)], axis=-1)
    noise = rng.normal(0, 0.2, (480, 640, 3))
    return np.clip((base + noise + 1.2) * 100, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="nanodet", help="split network (default: %(default)s)")
    p.add_argument("--split", help="split point (default: the network's)")
    p.add_argument("--weights", help="local network weights instead of the default, verified ones")
    p.add_argument("-o", "--output", type=Path, help="output file (default: the cache's onnx/NETWORK_SPLIT.onnx)")
    args = p.parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        print(f"export_onnx: {e.name} is missing: pip install 'fcm-codec[export]'", file=sys.stderr)
        return 2
    out, worst = export(args.network, args.split, args.output, args.weights)
    print(f"{out}: {out.stat().st_size} bytes; features within {worst:.2g} (relative) of PyTorch's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
