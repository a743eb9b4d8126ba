"""The data path, one function per arrow:

image -> NN part 1 -> features -> mode encoder -> container bytes      (encode_image)
container bytes -> mode decoder -> features                            (decode_bitstream)
features -> NN part 2 -> detections                                    (run_part2)
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.bitstream import (
    ContainerHeader,
    ModeHeader,
    ModeId,
    PayloadUnit,
    build_container,
    parse_container,
)
from codec.errors import EncodeError, InputError, NetworkMismatchError, WeightsMismatchError
from codec.modes import CodingMode, available_modes, mode_by_id, mode_by_name
from codec.vision import NETWORK_NAMES_BY_ID
from codec.vision.base import Detections, Features, Preprocessing, SplitNetwork, SplitPoint


@dataclass
class EncodeResult:
    bitstream: bytes
    features: Features  # NN part 1 output, before coding
    preprocessing: Preprocessing
    timings: dict[str, float]  # seconds: "nn_part1", "encode"


@dataclass
class DecodeResult:
    header: ContainerHeader
    features: Features  # reconstructed, (1, C, H, W) float32 per scale
    preprocessing: Preprocessing
    network_name: str
    split: str
    timings: dict[str, float]  # seconds: "decode"


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise InputError(f"image not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise InputError(f"image path is a directory: {os.fspath(path)}") from None
    except UnidentifiedImageError:
        raise InputError(f"not an image file: {os.fspath(path)}") from None
    except OSError as e:
        raise InputError(f"cannot read image {os.fspath(path)}: {e}") from None


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
) -> bytes:
    """The container for a mode's header and payload units, with the network's fields, in
    the syntax of `version_major` (default: container 2.1, bitstream_spec.md)."""
    header = ContainerHeader(
        network_id=network.network_id,
        network_weights_hash=weights_hash if weights_hash is not None else weights_hash_bytes(network),
        split_point_id=split_point.split_id,
        split_point_name=split_point.name,
        preprocessing=prep,
        mode_id=mode_id,
        mode=mode_header,
    )
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
) -> EncodeResult:
    """NN part 1 on an RGB uint8 image, then the coding mode (with `params`, see
    resolve_mode), then the container."""
    mode, params = resolve_mode(mode, params)
    split_name = split or network.default_split
    _split_point(network, split_name)  # before NN part 1: a bad split name fails fast
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EncodeError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    weights_hash = weights_hash_bytes(network)

    t0 = time.perf_counter()
    with torch.inference_mode():
        x, prep = network.preprocess(image)
        features = network.part1(x, split_name)
    t1 = time.perf_counter()
    bitstream = encode_features(features, network, split_name, prep, mode, params, weights_hash)
    t2 = time.perf_counter()
    return EncodeResult(bitstream, features, prep, {"nn_part1": t1 - t0, "encode": t2 - t1})


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
) -> bytes:
    """NN part 1 output -> container bytes: the coding mode, then the container with the
    network's fields (container 2.1 unless `version_major` / `version_minor` say otherwise). The tools that code
    features they computed themselves use this."""
    mode, params = resolve_mode(mode, params)
    split_point = _split_point(network, split or network.default_split)
    mode_header, units = mode.encode(features, split_point, params)
    return build_bitstream(
        network, split_point, prep, mode.mode_id, mode_header, units, weights_hash, version_major, version_minor
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
    )


def run_part2(network: SplitNetwork, decoded: DecodeResult) -> tuple[Detections, float]:
    """NN part 2 on decoded features; detections in original-image pixels, and seconds."""
    split = check_network(decoded.header, network)
    t0 = time.perf_counter()
    with torch.inference_mode():
        dets = network.part2(decoded.features, split, decoded.preprocessing)
    return dets, time.perf_counter() - t0


__all__ = [
    "DecodeResult",
    "EncodeResult",
    "ModeId",
    "available_modes",
    "build_bitstream",
    "decode_bitstream",
    "encode_features",
    "encode_image",
    "load_image",
    "resolve_mode",
    "run_part2",
]
