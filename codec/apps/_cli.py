"""What the applications share: the one place that maps errors to exit codes,
atomic output files, and network loading."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from codec.errors import FcmError, InputError, OutputExistsError

__all__ = ["InputError", "NetworkLoadError", "atomic_write", "atomic_write_check", "load_network", "run_app"]

EXIT_OK = 0
EXIT_FAILURE = 1  # an external tool failed (ffmpeg), or output could not be written
EXIT_BAD_INPUT = 2  # bad arguments, bad input file, invalid bitstream (argparse also exits 2)


class NetworkLoadError(InputError):
    """The vision network or its weights could not be loaded."""


def exit_code_for(error: BaseException) -> int | None:
    """Exit code for an error the applications report in one line; None: a bug (traceback)."""
    from codec.inner.vvc import FfmpegError

    if isinstance(error, FcmError):
        return EXIT_BAD_INPUT
    if isinstance(error, FfmpegError):
        return EXIT_FAILURE
    if isinstance(error, OSError):
        return EXIT_BAD_INPUT
    return None


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def run_app(
    prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int], argv: list[str] | None
) -> int:
    """Parse arguments and run `body`; every expected failure becomes one line on
    stderr and an exit code (see exit_code_for), never a traceback."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2); argparse already printed
        return int(e.code) if isinstance(e.code, int) else EXIT_BAD_INPUT
    try:
        return body(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = exit_code_for(e)
        if code is None:
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return code


def read_input_file(path: str | os.PathLike, what: str = "input") -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise InputError(f"{what} path is a directory: {os.fspath(path)}") from None
    except OSError as e:
        raise InputError(f"cannot read {what} file {os.fspath(path)}: {e.strerror}") from None


def atomic_write(path: str | os.PathLike, data: bytes, force: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same folder and
    os.replace, so `path` is either untouched or complete. Without `force` an
    existing `path` is an OutputExistsError."""
    path = Path(path)
    if not force and path.exists():
        raise OutputExistsError(f"output exists: {path} (use --force to overwrite)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_network(name: str, weights: str | None = None):
    """get_network with loading failures as NetworkLoadError (one line)."""
    from codec.vision import get_network

    try:
        return get_network(name, weights=weights)
    except (OSError, ValueError, RuntimeError) as e:
        raise NetworkLoadError(f"cannot load network {name!r}: {one_line(e)}") from None


def fmt_seconds(t: float) -> str:
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def atomic_write_check(path: str | os.PathLike, force: bool) -> None:
    """Fail early (before slow work) if `path` exists and overwriting was not requested."""
    if not force and Path(path).exists():
        raise OutputExistsError(f"output exists: {path} (use --force to overwrite)")
