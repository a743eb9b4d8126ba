"""Batch use of the applications: the inputs (files, folders, @LIST files), one output per
input in an output folder, planned and checked before any work; a progress bar; per-file
failures that do not stop the run; the summary and the exit status of the whole run."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codec.apps import _cli
from codec.errors import InputError, OutputError

log = logging.getLogger("codec.apps")

# what a folder given as input contributes (case-insensitive; hidden files are left out)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")
CONTAINER_SUFFIXES = (".bin",)


@dataclass(frozen=True)
class Inputs:
    paths: list[Path]
    batch: bool  # several inputs, a folder or a list: outputs go into a folder


def _list_file(item: str) -> list[str]:
    """The paths of an @LIST file: one per line, blank lines and lines starting with # left
    out; relative paths are relative to the current folder (as if typed on the command line).
    @- reads the list from standard input."""
    name = item[1:]
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"list file not found: {name}") from None
    except IsADirectoryError:
        raise InputError(f"list file is a directory: {name} (give the folder itself, without @)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read list file {name}: {getattr(e, 'strerror', None) or e}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _folder(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    try:
        entries = sorted(path.iterdir())
    except OSError as e:
        raise InputError(f"cannot list folder {path}: {e.strerror}") from None
    return [p for p in entries if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()]


def expand_inputs(items: list[str], suffixes: tuple[str, ...], what: str) -> Inputs:
    """The input files of the command line: each item a file, a folder (its files with one of
    `suffixes`, sorted by name, not recursive) or @LIST. A folder or list that yields nothing is
    an InputError; a file that does not exist fails on its own later (the run goes on)."""
    paths: list[Path] = []
    batch = len(items) > 1
    for item in items:
        if item.startswith("@"):
            batch = True
            listed = _list_file(item)
            if not listed:
                raise InputError(f"list file {item[1:]} names no {what} file")
            paths += [Path(line) for line in listed]
        elif Path(item).is_dir():
            batch = True
            found = _folder(Path(item), suffixes)
            if not found:
                raise InputError(f"folder {item} holds no {what} file ({', '.join(suffixes)})")
            paths += found
        else:
            paths.append(Path(item))
    return Inputs(paths, batch)


def output_folder(path: str, force: bool) -> Path:
    """The output folder of a batch run: an existing folder, or one to create whose parent
    exists; checked (and created) before any work."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"with several inputs -o names an output folder, but {folder} is a file")
    if not folder.exists():
        parent = folder.parent if str(folder.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"output folder does not exist: {parent}")
        try:
            folder.mkdir()
        except OSError as e:
            raise OutputError(f"cannot create output folder {folder}: {e.strerror}") from None
        log.info("created output folder %s", folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    return folder


def output_paths(inputs: list[Path], folder: Path, suffix: str, force: bool, what: str) -> list[Path]:
    """FOLDER/<input name without its suffix><suffix> for each input, checked before any work:
    two inputs may not give one output, and an existing output needs --force."""
    outs = [folder / (p.stem + suffix) for p in inputs]
    first: dict[Path, Path] = {}
    for src, out in zip(inputs, outs):
        if out in first:
            raise OutputError(f"{first[out]} and {src} would both be written to {out} (rename one of them)")
        first[out] = src
    existing = [o for o in outs if o.exists() or o.is_symlink()]
    if existing and not force:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OutputError(f"{what} exists: {existing[0]}{more} (use --force to overwrite)")
    for o in existing:
        if o.is_dir():
            raise OutputError(f"{what} path is a directory: {o}")
    return outs


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class Failure:
    input: str
    message: str
    code: int


@dataclass
class Run:
    """Bookkeeping of a batch run: what succeeded and failed, the times and the summary."""

    prog: str
    total: int
    json_lines: bool = False
    quiet: bool = False
    done: int = 0
    failures: list[Failure] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def progress(self, items: list[Any], unit: str) -> Iterator[Any]:
        """`items` with a progress bar on stderr when it is a terminal (and not --quiet)."""
        show = not self.quiet and len(items) > 1 and sys.stderr.isatty()
        if not show:
            yield from items
            return
        from tqdm import tqdm

        with tqdm(items, desc=self.prog, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
            yield from bar

    def ok(self, line: str | None, record: dict[str, Any]) -> None:
        self.done += 1
        self.emit(line, {**record, "ok": True})

    def failed(self, path: Path, error: BaseException, record: dict[str, Any] | None = None) -> None:
        """One input failed for an expected reason: a line on stderr (and on stdout with --json)."""
        code = _cli.exit_code_for(error)
        if code is None:
            raise error
        message = _cli.one_line(error)
        self.failures.append(Failure(os.fspath(path), message, code))
        where = "" if os.fspath(path) in message else f"{os.fspath(path)}: "  # most messages name the file
        _cli.write_line(f"{self.prog}: error: {where}{message}", sys.stderr)
        if self.json_lines:
            self.emit(
                None, {"input": os.fspath(path), **(record or {}), "ok": False, "error": message, "exit_status": code}
            )

    def emit(self, line: str | None, record: dict[str, Any]) -> None:
        if self.json_lines:
            _cli.write_line(json.dumps(record, default=_jsonable))
        elif line is not None and not self.quiet:
            _cli.write_line(line)

    def summary(self, what: str, extra: Iterable[str] = ()) -> None:
        """The last lines of a batch run (stdout; stderr with --json, nothing with --quiet)."""
        if self.quiet:
            return
        took = time.perf_counter() - self.started
        parts = [f"{self.done} of {self.total} {what} in {_cli.fmt_seconds(took)}", *extra]
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        stream = sys.stderr if self.json_lines else sys.stdout
        _cli.write_line(f"{self.prog}: " + "; ".join(parts), stream)
        for f in self.failures:
            where = "" if f.input in f.message else f"{f.input}: "
            _cli.write_line(f"  failed: {where}{f.message}", stream)

    @property
    def exit_code(self) -> int:
        """0 if every input succeeded; else 2 if any failed for a reason of its own (bad input,
        bitstream or output), else 1 (only external-tool failures)."""
        if not self.failures:
            return _cli.EXIT_OK
        codes = {f.code for f in self.failures}
        return _cli.EXIT_BAD_INPUT if _cli.EXIT_BAD_INPUT in codes else max(codes)


def json_times(times: dict[str, float]) -> dict[str, float]:
    """Stage times for a JSON record, in seconds to the microsecond."""
    return {k: round(v, 6) for k, v in times.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def times_text(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {_cli.fmt_seconds(v)}" for k, v in times.items())
