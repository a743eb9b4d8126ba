"""The data path, one function per arrow:

image -> NN part 1 -> features -> mode encoder -> container bytes      (encode_image)
container bytes -> mode decoder -> features                            (decode_bitstream)
features -> NN part 2 -> detections                                    (run_part2)
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from codec.bitstream import (
    ContainerHeader,
    ImageInfo,
    ModeHeader,
    ModeId,
    PayloadUnit,
    build_container,
    parse_container,
)
from codec.errors import EncodeError, InputError, NetworkMismatchError, WeightsMismatchError
from codec.modes import CodingMode, available_modes, mode_by_id, mode_by_name
from codec.modes.base import EncodeContext
from codec.vision import NETWORK_NAMES_BY_ID, Preprocessing

if TYPE_CHECKING:  # codec.vision.base imports torch; this module imports it where it runs a network
    from codec.vision.base import Detections, Features, SplitNetwork, SplitPoint


@dataclass
class EncodeResult:
    bitstream: bytes  # the container
    features: Features  # NN part 1 output, before coding
    preprocessing: Preprocessing
    timings: dict[str, float]  # seconds: "nn_part1", "encode"
    image_info: ImageInfo | None = None  # what the IMAGE_INFO unit records, if the container has one

    @property
    def bpp(self) -> float:
        """Bits per pixel of the input image: container bits / (width * height)."""
        return 8 * len(self.bitstream) / (self.preprocessing.orig_w * self.preprocessing.orig_h)


@dataclass
class DecodeResult:
    header: ContainerHeader
    features: Features  # reconstructed, (1, C, H, W) float32 per scale
    preprocessing: Preprocessing
    network_name: str
    split: str
    timings: dict[str, float]  # seconds: "decode"
    image_info: ImageInfo | None = None  # the container's IMAGE_INFO unit, if it has one

    @property
    def image_id(self) -> int | None:
        """The image id the container records (IMAGE_INFO), or None."""
        return self.image_info.image_id if self.image_info is not None else None


# Input image limits. A side is at most 65535 pixels: orig_width and orig_height are u(16) in
# the container (bitstream_spec.md). The pixel count is limited before anything is decoded, so
# that a small file declaring a huge picture (a decompression bomb) costs nothing: 2**27
# pixels (e.g. 16384 x 8192, larger than any camera's photo) decode to 384 MiB as RGB uint8.
MAX_IMAGE_SIDE = 65535
DEFAULT_MAX_PIXELS = 1 << 27
# Transparent pixels are composited over white, as a viewer on a page shows them.
ALPHA_BACKGROUND = (255, 255, 255)

# Pillow's decompression-bomb guard is a module global (Image.MAX_IMAGE_PIXELS) that Image.open
# and some plugins consult (the latter while decoding frames or tiles). load_image sets it
# for the duration of one load, under this lock, and restores it: off while Image.open parses
# the header (load_image checks the declared size itself right after, with its own message,
# before anything is decoded), then at the load's pixel limit.
_PILLOW_GUARD_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_guard() -> Iterator[Callable[[int | None], None]]:
    from PIL import Image

    def set_limit(pixels: int | None) -> None:
        Image.MAX_IMAGE_PIXELS = pixels

    with _PILLOW_GUARD_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():
                # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; load_image
                # has already refused everything above its limit by then.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield set_limit
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def check_image_size(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> None:
    """InputError unless a width x height picture is within the input limits (MAX_IMAGE_SIDE a
    side, ``max_pixels`` in all)."""
    if width < 1 or height < 1:
        raise InputError(f"{what} is {width}x{height} pixels: empty")
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise InputError(
            f"{what} is {width}x{height} pixels: a side is longer than {MAX_IMAGE_SIDE}, the largest the "
            "container records"
        )
    if width * height > max_pixels:
        raise InputError(
            f"{what} is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels} "
            "(--max-pixels raises it)"
        )


def _scale_16_to_8(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded (v * 255 / 65535 = v / 257)."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _composite(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> RGB over ALPHA_BACKGROUND, rounded."""
    if rgba[..., 3].min() == 255:  # opaque: the colour as it is
        return rgba[..., :3].copy()
    alpha = rgba[..., 3:].astype(np.uint32)
    bg = np.asarray(ALPHA_BACKGROUND, dtype=np.uint32)
    rgb = (rgba[..., :3].astype(np.uint32) * alpha + bg * (255 - alpha) + 127) // 255
    return rgb.astype(np.uint8)


def to_rgb8(im: Any, what: str = "image") -> np.ndarray:
    """A decoded Pillow image as RGB uint8 (H, W, 3), never silently clipped:

    * 8-bit RGB, greyscale, bilevel, palette without transparency, YCbCr, CMYK (no ICC
      profile applied), LAB, HSV: Pillow's conversion to RGB, as before;
    * with alpha (RGBA, LA, PA, palette with transparency, premultiplied La / RGBa):
      composited over ALPHA_BACKGROUND;
    * 16-bit greyscale (I;16, I;16B, I;16L, and mode I with samples in 0..65535 from a PNM
      or PNG file or from memory, as Pillow gives 16-bit PGM files): scaled to 8 bit (v / 257,
      rounded). 16-bit RGB(A) PNGs Pillow already reduces to 8 bit (the high byte);
    * other modes (I from other formats such as 32-bit or signed TIFF, I outside 0..65535,
      32-bit float F): InputError, since no 8-bit mapping is defined for them.
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "I" and im.format not in (None, "PPM", "PNG"):
        # Pillow's PNM and PNG readers give 16-bit samples as mode I; elsewhere (TIFF) it holds
        # 32-bit or signed 16-bit integers, whose range means nothing in 8 bit
        raise InputError(
            f"{what} has 32-bit or signed integer samples (mode I, {im.format}): no defined conversion to 8 bit "
            "(convert it to 8 or 16 bit first)"
        )
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if a.dtype.kind not in "iu" or (a.size and (int(a.min()) < 0 or int(a.max()) > 65535)):
            lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
            raise InputError(
                f"{what} has {mode} samples in {lo}..{hi}, outside 0..65535: no defined conversion to 8 bit "
                "(convert it to 8 or 16 bit first)"
            )
        grey = _scale_16_to_8(a)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        raise InputError(
            f"{what} has 32-bit float samples (mode F): no defined conversion to 8 bit "
            "(convert it to 8 or 16 bit first)"
        )
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    try:
        if has_alpha:
            if mode == "La":
                im = im.convert("LA")
            return _composite(np.asarray(im.convert("RGBA"), dtype=np.uint8))
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ValueError as e:  # a mode Pillow cannot convert
        raise InputError(f"{what} has pixel mode {mode}, which cannot be converted to RGB: {e}") from None


@contextlib.contextmanager
def _image_errors(name: str) -> Iterator[None]:
    """Pillow's and the file system's failures on the image `name` as one-line InputErrors."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as e:  # a frame or tile larger than the picture declared
        raise InputError(f"image {name} is too large: {e} (--max-pixels raises the limit)") from None
    except FileNotFoundError:
        raise InputError(f"image not found: {name}") from None
    except IsADirectoryError:
        raise InputError(f"image path is a directory: {name}") from None
    except UnidentifiedImageError:
        raise InputError(f"not an image file: {name}") from None
    except OSError as e:
        raise InputError(f"cannot read image {name}: {e}") from None


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InputError(f"the pixel limit must be a positive integer, got {max_pixels!r}")


def check_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file from its header alone, checked as load_image checks it
    (check_image_size); nothing is decoded. An InputError naming ``path`` otherwise."""
    from PIL import Image

    name = os.fspath(path)
    _check_max_pixels(max_pixels)
    with _image_errors(name), _pillow_guard() as set_pillow_limit:
        set_pillow_limit(None)  # Image.open only parses the header; the size check follows
        with Image.open(path) as im:
            check_image_size(*im.size, max_pixels, f"image {name}")
            return im.size


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3) (see to_rgb8 for the pixel modes).

    Its size is checked from the file's header before anything is decoded (check_image_size;
    Pillow's decompression-bomb guard is set to ``max_pixels`` for the decoding); every failure,
    including a file that is damaged or truncated, is an InputError naming ``path``."""
    from PIL import Image

    name = os.fspath(path)
    _check_max_pixels(max_pixels)
    with _image_errors(name), _pillow_guard() as set_pillow_limit:
        set_pillow_limit(None)  # Image.open only parses the header; the size check follows
        with Image.open(path) as im:
            width, height = im.size
            check_image_size(width, height, max_pixels, f"image {name}")
            set_pillow_limit(max_pixels)  # for the frame and tile sizes plugins check
            try:
                im.load()
            except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
                raise InputError(f"cannot decode image {name}: {e}") from None
            return to_rgb8(im, f"image {name}")


def weights_hash_bytes(network: SplitNetwork) -> bytes:
    text = network.weights_sha256()
    try:
        digest = bytes.fromhex(text)
    except (TypeError, ValueError):
        digest = b""
    if len(digest) != 32:
        raise EncodeError(f"network {network.name!r} reports an invalid weights sha256 {text!r}")
    return digest


def _split_point(network: SplitNetwork, split: str) -> SplitPoint:
    if split not in network.split_points:
        raise EncodeError(
            f"network {network.name!r} has no split point {split!r}; choose one of {', '.join(network.split_points)}"
        )
    return network.split_points[split]


def build_bitstream(
    network: SplitNetwork,
    split_point: SplitPoint,
    prep: Preprocessing,
    mode_id: ModeId | int,
    mode_header: ModeHeader,
    units: list[PayloadUnit],
    weights_hash: bytes | None = None,
    version_major: int | None = None,
    version_minor: int | None = None,
    image_info: ImageInfo | None = None,
) -> bytes:
    """The container for a mode's header and payload units, with the network's fields, in
    the syntax of `version_major` (default: container 2.1, bitstream_spec.md). `image_info`
    (unless None or empty) is appended as the optional IMAGE_INFO unit (section 5.5)."""
    header = ContainerHeader(
        network_id=network.network_id,
        network_weights_hash=weights_hash if weights_hash is not None else weights_hash_bytes(network),
        split_point_id=split_point.split_id,
        split_point_name=split_point.name,
        preprocessing=prep,
        mode_id=mode_id,
        mode=mode_header,
    )
    if image_info is not None and not image_info.empty:
        units = [*units, image_info.to_unit()]
    return build_container(header, units, version_major, version_minor)


def resolve_mode(mode: str | CodingMode, params: Mapping[str, Any] | Any = None) -> tuple[CodingMode, Any]:
    """(mode object, its checked parameter dataclass) from a mode name or object and
    the parameters (a mapping, an instance of the mode's dataclass, or None: defaults)."""
    mode_obj = mode if isinstance(mode, CodingMode) else mode_by_name(mode)
    return mode_obj, mode_obj.make_params(params)


def encode_image(
    image: np.ndarray,
    network: SplitNetwork,
    split: str | None,
    mode: str | CodingMode,
    params: Mapping[str, Any] | Any = None,
    image_info: ImageInfo | None = None,
) -> EncodeResult:
    """NN part 1 on an RGB uint8 image, then the coding mode (with `params`, see
    resolve_mode), then the container (with an IMAGE_INFO unit if `image_info` is given)."""
    mode, params = resolve_mode(mode, params)
    split_name = split or network.default_split
    _split_point(network, split_name)  # before NN part 1: a bad split name fails fast
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EncodeError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE):  # orig_width, orig_height: u(16)
        raise EncodeError(f"image is {w}x{h} pixels; the container records 1..{MAX_IMAGE_SIDE} a side")
    weights_hash = weights_hash_bytes(network)

    t0 = time.perf_counter()
    with _inference(network):
        x, prep = network.preprocess(image)
        features = network.part1(x, split_name)
    t1 = time.perf_counter()
    bitstream = encode_features(features, network, split_name, prep, mode, params, weights_hash, image_info=image_info)
    t2 = time.perf_counter()
    info = image_info if image_info is not None and not image_info.empty else None
    return EncodeResult(bitstream, features, prep, {"nn_part1": t1 - t0, "encode": t2 - t1}, info)


def _inference(network: SplitNetwork) -> contextlib.AbstractContextManager[Any]:
    """torch's inference mode around a torch network; a network that runs elsewhere (the ONNX NN
    part 1 of codec.vision.onnx_part1) gives its own context, and torch is not imported."""
    own = getattr(network, "inference_context", None)
    if own is not None:
        return own()
    import torch

    return torch.inference_mode()


def encode_features(
    features: Features,
    network: SplitNetwork,
    split: str | None,
    prep: Preprocessing,
    mode: str | CodingMode,
    params: Mapping[str, Any] | Any = None,
    weights_hash: bytes | None = None,
    version_major: int | None = None,
    version_minor: int | None = None,
    image_info: ImageInfo | None = None,
) -> bytes:
    """NN part 1 output -> container bytes: the coding mode, then the container with the
    network's fields (container 2.1 unless `version_major` / `version_minor` say otherwise) and
    the IMAGE_INFO unit of `image_info`, if given. The tools that code features they computed
    themselves use this."""
    mode, params = resolve_mode(mode, params)
    split_point = _split_point(network, split or network.default_split)
    # the ONNX engine's network (codec.vision.onnx_part1) selects the mode's torch-free encoder
    encoder = mode.encoder(getattr(network, "engine", "torch"))
    if mode.uses_context:

        def container_bits(header: ModeHeader, units: list[PayloadUnit]) -> int:
            data = build_bitstream(
                network, split_point, prep, mode.mode_id, header, units, weights_hash, version_major, version_minor,
                image_info,
            )  # fmt: skip
            return 8 * len(data)

        context = EncodeContext(network, split_point.name, prep, container_bits)
        mode_header, units = cast(Any, encoder)(features, split_point, params, context)  # a context-taking mode
    else:
        mode_header, units = encoder(features, split_point, params)
    return build_bitstream(
        network,
        split_point,
        prep,
        mode.mode_id,
        mode_header,
        units,
        weights_hash,
        version_major,
        version_minor,
        image_info,
    )


def network_name_of(header: ContainerHeader) -> str:
    return NETWORK_NAMES_BY_ID.get(header.network_id, header.network_id.name.lower())


def check_network(header: ContainerHeader, network: SplitNetwork) -> str:
    """Refuse a decoder network that differs from the encoder's; returns the split point name."""
    if network.network_id != header.network_id:
        ours_name = NETWORK_NAMES_BY_ID.get(network.network_id, network.name)
        raise NetworkMismatchError(f"bitstream is for network {header.network_id.name}, the decoder has {ours_name}")
    theirs = header.network_weights_hash.hex()
    ours = network.weights_sha256()
    if ours != theirs:
        raise WeightsMismatchError(
            f"network weights differ from the encoder's: bitstream sha256 {theirs[:16]}..., decoder {ours[:16]}..."
        )
    matches = [sp for sp in network.split_points.values() if sp.split_id == header.split_point_id]
    if not matches or matches[0].name != header.split_point_name:
        raise NetworkMismatchError(
            f"split point {header.split_point_name!r} (id {header.split_point_id}) "
            f"is not a split point of {network.name}"
        )
    sp = matches[0]
    if sp.scale_names() != header.scale_names():
        raise NetworkMismatchError(
            f"bitstream scales {header.scale_names()} differ from split point {sp.name!r} scales {sp.scale_names()}"
        )
    for s, info in zip(header.scales, sp.scales):
        if s.channels != info.channels:
            raise NetworkMismatchError(f"scale {s.name} has {s.channels} channels, the network expects {info.channels}")
    return sp.name


def decode_bitstream(
    data: bytes, network: SplitNetwork | None = None, codec_weights: str | Path | None = None
) -> DecodeResult:
    """Container bytes -> reconstructed features. With `network`, the bitstream's
    network id, weights hash and split point are checked against it first.
    `codec_weights`: a codec-model weights file instead of the shipped one (the
    same file the encoder was given; its sha256 is checked against the header)."""
    t0 = time.perf_counter()
    parsed = parse_container(data)
    header = parsed.header
    split = check_network(header, network) if network is not None else header.split_point_name
    mode = mode_by_id(header.mode_id)
    mode.check(header, parsed.units, codec_weights)
    features = mode.decode(header, parsed.units, codec_weights)
    t1 = time.perf_counter()
    return DecodeResult(
        header=header,
        features=features,
        preprocessing=header.preprocessing,
        network_name=network.name if network is not None else network_name_of(header),
        split=split,
        timings={"decode": t1 - t0},
        image_info=parsed.image_info,
    )


def run_part2(network: SplitNetwork, decoded: DecodeResult) -> tuple[Detections, float]:
    """NN part 2 on decoded features; detections in original-image pixels, and seconds."""
    import torch

    split = check_network(decoded.header, network)
    t0 = time.perf_counter()
    with torch.inference_mode():
        dets = network.part2(decoded.features, split, decoded.preprocessing)
    return dets, time.perf_counter() - t0


__all__ = [
    "DecodeResult",
    "EncodeResult",
    "ImageInfo",
    "ModeId",
    "available_modes",
    "DEFAULT_MAX_PIXELS",
    "MAX_IMAGE_SIDE",
    "build_bitstream",
    "check_image_size",
    "decode_bitstream",
    "encode_features",
    "encode_image",
    "load_image",
    "resolve_mode",
    "run_part2",
    "to_rgb8",
]
