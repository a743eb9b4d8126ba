"""What the result of a CTC job depends on, so that a cached result cannot go stale.

A job's cache key (``ctc.runner.job_key``) holds its inputs (codec, parameters, network
weights hash, image hash), the versions of the packages that change results
(:func:`package_versions`), the ffmpeg binary (``CodecType.version``) and the torch
thread count. The project's own code is not in the key as a hand-kept list of files:
each result records the files its job actually ran (:func:`trace_job`):

* every first-party Python file (outside the standard library and site-packages) that
  has a function or method called while the job runs, traced with ``sys.settrace``;
* every first-party module those files import, followed transitively through their
  ``import`` statements (module-level and inside functions): data-only modules (id
  tables, syntax structures, constants) and package ``__init__`` files count too;
* the module of the job function itself (``ctc/runner.py``: image loading, the result's
  form), without its imports (the harness imports the report, BD and cache code, on which
  no job result depends);
* the data files the job reads through ``codec.files.note_input`` (codec-model weights
  and their records), also when a cache serves them without reading them again.

The record is the list of (file, sha256); a cached result is used only while every one
of its files still has the recorded content (:func:`dependencies_current`), so editing
any file on a job's path, and only those, recomputes that job. Modules that a registry
imports by name (``codec.modes`` scans its package; ``codec.vision`` and the codec-model
registry import by string) join a job's record only when the job runs them: editing
``learned_e2e.py`` leaves the anchors' results valid.

Files are named relative to the repository root (so that a moved checkout keeps its
cache), or by absolute path outside it. A Python file's hash is taken the first time a
job of this process records it (the code this process runs was loaded by then), a data
file's from its content at the time."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from types import FrameType
from typing import Any

from codec.files import REPO_ROOT, file_sha256, recording_inputs

# packages whose version changes job results (numerics of the networks, codec models,
# entropy coding, image decoding, bitstream building); scipy, pycocotools and matplotlib
# only touch the report, which is recomputed from the cache on every run
RESULT_PACKAGES = ("torch", "torchvision", "numpy", "compressai", "pillow", "construct", "imageio-ffmpeg")

Dependencies = list[tuple[str, str]]  # sorted (file name, sha256 hex)


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Python and the RESULT_PACKAGES versions of this interpreter (part of every job key)."""
    import platform

    out = {"python": platform.python_version()}
    for name in RESULT_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    dirs = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(sorted({os.path.realpath(d) for d in dirs if d}))


@functools.lru_cache(maxsize=4096)
def is_first_party(filename: str) -> bool:
    """A Python source file that is neither the standard library nor an installed package."""
    if not filename.endswith(".py") or filename.startswith("<"):
        return False
    real = os.path.realpath(filename)
    return os.path.isfile(real) and not any(real.startswith(d + os.sep) for d in _library_dirs())


# -- the import closure ------------------------------------------------------------------


def _module_name(path: Path) -> tuple[str, Path] | None:
    """(dotted module name, the directory its top-level package lives in) of a source file,
    from the package __init__.py files above it."""
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return (".".join(parts), folder) if parts else None


@functools.lru_cache(maxsize=256)
def _top_level_dir(top: str) -> Path | None:
    """The directory holding the top-level module or package `top`, without importing it."""
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if file is None:
        try:
            spec = find_spec(top)
        except (ImportError, ValueError):
            return None
        file = spec.origin if spec is not None else None
    if not file or not is_first_party(file):
        return None
    p = Path(file).resolve()
    return p.parent.parent if p.name == "__init__.py" else p.parent


def _module_files(name: str) -> list[Path]:
    """The first-party files importing `name` executes: each package __init__.py on the way
    and the module itself (empty when it is not a first-party module)."""
    parts = name.split(".")
    base = _top_level_dir(parts[0])
    if base is None:
        return []
    files = []
    folder = base
    for i, part in enumerate(parts):
        if (folder / part / "__init__.py").is_file():
            files.append(folder / part / "__init__.py")
            folder = folder / part
        elif i == len(parts) - 1 and (folder / f"{part}.py").is_file():
            files.append(folder / f"{part}.py")
        else:
            return []  # not a module (an attribute of `from X import name`), or not first-party
    return files


@functools.lru_cache(maxsize=1024)
def _imports(path: Path, mtime_ns: int) -> tuple[Path, ...]:
    """The first-party files the import statements of one source file lead to (every import,
    also inside functions and `if TYPE_CHECKING:` blocks: more is safe, less is not)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return ()
    named = _module_name(path)
    package = "" if named is None else (named[0] if path.name == "__init__.py" else named[0].rpartition(".")[0])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            if not base:
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    found: set[Path] = set()
    for name in names:
        found.update(_module_files(name))
    return tuple(sorted(found))


def import_closure(files: Iterable[str | os.PathLike]) -> set[Path]:
    """The files and every first-party file their imports lead to, transitively."""
    todo = [Path(f).resolve() for f in files if is_first_party(str(f))]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for g in _imports(f, f.stat().st_mtime_ns):
            if g not in seen:
                todo.append(g)
    return seen


# -- tracing -----------------------------------------------------------------------------


class _CallTracer:
    """Collects the file of every Python function called while active (no line events)."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self._previous: Any = None
        self._previous_threading: Any = None
        # threads started in the block keep this trace function after it ends (threading.settrace):
        # they must stop adding once the block is over, or reading `files` races with them
        self._lock = threading.Lock()
        self._active = False

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        with self._lock:
            if self._active:
                self.files.add(frame.f_code.co_filename)
        # another tracer (coverage, a debugger) keeps working: it sees every call as before
        return self._previous(frame, event, arg) if self._previous is not None else None

    def __enter__(self) -> _CallTracer:
        self._previous = sys.gettrace()
        self._previous_threading = threading.gettrace()
        self._active = True
        sys.settrace(self._trace)
        threading.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._previous)
        threading.settrace(self._previous_threading)
        with self._lock:
            self._active = False


def file_name(path: Path) -> str:
    """How a dependency is named in the cache: relative to the repository root, else absolute."""
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def file_path(name: str, root: Path | None = None) -> Path:
    """The file a dependency names, relative names under `root` (default: this repository)."""
    p = Path(name)
    return p if p.is_absolute() else (REPO_ROOT if root is None else Path(root)) / p


_source_hashes: dict[Path, str] = {}  # per process: the code it loaded


def _recorded_sha256(path: Path) -> str:
    if path.suffix == ".py":
        digest = _source_hashes.get(path)
        if digest is None:
            digest = _source_hashes[path] = file_sha256(path)
        return digest
    st = path.stat()
    return _current_sha256(path, st.st_mtime_ns, st.st_size)


class JobTrace:
    """The record of one job's run, filled by `trace_job`."""

    def __init__(self) -> None:
        self.code: set[str] = set()  # files with a function that ran: their imports are followed
        self.also: set[Path] = set()  # files given by the caller, taken as they are
        self.data: set[Path] = set()

    def dependencies(self) -> Dependencies:
        files = import_closure(self.code) | self.also | {p for p in self.data if p.is_file()}
        return sorted((file_name(p), _recorded_sha256(p)) for p in files)


@contextmanager
def trace_job(also: Iterable[str | os.PathLike] = ()) -> Iterator[JobTrace]:
    """Record what the code run in the block depends on; `.dependencies()` afterwards.
    `also`: files that shape the result (the job function's own module), taken without their
    imports, also when their functions run in the block (a harness module imports much that no
    result depends on: the report, the BD code, the cache)."""
    trace = JobTrace()
    trace.also = {Path(f).resolve() for f in also if is_first_party(str(f))}
    with recording_inputs() as data, _CallTracer() as calls:
        try:
            yield trace
        finally:
            trace.data = set(data)
    # this module's own functions (the tracer's exit) run in the block but shape no result; the
    # `also` files stay unexpanded even when functions of theirs run in the block
    skip = {Path(__file__).resolve(), *trace.also}
    trace.code = {f for f in calls.files if is_first_party(f) and Path(f).resolve() not in skip}


# -- checking ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _current_sha256(path: Path, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def current_sha256(name: str, root: Path | None = None) -> str | None:
    """The sha256 of a dependency's file as it is now (None if it is gone)."""
    p = file_path(name, root)
    try:
        st = p.stat()
    except OSError:
        return None
    return _current_sha256(p, st.st_mtime_ns, st.st_size)


def dependencies_current(deps: Dependencies, root: Path | None = None) -> bool:
    """Every file of the record still has the recorded content (relative names under `root`,
    default: this repository)."""
    return all(current_sha256(name, root) == digest for name, digest in deps)


def dependencies_digest(deps: Dependencies) -> str:
    """One sha256 naming a dependency record (the files and their contents)."""
    text = json.dumps([list(d) for d in sorted(deps)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = [
    "RESULT_PACKAGES",
    "Dependencies",
    "JobTrace",
    "current_sha256",
    "dependencies_current",
    "dependencies_digest",
    "file_name",
    "file_path",
    "import_closure",
    "is_first_party",
    "package_versions",
    "trace_job",
]
