"""Training data for the learned feature codecs: the training images, the NN part 1
feature cache and the batches drawn from it.

The cache holds, for every (training image, view), the split point's features in
float16, one ``.npy`` memmap per scale, so that a run of many hours never runs NN
part 1 again and two trainers (FENet and MSFF) share one extraction. The key of a
cache is (network, weights sha256, split point, views, seed, sorted file list).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from codec.files import assets_dir as _assets_dir
from codec.models import linear_path

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
REPO = Path(__file__).resolve().parents[2]

# coarsest-scale crop sizes (NanoDet p5 is 13x13 at 416x416) and their probabilities
CROP_SIZES = (8, 9, 11, 13)
CROP_PROBS = (0.55, 0.15, 0.15, 0.15)


class TrainingDataError(ValueError):
    """The training data cannot be used (missing folder, too few images)."""


def assets_dir() -> Path:
    """The shared assets folder ($FCM_ASSETS, or ../shared/assets beside the checkout)."""
    found = _assets_dir()
    return Path(found) if found is not None else REPO.parent / "shared" / "assets"


def default_cache_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("fcm-codec")) / "msff"


def list_images(root: str | Path) -> list[str]:
    """Sorted image paths relative to `root` (posix separators)."""
    root = Path(root)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS]
    return sorted(files)


def file_list_sha256(files: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()


def split_train_images(files: list[str], holdout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic (train, held-out) split of the sorted file list; the held-out
    images are the dev set and tools/tune_truncation.py's, and are never trained on."""
    if holdout >= len(files):
        raise TrainingDataError(f"{len(files)} images cannot leave {holdout} out")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    held = sorted(files[i] for i in order[:holdout])
    train = sorted(files[i] for i in order[holdout:])
    return train, held


def augment(image: np.ndarray, rng: np.random.Generator, view: int) -> np.ndarray:
    """View 0: the full image; other views: random resized crop (area 0.25..1,
    aspect 3/4..4/3). Every view is flipped horizontally with probability 0.5."""
    h, w = image.shape[:2]
    if view > 0:
        for _ in range(10):
            area = rng.uniform(0.25, 1.0) * h * w
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 16 <= cw <= w and 16 <= ch <= h:
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                image = image[y0 : y0 + ch, x0 : x0 + cw]
                break
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def cache_path(net, split: str, files: list[str], views: int, seed: int, cache_root: Path) -> Path:
    key = hashlib.sha256(
        f"{net.name}|{net.weights_sha256()}|{split}|{views}|{seed}|{file_list_sha256(files)}".encode()
    ).hexdigest()[:16]
    return Path(cache_root) / f"{net.name}_{split}_{key}"


def build_cache(net, split: str, root: Path, files: list[str], views: int, seed: int, cache_root: Path) -> Path:
    """Extract NN part 1 features of every (image, view) once into float16 .npy
    memmaps, one per scale; reuse them when the key (files, views, seed) matches.
    A cache that another process is writing (no done.json yet) is waited for."""
    from PIL import Image

    out = cache_path(net, split, files, views, seed, cache_root)
    done = out / "done.json"
    if done.is_file():
        return out
    lock = out / "writing.lock"
    if out.is_dir() and lock.is_file() and time.time() - lock.stat().st_mtime < 600:
        print(f"cache {out} is being written by another process; waiting", flush=True)
        while not done.is_file():
            if time.time() - lock.stat().st_mtime > 600:
                raise TrainingDataError(f"cache {out}: the writer stopped (no progress for 10 min)")
            time.sleep(10)
        return out
    out.mkdir(parents=True, exist_ok=True)
    lock.touch()
    sp = net.split_points[split]
    n = len(files) * views
    s = net.input_size
    shapes = sp.shapes(s, s)
    arrays = {
        name: np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.float16, shape=(n, *shape))
        for name, shape in shapes.items()
    }
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for i, rel in enumerate(files):
        image = np.asarray(Image.open(root / rel).convert("RGB"))
        for v in range(views):
            x, _ = net.preprocess(augment(image, rng, v))
            feats = net.part1(x, split)
            for name, f in feats.items():
                arrays[name][i * views + v] = f[0].numpy().astype(np.float16)
        if i % 100 == 0:
            lock.touch()
            print(f"cache {i}/{len(files)} {time.time() - t0:.0f}s", flush=True)
    for a in arrays.values():
        a.flush()
    done.write_text(json.dumps({"files": len(files), "views": views, "seed": seed, "n": n}))
    lock.unlink(missing_ok=True)
    return out


def load_cache(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    return {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in names}


def filled_rows(cache: dict[str, np.ndarray], names: list[str]) -> int:
    """Number of leading rows already written by a cache build still in progress
    (rows are written in order; real features are never all zero)."""
    a = cache[names[-1]]
    flat = a.reshape(len(a), -1)[:, :256]
    nz = np.flatnonzero(~np.any(flat != 0, axis=1))
    return int(nz[0]) if len(nz) else len(a)


def random_crop(
    feats: dict[str, np.ndarray], names: list[str], strides: list[int], crop: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Aligned random crop of every scale: `crop` cells of the coarsest scale."""
    hc, wc = feats[names[-1]].shape[-2:]
    if crop <= 0 or crop >= min(hc, wc):
        return feats
    y0, x0 = int(rng.integers(0, hc - crop + 1)), int(rng.integers(0, wc - crop + 1))
    out = {}
    for n, s in zip(names, strides):
        r = strides[-1] // s
        out[n] = feats[n][..., y0 * r : (y0 + crop) * r, x0 * r : (x0 + crop) * r]
    return out


def sample_batch(
    cache: dict[str, np.ndarray],
    names: list[str],
    strides: list[int],
    batch: int,
    rng: np.random.Generator,
    limit: int | None = None,
) -> list[torch.Tensor]:
    """Aligned random crops of every scale for `batch` random samples (of the first `limit`):
    the coarsest-scale crop size is drawn from CROP_SIZES, so odd sizes and padding occur."""
    n = len(cache[names[0]]) if limit is None else limit
    idx = np.sort(rng.choice(n, batch, replace=False))
    hc, wc = cache[names[-1]].shape[-2:]
    size = int(rng.choice(CROP_SIZES, p=CROP_PROBS))
    size_h, size_w = min(size, hc), min(size, wc)
    oy, ox = int(rng.integers(0, hc - size_h + 1)), int(rng.integers(0, wc - size_w + 1))
    out = []
    for name, stride in zip(names, strides):
        f = strides[-1] // stride
        a = cache[name][idx, :, oy * f : (oy + size_h) * f, ox * f : (ox + size_w) * f]
        out.append(torch.from_numpy(a.astype(np.float32)))
    flip = rng.random(batch) < 0.5  # extra flips on top of the cached ones
    return [torch.where(torch.from_numpy(flip).view(-1, 1, 1, 1), t.flip(-1), t) for t in out]


def feature_scales(cache: dict[str, np.ndarray], names: list[str], n_rows: int, samples: int = 200) -> torch.Tensor:
    """Per-scale RMS over (a fixed subset of) the first n_rows cached views: the normalisation."""
    idx = np.linspace(0, n_rows - 1, min(samples, n_rows)).astype(int)
    return torch.tensor([float(np.sqrt(np.mean(np.square(cache[n][idx].astype(np.float32))))) for n in names])


def feature_stats(
    cache: dict[str, np.ndarray], names: list[str], n_rows: int, samples: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation from a fixed subset of the first n_rows cached views: per-channel
    means (all scales concatenated) and per-scale RMS after removing them."""
    idx = np.linspace(0, n_rows - 1, min(samples, n_rows)).astype(int)
    means, rms = [], []
    for n in names:
        a = cache[n][idx].astype(np.float64)
        m = a.mean(axis=(0, 2, 3))
        means.append(m)
        rms.append(float(np.sqrt(np.mean(np.square(a - m.reshape(1, -1, 1, 1))))))
    return torch.tensor(np.concatenate(means), dtype=torch.float32), torch.tensor(rms, dtype=torch.float32)


def pca_of_cache(
    stack, cache: dict[str, np.ndarray], names: list[str], n_rows: int, views: int, components: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """PCA (codec.models.linear_path.pca) of a model's normalised space-to-depth stack
    (`stack`: {scale: (N, C, H, W) tensor} -> (N, D, h, w), e.g. Msff.stack) over `views`
    cached views spread evenly over the first n_rows; every spatial position is a sample.
    Returns the mean (D,), the leading `components` directions and the fraction of the
    variance they hold."""
    idx = np.unique(np.linspace(0, n_rows - 1, min(views, n_rows)).astype(int))

    def stacks():
        with torch.no_grad():
            for start in range(0, len(idx), 16):
                rows = idx[start : start + 16]
                yield stack({n: torch.from_numpy(cache[n][rows].astype(np.float32)) for n in names})

    return linear_path.pca(stacks(), components)


def data_record(
    images_root: Path, all_files: list[str], train: list[str], held: list[str], views: int, seed: int
) -> dict:
    """What a weights record says about its training data."""
    try:
        folder = "${assets}/" + images_root.resolve().relative_to(assets_dir().resolve()).as_posix()
    except ValueError:
        folder = images_root.name
    return {
        "folder": folder,
        "count": len(all_files),
        "sha256_sorted_file_list": file_list_sha256(all_files),
        "train_count": len(train),
        "holdout_count": len(held),
        "views_per_image": views,
        "seed": seed,
    }
