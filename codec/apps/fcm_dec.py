"""fcm_dec: FCM container -> reconstructed features (-> NN part 2 -> detections); one
container or many, whose detections go into one COCO results file."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from codec.apps import _batch, _cli
from codec.errors import InputError
from codec.files import read_input_file
from codec.pipeline import decode_bitstream, load_image, network_name_of, run_part2

log = logging.getLogger("codec.apps")

DRAW_THR_DEFAULT = 0.3

EXAMPLES = (
    """\
examples:
  fcm_dec baseball.bin -o baseball_features.npz
  fcm_dec 000000000139.bin --detections dets.json           # image id from the container (or its name)
  fcm_dec img.bin --detections dets.json --image-id 42 --draw img.jpg img_dets.png
  fcm_dec out/ --detections dets.json                       # every container of a folder: one COCO file
  fcm_dec out/ -o features/ --json                          # one features file and one JSON line each

The features file holds one float32 array (1, C, H, W) per scale, named after
the scale (e.g. p3, p4, p5). Detections need NN part 2: the network named in the
container is loaded (once per run), and its weights must match the encoder's
(sha256 in the container). --score-thr filters both the JSON and the drawing;
without it the JSON has every detection and the drawing those scoring >= 0.3. For an
instance segmentation network (yolov5s_seg) each detection also has a "segmentation": its
mask at the original image size as COCO RLE; for a keypoint network (yolo11n_pose) it has
"keypoints": [x, y, v] for each of the 17 COCO person keypoints, v the keypoint's confidence.

The image id of the detections: --image-id, else the one the container records
(its IMAGE_INFO unit, written by fcm_enc), else the container's file name by
fcm_enc's rule (the part before the first "." or "_", if all digits:
000000001000_qp32.bin is image 1000), else 0 with a warning.

Several inputs (files, folders of .bin files, @LIST files naming one container
per line; @- reads the list from stdin): -o names the output folder of the
features (FOLDER/NAME.npz each), --detections one COCO results file with the
detections of every container that decoded (an image id may occur once). An
input that fails is reported and the others go on; a summary ends the run; the
exit status is 0 only if every input succeeded.
Every output path is checked before decoding; an existing output is refused
without --force.
"""
    + _cli.EXIT_STATUS_HELP
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fcm_dec",
        description="Decode FCM containers into features and, on request, run NN part 2 "
        "to produce detections (COCO results JSON) and a drawing.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="IN.bin", help="FCM container file, a folder of them, or @LIST (one per line)"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FEATURES.npz",
        help="write the reconstructed features (npz); with several inputs, the output folder",
    )
    p.add_argument(
        "--detections", metavar="DETS.json", help="write NN part 2 detections (of every input), COCO results format"
    )
    p.add_argument(
        "--draw",
        nargs=2,
        metavar=("IMAGE", "OUT.png"),
        help="draw the detections on IMAGE (the original image) into OUT.png (one input only)",
    )
    p.add_argument(
        "--image-id",
        type=int,
        help="COCO image id for the JSON (one input only; default: the container's, see below)",
    )
    p.add_argument("--weights", metavar="PATH", help="local network weights instead of the default, verified ones")
    p.add_argument(
        "--codec-weights",
        metavar="PATH",
        help="codec-model weights instead of the shipped ones (the file the encoder was given)",
    )
    p.add_argument("--score-thr", type=float, help="drop detections scoring below this (see below)")
    p.add_argument("--force", action="store_true", help="overwrite output files that exist")
    p.add_argument("--json", action="store_true", help="print one JSON object per input instead of text")
    _cli.add_max_pixels_option(p, "the --draw image")
    _cli.add_ffmpeg_timeout_option(p)
    _cli.add_common_options(p, "fcm_dec")
    return p


def image_id_from_name(path: str | os.PathLike) -> int | None:
    """fcm_enc's rule (codec.api.image_id_from_name): 000000000139_qp32.bin -> 139, else None."""
    from codec.api import image_id_from_name as rule

    return rule(path)


def _id_origin(source: str) -> str:
    """'from the container', 'from the file name', 'from --image-id', or 'none recorded'."""
    return (
        "none recorded" if source == "none" else f"from the {source}" if source != "--image-id" else "from --image-id"
    )


def image_id_of(path: Path, decoded: Any, given: int | None) -> tuple[int, str]:
    """(image id, where it came from): --image-id, the container's IMAGE_INFO, its file name, or 0."""
    if given is not None:
        return given, "--image-id"
    if decoded.image_id is not None:
        return decoded.image_id, "container"
    from_name = image_id_from_name(path)
    if from_name is not None:
        return from_name, "file name"
    log.warning("%s records no image id and its name gives none: image id 0 (--image-id sets one)", path)
    return 0, "none"


def _check_draw_image(args: argparse.Namespace) -> None:
    """The --draw image, read as far as its header, before anything is decoded."""
    if not args.draw:
        return
    from codec.pipeline import check_image_file

    check_image_file(args.draw[0], args.max_pixels)


def _decode(args: argparse.Namespace) -> int:
    # Refuse early, before decoding, if an argument, an input list or an output is bad.
    inputs = _batch.expand_inputs(args.inputs, _batch.CONTAINER_SUFFIXES, "container")
    if inputs.batch:
        for flag, value in (("--draw", args.draw), ("--image-id", args.image_id)):
            if value is not None:
                raise InputError(f"{flag} is for one input (a container's image id comes from the container)")
        features = None
        if args.output:
            folder = _batch.output_folder(args.output, args.force)
            features = _batch.output_paths(inputs.paths, folder, ".npz", args.force, "features output")
        _cli.check_outputs([(args.detections, "detections output")], args.force)
    else:
        outputs = [(args.output, "features output"), (args.detections, "detections output")]
        outputs.append((args.draw[1] if args.draw else None, "drawing output"))
        _cli.check_outputs(outputs, args.force)
        _check_draw_image(args)
    with _cli.external_tool_settings(args):
        _cli.set_threads(args.threads)
        if not inputs.batch:
            return _decode_one(args, inputs.paths[0])
        return _decode_many(args, inputs.paths, features)


class _Decoder:
    """Networks loaded once per run; decoding and NN part 2 of one container."""

    def __init__(self, args: argparse.Namespace, want_dets: bool) -> None:
        self.args = args
        self.want_dets = want_dets
        self.networks = _cli.Networks(args.weights)

    def decode(self, path: Path, features_out: Path | None) -> tuple[Any, Any, dict[str, float], Any]:
        """(decoded, detections or None, times, network or None) of one container; the features
        written to `features_out` if given."""
        from codec.bitstream import parse_container
        from codec.models.registry import load_seconds

        t0 = time.perf_counter()
        data = read_input_file(path, "bitstream")
        times = {"read": time.perf_counter() - t0}
        network = None
        if self.want_dets:
            network = self.networks.get(network_name_of(parse_container(data).header))
        loaded = load_seconds()
        decoded = decode_bitstream(data, network, self.args.codec_weights)
        model_load = load_seconds() - loaded
        if model_load > 0:  # the first container of a learned mode loads its codec model
            times["load_codec_model"] = model_load
        times["decode"] = max(0.0, decoded.timings["decode"] - model_load)
        if features_out is not None:
            import numpy as np

            t0 = time.perf_counter()
            buf = io.BytesIO()
            np.savez(buf, **{k: v.numpy() for k, v in decoded.features.items()})
            _cli.atomic_write(features_out, buf.getvalue(), force=self.args.force)
            times["write"] = time.perf_counter() - t0
        dets = None
        if network is not None:
            dets, times["nn_part2"] = run_part2(network, decoded)
        return decoded, dets, times, network

    def results(self, dets: Any, image_id: int) -> list[dict[str, Any]]:
        thr = self.args.score_thr if self.args.score_thr is not None else float("-inf")
        keep = dets.scores >= thr
        return [r for r, k in zip(dets.to_coco(image_id), keep) if k]


def _describe(path: Path, decoded: Any) -> str:
    from codec.modes import mode_by_id

    shapes = ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in decoded.features.items())
    return (
        f"{path}: mode {mode_by_id(decoded.header.mode_id).name}, network {decoded.network_name}, "
        f"split {decoded.split}, scales {shapes}"
    )


def _record(path: Path, decoded: Any, times: dict[str, float]) -> dict[str, Any]:
    from codec.modes import mode_by_id

    info = decoded.image_info
    return {
        "input": os.fspath(path),
        "mode": mode_by_id(decoded.header.mode_id).name,
        "network": decoded.network_name,
        "split": decoded.split,
        "scales": {k: list(v.shape[1:]) for k, v in decoded.features.items()},
        "container_image_id": decoded.image_id,
        "source_name": info.source_name if info is not None else None,
        "times": _batch.json_times(times),
    }


def _decode_one(args: argparse.Namespace, path: Path) -> int:
    dec = _Decoder(args, want_dets=bool(args.detections or args.draw))
    out = Path(args.output) if args.output else None
    decoded, dets, times, _ = dec.decode(path, out)
    times = {"load_network": dec.networks.seconds, **times}
    record = _record(path, decoded, times)
    lines = [_describe(path, decoded)]
    if out is not None:
        lines.append(f"features -> {args.output}")
        record["output"] = args.output
    if dets is not None:
        image_id, source = image_id_of(path, decoded, args.image_id)
        record["image_id"] = image_id
        if args.detections:
            results = dec.results(dets, image_id)
            _cli.atomic_write(args.detections, json.dumps(results).encode(), force=args.force)
            lines.append(f"{len(results)} detections (image id {image_id}, {_id_origin(source)}) -> {args.detections}")
            record["detections"] = len(results)
        if args.draw:
            lines.append(_draw(args, decoded, dets, record))
    lines.append("time: " + _batch.times_text(times))
    if args.json:
        _cli.write_line(json.dumps({**record, "ok": True}))
    elif not args.quiet:
        for line in lines:
            print(line)
    return _cli.EXIT_OK


def _draw(args: argparse.Namespace, decoded: Any, dets: Any, record: dict[str, Any]) -> str:
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
    drawing = draw_detections(image, dets, thr)
    _cli.atomic_write(out_png, drawing.png, force=args.force)
    record["boxes_drawn"] = drawing.boxes
    text = f"drawing: {drawing.boxes} box{'es' if drawing.boxes != 1 else ''} (score >= {thr:g}) -> {out_png}"
    if drawing.boxes == 0:
        if drawing.best_score is None:
            text += "; NN part 2 found nothing"
        else:
            text += f"; the best of {drawing.below} scores {drawing.best_score:.2f} (--score-thr lowers the threshold)"
    return text


def _decode_many(args: argparse.Namespace, paths: list[Path], features: list[Path] | None) -> int:
    dec = _Decoder(args, want_dets=bool(args.detections))
    run = _batch.Run("fcm_dec", len(paths), json_lines=args.json, quiet=args.quiet)
    results: list[dict[str, Any]] = []
    ids: dict[int, Path] = {}
    coding = 0.0
    outs: list[Path | None] = list(features) if features else [None] * len(paths)
    items = list(zip(paths, outs))
    try:
        for path, out in run.progress(items, "container"):
            try:
                decoded, dets, times, _ = dec.decode(path, out)
                record = _record(path, decoded, times)
                line = _describe(path, decoded)
                if dets is not None:
                    image_id, source = image_id_of(path, decoded, None)
                    if image_id in ids:
                        raise InputError(
                            f"image id {image_id} ({_id_origin(source)}) is also that of {ids[image_id]}: "
                            "a COCO results file holds each image once"
                        )
                    ids[image_id] = path
                    mine = dec.results(dets, image_id)
                    results += mine
                    record |= {"image_id": image_id, "detections": len(mine)}
                    line += f"; image {image_id}: {len(mine)} detections"
                if out is not None:
                    record["output"] = os.fspath(out)
            except Exception as e:
                run.failed(path, e)
                continue
            coding += sum(v for k, v in times.items() if k != "load_codec_model")
            run.ok(line, record)
    except KeyboardInterrupt:
        run.summary("containers decoded (interrupted)")
        raise
    notes = []
    if dec.networks.loaded:
        notes.append(f"network load {_cli.fmt_seconds(dec.networks.seconds)}")
    if run.done:
        notes.append(f"{_cli.fmt_seconds(coding / run.done)} per container")
    if args.detections:
        if run.done:
            _cli.atomic_write(args.detections, json.dumps(results).encode(), force=args.force)
            notes.append(f"{len(results)} detections of {len(ids)} images -> {args.detections}")
        else:
            notes.append(f"no container decoded: {args.detections} not written")
    run.summary("containers decoded", notes)
    return run.exit_code


def main(argv: list[str] | None = None) -> int:
    return _cli.run_app("fcm_dec", build_parser(), _decode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
