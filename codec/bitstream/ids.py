"""Every id written into the container, as an explicit IntEnum that mirrors a
table of bitstream_spec.md (section 8, "Id tables"). Never derive ids from
dict order; append new values, never renumber."""

from __future__ import annotations

import enum


class NetworkId(enum.IntEnum):
    """Network ids written into the container (bitstream_spec.md, table "network_id")."""

    NANODET = 1
    CENTERNET_MBV3 = 2
    YOLOV5S_SEG = 3
    YOLO11N_POSE = 4
    FASTER_RCNN_R50_FPN = 16
    FASTER_RCNN_R50_FPN_V2 = 17
    MASK_RCNN_R50_FPN = 18
    MASK_RCNN_R50_FPN_V2 = 19
    KEYPOINT_RCNN_R50_FPN = 20


# split_point_id table of bitstream_spec.md, section 8.2: (network_id, split_point_id) ->
# (split_point_name, ((scale name, channels, stride), ...)). Networks not listed here define
# their split points in the reference software only (their SplitNetwork definitions).
SPLIT_POINT_TABLE: dict[tuple[int, int], tuple[str, tuple[tuple[str, int, int], ...]]] = {
    (NetworkId.NANODET, 1): ("neck", (("p3", 128, 8), ("p4", 128, 16), ("p5", 128, 32))),
    (NetworkId.NANODET, 2): ("backbone", (("c3", 128, 8), ("c4", 256, 16), ("c5", 512, 32))),
    (NetworkId.YOLOV5S_SEG, 1): ("neck", (("p3", 128, 8), ("p4", 256, 16), ("p5", 512, 32))),
    (NetworkId.YOLO11N_POSE, 1): ("neck", (("p3", 64, 8), ("p4", 128, 16), ("p5", 256, 32))),
}
TABLED_NETWORKS = frozenset(n for n, _ in SPLIT_POINT_TABLE)


class ResizeMode(enum.IntEnum):
    """How the image is brought to the network's input size (table "resize_mode")."""

    STRETCH = 0  # resize each axis independently to (input_h, input_w)
    LETTERBOX = 1  # keep aspect ratio, scale to fit, pad (pad_x / pad_y left / top, the rest right / bottom)
    SHORT_SIDE = 2  # keep aspect ratio, short side to min_size, long side <= max_size (R-CNN)


class ModeId(enum.IntEnum):
    """Coding mode (table "mode_id")."""

    BYPASS = 1  # lossless float16 / float32 tensors
    ANCHOR = 2  # MPEG feature anchor: tiled, 10-bit min-max quantised, VVC
    VVC_MSFF = 3  # multi-scale feature fusion + VVC (codec/modes/vvc_msff.py)
    LEARNED_E2E = 4  # learned end-to-end feature codec (codec/modes/learned_e2e.py)
    MPEG_ANCHOR = 5  # the MPEG FCM feature anchor procedure: one range per set, no filler, all-intra VVC
    LEARNED_PS = 6  # per-scale variable-rate learned codec, a quality index per scale (codec/modes/learned_ps.py)
    MPEG_ANCHOR_PS = 7  # the MPEG feature anchor procedure with one frame and one QP per scale (mpeg_anchor_ps.py)


# mode_id values for modes registered outside this specification (codec.modes.register_mode:
# experiments, third-party modes, tests). A decoder that has no such mode refuses the stream.
PRIVATE_MODE_IDS = range(128, 255)


def mode_id_value(value: int) -> ModeId | int:
    """A mode_id as parsed: its ModeId, or the int of a private-use id; ValueError if reserved."""
    try:
        return ModeId(value)
    except ValueError:
        if value in PRIVATE_MODE_IDS:
            return int(value)
        raise


class UnitType(enum.IntEnum):
    """Payload unit type (table "unit_type")."""

    VVC_NAL_STREAM = 1  # Annex-B byte stream of one or more VVC NAL units
    VVC_NAL_UNIT = 2  # reserved: one VVC NAL unit without start code
    LATENT_STRING = 3  # entropy-coded latent strings of a learned codec (latent_strings( ))
    RAW_TENSOR = 4  # one scale's tensor, little-endian, C-order
    METADATA = 5  # reserved: free-form metadata (optional)
    IMAGE_INFO = 6  # optional: the coded image's id and source file name (image_info( ))


class InnerCodecId(enum.IntEnum):
    """Inner codec (table "inner_codec_id")."""

    NONE = 0
    VVC_VVENC = 1  # VVC, encoded with VVenC, any conforming VVC decoder


class PresetId(enum.IntEnum):
    """VVenC preset (table "inner_preset_id"); informative for the decoder."""

    NONE = 0
    FASTER = 1
    FAST = 2
    MEDIUM = 3
    SLOW = 4
    SLOWER = 5


class EntropyCoderId(enum.IntEnum):
    """Entropy coder outside the inner codec (table "entropy_coder_id")."""

    NONE = 0
    RANS_COMPRESSAI = 1  # CompressAI rANS (learned_e2e)


class CodecModelId(enum.IntEnum):
    """Learned codec model (table "codec_model_id")."""

    NONE = 0
    FENET_NANODET_NECK = 1  # learned_e2e: FENet/DRNet for NanoDet "neck" (codec/models/weights/fenet_nanodet_neck.pt)
    MSFF_NANODET_NECK = 2  # vvc_msff: MSFF/MSFR for NanoDet "neck" (codec/models/weights/msff_nanodet_neck.pt)
    FENET_NANODET_NECK_P4 = 3  # learned_e2e, 2nd generation: latent at p4, task-aware (fenet_nanodet_neck_p4.pt)
    FENET_NANODET_NECK_G3 = 4  # learned_e2e, 3rd generation: the p4 model trained on (fenet_nanodet_neck_g3.pt)
    FENET_NANODET_NECK_G4 = 5  # learned_e2e, 4th generation: the g3 model trained on (fenet_nanodet_neck_g4.pt)
    # 6 is reserved (another model)
    FENET_YOLOV5S_SEG_NECK = 7  # learned_e2e: FENet/DRNet for YOLOv5s-seg "neck" (fenet_yolov5s_seg_neck.pt)
    FENET_PS_NANODET_NECK = (
        8  # learned_ps: one hyperprior codec per scale for NanoDet "neck" (fenet_ps_nanodet_neck.pt)
    )
    MSFF_NANODET_NECK_G2 = 9  # vvc_msff, 2nd generation: the same MSFF, MSFR trained on VVC (msff_nanodet_neck_g2.pt)


class SampleFormat(enum.IntEnum):
    """Sample format of RAW_TENSOR payloads (table "sample_format")."""

    NONE = 0
    FLOAT16 = 1
    FLOAT32 = 2


UNIT_FLAG_REQUIRED = 0x01  # bit 0 of unit_flags
ALL_SCALES = 255  # unit_scale_index of a unit that carries all scales

PRESET_NAMES: dict[PresetId, str] = {
    PresetId.FASTER: "faster",
    PresetId.FAST: "fast",
    PresetId.MEDIUM: "medium",
    PresetId.SLOW: "slow",
    PresetId.SLOWER: "slower",
}


def preset_id(name: str) -> PresetId:
    """VVenC preset name -> PresetId (ValueError for names without an id)."""
    for pid, pname in PRESET_NAMES.items():
        if pname == name:
            return pid
    raise ValueError(f"VVenC preset {name!r} has no preset id; choose one of {', '.join(PRESET_NAMES.values())}")


__all__ = [
    "ALL_SCALES",
    "CodecModelId",
    "EntropyCoderId",
    "InnerCodecId",
    "ModeId",
    "NetworkId",
    "PRESET_NAMES",
    "PRIVATE_MODE_IDS",
    "PresetId",
    "ResizeMode",
    "SampleFormat",
    "UNIT_FLAG_REQUIRED",
    "UnitType",
    "mode_id_value",
    "preset_id",
]
