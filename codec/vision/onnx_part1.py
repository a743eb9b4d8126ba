"""NN part 1 exported to ONNX and run with onnxruntime: the encoder side of a split network
without torch (a camera needs onnxruntime, numpy and Pillow, not the PyTorch stack).

An exported file (``tools/export_onnx.py``) is the graph from the network input to the
features of one split point, with what the container needs recorded in its metadata
(``metadata_props``, keys ``fcm.*``): the network's name, id and weights sha256 (so that the
container's network_weights_hash is that of the PyTorch network the decoder runs), the split
point and its scales, and the preprocessing (input size, resize mode, channel order, mean and
std). `OnnxPart1` offers the encoder's half of `codec.vision.base.SplitNetwork`: preprocess in
numpy, then part1 through onnxruntime; its features are numpy arrays, which every coding mode
takes. NN part 2 stays with the decoder's PyTorch network.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from codec.bitstream.ids import NetworkId, ResizeMode
from codec.bitstream.preprocessing import Preprocessing
from codec.errors import InputError

from .split import ScaleInfo, SplitPoint

META_PREFIX = "fcm."
FORMAT = 1  # fcm.format: the layout of the metadata below
KIND = "nn_part1"  # fcm.kind (files without it are NN part 1 exports too; codec models: fenet_onnx.KIND)


def default_model_path(network: str, split: str) -> Path:
    """Where ``python -m tools.export_onnx`` writes, and ``fcm_enc --engine onnx`` looks, by
    default: ``onnx/NETWORK_SPLIT.onnx`` in the FCM cache folder ($FCM_CACHE_DIR)."""
    from codec.vision.weights import cache_dir

    return cache_dir() / "onnx" / f"{network}_{split}.onnx"


class OnnxModelError(InputError):
    """An ONNX NN part 1 file that is missing, unreadable or not an FCM export."""


def metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The fcm.* metadata of an exported file, decoded from JSON (without loading the graph
    into a session)."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        meta = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as e:  # onnxruntime's errors: no such file, not an ONNX model
        raise OnnxModelError(f"cannot load ONNX model {os.fspath(path)}: {str(e).strip().splitlines()[0]}") from None
    return _decode(meta.custom_metadata_map, path)


def _decode(props: dict[str, str], path: str | os.PathLike) -> dict[str, Any]:
    out = {k[len(META_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}
    if out.get("format") != FORMAT or out.get("kind", KIND) != KIND:
        raise OnnxModelError(
            f"{os.fspath(path)} is not an FCM NN part 1 export (format {out.get('format')!r}, "
            f"kind {out.get('kind', KIND)!r}; "
            "make one with python -m tools.export_onnx)"
        )
    return out


class OnnxPart1:
    """The encoder side of a split network from an exported ONNX file (see the module doc)."""

    engine = "onnx"  # codec.pipeline encodes with the modes' torch-free encoders (CodingMode.encoder)

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise OnnxModelError("the ONNX engine needs onnxruntime (pip install 'fcm-codec[edge]')") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model not found: {self.path} (make one with python -m tools.export_onnx)")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise OnnxModelError(f"cannot load ONNX model {self.path}: {str(e).strip().splitlines()[0]}") from None
        meta = _decode(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.meta = meta
        self.name: str = meta["network"]
        self.network_id = NetworkId(meta["network_id"])
        split = SplitPoint(meta["split"], meta["split_id"], tuple(ScaleInfo(*s) for s in meta["scales"]))
        self.split_points = {split.name: split}
        self.default_split = split.name
        self._sha = meta["weights_sha256"]
        pre = meta["preprocess"]
        self.input_size = (int(pre["input_width"]), int(pre["input_height"]))
        self.resize_mode = ResizeMode[pre["resize_mode"]]
        self.bgr = pre["channel_order"] == "BGR"
        self.mean = np.asarray(pre["mean"], dtype=np.float32)
        self.std = np.asarray(pre["std"], dtype=np.float32)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.output_names != split.scale_names():
            raise OnnxModelError(f"{self.path}: outputs {self.output_names}, its split point has {split.scale_names()}")

    def weights_sha256(self) -> str:
        """The sha256 of the PyTorch network's weights the file was exported from."""
        return self._sha

    @contextlib.contextmanager
    def inference_context(self) -> Iterator[None]:  # codec.pipeline: no torch inference mode needed
        yield

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Preprocessing]:
        """RGB uint8 (H, W, 3) -> (1, 3, h, w) float32 network input, as the PyTorch network's
        preprocess computes it (Pillow's bilinear resize, channel order, (x - mean) / std in float32)."""
        from PIL import Image

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        sw, sh = self.input_size
        pil = Image.fromarray(image)
        if self.resize_mode == ResizeMode.STRETCH:
            resized = np.array(pil.resize((sw, sh), Image.Resampling.BILINEAR))
            meta = Preprocessing(w, h, sw, sh, ResizeMode.STRETCH, sw / w, sh / h)
        elif self.resize_mode == ResizeMode.LETTERBOX:  # NanoDet's: top-left, zero padding
            r = min(sw / w, sh / h)
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            resized = np.zeros((sh, sw, 3), np.uint8)
            resized[:nh, :nw] = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR))
            meta = Preprocessing(w, h, sw, sh, ResizeMode.LETTERBOX, nw / w, nh / h)
        else:
            raise ValueError(f"resize mode {self.resize_mode.name} is not supported by the ONNX engine")
        if self.bgr:
            resized = resized[:, :, ::-1]
        x = resized.transpose(2, 0, 1).astype(np.float32)[None]
        x = (x - self.mean.reshape(1, 3, 1, 1)) / self.std.reshape(1, 3, 1, 1)
        return np.ascontiguousarray(x, dtype=np.float32), meta

    def part1(self, x: np.ndarray, split: str | None = None) -> dict[str, np.ndarray]:
        """NN part 1 through onnxruntime: {scale name: (1, C, H, W) float32 array}."""
        split = split or self.default_split
        if split not in self.split_points:
            raise ValueError(
                f"{self.path} holds NN part 1 up to split point {self.default_split!r}, not {split!r} "
                "(export the other split point)"
            )
        outs = self.session.run(self.output_names, {self.input_name: np.asarray(x, dtype=np.float32)})
        return {name: np.asarray(o, dtype=np.float32) for name, o in zip(self.output_names, outs)}

    def part2(self, features: Any, split: str, meta: Preprocessing) -> Any:
        raise NotImplementedError("an ONNX NN part 1 has no NN part 2: decode with the PyTorch network")
