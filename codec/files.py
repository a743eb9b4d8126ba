"""File helpers every layer shares, importable without torch: the sha256 of a
file, the one lookup of the shared assets folder, and the record of the data files
(codec-model weights) a piece of work reads (`recording_inputs` / `note_input`: the
CTC's result cache depends on them)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def read_input_file(path: str | os.PathLike, what: str = "input") -> bytes:
    """The bytes of an input file, or an InputError (one line) naming it."""
    from codec.errors import InputError

    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise InputError(f"{what} path is a directory: {os.fspath(path)}") from None
    except OSError as e:
        raise InputError(f"cannot read {what} file {os.fspath(path)}: {e.strerror}") from None


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


_recording = threading.local()


@contextmanager
def recording_inputs() -> Iterator[set[Path]]:
    """Collect, in the set it yields, the data files that code run in the block (in this
    thread) reports with `note_input`, also those a cache serves without reading them again."""
    files: set[Path] = set()
    stack = getattr(_recording, "stack", None)
    if stack is None:
        stack = _recording.stack = []
    stack.append(files)
    try:
        yield files
    finally:
        stack.remove(files)


def note_input(path: str | os.PathLike) -> None:
    """Report a data file that the current result depends on (a no-op outside recording_inputs)."""
    for files in getattr(_recording, "stack", ()):
        files.add(Path(path).resolve())


__all__ = ["REPO_ROOT", "assets_dir", "assets_path", "file_sha256", "note_input", "recording_inputs"]
