"""fcm_enc: image -> NN part 1 -> coding mode -> FCM container file.

The mode options are generated from each mode's parameter dataclass
(codec/modes/base.py): a flag per parameter name, shared by the modes that have
it; the chosen mode's parameters are checked before anything is loaded."""

from __future__ import annotations

import argparse
from typing import Any

from codec.apps import _cli
from codec.errors import EncodeError
from codec.modes import CodingMode, ParamSpec, all_modes, mode_by_name
from codec.pipeline import encode_image, load_image
from codec.vision import DEFAULT_NETWORK, available_networks, networks_help

DEFAULT_MODE = "anchor"

EXAMPLES = (
    """\
examples:
  fcm_enc samples/baseball.jpg -o baseball.bin                 # NanoDet neck, anchor, QP 32
  fcm_enc img.jpg -o img_qp37.bin --mode anchor --qp 37 --preset fast
  fcm_enc img.jpg -o img_ref.bin --mode bypass --bypass-dtype float32 --force
  fcm_enc img.jpg -o img_e2e.bin --mode learned_e2e --phi 2
  fcm_enc img.jpg -o img_seg.bin --network yolov5s_seg --mode bypass   # boxes + instance masks

Network weights are fetched on first use and verified, never shipped with the codec
(Apache-2.0); each network's weight licence is listed under --network (YOLOv5s-seg's
weights are AGPL-3.0).

Prints the container size in bytes, bits per pixel of the input image
(container bits / (width * height)) and the time of each stage.

The input image is read as 8-bit RGB: 16-bit greyscale is scaled to 8 bit,
transparency is composited over white, a 32-bit float image is refused; its
size is checked from the file's header before decoding (--max-pixels).
The output path is checked before any work.
"""
    + _cli.EXIT_STATUS_HELP
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fcm_enc",
        description="Encode an image into an FCM container: run NN part 1 of a split "
        "vision network and code its features with a coding mode.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="input image (any format Pillow reads)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.bin", help="output container file")
    p.add_argument(
        "--network",
        default=DEFAULT_NETWORK,
        choices=available_networks(),
        help="split vision network (default: %(default)s): " + networks_help(),
    )
    p.add_argument("--weights", metavar="PATH", help="local weights file instead of the default, verified ones")
    p.add_argument("--split", metavar="NAME", help="split point (default: the network's default, e.g. 'neck')")
    modes = all_modes()
    p.add_argument(
        "--mode",
        default=DEFAULT_MODE,
        choices=[m.name for m in modes],
        help="coding mode (default: %(default)s): "
        + "; ".join(f"{m.name}: {m.description}" if m.description else m.name for m in modes),
    )
    p.add_argument("--force", action="store_true", help="overwrite OUT.bin if it exists")
    _cli.add_max_pixels_option(p)
    _cli.add_ffmpeg_timeout_option(p)
    add_mode_options(p, modes)
    return p


def _flag_type(specs: list[ParamSpec]) -> Any:
    kinds = {s.kind for s in specs}
    return kinds.pop() if len(kinds) == 1 else str


def add_mode_options(p: argparse.ArgumentParser, modes: list[CodingMode]) -> None:
    """One flag per parameter name of the modes; its help says, per mode, the domain
    and default. The default is None, so that a flag not given takes the mode's default."""
    by_name: dict[str, list[tuple[CodingMode, ParamSpec]]] = {}
    for m in modes:
        for s in m.param_specs():
            by_name.setdefault(s.name, []).append((m, s))
    group = p.add_argument_group("mode options (generated from each mode's parameters)")
    for name, uses in by_name.items():
        spec = uses[0][1]
        per_mode = "; ".join(
            f"{m.name}{' rate parameter' if s.rate else ''}: {s.domain()}, default {s.default}" for m, s in uses
        )
        group.add_argument(
            spec.flag,
            dest=f"mode_{name}",
            type=_flag_type([s for _, s in uses]),
            default=None,
            metavar=name.upper(),
            help=f"{spec.help} ({per_mode})",
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


def _encode(args: argparse.Namespace) -> int:
    # Refuse early, before the slow part, if the output cannot be written or the parameters are bad.
    _cli.check_outputs([(args.output, "output")], args.force)
    mode = mode_by_name(args.mode)
    params = mode_params(args, mode)
    with _cli.external_tool_settings(args):
        image = load_image(args.input, args.max_pixels)
        network = _cli.load_network(args.network, args.weights)
        result = encode_image(image, network, args.split, mode, params)
    _cli.atomic_write(args.output, result.bitstream, force=args.force)
    h, w = image.shape[:2]
    nbytes = len(result.bitstream)
    print(f"{args.output}: {nbytes} bytes, {8 * nbytes / (w * h):.5f} bpp ({w}x{h} input)")
    print(
        f"network {network.name}, split {args.split or network.default_split}, mode {mode.name}"
        + (f", {summary}" if (summary := mode.describe(params)) else "")
    )
    print("time: " + ", ".join(f"{k} {_cli.fmt_seconds(v)}" for k, v in result.timings.items()))
    return _cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _cli.run_app("fcm_enc", build_parser(), _encode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
