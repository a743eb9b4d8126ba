"""What the applications share: the one place that maps errors to exit codes,
output paths checked before any work, atomic output files, the ffmpeg timeout
option, and network loading.

Exit status, the same in every application:

* 0: success.
* 1: an external tool failed on its own: ffmpeg is missing or not executable, lacks the
  VVC encoder or decoder, timed out, was killed by a signal, or (when encoding) exited with
  an error or wrote something that is not a VVC intra picture (FfmpegError). Retrying with
  another ffmpeg, or a longer --ffmpeg-timeout, may succeed; the input is not at fault.
* 2: bad arguments (argparse too), a bad input file, an invalid bitstream (including a VVC
  payload the decoder ran on and rejected), or an output that cannot be written or exists
  without --force (FcmError, OSError).
* 130: interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from codec.errors import FcmError, InputError, OutputError, OutputExistsError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_TOOL_FAILURE",
    "InputError",
    "NetworkLoadError",
    "OutputError",
    "add_ffmpeg_timeout_option",
    "atomic_write",
    "check_outputs",
    "external_tool_settings",
    "load_network",
    "run_app",
]

EXIT_OK = 0
EXIT_TOOL_FAILURE = 1  # an external tool (ffmpeg) failed on its own, see the module docstring
EXIT_BAD_INPUT = 2  # bad arguments, input, bitstream or output path (argparse also exits 2)
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = (
    "exit status: 0 ok; 1 an external tool failed on its own (ffmpeg missing, without VVC, timed out,\n"
    "killed, or its encoder output invalid); 2 bad arguments, input, bitstream or output path."
)


class NetworkLoadError(InputError):
    """The vision network or its weights could not be loaded."""


def exit_code_for(error: BaseException) -> int | None:
    """Exit code for an error the applications report in one line; None: a bug (traceback)."""
    from codec.inner.vvc import FfmpegError

    if isinstance(error, FfmpegError):
        return EXIT_TOOL_FAILURE
    if isinstance(error, FcmError):
        return EXIT_BAD_INPUT
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
    stderr and an exit code (see exit_code_for), never a traceback. The package's log
    messages (logger "codec") go to stderr at the level -v / -q set."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2); argparse already printed
        return int(e.code) if isinstance(e.code, int) else EXIT_BAD_INPUT
    with app_logging(prog, log_level(args)):
        try:
            return body(args)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:
            code = exit_code_for(e)
            if code is None:
                raise
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
            return code


# -- options every application has: --version, -v / -q, --threads ------------------------------------


def version_text(prog: str) -> str:
    from codec import __version__
    from codec.bitstream.syntax import VERSION_MAJOR, VERSION_MINOR

    package = "" if prog == "fcm-codec" else "fcm-codec; "
    return f"{prog} {__version__} ({package}writes FCM container {VERSION_MAJOR}.{VERSION_MINOR})"


def add_common_options(p: argparse.ArgumentParser, prog: str, threads: bool = True) -> None:
    """--version, -v / --verbose (repeatable), -q / --quiet and (for the apps that run
    networks) --threads."""
    p.add_argument("--version", action="version", version=version_text(prog))
    loud = p.add_mutually_exclusive_group()
    loud.add_argument(
        "-v", "--verbose", action="count", default=0, help="more messages on stderr (-v: progress notes, -vv: debug)"
    )
    loud.add_argument("-q", "--quiet", action="store_true", help="print only errors (the exit status tells the rest)")
    if threads:
        p.add_argument(
            "--threads",
            type=positive_int,
            metavar="N",
            help="CPU threads of the networks and codec models (torch intra-op threads; default: torch's, "
            "usually the number of cores). Decoded features do not depend on it",
        )


def log_level(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(getattr(args, "verbose", 0), logging.DEBUG)


class _StderrHandler(logging.Handler):
    """Writes to the sys.stderr of the moment (tests and progress bars replace it)."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            write_line(f"{self.prog}: {level}{record.getMessage()}", sys.stderr)
        except Exception:
            self.handleError(record)


def write_line(text: str, stream: TextIO | None = None) -> None:
    """One line to `stream` (default stdout) that does not break a progress bar on the terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        from tqdm import tqdm

        tqdm.write(text, file=stream)
    except ImportError:
        print(text, file=stream)


@contextmanager
def app_logging(prog: str, level: int) -> Iterator[logging.Logger]:
    """The "codec" logger writes `prog: message` lines to stderr at `level` for the block."""
    logger = logging.getLogger("codec")
    handler = _StderrHandler(prog)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def set_threads(n: int | None) -> None:
    """torch's intra-op threads (--threads); None leaves torch's default."""
    if n is None:
        return
    import torch

    torch.set_num_threads(n)
    logging.getLogger("codec.apps").info("torch threads: %d", n)


# -- outputs ---------------------------------------------------------------------------


def _folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_output(path: str | os.PathLike, force: bool, what: str = "output") -> None:
    """Refuse an output path before any work: a folder, a missing or read-only parent folder,
    or an existing file without `force` (OutputExistsError)."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} path is a directory: {p}")
    if os.fspath(path).endswith(("/", os.sep)):  # Path() drops the slash: "out/" would become a file "out"
        raise OutputError(f"{what} path ends with a path separator but names no folder: {os.fspath(path)}")
    folder = _folder_of(p)
    if not folder.exists():
        raise OutputError(f"output folder does not exist: {folder}")
    if not folder.is_dir():
        raise OutputError(f"output folder is not a folder: {folder}")
    if not force and (p.exists() or p.is_symlink()):
        raise OutputExistsError(f"{what} exists: {p} (use --force to overwrite)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")


def check_outputs(outputs: Iterable[tuple[str | os.PathLike | None, str]], force: bool) -> None:
    """check_output for each (path, what) given (None: not requested), and no file twice."""
    seen: dict[str, str] = {}
    for path, what in outputs:
        if path is None:
            continue
        check_output(path, force, what)
        key = os.path.realpath(path)
        if key in seen:
            raise OutputError(f"{seen[key]} and {what} are the same file: {os.fspath(path)}")
        seen[key] = what


def atomic_write_check(path: str | os.PathLike, force: bool) -> None:
    """Fail early (before slow work) if `path` exists and overwriting was not requested."""
    check_output(path, force)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (/proc/self/status,
    so no other thread sees a changed umask); elsewhere by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _output_mode(path: Path) -> int:
    """Permission bits of the output: an overwritten regular file keeps its own (as a shell
    redirection does); a new file gets 0666 less the umask (as open() would give it)."""
    try:
        st = path.stat()
        if path.is_file():
            return st.st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~current_umask()


def _cannot_write(path: Path, error: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {error.strerror or error}")


def atomic_write(path: str | os.PathLike, data: bytes, force: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same folder, renamed over
    `path`, so `path` is either untouched or complete. Without `force` an existing `path`
    is an OutputExistsError (also when it appears while writing: the rename is then a hard
    link, which refuses an existing name, where the file system has them). The file gets
    the permissions a plain open() would give it (see _output_mode); every failure is an
    OutputError naming `path`, never the temporary file."""
    path = Path(path)
    check_output(path, force)
    folder = _folder_of(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _cannot_write(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _output_mode(path))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force or not _link_no_replace(tmp, path):
            os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from e
        raise


def _link_no_replace(tmp: str, path: Path) -> bool:
    """Hard-link `tmp` to `path` unless `path` exists (atomically), then drop `tmp`. False
    where the file system has no hard links (the caller renames instead)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"output exists: {path} (use --force to overwrite)") from None
    except OSError:
        if path.exists():
            raise OutputExistsError(f"output exists: {path} (use --force to overwrite)") from None
        return False
    os.unlink(tmp)
    return True


# -- external tools --------------------------------------------------------------------


def _seconds(text: str) -> float:
    from codec.inner.vvc import parse_timeout

    try:
        return parse_timeout(text, "--ffmpeg-timeout")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_ffmpeg_timeout_option(p: argparse.ArgumentParser) -> None:
    from codec.inner import vvc

    p.add_argument(
        "--ffmpeg-timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"time limit of each ffmpeg run; ffmpeg and the processes it started are killed when it "
        f"runs out (exit status 1). Default: ${vvc.TIMEOUT_ENV} if set, else {vvc.TIMEOUT_BASE:g} s plus "
        f"{vvc.TIMEOUT_MARGIN:g} times the time measured per million samples for the preset "
        "(VVenC faster: 5 s ... slower: 350 s; decoding: 2 s)",
    )


@contextmanager
def external_tool_settings(args: argparse.Namespace) -> Iterator[None]:
    """The block runs with the ffmpeg timeout of --ffmpeg-timeout; a bad $FCM_FFMPEG_TIMEOUT
    is an InputError here, before any work."""
    from codec.inner import vvc

    try:
        vvc.env_timeout()
    except ValueError as e:
        raise InputError(str(e)) from None
    with vvc.ffmpeg_timeout(getattr(args, "ffmpeg_timeout", None)):
        yield


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (underscores and a float form like 2e8 accepted)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def add_max_pixels_option(p: argparse.ArgumentParser, what: str = "the input image") -> None:
    from codec.pipeline import DEFAULT_MAX_PIXELS, MAX_IMAGE_SIDE

    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse {what} if it has more than N pixels, checked from the file's header before "
        f"decoding (default: %(default)s; a side is at most {MAX_IMAGE_SIDE} whatever N)",
    )


def load_network(name: str, weights: str | None = None):
    """The network, loaded once per process (codec.api.load_network), with loading failures
    as NetworkLoadError (one line)."""
    from codec.api import load_network as load

    try:
        return load(name, weights)
    except (OSError, ValueError, RuntimeError) as e:
        raise NetworkLoadError(f"cannot load network {name!r}: {one_line(e)}") from None


class Networks:
    """The networks a run needs, each loaded once (by name, with the run's --weights) and the
    seconds spent loading them (reported apart from the coding times)."""

    def __init__(self, weights: str | None = None) -> None:
        self.weights = weights
        self.loaded: dict[str, Any] = {}
        self.seconds = 0.0

    def get(self, name: str) -> Any:
        if name not in self.loaded:
            t0 = time.perf_counter()
            self.loaded[name] = load_network(name, self.weights)
            took = time.perf_counter() - t0
            self.seconds += took
            logging.getLogger("codec.apps").info("network %s loaded in %s", name, fmt_seconds(took))
        return self.loaded[name]


def fmt_seconds(t: float) -> str:
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"
