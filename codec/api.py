"""The Python API: encode an image into an FCM container, decode a container into features,
and run the task network (NN part 2) on them. The applications (fcm_enc, fcm_dec) and the
CTC run the same functions of `codec.pipeline`; these add the conveniences of a library:
a path or an array as the image, networks and codec models loaded once per process, the
mode's parameters as keyword arguments, and the image's identity (the IMAGE_INFO unit).

    import codec

    enc = codec.encode("photo.jpg", mode="anchor", qp=37)   # NanoDet, split "neck"
    print(len(enc.bitstream), enc.bpp)                      # container bytes, bits per pixel
    dec = codec.decode(enc.bitstream)                       # {scale name: tensor} features
    dets = codec.run_task(dec)                              # boxes, scores, COCO category ids
    results = dets.to_coco(dec.image_id or 0)               # COCO results

The README's "API" section has more; tests/unit/test_api.py runs its examples.

Importing this module (and `codec`) loads neither torch nor numpy: they load on the first
call that needs them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from codec.bitstream import ImageInfo
    from codec.modes import CodingMode
    from codec.pipeline import DecodeResult, EncodeResult
    from codec.vision.base import Detections, SplitNetwork

__all__ = ["decode", "encode", "image_id_from_name", "image_info_for", "load_network", "run_task"]

DEFAULT_NETWORK = "nanodet"  # codec.vision.DEFAULT_NETWORK (tested)
DEFAULT_MODE = "anchor"

# The explicit rule for an image id from a file name (bitstream_spec.md, section 5.5): the part
# of the name before its first "." or "_", if it is all decimal digits.
_ID_PART = re.compile(r"([0-9]+)(?:[._]|$)")


def image_id_from_name(name: str | os.PathLike) -> int | None:
    """The image id a file name gives, by one explicit rule: the part of the name (without
    folders) before its first ``.`` or ``_``, if it is all decimal digits; else None.

    Example::

        image_id_from_name("val2017/000000001000.jpg")   # 1000
        image_id_from_name("000000001000_qp37.bin")      # 1000
        image_id_from_name("qp37_000000001000.bin")      # None (not 37: the rule does not guess)
    """
    m = _ID_PART.match(Path(name).name)
    return int(m.group(1)) if m else None


def image_info_for(
    path: str | os.PathLike | None, image_id: int | None = None, source_name: str | None = None
) -> ImageInfo:
    """The IMAGE_INFO record fcm_enc writes for an image file: `image_id` if given, else the id
    of the file name (image_id_from_name); `source_name` if given, else the file's name."""
    from codec.bitstream import ImageInfo

    name = Path(path).name if path is not None else None
    if image_id is None and name is not None:
        image_id = image_id_from_name(name)
    return ImageInfo(image_id, source_name if source_name is not None else name)


# -- networks, loaded once per process ---------------------------------------------------------

_NETWORKS: dict[tuple[str, str | None], SplitNetwork] = {}
_NETWORKS_LOCK = threading.Lock()


def load_network(name: str = DEFAULT_NETWORK, weights: str | os.PathLike | None = None) -> SplitNetwork:
    """The split network `name` (see ``codec.vision.available_networks()``), built and its weights
    verified on the first call, the same object afterwards; `weights`: a local weights file
    instead of the default, verified ones.

    Example::

        net = load_network("nanodet")
        net.default_split, list(net.split_points)        # ('neck', ['neck', 'backbone'])
    """
    from codec.vision import get_network

    key = (name, os.fspath(weights) if weights is not None else None)
    with _NETWORKS_LOCK:
        net = _NETWORKS.get(key)
        if net is None:
            net = _NETWORKS[key] = get_network(name, weights=key[1])
        return net


def _network(network: str | SplitNetwork | None, default: str) -> SplitNetwork:
    if network is None:
        return load_network(default)
    if isinstance(network, str):
        return load_network(network)
    return network


# -- the three calls ---------------------------------------------------------------------------------


def encode(
    image: str | os.PathLike | np.ndarray,
    *,
    mode: str | CodingMode = DEFAULT_MODE,
    params: Mapping[str, Any] | Any = None,
    network: str | SplitNetwork = DEFAULT_NETWORK,
    split: str | None = None,
    image_id: int | None = None,
    source_name: str | None = None,
    image_info: bool = True,
    max_pixels: int | None = None,
    **mode_params: Any,
) -> EncodeResult:
    """Encode an image into an FCM container: NN part 1 of `network` up to `split`, then the
    coding `mode` with its parameters.

    Args:
        image: an image file (any format Pillow reads, see `codec.pipeline.load_image`) or an
            RGB uint8 array of shape (H, W, 3).
        mode: a coding mode's name (``codec.modes.available_modes()``) or object.
        params: the mode's parameters as a mapping or as its parameter dataclass; keyword
            arguments (``qp=37``, ``phi=2``, ``preset="fast"``) add to them. A name the mode does
            not have or a value outside its range is an `EncodeError`, before anything loads.
        network: a network name (loaded once per process, `load_network`) or a network object.
        split: the split point (default: the network's, "neck" for NanoDet).
        image_id: the image's id in its data set (COCO image id), recorded in the container's
            IMAGE_INFO unit; default for an image file: its name's id (`image_id_from_name`).
        source_name: the source file name to record; default for an image file: its name.
        image_info: False: write no IMAGE_INFO unit (as the CTC, whose rates exclude it).
        max_pixels: the image file's pixel limit (default 2^27, `codec.pipeline.DEFAULT_MAX_PIXELS`).

    Returns:
        `codec.pipeline.EncodeResult`: ``bitstream`` (the container bytes), ``bpp``,
        ``features`` (NN part 1's output), ``preprocessing``, ``image_info`` and ``timings``.

    Raises:
        codec.errors.InputError: the image cannot be read (or is too large).
        codec.errors.EncodeError: bad mode parameters or split point.
        codec.inner.vvc.FfmpegError: the VVC encoder (ffmpeg) failed.

    Example::

        enc = encode("000000001000.jpg", mode="learned_e2e", phi=2)
        enc.bitstream[:4], enc.image_info.image_id       # (b'FCMB', 1000)
        Path("000000001000.bin").write_bytes(enc.bitstream)
    """
    from codec.pipeline import DEFAULT_MAX_PIXELS, encode_image, load_image, resolve_mode

    clash = sorted(set(mode_params) & set(dict(params or {}) if isinstance(params, Mapping) else ()))
    if clash:
        from codec.errors import EncodeError

        raise EncodeError(f"mode parameter {', '.join(clash)} given twice (in params and as a keyword)")
    if mode_params:
        if params is None or isinstance(params, Mapping):
            params = {**(params or {}), **mode_params}
        else:
            from dataclasses import replace

            params = replace(params, **mode_params)
    mode_obj, params = resolve_mode(mode, params)  # checked before the network or the image load
    if isinstance(image, (str, os.PathLike)):
        info = image_info_for(image, image_id, source_name) if image_info else None
        pixels = load_image(image, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    else:
        info = image_info_for(None, image_id, source_name) if image_info else None
        pixels = image
    net = _network(network, DEFAULT_NETWORK)
    return encode_image(pixels, net, split, mode_obj, params, image_info=info)


def _read(data: bytes | str | os.PathLike) -> bytes:
    """A container's bytes, from bytes or a file (InputError naming the file if it cannot be read)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    from codec.files import read_input_file

    return read_input_file(data, "bitstream")


def decode(
    data: bytes | str | os.PathLike,
    *,
    network: str | SplitNetwork | None = None,
    codec_weights: str | os.PathLike | None = None,
) -> DecodeResult:
    """Decode an FCM container into the features NN part 1 produced (reconstructed).

    Args:
        data: the container's bytes or a container file.
        network: with a network (name or object), the container's network id, weights hash and
            split point are checked against it; None: no network is needed to decode.
        codec_weights: a codec-model weights file instead of the shipped one (the file the
            encoder was given; its sha256 is checked against the header).

    Returns:
        `codec.pipeline.DecodeResult`: ``features`` ({scale name: float32 tensor (1, C, H, W)}),
        ``header``, ``preprocessing``, ``image_info`` / ``image_id`` (the IMAGE_INFO unit),
        ``network_name``, ``split`` and ``timings``.

    Raises:
        codec.errors.BitstreamError: an invalid container (each error class of
            bitstream_spec.md, section 6.2), or other network or codec-model weights.

    Example::

        dec = decode("000000001000.bin")
        {k: tuple(v.shape) for k, v in dec.features.items()}
        # {'p3': (1, 128, 52, 52), 'p4': (1, 128, 26, 26), 'p5': (1, 128, 13, 13)}
    """
    from codec.pipeline import decode_bitstream

    net = None if network is None else _network(network, DEFAULT_NETWORK)
    return decode_bitstream(_read(data), net, None if codec_weights is None else os.fspath(codec_weights))


def run_task(
    decoded: DecodeResult | bytes | str | os.PathLike,
    *,
    network: str | SplitNetwork | None = None,
    weights: str | os.PathLike | None = None,
    codec_weights: str | os.PathLike | None = None,
) -> Detections:
    """NN part 2 on decoded features: the task's output (detections) in original-image pixels.

    Args:
        decoded: a `decode` result, or a container (bytes or file), decoded first.
        network: the network (name or object); default: the one the container names, loaded
            once per process (with `weights`, a local weights file, if given).
        codec_weights: for a container given as bytes or a file, as in `decode`.

    Returns:
        `codec.vision.base.Detections`: ``boxes`` (N, 4) as x1, y1, x2, y2, ``scores``,
        ``category_ids`` (COCO ids); ``to_coco(image_id)`` gives COCO results.

    Raises:
        codec.errors.NetworkMismatchError, codec.errors.WeightsMismatchError: the container
            was coded with another network or other weights.

    Example::

        dets = run_task("000000001000.bin")               # decodes, then NN part 2
        dets.to_coco(1000)                                # [{"image_id": 1000, "category_id": 1, ...}, ...]
    """
    from codec.bitstream import parse_container
    from codec.pipeline import DecodeResult, network_name_of, run_part2

    data = None if isinstance(decoded, DecodeResult) else _read(decoded)
    if network is not None:
        net = _network(network, DEFAULT_NETWORK)
    else:  # the network the container names
        header = decoded.header if isinstance(decoded, DecodeResult) else parse_container(data or b"").header
        net = load_network(network_name_of(header), weights)
    if not isinstance(decoded, DecodeResult):
        decoded = decode(data or b"", network=net, codec_weights=codec_weights)
    dets, _ = run_part2(net, decoded)
    return dets
