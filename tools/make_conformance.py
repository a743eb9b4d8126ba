"""Generate the conformance vectors of tests/conformance (bitstream_spec.md, section 9).

Golden vectors (container 1.0, and 2.0 as v2-NAME) are coded from deterministic
synthetic features with the scale
structure of NanoDet "neck" (3 scales, strides 8/16/32, 16 channels each, for a
128x128 input), through the mode API; they do not need NanoDet. Invalid vectors
each break one rule and come with NAME.expected (error class, message substring).

Regenerating replaces the checked-in vectors, so it is an explicit opt-in:

    python -m tools.make_conformance --regenerate            # tests/conformance
    python -m tools.make_conformance --out /tmp/vectors      # a new, empty folder
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from codec.bitstream import (
    ALL_SCALES,
    ContainerHeader,
    ImageInfo,
    ModeHeader,
    NetworkId,
    PayloadUnit,
    ResizeMode,
    UnitType,
    build_container,
    parse_container,
    syntax,
)
from codec.bitstream.container import header_to_dict, unit_to_dict
from codec.errors import BitstreamError
from codec.modes import bypass, conformance_digest
from codec.pipeline import encode_features
from codec.vision.base import Preprocessing, ScaleInfo, SplitPoint

ROOT = Path(__file__).resolve().parents[1]

# NanoDet "neck" as table 8.2 of the spec has it (the vectors of the bypass and anchor modes
# use a 64 x 64 input to stay small; vvc_msff and learned_e2e a 128 x 128 one)
SPLIT = SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 128, 16), ScaleInfo("p5", 128, 32)))
MSFF_SPLIT = SPLIT
# the 16-channel "neck" of the bypass and anchor vectors before table 8.2 was enforced: kept as
# invalid vectors (invalid-neck-16-channels*), a decoder must refuse them
SPLIT16 = SplitPoint("neck", 1, (ScaleInfo("p3", 16, 8), ScaleInfo("p4", 16, 16), ScaleInfo("p5", 16, 32)))
INPUT = 128
PREP = Preprocessing(160, 120, INPUT, INPUT, ResizeMode.STRETCH, INPUT / 160, INPUT / 120)
SMALL_INPUT = 64
PREP_SMALL = Preprocessing(80, 60, SMALL_INPUT, SMALL_INPUT, ResizeMode.STRETCH, SMALL_INPUT / 80, SMALL_INPUT / 60)
WEIGHTS_HASH = hashlib.sha256(b"fcm conformance weights").digest()
MAX_VECTOR_BYTES = 100_000
# invalid vectors whose defect only decoding finds (fcm_inspect does not decode); NAME.expected says so
FOUND_BY_DECODING = {"invalid-learned_e2e-enlarged", "invalid-nonfinite-feature"}


def synthetic_features(seed: int = 2024, split: SplitPoint = SPLIT, size: int = INPUT) -> dict[str, torch.Tensor]:
    """Smooth, ReLU-like channels with a different range per scale (for a `size` x `size` input)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in enumerate(split.scales):
        n = size // s.stride
        yy, xx = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
        chans = []
        for _ in range(s.channels):
            fx, fy, ph, amp = rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.2), rng.uniform(0, 6.28), rng.uniform(0.5, 2)
            c = amp * np.sin(2 * np.pi * fx * xx + ph) * np.cos(2 * np.pi * fy * yy) + 0.05 * rng.standard_normal(
                (n, n)
            )
            chans.append(np.maximum(c, -0.1 * (k + 1)))
        out[s.name] = torch.from_numpy(np.stack(chans)[None].astype(np.float32))
    return out


class ConformanceNetwork:
    """The network fields of the golden vectors: NanoDet's id, a fixed weights hash and
    one split point. Golden vectors go through codec.pipeline.encode_features, the data
    path of the apps and the CTC, from synthetic features (no network runs)."""

    default_split = "neck"

    def __init__(self, split: SplitPoint = SPLIT, name: str = "nanodet", network_id: NetworkId = NetworkId.NANODET):
        self.split_points = {split.name: split}
        self.name, self.network_id = name, network_id

    def weights_sha256(self) -> str:
        return WEIGHTS_HASH.hex()


def code(
    feats: dict[str, torch.Tensor],
    mode: str,
    params: dict,
    split: SplitPoint = SPLIT,
    version: tuple[int, int] = (1, 0),
    prep: Preprocessing = PREP,
    network: ConformanceNetwork | None = None,
) -> bytes:
    """One vector through the data path, in container `version`: the vectors named without a
    version are 1.0, v2-NAME 2.0, v21-NAME 2.1."""
    return encode_features(
        feats, network or ConformanceNetwork(split), split.name, prep, mode, params, version_major=version[0],
        version_minor=version[1],
    )  # fmt: skip


def _header(mode, mode_header: ModeHeader, prep: Preprocessing = PREP_SMALL, version=(1, 0)) -> ContainerHeader:
    return ContainerHeader(
        NetworkId.NANODET,
        WEIGHTS_HASH,
        SPLIT.split_id,
        SPLIT.name,
        prep,
        mode.MODE.mode_id,
        mode_header,
        version_major=version[0],
        version_minor=version[1],
    )


def _waves(split: SplitPoint, rng: np.random.Generator, amp: tuple[float, float], scale: float):
    """Per scale of `split` (for an INPUT x INPUT input): (scale, channels of smooth waves,
    scale * a * sin(2 pi (x + p)) * cos(2 pi f y) with a, p, f drawn per channel)."""
    for s in split.scales:
        n = INPUT // s.stride
        yy, xx = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
        f = rng.uniform(*amp, (s.channels, 1, 1)) * np.sin(2 * np.pi * (xx + rng.uniform(0, 1, (s.channels, 1, 1))))
        yield s, scale * f * np.cos(2 * np.pi * yy * rng.uniform(0.2, 1.2, (s.channels, 1, 1)))


def nanodet_like_features(seed: int) -> tuple[SplitPoint, dict[str, torch.Tensor]]:
    """Smooth 128-channel features with NanoDet-neck-like magnitudes (the channels its models were trained for)."""
    split = SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 128, 16), ScaleInfo("p5", 128, 32)))
    rng = np.random.default_rng(seed)
    return split, {
        s.name: torch.from_numpy(f[None].astype(np.float32)) for s, f in _waves(split, rng, (0.3, 1.5), 0.15)
    }


def learned_e2e_vector(version: tuple[int, int] = (1, 0), codec_model: str = "fenet_nanodet_neck") -> bytes:
    """learned_e2e at quality index 3 with a shipped model (codec/models/weights/<codec_model>.pt)."""
    split, feats = nanodet_like_features(2026)
    return code(feats, "learned_e2e", {"phi": 3, "codec_model": codec_model}, split, version)


# YOLOv5s-seg "neck" (table 8.2): 128, 256 and 512 channels at strides 8, 16 and 32
SEG_SPLIT = SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 256, 16), ScaleInfo("p5", 512, 32)))


def learned_e2e_seg_vector() -> bytes:
    """learned_e2e with YOLOv5s-seg's model (fenet_yolov5s_seg_neck) at quality index 3, in
    container 2.1: smooth features through a SiLU, as YOLOv5s-seg's neck outputs are (min -0.278)."""
    rng = np.random.default_rng(2028)
    feats = {}
    for s, g in _waves(SEG_SPLIT, rng, (0.5, 3.0), 1.0):
        g = g - rng.uniform(0, 2, (s.channels, 1, 1))
        feats[s.name] = torch.from_numpy((g / (1 + np.exp(-g)))[None].astype(np.float32))  # SiLU
    network = ConformanceNetwork(SEG_SPLIT, "yolov5s_seg", NetworkId.YOLOV5S_SEG)
    params = {"phi": 3, "codec_model": "fenet_yolov5s_seg_neck"}
    return code(feats, "learned_e2e", params, SEG_SPLIT, (2, 1), network=network)


def learned_ps_vector() -> bytes:
    """learned_ps with its shipped model, one quality index per scale (5, 2, 3): smooth
    NanoDet-neck-like features as learned_e2e_vector's (another seed)."""
    split, feats = nanodet_like_features(2027)
    return code(feats, "learned_ps", {"phis": "5,2,3"}, split, (2, 1))


def small_features() -> dict[str, torch.Tensor]:
    """The features of the bypass and anchor vectors (NanoDet neck, 64 x 64 input)."""
    return synthetic_features(size=SMALL_INPUT)


def golden_vectors() -> dict[str, bytes]:
    feats = small_features()
    small = {"prep": PREP_SMALL}
    out = {}
    for name, dtype in (("bypass-f16", "float16"), ("bypass-f32", "float32")):
        out[name] = code(feats, "bypass", {"bypass_dtype": dtype}, **small)
    # a unit of a later minor version inserted: built by hand, the mode cannot write it
    mh, units = bypass.encode(feats, SPLIT, bypass.Params(bypass_dtype="float16"))
    optional = PayloadUnit(200, b"an optional unit of a later minor version", ALL_SCALES, required=False)
    out["bypass-f16-optional-unit"] = build_container(_header(bypass, mh), [units[0], optional, *units[1:]])
    for qp in (22, 37):
        out[f"anchor-qp{qp}"] = code(feats, "anchor", {"qp": qp, "preset": "faster"}, **small)
    # vvc_msff needs the channel counts its shipped MSFF/MSFR model was trained for (128)
    msff_feats = {k: v * 0.1 for k, v in synthetic_features(2025, MSFF_SPLIT).items()}
    msff_g1 = {"qp": 37, "preset": "faster", "codec_model": "msff_nanodet_neck"}  # the first generation
    out["vvc_msff-qp37"] = code(msff_feats, "vvc_msff", msff_g1, MSFF_SPLIT)
    out["learned_e2e-phi3"] = learned_e2e_vector()
    # container 2.0: the same content, each mode's header part in its own syntax
    out["v2-bypass-f16"] = code(feats, "bypass", {"bypass_dtype": "float16"}, version=(2, 0), **small)
    out["v2-anchor-qp37"] = code(feats, "anchor", {"qp": 37, "preset": "faster"}, version=(2, 0), **small)
    out["v2-vvc_msff-qp37"] = code(msff_feats, "vvc_msff", msff_g1, MSFF_SPLIT, (2, 0))
    out["v2-learned_e2e-phi3"] = learned_e2e_vector((2, 0))
    # the second-generation model (latent at p4, task-aware), the encoder's default
    out["learned_e2e-p4-phi3"] = learned_e2e_vector((1, 0), "fenet_nanodet_neck_p4")
    out["v2-learned_e2e-p4-phi3"] = learned_e2e_vector((2, 0), "fenet_nanodet_neck_p4")
    # container 2.1: the 2.0 content, the header binding the payload units (payload_units_crc32)
    for name in ("bypass-f16", "anchor-qp37", "vvc_msff-qp37", "learned_e2e-p4-phi3"):
        out[f"v21-{name}"] = rewrapped(out[f"v2-{name}"], (2, 1))
    # the optional IMAGE_INFO unit (section 5.5) after the mode's units: COCO image id and file name
    out["v21-bypass-f16-image-info"] = with_units(out["v21-bypass-f16"], [IMAGE_INFO.to_unit()])
    # the third-generation model (the encoder's default until id 5), new in container 2.1
    out["v21-learned_e2e-g3-phi3"] = learned_e2e_vector((2, 1), "fenet_nanodet_neck_g3")
    # the fourth-generation model (the encoder's default since codec_model_id 5)
    out["v21-learned_e2e-g4-phi3"] = learned_e2e_vector((2, 1), "fenet_nanodet_neck_g4")
    # vvc_msff's second generation (codec_model_id MSFF_NANODET_NECK_G2, the encoder's default)
    msff_g2 = {**msff_g1, "codec_model": "msff_nanodet_neck_g2"}
    out["v21-vvc_msff-g2-qp37"] = code(msff_feats, "vvc_msff", msff_g2, MSFF_SPLIT, (2, 1))
    # the YOLOv5s-seg model (codec_model_id FENET_YOLOV5S_SEG_NECK): another network, other channels
    out["v21-learned_e2e-yolov5s_seg-phi3"] = learned_e2e_seg_vector()
    # learned_ps (section 7.8): a quality index per scale, here a mixed allocation (p3 5, p4 2, p5 3)
    out["v21-learned_ps-phis523"] = learned_ps_vector()
    # the MPEG feature anchor procedure (section 7.7): one range for the set, all-intra at QP 37
    out["v21-mpeg_anchor-qp37"] = code(feats, "mpeg_anchor", MPEG_ANCHOR_PARAMS, version=(2, 1), **small)
    # the same procedure with one frame and one QP per scale (section 7.9): p3 32, p4 42, p5 47
    out["v21-mpeg_anchor_ps-qps324247"] = code(
        feats, "mpeg_anchor_ps", {**MPEG_ANCHOR_PARAMS, "qp": None, "qps": "32,42,47"}, version=(2, 1), **small
    )
    return out


MPEG_ANCHOR_PARAMS = {"qp": 37, "preset": "faster", "range_min": -0.5, "range_max": 2.5}


IMAGE_INFO = ImageInfo(image_id=1000, source_name="000000001000.jpg")


def with_units(data: bytes, extra: list[PayloadUnit]) -> bytes:
    """`data` with `extra` appended to its payload units (the header's binding recomputed)."""
    parsed = parse_container(data)
    return build_container(parsed.header, parsed.units + extra)


def rewrapped(data: bytes, version: tuple[int, int]) -> bytes:
    """The header and units of `data` in container `version` (the same decoded content)."""
    parsed = parse_container(data)
    return build_container(parsed.header, parsed.units, version_major=version[0], version_minor=version[1])


def _with_field(data_header: ContainerHeader, units: list[PayloadUnit], **fields) -> bytes:
    d = header_to_dict(data_header, len(units))
    d.update(fields)
    value = dict(
        version_major=1,
        version_minor=0,
        header=dict(value=d),
        header_crc32=None,
        payload_units=[unit_to_dict(u) for u in units],
    )
    return syntax.fcm_container.build(value)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _head(data: bytes) -> bytes:
    """magic .. header_crc32 of a container."""
    return data[: 10 + int.from_bytes(data[6:10], "big") + 4]


def _with_units(data: bytes, units: list[PayloadUnit]) -> bytes:
    """The head of `data` (its payload_units_crc32 kept) followed by `units`."""
    return _head(data) + b"".join(syntax.payload_unit.build(unit_to_dict(u)) for u in units)


def _resized(data: bytes, k: int) -> bytes:
    """`data` with the input and every scale k times larger (consistently, CRCs recomputed)."""
    parsed = parse_container(data)
    h = parsed.header
    p = h.preprocessing
    prep = replace(p, input_w=p.input_w * k, input_h=p.input_h * k)
    scales = tuple(replace(s, height=s.height * k, width=s.width * k) for s in h.scales)
    return build_container(replace(h, preprocessing=prep, mode=replace(h.mode, scales=scales)), parsed.units)


def legacy_16_channel_vectors() -> dict[str, bytes]:
    """The bypass / anchor golden vectors as they were before table 8.2 was enforced: NanoDet's
    neck with 16 channels per scale (the table says 128), container 1.0 and 2.0."""
    feats = synthetic_features(split=SPLIT16)
    return {
        "invalid-neck-16-channels": code(feats, "bypass", {"bypass_dtype": "float16"}, SPLIT16),
        "invalid-neck-16-channels-v2": code(feats, "anchor", {"qp": 37, "preset": "faster"}, SPLIT16, (2, 0)),
    }


def invalid_vectors(golden: dict[str, bytes]) -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, error class, message substring)."""
    feats = small_features()
    mh, units = bypass.encode(feats, SPLIT, bypass.Params(bypass_dtype="float16"))
    header = _header(bypass, mh)
    good = golden["bypass-f16"]
    head_end = len(_head(good))
    big = list(header_to_dict(header, len(units))["scales"])
    big[0] = dict(big[0], scale_channels=4096, scale_height=4096, scale_width=4096, kept_channels=4096)
    huge_c = [dict(big[0], scale_channels=60000)] + big[1:]
    unit_bytes = len(units[0].data)
    anchor22 = parse_container(
        code(feats, "anchor", {"qp": 22, "preset": "faster"}, version=(2, 1), prep=PREP_SMALL)
    ).units
    v21_bypass = parse_container(golden["v21-bypass-f16"]).units
    legacy = legacy_16_channel_vectors()
    e2e = golden["v21-learned_e2e-p4-phi3"]
    info_unit = IMAGE_INFO.to_unit()
    v21 = golden["v21-bypass-f16"]
    return {
        "invalid-bad-magic": (b"FCMX" + good[4:], "BadMagicError", "not an FCM container"),
        "invalid-version-major": (good[:4] + b"\x03" + good[5:], "UnsupportedVersionError", "version_major 3"),
        "invalid-unknown-mode": (_with_field(header, units, mode_id=77), "UnknownModeError", "mode_id 77"),
        "invalid-header-crc": (_flip(good, 20), "HeaderCrcError", "header_crc32 mismatch"),
        "invalid-payload-crc": (_flip(good, head_end + 100), "PayloadCrcError", "unit_crc32 of payload unit 0"),
        "invalid-truncated": (good[: len(good) - 1000], "TruncatedError", "truncated bitstream"),
        "invalid-absurd-channels": (
            _with_field(header, units, scales=huge_c),
            "SizeLimitError",
            "scale_channels = 60000",
        ),
        "invalid-absurd-samples": (_with_field(header, units, scales=big), "SizeLimitError", "more than the limit"),
        "invalid-trailing-garbage": (good + b"\x00garbage", "TrailingDataError", "8 bytes of trailing data"),
        "invalid-unknown-required-unit": (
            build_container(header, [*units, PayloadUnit(200, b"?", ALL_SCALES, required=True)]),
            "UnknownUnitError",
            "unknown required unit_type 200",
        ),
        "invalid-payload-size": (
            build_container(header, [PayloadUnit(UnitType.RAW_TENSOR, units[0].data[:-2], 0), *units[1:]]),
            "MalformedError",
            f"has {unit_bytes - 2} bytes, expected {unit_bytes}",
        ),
        # table 8.2: the split point, its scales and their sizes
        "invalid-neck-16-channels": (legacy["invalid-neck-16-channels"], "MalformedError", "has scales"),
        "invalid-neck-16-channels-v2": (legacy["invalid-neck-16-channels-v2"], "MalformedError", "has scales"),
        "invalid-split-point-id": (
            _with_field(header, units, split_point_id=5),
            "MalformedError",
            "split_point_id 5 is not a split point of NANODET",
        ),
        "invalid-scale-size": (_with_field(header, units, input_width=100), "MalformedError", "at stride 8 gives"),
        # container 2.1: payload_units_crc32 binds the units to the header
        "invalid-unit-spliced": (
            _with_units(golden["v21-anchor-qp37"], anchor22),
            "PayloadCrcError",
            "payload_units_crc32 mismatch",
        ),
        "invalid-units-reordered": (
            _with_units(golden["v21-bypass-f16"], [v21_bypass[1], v21_bypass[0], *v21_bypass[2:]]),
            "PayloadCrcError",
            "payload_units_crc32 mismatch",
        ),
        # learned_e2e: the latent size comes from the header; a short string must not crash the
        # rANS decoder (codec/inner/rans.py) and the symbol count is bounded
        "invalid-learned_e2e-enlarged": (_resized(e2e, 2), "LatentChecksumError", "hyper-latent symbols CRC32"),
        "invalid-learned_e2e-latent-limit": (_resized(e2e, 24), "SizeLimitError", "more than the limit 1048576"),
        # a float16 NaN in a bypass tensor (section 7.1: decoded features are finite)
        "invalid-nonfinite-feature": (
            build_container(header, [PayloadUnit(UnitType.RAW_TENSOR, b"\x00\x7e" + units[0].data[2:], 0), *units[1:]]),
            "MalformedError",
            "decoded scale p3 holds 1 NaN or infinite values",
        ),
        # IMAGE_INFO (section 5.5): at most one, optional, a UTF-8 name without control characters
        "invalid-image-info-twice": (
            with_units(v21, [info_unit, info_unit]),
            "MalformedError",
            "second IMAGE_INFO unit",
        ),
        "invalid-image-info-required": (
            with_units(v21, [replace(info_unit, required=True)]),
            "MalformedError",
            "it must be optional (0) and for all scales",
        ),
        "invalid-image-info-name": (
            with_units(v21, [replace(info_unit, data=info_unit.data[:-4] + b"\x1b[2J")]),
            "MalformedError",
            "holds control characters",
        ),
        # mpeg_anchor: the set's range must be a non-empty interval (section 7.7)
        "invalid-mpeg_anchor-empty-range": (
            _with_range(golden["v21-mpeg_anchor-qp37"], 0.5, 0.5),
            "MalformedError",
            "min < max",
        ),
    }


def _with_range(data: bytes, lo: float, hi: float) -> bytes:
    parsed = parse_container(data)
    h = parsed.header
    scales = tuple(replace(s, quant_min=lo, quant_max=hi) for s in h.scales)
    return build_container(replace(h, mode=replace(h.mode, scales=scales)), parsed.units)


def _checked_invalid(name: str, data: bytes, cls: str, message: str) -> bytes:
    """`data`, after checking that the reference decoder rejects it with `cls` and `message`."""
    try:
        conformance_digest(data)
    except BitstreamError as e:
        if type(e).__name__ != cls or message not in str(e):
            raise SystemExit(f"{name}: expected {cls} with {message!r}, got {type(e).__name__}: {e}") from None
    else:
        raise SystemExit(f"{name}: decoded without error")
    return data


def _write_invalid(out: Path, name: str, data: bytes, cls: str, message: str) -> None:
    (out / f"{name}.bin").write_bytes(data)
    found_by = "found by decoding\n" if name in FOUND_BY_DECODING else ""
    (out / f"{name}.expected").write_text(f"{cls}\n{message}\n{found_by}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "conformance", help="output folder")
    p.add_argument("--regenerate", action="store_true", help="replace existing vectors in --out")
    p.add_argument(
        "--only", action="append", default=[], metavar="NAME",
        help="write only this golden or invalid vector (repeatable; e.g. a new model's), leaving every other file "
        "as it is",
    )  # fmt: skip
    args = p.parse_args(argv)
    out: Path = args.out
    if args.only:
        golden = golden_vectors()
        invalid = invalid_vectors(golden) if any(n.startswith("invalid-") for n in args.only) else {}
        unknown = sorted(set(args.only) - set(golden) - set(invalid))
        if unknown:
            print(f"unknown vector(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        for name in args.only:
            if (out / f"{name}.bin").exists() and not args.regenerate:
                print(f"{out / name}.bin exists; pass --regenerate to replace it", file=sys.stderr)
                return 2
            if name in invalid:
                data = _checked_invalid(name, *invalid[name])
                _write_invalid(out, name, data, *invalid[name][1:])
            else:
                data = golden[name]
                (out / f"{name}.bin").write_bytes(data)
                (out / f"{name}.md5").write_text(conformance_digest(data))
            print(f"{name}.bin {len(data)} bytes")
        return 0
    if any(out.glob("*.bin")) and not args.regenerate:
        print(f"{out} already holds vectors; pass --regenerate to replace them", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    golden = golden_vectors()
    for name, data in golden.items():
        (out / f"{name}.bin").write_bytes(data)
        (out / f"{name}.md5").write_text(conformance_digest(data))
    for name, (data, cls, message) in invalid_vectors(golden).items():
        _write_invalid(out, name, _checked_invalid(name, data, cls, message), cls, message)
    for f in sorted(out.glob("*.bin")):
        size = f.stat().st_size
        if size > MAX_VECTOR_BYTES:
            raise SystemExit(f"{f.name} is {size} bytes, more than {MAX_VECTOR_BYTES}")
        print(f"{f.name:40s} {size:7d} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
