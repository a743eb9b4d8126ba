"""fcm_enc: image -> NN part 1 -> coding mode -> FCM container file; one image or many.

The mode options are generated from each mode's parameter dataclass
(codec/modes/base.py): a flag per parameter name, shared by the modes that have
it; every argument (the chosen mode's parameters, the split point, the inputs and
outputs) is checked before anything is loaded. Several inputs, a folder or an @LIST
file are encoded in one process, the network and codec models loaded once."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from codec.apps import _batch, _cli
from codec.errors import EncodeError, InputError, OutputError
from codec.modes import CodingMode, ParamSpec, all_modes, mode_by_name
from codec.vision import DEFAULT_NETWORK, SPLIT_POINT_NAMES, available_networks, check_split_point, networks_help

log = logging.getLogger("codec.apps")

DEFAULT_MODE = "anchor"
MAX_IMAGE_ID = (1 << 64) - 1  # image_id is u(64) (bitstream_spec.md, section 4.8)

EXAMPLES = (
    """\
examples:
  fcm_enc samples/baseball.jpg -o baseball.bin                 # NanoDet neck, anchor, QP 32
  fcm_enc img.jpg -o img_qp37.bin --mode anchor --qp 37 --preset fast
  fcm_enc img.jpg -o img_ref.bin --mode bypass --bypass-dtype float32 --force
  fcm_enc img.jpg -o img_e2e.bin --mode learned_e2e --phi 2
  fcm_enc img.jpg -o img_seg.bin --network yolov5s_seg --mode bypass   # boxes + instance masks
  fcm_enc img.jpg -o img_pose.bin --network yolo11n_pose --mode bypass # person boxes + keypoints
  fcm_enc val2017/ -o out/ --mode learned_e2e --phi 2          # every image of a folder, into out/
  fcm_enc a.jpg b.png @more.txt -o out/ --json                 # files and a list; one JSON line each
  fcm_enc img.jpg -o img.bin --engine onnx                     # NN part 1 in onnxruntime, no torch
  fcm_enc img.jpg -o img.bin --engine onnx --mode learned_e2e  # the learned encoder too, no torch

Network weights are fetched on first use and verified, never shipped with the codec
(Apache-2.0); each network's weight licence is listed under --network (the weights of
YOLOv5s-seg and YOLO11n-pose are AGPL-3.0).

Prints the container size in bytes, bits per pixel of the input image
(container bits / (width * height)) and the time of each stage; the network's
and codec models' loading is timed apart (load_network, load_codec_model).

Several inputs (files, folders, @LIST files naming one image per line, relative to
the current folder; @- reads the list from stdin): -o names the output folder
(created if missing) and each image becomes FOLDER/NAME.bin (NAME: its file name
without the suffix). The network and codec models load once; an input that fails
is reported and the others go on; a summary ends the run; the exit status is 0
only if every input succeeded (else 2, or 1 if only external tools failed).

Image identity: the container records the image's id and file name in its
IMAGE_INFO unit (bitstream_spec.md, section 5.5; 38 bytes for a COCO name):
--image-id N, or else the file name's id by one rule: the part of the name
before its first "." or "_", if all digits (000000001000.jpg: image 1000;
qp37_000000001000.jpg: none). --no-image-info leaves the unit out.

The input image is read as 8-bit RGB: 16-bit greyscale is scaled to 8 bit,
transparency is composited over white, a 32-bit float image is refused; its
size is checked from the file's header before decoding (--max-pixels).
Every output path is checked before any work.
"""
    + _cli.EXIT_STATUS_HELP
)


def image_id_arg(text: str) -> int:
    """argparse type of --image-id: an integer 0..2^64-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer image id, got {text!r}") from None
    if not 0 <= value <= MAX_IMAGE_ID:
        raise argparse.ArgumentTypeError(f"an image id is 0..2^64-1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fcm_enc",
        description="Encode images into FCM containers: run NN part 1 of a split "
        "vision network and code its features with a coding mode.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="input image (any format Pillow reads), a folder of images, or @LIST (one image path per line)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output container file; with several inputs, a folder or a list: the output folder",
    )
    p.add_argument(
        "--network",
        default=DEFAULT_NETWORK,
        choices=available_networks(),
        help="split vision network (default: %(default)s): " + networks_help(),
    )
    p.add_argument("--weights", metavar="PATH", help="local weights file instead of the default, verified ones")
    p.add_argument(
        "--engine",
        choices=("torch", "onnx"),
        default="torch",
        help="what runs the encoder: torch (default), or onnx: exported ONNX graphs through onnxruntime, "
        "without torch for bypass, anchor and learned_e2e (whose --codec-weights then names the codec "
        "model's export, default onnx/CODEC_MODEL.onnx in the FCM cache folder); see --onnx-model",
    )
    p.add_argument(
        "--onnx-model",
        metavar="PATH",
        help="the ONNX NN part 1 of --engine onnx (python -m tools.export_onnx writes it; default: "
        "onnx/NETWORK_SPLIT.onnx in the FCM cache folder)",
    )
    p.add_argument("--split", metavar="NAME", help="split point (default: the network's default, e.g. 'neck')")
    modes = all_modes()
    p.add_argument(
        "--mode",
        default=DEFAULT_MODE,
        choices=[m.name for m in modes],
        help="coding mode (default: %(default)s): "
        + "; ".join(f"{m.name}: {m.description}" if m.description else m.name for m in modes),
    )
    p.add_argument("--force", action="store_true", help="overwrite output files that exist")
    p.add_argument(
        "--image-id",
        type=image_id_arg,
        metavar="N",
        help="the image's id in its data set (COCO image id) to record (one input only; default: from the "
        "file name, see below)",
    )
    p.add_argument("--no-image-info", action="store_true", help="write no IMAGE_INFO unit (no image id, no file name)")
    p.add_argument("--json", action="store_true", help="print one JSON object per input instead of text")
    _cli.add_max_pixels_option(p)
    _cli.add_ffmpeg_timeout_option(p)
    _cli.add_common_options(p, "fcm_enc")
    add_mode_options(p, modes)
    return p


def _flag_type(specs: list[ParamSpec]) -> Any:
    kinds = {s.kind for s in specs}
    return kinds.pop() if len(kinds) == 1 else str


def add_mode_options(p: argparse.ArgumentParser, modes: list[CodingMode]) -> None:
    """One flag per parameter name of the modes; its help says, per mode, the domain
    and default, and each mode's own text where the modes' texts differ (e.g. --refine). The
    default is None, so that a flag not given takes the mode's default."""
    by_name: dict[str, list[tuple[CodingMode, ParamSpec]]] = {}
    for m in modes:
        for s in m.param_specs():
            by_name.setdefault(s.name, []).append((m, s))
    group = p.add_argument_group("mode options (generated from each mode's parameters)")
    for name, uses in by_name.items():
        spec = uses[0][1]
        texts = list(dict.fromkeys(s.help for _, s in uses))
        text = texts[0] if len(texts) == 1 else " | ".join(f"{m.name}: {s.help}" for m, s in uses)
        per_mode = "; ".join(
            f"{m.name}{' rate parameter' if s.rate else ''}: {s.domain()}, default {s.default}" for m, s in uses
        )
        group.add_argument(
            spec.flag,
            dest=f"mode_{name}",
            type=_flag_type([s for _, s in uses]),
            default=None,
            metavar=name.upper(),
            help=f"{text} ({per_mode})",
        )


def mode_params(args: argparse.Namespace, mode: CodingMode) -> Any:
    """The chosen mode's parameter dataclass from the flags given; a flag of another
    mode is an error rather than silently ignored."""
    mine = {s.name for s in mode.param_specs()}
    given = {k[len("mode_") :]: v for k, v in vars(args).items() if k.startswith("mode_") and v is not None}
    foreign = sorted(set(given) - mine)
    if foreign:
        flags = ", ".join("--" + f.replace("_", "-") for f in foreign)
        raise EncodeError(f"{flags} is not an option of mode {mode.name} (its options: {', '.join(mine) or 'none'})")
    return mode.make_params(given)


def check_arguments(args: argparse.Namespace) -> tuple[CodingMode, Any, _batch.Inputs]:
    """Everything that can be checked without loading a network: the mode and its parameters,
    the split point, the inputs (folders and lists expanded) and the combination of options."""
    mode = mode_by_name(args.mode)
    params = mode_params(args, mode)
    try:
        check_split_point(args.network, args.split)
    except ValueError as e:
        raise EncodeError(str(e)) from None
    inputs = _batch.expand_inputs(args.inputs, _batch.IMAGE_SUFFIXES, "image")
    if inputs.batch and args.image_id is not None:
        raise InputError("--image-id is for one input; with several, each image's id comes from its file name")
    if args.no_image_info and args.image_id is not None:
        raise InputError("--image-id and --no-image-info contradict each other")
    if args.engine == "onnx":
        if args.weights is not None:
            raise InputError("--weights is for the torch engine: export the ONNX model from those weights instead")
        from codec.vision.onnx_part1 import default_model_path

        split = args.split or SPLIT_POINT_NAMES[args.network][0]
        args.onnx_model = args.onnx_model or os.fspath(default_model_path(args.network, split))
        if not Path(args.onnx_model).is_file():
            raise InputError(f"ONNX model not found: {args.onnx_model} (python -m tools.export_onnx writes it)")
    elif args.onnx_model is not None:
        raise InputError("--onnx-model is for --engine onnx")
    return mode, params, inputs


def _encode(args: argparse.Namespace) -> int:
    # Refuse early, before the slow part, if an argument, an input list or an output is bad.
    mode, params, inputs = check_arguments(args)
    if inputs.batch:
        folder = _batch.output_folder(args.output, args.force)
        outputs = _batch.output_paths(inputs.paths, folder, ".bin", args.force, "output")
    else:
        if Path(args.output).is_dir():
            raise OutputError(
                f"output path is a directory: {args.output} (with one input, -o names the container file; "
                "a folder input, a list or several inputs write into a folder)"
            )
        _cli.check_outputs([(args.output, "output")], args.force)
        outputs = [Path(args.output)]
    with _cli.external_tool_settings(args):
        if args.engine == "torch":  # onnxruntime gets its threads when a model loads
            _cli.set_threads(args.threads)
        elif args.threads is not None:
            from codec.models import fenet_onnx

            fenet_onnx.set_threads(args.threads)
        if not inputs.batch:  # one image: read it before the network loads (a bad file fails fast)
            return _encode_one(args, mode, params, inputs.paths[0], outputs[0])
        return _encode_many(args, mode, params, inputs.paths, outputs)


class _Encoder:
    """The network (loaded once) and the per-image steps shared by one and many inputs."""

    def __init__(self, args: argparse.Namespace, mode: CodingMode, params: Any) -> None:
        self.args, self.mode, self.params = args, mode, params
        self.networks = _cli.Networks(args.weights)
        self._onnx: Any = None

    def network(self) -> Any:
        """NN part 1's network, loaded once: the torch network, or the ONNX one (--engine onnx)."""
        if self.args.engine == "torch":
            return self.networks.get(self.args.network)
        if self._onnx is None:
            from codec.vision.onnx_part1 import OnnxPart1

            t0 = time.perf_counter()
            self._onnx = OnnxPart1(self.args.onnx_model, self.args.threads)
            self.networks.seconds += time.perf_counter() - t0
            if self._onnx.name != self.args.network:
                raise InputError(
                    f"{self.args.onnx_model} holds NN part 1 of {self._onnx.name}, not {self.args.network}"
                )
            log.info("ONNX NN part 1 %s loaded in %s", self.args.onnx_model, _cli.fmt_seconds(self.networks.seconds))
        return self._onnx

    def read(self, path: Path) -> tuple[Any, float]:
        from codec.pipeline import load_image

        t0 = time.perf_counter()
        image = load_image(path, self.args.max_pixels)
        return image, time.perf_counter() - t0

    def encode(self, image: Any, path: Path, out: Path) -> tuple[Any, dict[str, float]]:
        from codec.api import image_info_for
        from codec.models import fenet_onnx, registry
        from codec.pipeline import encode_image

        def load_seconds() -> float:  # codec models, PyTorch's and exported ones
            return registry.load_seconds() + fenet_onnx.load_seconds()

        network = self.network()
        info = None if self.args.no_image_info else image_info_for(path, self.args.image_id)
        loaded = load_seconds()
        result = encode_image(image, network, self.args.split, self.mode, self.params, image_info=info)
        times = dict(result.timings)
        model_load = load_seconds() - loaded  # a codec model loaded during the first image's encode
        if model_load > 0:
            times = {"load_codec_model": model_load, **times, "encode": max(0.0, times["encode"] - model_load)}
        t0 = time.perf_counter()
        _cli.atomic_write(out, result.bitstream, force=self.args.force)
        times["write"] = time.perf_counter() - t0
        return result, times

    def effective_params(self) -> Any:
        """The parameters as the encoder used them on the split point (learned_e2e's default
        codec model is the one trained for the split point): what the echo and the JSON say."""
        network = self.network()
        return self.mode.resolve(self.params, network.split_points[self.args.split or network.default_split])

    def record(self, path: Path, out: Path, image: Any, result: Any, times: dict[str, float]) -> dict[str, Any]:
        h, w = image.shape[:2]
        rate = self.mode.rate_param
        params = self.effective_params()
        info = result.image_info
        return {
            "input": os.fspath(path),
            "output": os.fspath(out),
            "bytes": len(result.bitstream),
            "bpp": result.bpp,
            "width": w,
            "height": h,
            "network": self.args.network,
            "split": self.args.split or self.network().default_split,
            "engine": self.args.engine,
            "mode": self.mode.name,
            "rate_parameter": rate,
            "rate": getattr(self.params, rate) if rate else None,
            "params": {s.name: getattr(params, s.name) for s in self.mode.param_specs()},
            "image_id": info.image_id if info is not None else None,
            "image_info_bytes": len(info.to_unit().data) + 11 if info is not None else 0,
            "times": _batch.json_times(times),
        }


def _encode_one(args: argparse.Namespace, mode: CodingMode, params: Any, path: Path, out: Path) -> int:
    enc = _Encoder(args, mode, params)
    image, t_read = enc.read(path)
    result, times = enc.encode(image, path, out)
    times = {"load_network": enc.networks.seconds, "read": t_read, **times}
    record = enc.record(path, out, image, result, times)
    if args.json:
        _cli.write_line(json.dumps({**record, "ok": True}))
        return _cli.EXIT_OK
    if args.quiet:
        return _cli.EXIT_OK
    h, w = image.shape[:2]
    nbytes = len(result.bitstream)
    extra = f", image id {record['image_id']}" if record["image_id"] is not None else ""
    print(f"{args.output}: {nbytes} bytes, {8 * nbytes / (w * h):.5f} bpp ({w}x{h} input{extra})")
    print(
        f"network {args.network}{' (NN part 1: ONNX)' if args.engine == 'onnx' else ''}, split {record['split']}, "
        f"mode {mode.name}" + (f", {summary}" if (summary := mode.describe(enc.effective_params())) else "")
    )
    print("time: " + _batch.times_text(times))
    return _cli.EXIT_OK


def _encode_many(
    args: argparse.Namespace, mode: CodingMode, params: Any, paths: list[Path], outputs: list[Path]
) -> int:
    enc = _Encoder(args, mode, params)
    run = _batch.Run("fcm_enc", len(paths), json_lines=args.json, quiet=args.quiet)
    log.info("%d images -> %s", len(paths), args.output)
    total_bytes, total_pixels, coding = 0, 0, 0.0
    try:
        enc.network()  # once, before the first image (timed apart)
        for path, out in run.progress(list(zip(paths, outputs)), "image"):
            try:
                image, t_read = enc.read(path)
                result, times = enc.encode(image, path, out)
            except Exception as e:
                run.failed(path, e, {"output": os.fspath(out)})
                continue
            times = {"read": t_read, **times}
            record = enc.record(path, out, image, result, times)
            total_bytes += record["bytes"]
            total_pixels += record["width"] * record["height"]
            coding += sum(v for k, v in times.items() if k != "load_codec_model")
            extra = f", image id {record['image_id']}" if record["image_id"] is not None else ""
            line = (
                f"{out}: {record['bytes']} bytes, {record['bpp']:.5f} bpp ({record['width']}x{record['height']}{extra})"
            )
            run.ok(line, record)
    except KeyboardInterrupt:
        run.summary("images encoded (interrupted)")
        raise
    notes = [f"network load {_cli.fmt_seconds(enc.networks.seconds)}"]
    if run.done:
        notes.append(f"{_cli.fmt_seconds(coding / run.done)} per image")
        notes.append(f"{total_bytes} bytes, {8 * total_bytes / total_pixels:.5f} bpp overall")
    run.summary("images encoded", notes)
    return run.exit_code


def main(argv: list[str] | None = None) -> int:
    return _cli.run_app("fcm_enc", build_parser(), _encode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
