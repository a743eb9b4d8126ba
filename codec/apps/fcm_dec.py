"""fcm_dec: FCM container -> reconstructed features (-> NN part 2 -> detections)."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import numpy as np

from codec.apps import _cli
from codec.bitstream import parse_container
from codec.modes import mode_by_id
from codec.pipeline import decode_bitstream, load_image, network_name_of, run_part2

DRAW_THR_DEFAULT = 0.3

EXAMPLES = (
    """\
examples:
  fcm_dec baseball.bin -o baseball_features.npz
  fcm_dec 000000000139.bin --detections dets.json           # image id 139 from the file name
  fcm_dec img.bin --detections dets.json --image-id 42 --draw img.jpg img_dets.png

The features file holds one float32 array (1, C, H, W) per scale, named after
the scale (e.g. p3, p4, p5). Detections need NN part 2: the network named in the
container is loaded, and its weights must match the encoder's (sha256 in the
container). --score-thr filters both the JSON and the drawing; without it the
JSON has every detection and the drawing those scoring >= 0.3. For an instance
segmentation network (yolov5s_seg) each detection also has a "segmentation": its mask
at the original image size as COCO RLE.
Every output path is checked before decoding; an existing output is refused
without --force.
"""
    + _cli.EXIT_STATUS_HELP
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fcm_dec",
        description="Decode an FCM container into features and, on request, run NN part 2 "
        "to produce detections (COCO results JSON) and a drawing.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN.bin", help="FCM container file")
    p.add_argument("-o", "--output", metavar="FEATURES.npz", help="write the reconstructed features (npz)")
    p.add_argument("--detections", metavar="DETS.json", help="write NN part 2 detections, COCO results format")
    p.add_argument(
        "--draw",
        nargs=2,
        metavar=("IMAGE", "OUT.png"),
        help="draw the detections on IMAGE (the original image) into OUT.png",
    )
    p.add_argument("--image-id", type=int, help="COCO image id for the JSON (default: digits of the file name, else 0)")
    p.add_argument("--weights", metavar="PATH", help="local network weights instead of the default, verified ones")
    p.add_argument(
        "--codec-weights",
        metavar="PATH",
        help="codec-model weights instead of the shipped ones (the file the encoder was given)",
    )
    p.add_argument("--score-thr", type=float, help="drop detections scoring below this (see below)")
    p.add_argument("--force", action="store_true", help="overwrite output files that exist")
    _cli.add_max_pixels_option(p, "the --draw image")
    _cli.add_ffmpeg_timeout_option(p)
    return p


def image_id_from_name(path: str) -> int:
    """The first run of digits in the file name (000000000139_qp32.bin -> 139), else 0."""
    m = re.search(r"\d+", Path(path).name)
    return int(m.group()) if m else 0


def _decode(args: argparse.Namespace) -> int:
    # Refuse early, before decoding, if an output cannot be written.
    outputs = [(args.output, "features output"), (args.detections, "detections output")]
    outputs.append((args.draw[1] if args.draw else None, "drawing output"))
    _cli.check_outputs(outputs, args.force)
    with _cli.external_tool_settings(args):
        return _decode_body(args)


def _decode_body(args: argparse.Namespace) -> int:
    data = _cli.read_input_file(args.input, "bitstream")
    want_dets = bool(args.detections or args.draw)
    network = None
    if want_dets:
        header = parse_container(data).header
        network = _cli.load_network(network_name_of(header), args.weights)
    decoded = decode_bitstream(data, network, args.codec_weights)
    shapes = ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in decoded.features.items())
    print(
        f"{args.input}: mode {mode_by_id(decoded.header.mode_id).name}, network {decoded.network_name}, "
        f"split {decoded.split}, scales {shapes}"
    )
    times = dict(decoded.timings)
    if args.output:
        buf = io.BytesIO()
        np.savez(buf, **{k: v.numpy() for k, v in decoded.features.items()})
        _cli.atomic_write(args.output, buf.getvalue(), force=args.force)
        print(f"features -> {args.output}")
    if network is not None:
        dets, t = run_part2(network, decoded)
        times["nn_part2"] = t
        if args.detections:
            thr = args.score_thr if args.score_thr is not None else float("-inf")
            keep = dets.scores >= thr
            image_id = args.image_id if args.image_id is not None else image_id_from_name(args.input)
            results = [r for r, k in zip(dets.to_coco(image_id), keep) if k]
            _cli.atomic_write(args.detections, json.dumps(results).encode(), force=args.force)
            print(f"{len(results)} detections (image id {image_id}) -> {args.detections}")
        if args.draw:
            from codec.apps._draw import draw_detections

            image_path, out_png = args.draw
            image = load_image(image_path, args.max_pixels)
            prep = decoded.preprocessing
            if image.shape[:2] != (prep.orig_h, prep.orig_w):
                raise _cli.InputError(
                    f"{image_path} is {image.shape[1]}x{image.shape[0]}, the bitstream was coded from "
                    f"a {prep.orig_w}x{prep.orig_h} image"
                )
            thr = args.score_thr if args.score_thr is not None else DRAW_THR_DEFAULT
            _cli.atomic_write(out_png, draw_detections(image, dets, thr), force=args.force)
            print(f"drawing (score >= {thr}) -> {out_png}")
    print("time: " + ", ".join(f"{k} {_cli.fmt_seconds(v)}" for k, v in times.items()))
    return _cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _cli.run_app("fcm_dec", build_parser(), _decode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
