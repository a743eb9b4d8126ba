"""File helpers every layer shares, importable without torch: the sha256 of a
file and the one lookup of the shared assets folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def assets_path() -> Path:
    """Where the shared assets folder is looked for: $FCM_ASSETS when set (the only
    place then), else <repo>/../shared/assets. The folder need not exist."""
    env = os.environ.get("FCM_ASSETS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "assets"


def assets_dir() -> Path | None:
    """The shared assets folder, if there is one (CI and developer machines)."""
    candidate = assets_path()
    return candidate if candidate.is_dir() else None


__all__ = ["REPO_ROOT", "assets_dir", "assets_path", "file_sha256"]
