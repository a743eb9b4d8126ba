"""Pack what a GPU training run needs into one folder of the checkout (default `.gpu/`),
for a machine that has only the repository (and PyTorch): a subset of the training
images (downscaled JPEGs, from the training split only), NanoDet's model files, and
wheels of the Python packages that machine lacks. `tools/gpu_train.sh` then extracts
the features there and trains for a fixed budget.

    python -m tools.gpu_pack --images 400               # writes .gpu/ (ignored by git)
    # on the GPU machine, with .gpu carried:  bash tools/gpu_train.sh

The folder is kept out of git (`.git/info/exclude`) and sized for a 64 MiB transfer
together with the tracked files; `--max-mb` checks the total.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from codec.files import REPO_ROOT
from codec.training import data as tdata

# what the GPU image lacks (it has torch, torchvision, numpy, scipy, pandas, einops, tqdm, ...);
# construct is pure Python, the others binary for CPython 3.12
WHEELS = ("compressai==1.2.8", "construct==2.10.70", "pycocotools", "platformdirs", "pytorch-msssim")
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pip_download_args(dest: Path, python_version: str = "3.12") -> list[str]:
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    args += ["--python-version", python_version, "--implementation", "cp"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args + list(WHEELS)


def pack_images(src_root: Path, files: list[str], dest: Path, max_side: int, quality: int) -> int:
    """Downscaled RGB JPEGs (the network input is 416 x 416, so little is lost); -> bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for rel in files:
        out = dest / (Path(rel).stem + ".jpg")
        with Image.open(src_root / rel) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            im.save(out, quality=quality)
        total += out.stat().st_size
    return total


def tracked_bytes() -> int:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return sum((REPO_ROOT / n).stat().st_size for n in names.decode().split("\0") if n and (REPO_ROOT / n).is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO_ROOT / ".gpu")
    ap.add_argument("--images", type=int, default=400, help="training images to pack (from the training split)")
    ap.add_argument("--max-side", type=int, default=480)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--max-mb", type=float, default=64.0, help="limit of the tracked files plus the pack")
    ap.add_argument("--no-wheels", action="store_true", help="skip the wheels (e.g. offline tests)")
    args = ap.parse_args(argv)
    root = tdata.assets_dir() / "train-images"
    if not root.is_dir():
        print(f"error: training images not found: {root}", file=sys.stderr)
        return 2
    train, _ = tdata.split_train_images(tdata.list_images(root), 64, 0)  # never the held-out dev images
    chosen = train[: args.images]
    if args.out.exists():
        shutil.rmtree(args.out)
    img_bytes = pack_images(root, chosen, args.out / "images", args.max_side, args.quality)
    models = args.out / "models"
    models.mkdir(parents=True)
    from codec.vision.weights import find_model_files

    found = find_model_files("nanodet")
    for p in (found.graph_json, found.weights_bin):
        shutil.copy(p, models / Path(p).name)
    if not args.no_wheels:
        subprocess.run(pip_download_args(args.out / "wheels"), check=True)
    manifest = []
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            manifest.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(args.out).as_posix()}")
    (args.out / "MANIFEST.sha256").write_text("\n".join(manifest) + "\n")
    pack = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    total = pack + tracked_bytes()
    if args.out.resolve().is_relative_to(REPO_ROOT):  # keep the pack out of git
        line = f"/{args.out.resolve().relative_to(REPO_ROOT).as_posix()}/"
        exclude = REPO_ROOT / ".git" / "info" / "exclude"
        existing = exclude.read_text().splitlines() if exclude.is_file() else []
        if exclude.parent.is_dir() and line not in existing:
            with open(exclude, "a") as f:
                f.write(line + "\n")
    print(
        f"{len(chosen)} images ({img_bytes / 2**20:.1f} MiB), pack {pack / 2**20:.1f} MiB, "
        f"with the tracked files {total / 2**20:.1f} MiB (limit {args.max_mb} MiB)"
    )
    if total > args.max_mb * 2**20:
        print("error: too large to travel; pass fewer --images", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
