"""fcm_enc: image -> NN part 1 -> coding mode -> FCM container file."""

from __future__ import annotations

import argparse

from codec.apps import _cli
from codec.modes import available_modes
from codec.pipeline import EncodeParams, encode_image, load_image
from codec.vision import DEFAULT_NETWORK, available_networks

EXAMPLES = """\
examples:
  fcm_enc samples/baseball.jpg -o baseball.bin                 # NanoDet neck, anchor, QP 32
  fcm_enc img.jpg -o img_qp37.bin --mode anchor --qp 37 --preset fast
  fcm_enc img.jpg -o img_ref.bin --mode bypass --bypass-dtype float32 --force

Prints the container size in bytes, bits per pixel of the input image
(container bits / (width * height)) and the time of each stage.
exit status: 0 ok, 1 the VVC encoder failed, 2 bad arguments or input.
"""


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
        help="split vision network (default: %(default)s)",
    )
    p.add_argument("--weights", metavar="PATH", help="local weights file instead of the default, verified ones")
    p.add_argument("--split", metavar="NAME", help="split point (default: the network's default, e.g. 'neck')")
    p.add_argument("--mode", default="anchor", choices=available_modes(), help="coding mode (default: %(default)s)")
    p.add_argument(
        "--qp", type=int, default=32, help="VVC quantisation parameter 0..63 for anchor (default: %(default)s)"
    )
    p.add_argument(
        "--preset", default="faster", help="VVenC preset: faster, fast, medium, slow, slower (default: %(default)s)"
    )
    p.add_argument(
        "--bypass-dtype",
        default="float16",
        choices=("float16", "float32"),
        help="sample format of the bypass mode (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="overwrite OUT.bin if it exists")
    return p


def _encode(args: argparse.Namespace) -> int:
    # Refuse early, before the slow part, if the output exists.
    _cli.atomic_write_check(args.output, args.force)
    image = load_image(args.input)
    network = _cli.load_network(args.network, args.weights)
    params = EncodeParams(mode=args.mode, qp=args.qp, preset=args.preset, bypass_dtype=args.bypass_dtype)
    result = encode_image(image, network, args.split, params)
    _cli.atomic_write(args.output, result.bitstream, force=args.force)
    h, w = image.shape[:2]
    nbytes = len(result.bitstream)
    print(f"{args.output}: {nbytes} bytes, {8 * nbytes / (w * h):.5f} bpp ({w}x{h} input)")
    print(
        f"network {network.name}, split {args.split or network.default_split}, mode {args.mode}"
        + (f", qp {args.qp}, preset {args.preset}" if args.mode == "anchor" else "")
        + (f", {args.bypass_dtype}" if args.mode == "bypass" else "")
    )
    print("time: " + ", ".join(f"{k} {_cli.fmt_seconds(v)}" for k, v in result.timings.items()))
    return _cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _cli.run_app("fcm_enc", build_parser(), _encode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
