"""The encoder of learned_e2e without torch: FenetCodec's compress() on a camera that has
onnxruntime and numpy only (``fcm_enc --engine onnx --mode learned_e2e``).

One exported file (``python -m tools.export_onnx --codec learned_e2e``) holds

* the float networks, as an ONNX graph run by onnxruntime: the normalisation of the
  scales, FENet (y), the gain of quality index phi (y_g = y * |g[phi]|), the hyper analysis
  h_a and its gain (z_g). Inputs: the scales' features and phi; outputs: y_g and z_g;
* in its metadata (``fcm.*`` keys, as NN part 1's exports): the codec model's name, id and
  the sha256 of the PyTorch weights it was exported from (what the container's
  codec_model_hash must be), its configuration, and ``fixed_point``: the integer tables of
  everything after the rounding of z_g and y_g, exactly those the reference decoder uses:
  the fixed-point layers of the hyper synthesis, context and entropy-parameter networks
  (integer weights and biases, the context mask applied), the scale thresholds, the
  hyper-latent medians and inverse gains, and both entropy models' CDF tables.

Everything the decoder re-derives is computed here from what the decoder has, in the
decoder's integer arithmetic (codec/models/fenet.py, `FenetCodec.coded_passes`): z's
symbols are round(z_g - medians); z_hat = (symbols + medians) * |ihg[phi]| in float32,
element-wise as CompressAI's dequantisation; the hyperprior parameters and, pass after
pass, the entropy parameters of y come from z_hat and the y_hat decoded so far through
integer-exact convolutions (numpy, float64 on integers below 2^53: any summation order
gives the same result); y's symbols are round(y_g - mean). The strings are written by
codec.inner.rans (CompressAI's format). Only the float graph may differ from PyTorch's
(another convolution kernel rounds differently), so a y_g or z_g value near a rounding
boundary may round the other way: the container then differs from the PyTorch encoder's
at such positions, and still decodes, since the decoder follows the symbols written.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import EncodeError, InputError, SizeLimitError
from codec.inner import rans

META_PREFIX = "fcm."
FORMAT = 1  # fcm.format, as NN part 1's exports (codec/vision/onnx_part1.py)
KIND = "learned_e2e_encoder"  # fcm.kind of this export
FIXED_LAYERS = ("h_s_in", "h_s_up", "h_s_out", "ctx", "ep1", "ep2")


class OnnxCodecModelError(InputError):
    """An exported learned encoder that is missing, unreadable or not an FCM export."""


def default_codec_model_path(codec_model: str) -> Path:
    """Where ``python -m tools.export_onnx --codec learned_e2e`` writes, and the ONNX engine
    looks, by default: ``onnx/CODEC_MODEL.onnx`` in the FCM cache folder ($FCM_CACHE_DIR)."""
    from codec.vision.weights import cache_dir

    return cache_dir() / "onnx" / f"{codec_model}.onnx"


# -- the integer tables (written by the export, where torch is; read here) -----------------------


def pack_tables(model: Any) -> tuple[dict[str, Any], str]:
    """(fixed-point constants, base64 of an .npz of the integer tables) of a FenetCodec: the
    very integers its decoder uses (`fixed_layers`, `_scale_thresholds`, the CDF buffers)."""
    from .fenet import MEAN_BITS
    from .fixed_point import ACT_BITS, ACT_LIMIT, WEIGHT_BITS

    arrays: dict[str, np.ndarray] = {}
    fixed = model.fixed_layers()
    for name in FIXED_LAYERS:
        layer = fixed[name]
        arrays[f"{name}.weight"] = layer.weight_int.cpu().numpy().astype(np.int64)
        arrays[f"{name}.bias"] = layer.bias_int.cpu().numpy().astype(np.int64)
        arrays[f"{name}.geometry"] = np.array([*layer.kernel_size, *layer.padding, *layer.stride], dtype=np.int64)
    arrays["scale_thresholds"] = model._scale_thresholds().cpu().numpy()
    arrays["hyper_inv_gain"] = model.hyper_inv_gain.detach().abs().cpu().numpy().astype(np.float32)
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    arrays["hyper_medians"] = eb._get_medians().detach().reshape(-1).cpu().numpy().astype(np.float32)
    for prefix, em in (("hyper", eb), ("latent", gc)):
        arrays[f"{prefix}_cdf"] = em._quantized_cdf.cpu().numpy().astype(np.int32)
        arrays[f"{prefix}_cdf_length"] = em._cdf_length.reshape(-1).cpu().numpy().astype(np.int32)
        arrays[f"{prefix}_offset"] = em._offset.reshape(-1).cpu().numpy().astype(np.int32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    constants = {"weight_bits": WEIGHT_BITS, "act_bits": ACT_BITS, "act_limit": ACT_LIMIT, "mean_bits": MEAN_BITS}
    return constants, base64.b64encode(buf.getvalue()).decode("ascii")


def _unpack_tables(blob: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(blob)), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


# -- numpy integer arithmetic, as codec/models/fixed_point.py ---------------------------------


class FixedConv:
    """An integer-exact convolution of the exported tables: codec.models.fixed_point.FixedConv2d
    in numpy. Inputs and outputs are integers in units of 2^-act_bits held in float64,
    (C, H, W); the export checked that every partial sum stays below 2^53."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, geometry: np.ndarray, weight_bits: int, act_limit: int):
        self.weight = weight.astype(np.float64)  # (Cout, Cin * kh * kw), C-order (channel, row, column)
        self.bias = bias.astype(np.float64)
        kh, kw, ph, pw, sh, sw = (int(v) for v in geometry)
        self.kernel, self.padding, self.stride = (kh, kw), (ph, pw), (sh, sw)
        self.half = float(1 << (weight_bits - 1))
        self.unit = float(1 << weight_bits)
        self.act_limit = float(act_limit)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        c, h, w = x.shape
        (kh, kw), (ph, pw), (sh, sw) = self.kernel, self.padding, self.stride
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if (kh, kw, sh, sw) == (1, 1, 1, 1) and (ph, pw) == (0, 0):
            cols = x.reshape(c, h * w)
        else:
            xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
            win = np.lib.stride_tricks.sliding_window_view(xp, (c, kh, kw))[0, ::sh, ::sw][:ho, :wo]
            cols = win.transpose(2, 3, 4, 0, 1).reshape(c * kh * kw, ho * wo)  # torch's unfold order
        acc = self.weight @ cols + self.bias[:, None]
        out = np.floor((acc + self.half) / self.unit)
        return np.clip(out, -self.act_limit, self.act_limit).reshape(-1, ho, wo)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _pixel_shuffle(x: np.ndarray, r: int) -> np.ndarray:
    c, h, w = x.shape
    return x.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(c // (r * r), h * r, w * r)


def _fit(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Crop (bottom/right) or zero-pad a map to (h, w), as fenet._fit."""
    x = x[:, :h, :w]
    ph, pw = h - x.shape[1], w - x.shape[2]
    return np.pad(x, ((0, 0), (0, ph), (0, pw))) if ph or pw else x


def _half(n: int) -> int:
    return -(-n // 2)


def _crc32(*arrays: np.ndarray) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a, dtype="<i4").tobytes(), crc)
    return crc & 0xFFFFFFFF


def coding_passes(groups: list[tuple[int, int]], h: int, w: int) -> list[np.ndarray]:
    """The selection (M, h, w) bool of every pass, in coding order (fenet.coding_passes):
    for every channel group its checkerboard anchors ((i + j) even), then its non-anchors."""
    m = groups[-1][1]
    anchor = (np.add.outer(np.arange(h), np.arange(w)) % 2 == 0)[None]
    out = []
    for a, b in groups:
        ch = np.zeros((m, 1, 1), dtype=bool)
        ch[a:b] = True
        out += [ch & anchor, ch & ~anchor]
    return out


@dataclass
class EdgeLatents:
    """What FenetCodec.compress returns (the strings and their check values), with the
    integer data the strings hold."""

    z_string: bytes
    y_string: bytes
    z_crc32: int
    y_crc32: int
    z_symbols: np.ndarray  # int32 (Nh, hz, wz)
    y_symbols: np.ndarray  # int32 (M, hy, wy)
    y_indexes: np.ndarray  # int32 (M, hy, wy)


# -- the encoder ------------------------------------------------------------------------------


def metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The fcm.* metadata of an exported learned encoder (the tables left out)."""
    meta = _session(Path(path), None)[1]
    meta.pop("fixed_point_tables", None)
    return meta


def _session(path: Path, threads: int | None) -> tuple[Any, dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxCodecModelError("the ONNX engine needs onnxruntime (pip install 'fcm-codec[edge]')") from None
    if not path.is_file():
        raise OnnxCodecModelError(
            f"ONNX learned encoder not found: {path} (make one with python -m tools.export_onnx --codec learned_e2e)"
        )
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors: no such file, not an ONNX model
        raise OnnxCodecModelError(f"cannot load ONNX model {path}: {str(e).strip().splitlines()[0]}") from None
    props = session.get_modelmeta().custom_metadata_map
    meta = {k[len(META_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}
    if meta.get("format") != FORMAT or meta.get("kind") != KIND:
        raise OnnxCodecModelError(
            f"{path} is not an FCM learned_e2e encoder export (make one with python -m tools.export_onnx "
            "--codec learned_e2e)"
        )
    return session, meta


class LatentCoder:
    """The integer part of FenetCodec.compress, in numpy: (y_g, z_g) -> strings (`code`), from
    a codec model's configuration and exported tables."""

    def __init__(self, config: dict[str, Any], constants: dict[str, int], tables: dict[str, np.ndarray]) -> None:
        cfg = config
        self.scales: list[tuple[str, int, int]] = [(s["name"], s["channels"], s["stride"]) for s in cfg["scales"]]
        self.num_qualities = int(cfg["num_qualities"])
        self.latent_channels = int(cfg["latent_channels"])
        self.hyper_channels = int(cfg["hyper_channels"])
        self.level = int(cfg.get("latent_scale", -1)) % len(self.scales)
        self.latent_downsample = bool(cfg["latent_downsample"])
        sizes = list(cfg.get("channel_groups") or [self.latent_channels])
        ends = np.cumsum(sizes).tolist()
        self.groups = [(e - n, e) for n, e in zip(sizes, ends)]
        self.act_bits = int(constants["act_bits"])
        self.act_limit = int(constants["act_limit"])
        self.mean_step = 1 << (self.act_bits - int(constants["mean_bits"]))
        t = tables
        self.layers = {
            n: FixedConv(
                t[f"{n}.weight"], t[f"{n}.bias"], t[f"{n}.geometry"], int(constants["weight_bits"]), self.act_limit
            )
            for n in FIXED_LAYERS
        }
        self.thresholds = t["scale_thresholds"].astype(np.int64)
        self.hyper_inv_gain = t["hyper_inv_gain"].astype(np.float32)
        self.medians = t["hyper_medians"].astype(np.float32)
        self.tables = {p: (t[f"{p}_cdf"], t[f"{p}_cdf_length"], t[f"{p}_offset"]) for p in ("hyper", "latent")}

    @classmethod
    def from_model(cls, model: Any) -> LatentCoder:
        """The coder of a FenetCodec (where torch is; what the export writes)."""
        constants, blob = pack_tables(model)
        return cls(model.cfg.to_json(), constants, _unpack_tables(blob))

    def latent_sizes(self, sizes: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
        """((hy, wy), (hz, wz)) of an image whose scales have `sizes` (FenetCodec.latent_sizes)."""
        hy, wy = sizes[self.level]
        if self.latent_downsample:
            hy, wy = _half(hy), _half(wy)
        return (hy, wy), (_half(hy), _half(wy))

    def check_symbol_counts(self, sizes: list[tuple[int, int]]) -> None:
        """SizeLimitError when a string would hold more symbols than a decoder accepts."""
        (hy, wy), (hz, wz) = self.latent_sizes(sizes)
        n = max(self.latent_channels * hy * wy, self.hyper_channels * hz * wz)
        if n > rans.MAX_SYMBOLS:
            raise SizeLimitError(
                f"the latent of these scale sizes has {n} symbols, more than the limit {rans.MAX_SYMBOLS}"
            )

    def check_phi(self, phi: int) -> None:
        if not 0 <= int(phi) < self.num_qualities:
            raise EncodeError(f"quality index phi must be in 0..{self.num_qualities - 1}, got {phi}")

    # -- the integer part (what the decoder re-derives) --------------------------------------

    def hyper_params(self, z_symbols: np.ndarray, phi: int, hy: int, wy: int) -> np.ndarray:
        """Decoded z symbols -> the hyperprior parameters (2M, hy, wy), integers in units of
        2^-act_bits (FenetCodec._z_hat, then hyper_params_fixed)."""
        med = self.medians.reshape(-1, 1, 1)
        z_hat = (z_symbols.astype(np.float32) + med) * self.hyper_inv_gain[phi].reshape(-1, 1, 1)  # float32
        q = np.clip(np.round(z_hat.astype(np.float64) * float(1 << self.act_bits)), -self.act_limit, self.act_limit)
        fx = self.layers
        t = _relu(fx["h_s_in"](q))
        t = _relu(_fit(_pixel_shuffle(fx["h_s_up"](t), 2), hy, wy))
        return fx["h_s_out"](t)

    def entropy_params(self, hp: np.ndarray, known: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """-> (scale indices int64, means int64 in units of 2^-act_bits on the mean grid)
        (FenetCodec.entropy_params_fixed); `known`: y_hat decoded so far, None before the first pass."""
        fx = self.layers
        ctx = np.zeros((self.latent_channels, *hp.shape[1:])) if known is None else fx["ctx"](known)
        out = fx["ep2"](_relu(fx["ep1"](np.concatenate([hp, ctx], axis=0)))).astype(np.int64)
        s_int, mu_int = out[: self.latent_channels], out[self.latent_channels :]
        idx = np.searchsorted(self.thresholds, s_int, side="left")  # #{k: s_int > threshold_k}, ascending table
        step = self.mean_step
        return idx, np.floor_divide(mu_int + step // 2, step) * step

    def code(self, y_g: np.ndarray, z_g: np.ndarray, phi: int) -> EdgeLatents:
        """(y_g, z_g) -> the rANS strings of z and y and their CRCs, as FenetCodec.compress."""
        self.check_phi(phi)
        y_g, z_g = np.asarray(y_g, np.float32).reshape(y_g.shape[-3:]), np.asarray(z_g, np.float32)
        z_g = z_g.reshape(z_g.shape[-3:])
        n_y, n_z = y_g.size, z_g.size
        if max(n_y, n_z) > rans.MAX_SYMBOLS:
            raise SizeLimitError(f"the latent has {n_y} symbols, more than the limit {rans.MAX_SYMBOLS}")
        # z: EntropyBottleneck.compress (symbols round(z_g - medians), CDF index = channel)
        med = self.medians.reshape(-1, 1, 1)
        z_sym = np.round(z_g - med).astype(np.int32)
        cdf, lengths, offsets = self.tables["hyper"]
        z_idx = np.broadcast_to(np.arange(z_sym.shape[0]).reshape(-1, 1, 1), z_sym.shape)
        z_string = rans.encode_with_indexes(z_sym.reshape(-1), z_idx.reshape(-1), cdf, lengths, offsets)
        # the z symbols the decoder gets back (CompressAI's dequantisation, then rounding)
        z_dec = np.round((z_sym.astype(np.float32) + med) - med).astype(np.int32)
        _, hy, wy = y_g.shape
        hp = self.hyper_params(z_dec, phi, hy, wy)
        # y: the coding passes (FenetCodec.coded_passes with the encoder's quantiser)
        shape = y_g.shape
        y64 = y_g.astype(np.float64)
        sym = np.zeros(shape, dtype=np.int64)
        idx = np.zeros(shape, dtype=np.int64)
        known = np.zeros(shape, dtype=np.float64)
        passes = coding_passes(self.groups, hy, wy)
        unit = float(1 << self.act_bits)
        for p, sel in enumerate(passes):
            idx_p, mu_p = self.entropy_params(hp, None if p == 0 else known)
            sel_full = np.broadcast_to(sel, shape)
            sym_p = np.round(y64 - mu_p / unit).astype(np.int64)
            sym = np.where(sel_full, sym_p, sym)
            idx = np.where(sel_full, idx_p, idx)
            y_p = np.clip((sym_p * (1 << self.act_bits) + mu_p) * sel_full, -self.act_limit, self.act_limit)
            known = known + y_p.astype(np.float64)
        enc = rans.BufferedRansEncoder()
        cdf, lengths, offsets = self.tables["latent"]
        y_sym, y_idx = sym.astype(np.int32), idx.astype(np.int32)
        for sel in passes:  # one string, pass after pass
            sel_full = np.broadcast_to(sel, shape)
            enc.encode_with_indexes(y_sym[sel_full], y_idx[sel_full], cdf, lengths, offsets)
        return EdgeLatents(
            z_string=z_string,
            y_string=enc.flush(),
            z_crc32=_crc32(z_dec),
            y_crc32=_crc32(y_sym, y_idx),
            z_symbols=z_dec,
            y_symbols=y_sym,
            y_indexes=y_idx,
        )


class OnnxFenetEncoder:
    """FenetCodec.compress from an exported file (see the module doc): `analysis` runs the
    float graph in onnxruntime, `coder` (a LatentCoder) the rest in numpy; `compress` both."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session, meta = _session(self.path, threads)
        blob = meta.pop("fixed_point_tables")
        if hashlib.sha256(blob.encode("ascii")).hexdigest() != meta["fixed_point_tables_sha256"]:
            raise OnnxCodecModelError(f"{self.path}: its fixed-point tables are corrupt (sha256 mismatch)")
        self.meta = meta
        self.codec_model: str = meta["codec_model"]
        self.codec_model_id: int = int(meta["codec_model_id"])
        self.weights_sha256: str = meta["weights_sha256"]
        self.coder = LatentCoder(meta["config"], meta["fixed_point"], _unpack_tables(blob))
        self.scales = self.coder.scales
        self.num_qualities = self.coder.num_qualities
        self.input_shapes = {name: tuple(shape) for name, shape in meta["input_shapes"].items()}
        self.input_names = [i.name for i in self.session.get_inputs()]
        if self.input_names != [name for name, _, _ in self.scales] + ["phi"]:
            raise OnnxCodecModelError(f"{self.path}: inputs {self.input_names} do not match its codec model's scales")

    def analysis(self, features: dict[str, np.ndarray], phi: int) -> tuple[np.ndarray, np.ndarray]:
        """Features {scale name: (1, C, H, W) float32} -> (y_g, z_g), each (1, C, h, w) float32."""
        self.coder.check_phi(phi)
        feeds: dict[str, np.ndarray] = {}
        for name, _, _ in self.scales:
            if name not in features:
                raise EncodeError(f"the learned encoder needs scale {name}")
            a = np.asarray(features[name], dtype=np.float32)
            a = a[None] if a.ndim == 3 else a
            if a.shape[1:] != self.input_shapes[name]:
                raise EncodeError(
                    f"scale {name} is {tuple(a.shape[1:])}; {self.path.name} was exported for "
                    f"{self.input_shapes[name]} (export it for this input size)"
                )
            feeds[name] = np.ascontiguousarray(a)
        feeds["phi"] = np.array([int(phi)], dtype=np.int64)
        y_g, z_g = self.session.run(["y_g", "z_g"], feeds)
        return np.asarray(y_g, dtype=np.float32), np.asarray(z_g, dtype=np.float32)

    def compress(self, features: dict[str, np.ndarray], phi: int) -> EdgeLatents:
        """One image's features -> the strings of z and y at quality index `phi`."""
        sizes = [tuple(int(v) for v in np.shape(features[n])[-2:]) for n, _, _ in self.scales if n in features]
        if len(sizes) == len(self.scales):  # a stream no decoder would accept is not written
            self.coder.check_symbol_counts([(h, w) for h, w in sizes])
        return self.coder.code(*self.analysis(features, phi), phi)


# onnxruntime threads of the encoders loaded from now on (fcm_enc --threads), None: its default;
# process-wide like torch.set_num_threads, which the torch engine's --threads sets
_threads: list[int | None] = [None]


def set_threads(n: int | None) -> None:
    """Intra-op threads of the learned encoders loaded after this call (None: onnxruntime's default)."""
    _threads[0] = n


def load_encoder(path: str | os.PathLike) -> OnnxFenetEncoder:
    """The exported encoder at `path`, loaded once per process (and again if the file changes)."""
    p = Path(path)
    if p.suffix == ".pt":
        raise OnnxCodecModelError(
            f"{p} is a PyTorch weights file; the ONNX engine takes its exported encoder "
            f"(python -m tools.export_onnx --codec learned_e2e --codec-weights {p})"
        )
    try:
        st = p.stat()
    except OSError:
        st = None
    return _load_cached(os.fspath(p.resolve()), st.st_mtime_ns if st else 0, st.st_size if st else 0, _threads[0])


_load_time = [0.0]


def load_seconds() -> float:
    """Seconds this process has spent loading exported encoders (as codec.models.registry's)."""
    return _load_time[0]


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int, threads: int | None) -> OnnxFenetEncoder:
    t0 = time.perf_counter()
    try:
        return OnnxFenetEncoder(path, threads)
    finally:
        _load_time[0] += time.perf_counter() - t0


__all__ = [
    "EdgeLatents",
    "FixedConv",
    "LatentCoder",
    "OnnxCodecModelError",
    "OnnxFenetEncoder",
    "coding_passes",
    "default_codec_model_path",
    "load_encoder",
    "load_seconds",
    "metadata",
    "pack_tables",
    "set_threads",
]
