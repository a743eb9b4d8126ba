"""Export to ONNX what the torch-free encoder (``fcm_enc --engine onnx``) runs: NN part 1 of a
split network (codec/vision/onnx_part1.py), or the encoder of a learned codec model
(codec/models/fenet_onnx.py).

    python -m tools.export_onnx                          # NanoDet "neck" -> the cache's onnx/nanodet_neck.onnx
    python -m tools.export_onnx -o nanodet_neck.onnx --network nanodet --split neck
    python -m tools.export_onnx --codec learned_e2e      # the default learned_e2e model's encoder ->
                                                         # the cache's onnx/fenet_nanodet_neck_g4.onnx
    python -m tools.export_onnx --codec learned_e2e --codec-model fenet_nanodet_neck_p4

Runs where PyTorch is (it needs `onnx` and `onnxscript` too: pip install 'fcm-codec[export]');
the file then goes to the camera, which needs only onnxruntime. The graph is torch.onnx's
export (torch.export based) for the network's fixed input size; the metadata records what
the camera's containers must carry: for NN part 1 the network, its id and weights sha256,
the split point and its scales and the preprocessing; for a codec model its name, id and
weights sha256 and the integer tables of its fixed-point entropy parameters. Each export is
checked before it is written: onnxruntime's outputs against PyTorch's on a test image, and
for a codec model also the torch-free encoder's strings against FenetCodec.compress.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.vision.onnx_part1 import FORMAT, KIND, META_PREFIX, default_model_path

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
        "kind": KIND,
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


# -- the encoder of a learned codec model ------------------------------------------------------


@dataclass
class CodecExportReport:
    """What the check of a codec-model export measured on the test image."""

    path: Path
    worst: float  # max relative difference of y_g and z_g against PyTorch's
    phis: int  # quality indices checked
    exact_backend: bool  # the integer part on PyTorch's y_g, z_g gave FenetCodec.compress's bytes
    identical_symbols: float  # fraction of y and z symbols of the ONNX path equal to PyTorch's (all phis)
    identical_strings: int  # phis whose container strings are byte-identical to PyTorch's


def _analysis_module(model, names: list[str]):
    """The float part of FenetCodec.compress as one module: (features..., phi) -> (y_g, z_g)."""
    import torch

    class Analysis(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            # the gain tables as compress() computes them (float32, |g| times the group gains)
            self.register_buffer("gain", model.gain_table("gain").detach().clone())
            self.register_buffer("hyper_gain", model.gain_table("hyper_gain").detach().clone())

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            *features, phi = inputs
            y = self.model.fenet(self.model._normalised(list(features)))
            y_g = y * self.gain[phi].unsqueeze(-1).unsqueeze(-1)
            z_g = self.model.h_a(y_g) * self.hyper_gain[phi].unsqueeze(-1).unsqueeze(-1)
            return y_g, z_g

    return Analysis().eval()


def export_codec(
    codec_model: str | None = None,
    out: Path | None = None,
    codec_weights: str | None = None,
    network: str = "nanodet",
    net=None,
) -> CodecExportReport:
    """Export and check the encoder of a learned_e2e codec model (default: the mode's default
    model; `codec_weights`: another weights file for it). The check runs NN part 1 of
    `network` on a test image (`net`: the network object, else loaded by name)."""
    import onnx
    import torch

    from codec.models.fenet_onnx import FORMAT as CODEC_FORMAT
    from codec.models.fenet_onnx import KIND as CODEC_KIND
    from codec.models.fenet_onnx import default_codec_model_path, pack_tables
    from codec.modes import learned_e2e
    from codec.vision import get_network

    name = codec_model or learned_e2e.Params().codec_model
    if name not in learned_e2e.MODEL_NAMES:
        raise SystemExit(
            f"export_onnx: unknown learned_e2e codec model {name!r}; choose {', '.join(learned_e2e.MODEL_NAMES)}"
        )
    model_id = learned_e2e.MODEL_NAMES[name]
    model, digest = learned_e2e.model_for(model_id, codec_weights)
    net = net if net is not None else get_network(network)
    split = next((sp for sp in net.split_points.values() if tuple(sp.scales) == tuple(model.cfg.scales)), None)
    if split is None:
        raise SystemExit(f"export_onnx: codec model {name} is for none of {net.name}'s split points")
    out = out or default_codec_model_path(name)
    names = [s.name for s in model.cfg.scales]
    image = _test_image()
    with torch.inference_mode():
        x, _ = net.preprocess(image)
        feats = {k: v.clone() for k, v in net.part1(x, split.name).items()}
    args = (*[feats[n] for n in names], torch.tensor([model.cfg.num_qualities - 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            _analysis_module(model, names),
            args,
            dynamo=True,
            input_names=[*names, "phi"],
            output_names=["y_g", "z_g"],
            verbose=False,
        )
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "codec.onnx"
        program.save(str(raw))
        graph = onnx.load(str(raw))
    constants, blob = pack_tables(model)
    meta = {
        "format": CODEC_FORMAT,
        "kind": CODEC_KIND,
        "codec_model": name,
        "codec_model_id": int(model_id),
        "weights_sha256": digest.hex(),
        "config": model.cfg.to_json(),
        "input_shapes": {n: list(feats[n].shape[1:]) for n in names},
        "network": net.name,
        "split": split.name,
        "fixed_point": constants,
        "fixed_point_tables_sha256": hashlib.sha256(blob.encode("ascii")).hexdigest(),
        "fixed_point_tables": blob,
        "exported_with": f"torch {torch.__version__}, onnx {onnx.__version__}",
    }
    for k, v in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, json.dumps(v)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    onnx.save(graph, str(tmp_out))
    try:
        report = check_codec(tmp_out, model, feats)
    except BaseException:
        tmp_out.unlink(missing_ok=True)
        raise
    tmp_out.replace(out)
    report.path = out
    return report


def check_codec(path: Path, model, feats: dict) -> CodecExportReport:
    """The exported encoder against FenetCodec.compress on `feats`, at every quality index:
    its float graph within TOLERANCE of PyTorch's y_g and z_g; its integer part, fed with
    PyTorch's y_g and z_g, byte-identical strings and CRCs (else it is not the decoder's
    arithmetic); and the strings of the whole ONNX path decode (CRCs checked)."""
    import torch

    from codec.models.fenet_onnx import OnnxFenetEncoder

    enc = OnnxFenetEncoder(path)
    arrays = {k: v.numpy() for k, v in feats.items()}
    worst, same, total, identical = 0.0, 0, 0, 0
    for phi in range(model.cfg.num_qualities):
        with torch.no_grad():
            xs = model._normalised(feats)
            phi_t = torch.tensor([phi])
            y_g = model.fenet(xs) * model._gains(phi_t, "gain")
            z_g = model.h_a(y_g) * model._gains(phi_t, "hyper_gain")
        ref = model.compress(feats, phi)
        y_o, z_o = enc.analysis(arrays, phi)
        for a, r in ((y_o, y_g.numpy()), (z_o, z_g.numpy())):
            worst = max(worst, float(np.abs(a - r).max() / max(1e-12, float(np.abs(r).max()))))
        if worst > TOLERANCE:
            raise SystemExit(
                f"export_onnx: ONNX y_g / z_g differ from PyTorch's by {worst:.3g} (relative), > {TOLERANCE}"
            )
        exact = enc.coder.code(y_g.numpy(), z_g.numpy(), phi)
        if (exact.z_string, exact.y_string, exact.z_crc32, exact.y_crc32) != (
            ref.z_string,
            ref.y_string,
            ref.z_crc32,
            ref.y_crc32,
        ):
            raise SystemExit(
                f"export_onnx: the torch-free encoder's strings differ from FenetCodec.compress's (phi {phi})"
            )
        got = enc.coder.code(y_o, z_o, phi)
        d = model.decode_latents(got.z_string, got.y_string, phi, ref.sizes, got.z_crc32, got.y_crc32)
        if not (np.array_equal(d.y_symbols, got.y_symbols) and np.array_equal(d.z_symbols, got.z_symbols)):
            raise SystemExit(f"export_onnx: the ONNX path's strings do not decode to its symbols (phi {phi})")
        same += int((got.y_symbols == exact.y_symbols).sum() + (got.z_symbols == exact.z_symbols).sum())
        total += got.y_symbols.size + got.z_symbols.size
        identical += (got.z_string, got.y_string) == (ref.z_string, ref.y_string)
    return CodecExportReport(path, worst, model.cfg.num_qualities, True, same / total, identical)


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
    p.add_argument(
        "--codec",
        choices=("learned_e2e",),
        help="export the encoder of this coding mode's codec model instead of NN part 1",
    )
    p.add_argument("--codec-model", help="with --codec: the codec model (default: the mode's default)")
    p.add_argument("--codec-weights", help="with --codec: a weights file of that model instead of the shipped one")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output file (default: the cache's onnx/NETWORK_SPLIT.onnx, with --codec onnx/CODEC_MODEL.onnx)",
    )
    args = p.parse_args(argv)
    if args.codec is None and (args.codec_model or args.codec_weights):
        p.error("--codec-model and --codec-weights are for --codec")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        print(f"export_onnx: {e.name} is missing: pip install 'fcm-codec[export]'", file=sys.stderr)
        return 2
    if args.codec is not None:
        r = export_codec(args.codec_model, args.output, args.codec_weights, args.network)
        print(
            f"{r.path}: {r.path.stat().st_size} bytes; y_g, z_g within {r.worst:.2g} (relative) of PyTorch's; "
            f"integer part bit-exact with FenetCodec.compress; {100 * r.identical_symbols:.3f} % of the symbols "
            f"and {r.identical_strings} of {r.phis} quality indices' strings identical to PyTorch's"
        )
        return 0
    out, worst = export(args.network, args.split, args.output, args.weights)
    print(f"{out}: {out.stat().st_size} bytes; features within {worst:.2g} (relative) of PyTorch's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
