"""VVC (H.266) inner codec through the ffmpeg binary of imageio-ffmpeg.

Encoder: ``libvvenc`` (Fraunhofer VVenC); decoder: FFmpeg's native ``vvc`` decoder.
Every picture is coded as one intra (IDR) frame in 4:2:0 10-bit (``yuv420p10le``), fixed QP,
perceptual QP adaptation (``PerceptQPA``) off so that the QP means the same everywhere in the
picture, which is what feature coding needs (features are not watched by humans).

Two uses:

* features: ``encode_luma10`` / ``decode_luma10`` code a (H, W) uint16 plane of 10-bit samples
  in the luma channel; both chroma planes are constant mid-grey (512) and cost almost nothing.
* image anchor: ``encode_rgb_image`` / ``decode_rgb_image`` convert RGB uint8 to and from
  ``yuv420p10le`` with ffmpeg's own converter (swscale) using an explicit matrix and limited
  range, the same in both directions.

Sizes vvenc cannot take (not a multiple of 8, or below 16 samples in a dimension) are padded by
edge replication to ``coded_size(width, height)`` before encoding and cropped after decoding.

Argument lists are built by pure functions (``vvenc_encode_args``, ``vvc_decode_args``,
``rgb_encode_args``, ``rgb_decode_args``) and run by the single runner ``run_ffmpeg``, which runs
ffmpeg in a session of its own so that a timeout ends ffmpeg and every process it started.

Timeouts: an explicit ``timeout`` argument, else the value set by ``ffmpeg_timeout(seconds)``
(the applications' ``--ffmpeg-timeout``), else ``$FCM_FFMPEG_TIMEOUT`` (seconds), else a default
scaled to the picture size and preset (``default_timeout``).

Every stream the encoder functions return has passed ``check_intra_stream`` (Annex-B start codes,
NAL unit headers, SPS and PPS before the slices of one intra picture); ``verify=True`` also
decodes it with the native decoder and checks the picture size.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from codec.bitstream.ids import PRESET_NAMES

__all__ = [
    "FfmpegError",
    "FfmpegToolError",
    "FfmpegTimeoutError",
    "TIMEOUT_ENV",
    "check_intra_stream",
    "default_timeout",
    "ffmpeg_timeout",
    "resolve_timeout",
    "NalParseError",
    "NalUnit",
    "VvcNalUnitType",
    "VVENC_PRESETS",
    "RGB_MATRICES",
    "MAX_DIMENSION",
    "MAX_LUMA_SAMPLES",
    "ffmpeg_exe",
    "ffmpeg_supports_vvc",
    "run_ffmpeg",
    "coded_size",
    "vvenc_encode_args",
    "vvc_decode_args",
    "rgb_encode_args",
    "rgb_decode_args",
    "encode_luma10",
    "decode_luma10",
    "encode_rgb_image",
    "decode_rgb_image",
    "parse_nal_units",
    "slice_qps",
    "ALL_INTRA_PARAMS",
    "encode_rgb_image_mpeg",
    "decode_rgb_image_mpeg",
    "rgb_to_yuv420p_full",
    "yuv420p_full_to_rgb",
]

# The one list of VVenC presets: the names of the container's inner_preset_id table,
# whose order follows libvvenc's AVOption values 0..4 (``ffmpeg -h encoder=libvvenc``).
VVENC_PRESETS: tuple[str, ...] = tuple(PRESET_NAMES.values())

# RGB <-> Y'CbCr matrices accepted by the image anchor (swscale / ffmpeg colorspace names).
RGB_MATRICES: tuple[str, ...] = ("bt709", "bt601")
DEFAULT_RGB_MATRIX = "bt709"

QP_MIN = 0
QP_MAX = 63
BIT_DEPTH = 10
SAMPLE_MAX = (1 << BIT_DEPTH) - 1
CHROMA_MID = 1 << (BIT_DEPTH - 1)  # 512: "no colour" for 10-bit chroma

# vvenc needs dimensions that are multiples of the minimum CU size (8) and refuses pictures
# with a dimension below 16 (measured with vvenc 1.15: 16x8 and 8x8 fail, 16x16 works).
_ALIGN = 8
_MIN_CODED = 16
# Largest accepted picture: 16384 in either dimension and at most VVC level 6.2's
# MaxLumaPs (35,651,584 luma samples, H.266 Table A.1).
MAX_DIMENSION = 16384
MAX_LUMA_SAMPLES = 35_651_584

_LOG_ARGS = ["-hide_banner", "-nostdin", "-loglevel", "error"]

# All-intra coding at the nominal QP (the MPEG anchors' VTM all-intra configuration): an intra
# period of 1 gives vvenc's all-intra GOP (and its smaller SPS), and no intra QP offset makes the
# coded slice QP the requested one. vvenc's default (random access) codes the single intra picture
# of a request for QP 37 at slice QP 34 (tests/unit/test_vvc.py reads the slice QP back).
ALL_INTRA_PARAMS = "IntraPeriod=1:IntraQPOffset=0"


# --------------------------------------------------------------------------------------------
# Errors and the runner
# --------------------------------------------------------------------------------------------


class FfmpegError(RuntimeError):
    """ffmpeg could not be run, failed, timed out, or produced no usable output.

    ``cmd`` is the argument list, ``stderr`` ffmpeg's full error output (str), ``returncode``
    the exit status (None if ffmpeg never ran to completion, negative: the signal that ended it).
    ``str()`` is one line.
    """

    def __init__(self, message: str, cmd: list[str], stderr: str = "", returncode: int | None = None):
        self.message = message
        self.cmd = list(cmd)
        self.stderr = stderr
        self.returncode = returncode
        super().__init__(message)

    def __str__(self) -> str:
        detail = _stderr_summary(self.stderr)
        return f"{self.message}: {detail}" if detail else self.message


class FfmpegToolError(FfmpegError):
    """ffmpeg itself failed, whatever its input: it is missing or not executable, lacks the VVC
    encoder or decoder, was killed by a signal, or timed out. A decoder maps the other
    FfmpegErrors of a decoding run (ffmpeg ran and rejected the stream) to a bitstream error;
    these it lets through (exit status 1 in the applications, see codec/apps/_cli.py)."""


class FfmpegTimeoutError(FfmpegToolError):
    """ffmpeg ran longer than its timeout; it and the processes it started were killed."""


def _stderr_summary(stderr: str, limit: int = 300) -> str:
    """The first line of ffmpeg's stderr: at ``-loglevel error`` it names the root cause."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return ""
    chosen = lines[0]
    return chosen if len(chosen) <= limit else chosen[: limit - 3] + "..."


class NalParseError(ValueError):
    """The bytes are not a well-formed Annex-B VVC NAL unit stream."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (imageio-ffmpeg's, or ``IMAGEIO_FFMPEG_EXE`` if set)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FfmpegToolError("imageio-ffmpeg is not installed", cmd=[]) from exc
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise FfmpegToolError(f"no ffmpeg binary found ({exc})", cmd=[]) from exc


# --------------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------------

TIMEOUT_ENV = "FCM_FFMPEG_TIMEOUT"

# Seconds of libvvenc per million luma samples, measured with ffmpeg 9.0 / vvenc on a 256x256
# textured frame at QP 1 and 12 (the slowest QPs), one core of a 2-core machine shared with two
# training jobs: faster 5, fast 17, medium 115, slow 275, slower 320. The default timeout
# allows TIMEOUT_MARGIN times that, plus TIMEOUT_BASE for start-up: a stall guard, not a
# deadline. Decoding (native decoder, one thread) measured 0.26 s per million samples.
_ENCODE_SECONDS_PER_MSAMPLE: dict[str, float] = {
    "faster": 5.0,
    "fast": 20.0,
    "medium": 120.0,
    "slow": 300.0,
    "slower": 350.0,
}
_DECODE_SECONDS_PER_MSAMPLE = 2.0
TIMEOUT_BASE = 60.0
TIMEOUT_MARGIN = 4.0

_timeout_override: contextvars.ContextVar[float | None] = contextvars.ContextVar("fcm_ffmpeg_timeout", default=None)


def default_timeout(luma_samples: int, preset: str | None = None) -> float:
    """Default ffmpeg timeout (seconds) for coding a picture of ``luma_samples`` luma samples:
    encoding with vvenc ``preset``, or decoding when ``preset`` is None."""
    rate = _DECODE_SECONDS_PER_MSAMPLE if preset is None else _ENCODE_SECONDS_PER_MSAMPLE.get(preset, 350.0)
    return TIMEOUT_BASE + TIMEOUT_MARGIN * rate * max(1.0, luma_samples / 1e6)


def parse_timeout(text: str, what: str = "ffmpeg timeout") -> float:
    """A timeout in seconds from text: a finite number > 0; ValueError otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {text!r}")
    return value


def env_timeout() -> float | None:
    """``$FCM_FFMPEG_TIMEOUT`` in seconds, None if unset or empty; ValueError if not a number > 0."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    return parse_timeout(text, f"${TIMEOUT_ENV}") if text else None


@contextlib.contextmanager
def ffmpeg_timeout(seconds: float | None) -> Iterator[None]:
    """Within the block, every ffmpeg run without an explicit timeout gets ``seconds``
    (None: no change). The applications wrap their work in it for ``--ffmpeg-timeout``."""
    if seconds is not None:
        seconds = parse_timeout(str(seconds))
    token = _timeout_override.set(seconds if seconds is not None else _timeout_override.get())
    try:
        yield
    finally:
        _timeout_override.reset(token)


def resolve_timeout(timeout: float | None, luma_samples: int, preset: str | None = None) -> float:
    """The timeout of one ffmpeg run: ``timeout`` if given, else the ``ffmpeg_timeout`` block's,
    else ``$FCM_FFMPEG_TIMEOUT``, else ``default_timeout(luma_samples, preset)``."""
    if timeout is not None:
        return parse_timeout(str(timeout))
    for value in (_timeout_override.get(), env_timeout()):
        if value is not None:
            return value
    return default_timeout(luma_samples, preset)


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ffmpeg's process group (its own session: ffmpeg and whatever it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def run_ffmpeg(args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with ``args`` (without the program name); raise FfmpegError on any failure.
    ``timeout`` in seconds; None: see ``resolve_timeout`` (for a small picture).

    ffmpeg runs in a new session (its own process group); on a timeout, an interrupt or any
    other exception the whole group is killed, so no process started by ffmpeg (or by a
    wrapper script standing in for it) outlives the call.
    """
    cmd = [ffmpeg_exe(), *args]
    timeout = resolve_timeout(timeout, 0)
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    except FileNotFoundError as exc:
        raise FfmpegToolError(f"ffmpeg not found at {cmd[0]}", cmd=cmd) from exc
    except PermissionError as exc:
        raise FfmpegToolError(f"ffmpeg at {cmd[0]} is not executable", cmd=cmd) from exc
    except OSError as exc:
        raise FfmpegToolError(f"ffmpeg at {cmd[0]} could not be started: {exc.strerror}", cmd=cmd) from exc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:  # a process that left the group may still hold the pipes: do not wait for it
            stdout, stderr = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            stdout, stderr = b"", b""
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
        raise FfmpegTimeoutError(
            f"ffmpeg timed out after {timeout:g} s (set --ffmpeg-timeout or ${TIMEOUT_ENV})",
            cmd=cmd,
            stderr=_decode(stderr),
        ) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    if proc.returncode < 0:
        raise FfmpegToolError(
            f"ffmpeg was killed by signal {-proc.returncode}",
            cmd=cmd,
            stderr=_decode(stderr),
            returncode=proc.returncode,
        )
    if proc.returncode != 0:
        raise FfmpegError(
            f"ffmpeg exited with status {proc.returncode}",
            cmd=cmd,
            stderr=_decode(stderr),
            returncode=proc.returncode,
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def ffmpeg_supports_vvc() -> bool:
    """True if the ffmpeg binary exists and has both the libvvenc encoder and the vvc decoder."""
    try:
        enc = run_ffmpeg([*_LOG_ARGS, "-h", "encoder=libvvenc"], timeout=30.0).stdout
        dec = run_ffmpeg([*_LOG_ARGS, "-h", "decoder=vvc"], timeout=30.0).stdout
    except FfmpegError:
        return False
    return b"Encoder libvvenc" in enc and b"Decoder vvc" in dec


# --------------------------------------------------------------------------------------------
# Validation and padding
# --------------------------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))):
        raise TypeError(f"width and height must be integers, got {type(width).__name__}, {type(height).__name__}")
    if width < 1 or height < 1:
        raise ValueError(f"picture size must be positive, got {width}x{height}")
    if width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise ValueError(f"picture size {width}x{height} exceeds {MAX_DIMENSION} in a dimension")
    if width * height > MAX_LUMA_SAMPLES:
        raise ValueError(f"picture size {width}x{height} exceeds {MAX_LUMA_SAMPLES} luma samples")


def _check_qp(qp: int) -> None:
    if isinstance(qp, bool) or not isinstance(qp, (int, np.integer)):
        raise TypeError(f"qp must be an integer, got {type(qp).__name__}")
    if not QP_MIN <= qp <= QP_MAX:
        raise ValueError(f"qp must be in {QP_MIN}..{QP_MAX}, got {qp}")


def _check_preset(preset: str) -> None:
    if preset not in VVENC_PRESETS:
        raise ValueError(f"unknown vvenc preset {preset!r}; expected one of {', '.join(VVENC_PRESETS)}")


def _check_matrix(matrix: str) -> None:
    if matrix not in RGB_MATRICES:
        raise ValueError(f"unknown colour matrix {matrix!r}; expected one of {', '.join(RGB_MATRICES)}")


def coded_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the picture actually given to vvenc: padded to a multiple of 8, at least 16."""
    _check_size(width, height)

    def up(n: int) -> int:
        return max(_MIN_CODED, -(-n // _ALIGN) * _ALIGN)

    return up(int(width)), up(int(height))


def _pad_edge(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pad the first two axes (H, W) to (height, width) by repeating the last row / column."""
    h, w = array.shape[:2]
    if (w, h) == (width, height):
        return array
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="edge")


def _yuv420_nbytes(width: int, height: int, bytes_per_sample: int = 2) -> int:
    chroma = ((width + 1) // 2) * ((height + 1) // 2)
    return (width * height + 2 * chroma) * bytes_per_sample


# --------------------------------------------------------------------------------------------
# Argument builders (pure)
# --------------------------------------------------------------------------------------------


def vvenc_encode_args(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    width: int,
    height: int,
    qp: int,
    preset: str = "faster",
    all_intra: bool = False,
) -> list[str]:
    """ffmpeg arguments: one raw ``yuv420p10le`` frame -> one intra VVC picture, Annex-B output.
    ``all_intra``: vvenc's all-intra configuration at the nominal QP (ALL_INTRA_PARAMS)."""
    _check_size(width, height)
    _check_qp(qp)
    _check_preset(preset)
    return [
        *_LOG_ARGS,
        "-y",
        "-f", "rawvideo",
        "-pix_fmt", "yuv420p10le",
        "-s", f"{width}x{height}",
        "-i", os.fspath(input_path),
        "-frames:v", "1",
        "-c:v", "libvvenc",
        "-preset", preset,
        "-qp", str(int(qp)),
        # PerceptQPA off: constant QP over the picture (the default "qpa" is for human viewers).
        "-qpa", "0",
        *(["-vvenc-params", ALL_INTRA_PARAMS] if all_intra else []),
        # Raw Annex-B elementary stream (start codes + NAL units), no container.
        "-f", "vvc",
        os.fspath(output_path),
    ]  # fmt: skip


def vvc_decode_args(input_path: str | os.PathLike, output_path: str | os.PathLike) -> list[str]:
    """ffmpeg arguments: Annex-B VVC -> first picture as raw ``yuv420p10le``.

    ``-xerror`` makes ffmpeg fail on a decoding error instead of writing a concealed picture.
    ``-threads 1``: FFmpeg 9.0's native VVC decoder is not deterministic with its default
    frame/slice threading (about 1 decode in 4 of the same stream differed, seen by the
    conformance test); with one thread it is, and a decoder must be.
    """
    return [
        *_LOG_ARGS,
        "-y",
        "-xerror",
        "-f", "vvc",
        "-c:v", "vvc",
        "-threads", "1",
        "-i", os.fspath(input_path),
        "-frames:v", "1",
        "-f", "rawvideo",
        "-pix_fmt", "yuv420p10le",
        os.fspath(output_path),
    ]  # fmt: skip


# Y'CbCr in "limited" (a.k.a. tv / studio) range: Y' 64..940, Cb/Cr 64..960 at 10 bits, the range
# that video codecs and their test conditions assume; the matrix (BT.709 by default, BT.601 on
# request) is set explicitly on both sides so that no default of swscale decides it, and it is
# also signalled in the VUI of the bitstream.
_SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"


def rgb_encode_args(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    width: int,
    height: int,
    qp: int,
    preset: str = "faster",
    matrix: str = DEFAULT_RGB_MATRIX,
) -> list[str]:
    """ffmpeg arguments: one raw ``rgb24`` frame -> limited-range Y'CbCr 4:2:0 10-bit -> VVC."""
    _check_size(width, height)
    _check_qp(qp)
    _check_preset(preset)
    _check_matrix(matrix)
    tag = "bt470bg" if matrix == "bt601" else "bt709"  # ffmpeg's name for the BT.601 matrix tag
    return [
        *_LOG_ARGS,
        "-y",
        "-f", "rawvideo",
        "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}",
        "-i", os.fspath(input_path),
        "-frames:v", "1",
        "-vf", f"scale=out_color_matrix={matrix}:out_range=tv:flags={_SWS_FLAGS},format=yuv420p10le",
        "-colorspace", tag,
        "-color_range", "tv",
        "-c:v", "libvvenc",
        "-preset", preset,
        "-qp", str(int(qp)),
        "-qpa", "0",
        "-f", "vvc",
        os.fspath(output_path),
    ]  # fmt: skip


def rgb_decode_args(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    matrix: str = DEFAULT_RGB_MATRIX,
) -> list[str]:
    """ffmpeg arguments: VVC -> first picture -> ``rgb24`` with the same matrix and range as encoding."""
    _check_matrix(matrix)
    return [
        *_LOG_ARGS,
        "-y",
        "-xerror",
        "-f", "vvc",
        "-c:v", "vvc",
        "-threads", "1",  # deterministic decoding, see vvc_decode_args
        "-i", os.fspath(input_path),
        "-frames:v", "1",
        "-vf", f"scale=in_color_matrix={matrix}:in_range=tv:flags={_SWS_FLAGS},format=rgb24",
        "-f", "rawvideo",
        "-pix_fmt", "rgb24",
        os.fspath(output_path),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Luma (feature) coding
# --------------------------------------------------------------------------------------------


def _check_bitstream(bitstream: bytes) -> bytes:
    if not isinstance(bitstream, (bytes, bytearray, memoryview)):
        raise TypeError(f"bitstream must be bytes, got {type(bitstream).__name__}")
    data = bytes(bitstream)
    if not data:
        raise ValueError("empty VVC bitstream")
    return data


def _read_output(path: Path, args: list[str], stderr: str) -> bytes:
    data = path.read_bytes() if path.exists() else b""
    if not data:
        raise FfmpegError("ffmpeg wrote no output", cmd=args, stderr=stderr, returncode=0)
    return data


def _run_checked(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """run_ffmpeg, where a failing run of a binary without VVC support is a FfmpegToolError
    saying so (instead of an error blamed on the stream)."""
    try:
        return run_ffmpeg(args, timeout=timeout)
    except FfmpegToolError:
        raise
    except FfmpegError as exc:
        if not ffmpeg_supports_vvc():
            raise FfmpegToolError(
                f"ffmpeg at {exc.cmd[0] if exc.cmd else '?'} lacks the libvvenc encoder or the vvc decoder",
                cmd=exc.cmd,
                stderr=exc.stderr,
                returncode=exc.returncode,
            ) from None
        raise


def _encode_output(
    dst: Path, args: list[str], timeout: float, width: int, height: int, decode: Callable[[bytes], object] | None
) -> bytes:
    """Run an encoding, then check what ffmpeg wrote before anyone stores it: the structure of
    one intra picture (check_intra_stream) and, with ``decode``, that the native decoder decodes
    it to the expected size. Failures are FfmpegToolError: the encoder's input was ours."""
    proc = _run_checked(args, timeout)
    stderr = _decode(proc.stderr)
    data = dst.read_bytes() if dst.exists() else b""
    if not data:
        raise FfmpegToolError("ffmpeg exited 0 but wrote no VVC stream", cmd=args, stderr=stderr, returncode=0)
    try:
        check_intra_stream(data)
    except NalParseError as exc:
        raise FfmpegToolError(
            f"ffmpeg exited 0 but wrote {len(data)} bytes that are not a VVC intra picture ({exc})",
            cmd=args,
            stderr=stderr,
            returncode=0,
        ) from None
    if decode is not None:
        try:
            decode(data)
        except FfmpegToolError:
            raise
        except (FfmpegError, ValueError) as exc:
            raise FfmpegToolError(
                f"the VVC stream ffmpeg wrote for a {width}x{height} picture does not decode: {exc}",
                cmd=args,
                stderr=stderr,
                returncode=0,
            ) from None
    return data


def encode_luma10(
    frame: np.ndarray,
    qp: int,
    preset: str = "faster",
    timeout: float | None = None,
    *,
    verify: bool = False,
    all_intra: bool = False,
    chroma_value: int = CHROMA_MID,
) -> bytes:
    """Code a (H, W) plane of 10-bit samples (0..1023) as one VVC intra picture.

    The plane goes in the luma channel of a 4:2:0 10-bit picture whose chroma planes are
    ``chroma_value`` (512; libvvenc through ffmpeg takes no 4:0:0 input). ``all_intra``: vvenc's
    all-intra configuration at the nominal QP (ALL_INTRA_PARAMS).
    Returns the raw Annex-B bitstream (start codes + NAL units), checked by check_intra_stream;
    ``verify``: also decoded once (FfmpegToolError if it does not decode to the frame's size).
    ``timeout``: seconds per ffmpeg run, None: resolve_timeout.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"frame must be 2-D (H, W), got shape {frame.shape}")
    if not np.issubdtype(frame.dtype, np.integer):
        raise TypeError(f"frame must hold integers, got dtype {frame.dtype}")
    height, width = frame.shape
    _check_size(width, height)
    _check_qp(qp)
    _check_preset(preset)
    if frame.size and (int(frame.min()) < 0 or int(frame.max()) > SAMPLE_MAX):
        raise ValueError(f"frame samples must be in 0..{SAMPLE_MAX}, got {int(frame.min())}..{int(frame.max())}")

    cw, ch = coded_size(width, height)
    luma = _pad_edge(frame.astype("<u2", copy=False), cw, ch)
    if not 0 <= int(chroma_value) <= SAMPLE_MAX:
        raise ValueError(f"chroma_value must be in 0..{SAMPLE_MAX}, got {chroma_value}")
    chroma = np.full((ch // 2, cw // 2), int(chroma_value), dtype="<u2")
    with tempfile.TemporaryDirectory(prefix="fcm_vvc_") as tmp:
        src, dst = Path(tmp, "in.yuv"), Path(tmp, "out.vvc")
        with open(src, "wb") as f:
            f.write(np.ascontiguousarray(luma).tobytes())
            f.write(chroma.tobytes())
            f.write(chroma.tobytes())
        args = vvenc_encode_args(src, dst, cw, ch, qp, preset, all_intra)
        check = functools.partial(decode_luma10, width=width, height=height, timeout=timeout) if verify else None
        return _encode_output(dst, args, resolve_timeout(timeout, cw * ch, preset), width, height, check)


def _decode_to_raw(
    bitstream: bytes, args_for: Callable[[Path, Path], list[str]], timeout: float
) -> tuple[bytes, list[str], str]:
    with tempfile.TemporaryDirectory(prefix="fcm_vvc_") as tmp:
        src, dst = Path(tmp, "in.vvc"), Path(tmp, "out.raw")
        src.write_bytes(bitstream)
        args = args_for(src, dst)
        proc = _run_checked(args, timeout)
        stderr = _decode(proc.stderr)
        return _read_output(dst, args, stderr), args, stderr


def decode_luma10(bitstream: bytes, width: int, height: int, timeout: float | None = None) -> np.ndarray:
    """Decode the first picture of an Annex-B VVC stream; return its (height, width) luma as uint16.

    The stream may be coded at ``coded_size(width, height)`` (as ``encode_luma10`` does) or at
    exactly width x height; anything else raises FfmpegError. A FfmpegToolError means ffmpeg
    itself failed (missing, no VVC decoder, killed, timed out), not the stream.
    """
    data = _check_bitstream(bitstream)
    _check_size(width, height)
    cw, ch = coded_size(width, height)
    raw, args, stderr = _decode_to_raw(data, vvc_decode_args, resolve_timeout(timeout, cw * ch))
    for w, h in (coded_size(width, height), (width, height)):
        if len(raw) == _yuv420_nbytes(w, h):
            luma = np.frombuffer(raw, dtype="<u2", count=w * h).reshape(h, w)
            return luma[:height, :width].astype(np.uint16)
    raise FfmpegError(
        f"decoded picture has {len(raw)} bytes, not a 4:2:0 10-bit picture of {cw}x{ch} or {width}x{height}",
        cmd=args,
        stderr=stderr,
        returncode=0,
    )


# --------------------------------------------------------------------------------------------
# RGB image anchor
# --------------------------------------------------------------------------------------------


def encode_rgb_image(
    image: np.ndarray,
    qp: int,
    preset: str = "faster",
    timeout: float | None = None,
    *,
    matrix: str = DEFAULT_RGB_MATRIX,
    verify: bool = False,
) -> bytes:
    """Code an (H, W, 3) uint8 RGB image as one VVC intra picture (limited-range 4:2:0 10-bit).
    The stream is checked as in encode_luma10 (``verify``: decoded once as well)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got dtype {image.dtype}")
    height, width = image.shape[:2]
    _check_size(width, height)
    _check_qp(qp)
    _check_preset(preset)
    _check_matrix(matrix)
    cw, ch = coded_size(width, height)
    padded = np.ascontiguousarray(_pad_edge(image, cw, ch))
    with tempfile.TemporaryDirectory(prefix="fcm_vvc_") as tmp:
        src, dst = Path(tmp, "in.rgb"), Path(tmp, "out.vvc")
        src.write_bytes(padded.tobytes())
        args = rgb_encode_args(src, dst, cw, ch, qp, preset, matrix)
        check = (
            functools.partial(decode_rgb_image, width=width, height=height, timeout=timeout, matrix=matrix)
            if verify
            else None
        )
        return _encode_output(dst, args, resolve_timeout(timeout, cw * ch, preset), width, height, check)


def decode_rgb_image(
    bitstream: bytes,
    width: int,
    height: int,
    timeout: float | None = None,
    *,
    matrix: str = DEFAULT_RGB_MATRIX,
) -> np.ndarray:
    """Decode the first picture of a VVC stream to an (height, width, 3) uint8 RGB image."""
    data = _check_bitstream(bitstream)
    _check_size(width, height)
    _check_matrix(matrix)
    cw, ch = coded_size(width, height)
    raw, args, stderr = _decode_to_raw(
        data, functools.partial(rgb_decode_args, matrix=matrix), resolve_timeout(timeout, cw * ch)
    )
    for w, h in (coded_size(width, height), (width, height)):
        if len(raw) == 3 * w * h:
            rgb = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
            return rgb[:height, :width].copy()
    raise FfmpegError(
        f"decoded picture has {len(raw)} bytes, not an RGB picture of {cw}x{ch} or {width}x{height}",
        cmd=args,
        stderr=stderr,
        returncode=0,
    )


def slice_qps(bitstream: bytes, timeout: float | None = None) -> list[int]:
    """SliceQpY of every slice of an Annex-B VVC stream (one value per picture where the picture
    header carries the QP delta): 26 + pps_init_qp_minus26 + sh_qp_delta (or ph_qp_delta), H.266
    equation 140. Read with ffmpeg's trace_headers bitstream filter (FFmpeg's CBS parser of every
    syntax element, instead of a second VVC header parser here). The tests use it to check that
    the anchors code at the nominal QP."""
    data = _check_bitstream(bitstream)
    with tempfile.TemporaryDirectory(prefix="fcm_vvc_") as tmp:
        src = Path(tmp, "in.vvc")
        src.write_bytes(data)
        args = [
            "-hide_banner", "-nostdin", "-loglevel", "debug", "-f", "vvc", "-i", os.fspath(src),
            "-c", "copy", "-bsf:v", "trace_headers", "-f", "null", "-",
        ]  # fmt: skip
        proc = _run_checked(args, resolve_timeout(timeout, 1 << 20))
    init_qp, out = None, []
    for line in _decode(proc.stderr).splitlines():
        fields = line.split()
        if "trace_headers" not in line or len(fields) < 4 or fields[-2] != "=":
            continue  # not a syntax element line: "... <position> <name> <bits> = <value>"
        name, value = fields[-4], fields[-1]
        if name == "pps_init_qp_minus26":
            init_qp = 26 + int(value)
        elif name in ("sh_qp_delta", "ph_qp_delta"):
            if init_qp is None:
                raise FfmpegError(f"{name} before any PPS", cmd=args, stderr="", returncode=0)
            out.append(init_qp + int(value))
    return out


# --------------------------------------------------------------------------------------------
# RGB image anchor, the MPEG FCM platform's conversion
# --------------------------------------------------------------------------------------------
#
# The platform (CompressAI-Vision, its VTM image anchor) converts each image with ffmpeg to
# Y'CbCr 4:2:0 with 8 bits, full range, ffmpeg's default matrix (BT.601) and scaler, after
# padding it to an even size (black, bottom/right); VTM codes the 8-bit input at its internal
# 10 bits (a left shift by 2) all-intra at the nominal QP and writes 8-bit output (rounding
# (v + 2) >> 2); the output goes back to RGB with the same matrix and range. libvvenc through
# ffmpeg takes 10-bit input, so the shifts are done here, exactly as VTM does them.


def _even(n: int) -> int:
    return n + (n & 1)


def rgb_to_yuv420p_full(image: np.ndarray, timeout: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> (Y, Cb, Cr) uint8 planes of the even-padded picture: ffmpeg's
    ``pad=ceil(iw/2)*2:ceil(ih/2)*2``, then BT.601 full range 4:2:0 (the platform's
    ``-pix_fmt yuv420p -dst_range 1``)."""
    h, w = image.shape[:2]
    ew, eh = _even(w), _even(h)
    with tempfile.TemporaryDirectory(prefix="fcm_vvc_") as tmp:
        src, dst = Path(tmp, "in.rgb"), Path(tmp, "out.yuv")
        src.write_bytes(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        args = [
            *_LOG_ARGS, "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-i", os.fspath(src),
            "-frames:v", "1",
            # the platform's "-dst_range 1" as a scale filter: FFmpeg 9 no longer applies that option
            # after a -vf chain (white came out at 235); default scaler flags, as the platform's
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2,scale=out_color_matrix=bt601:out_range=full,format=yuv420p",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", os.fspath(dst),
        ]  # fmt: skip
        proc = _run_checked(args, resolve_timeout(timeout, ew * eh))
        raw = _read_output(dst, args, _decode(proc.stderr))
    n_y, n_c = ew * eh, (ew // 2) * (eh // 2)
    if len(raw) != n_y + 2 * n_c:
        raise FfmpegToolError(f"ffmpeg wrote {len(raw)} bytes for a {ew}x{eh} 4:2:0 picture", cmd=args)
    a = np.frombuffer(raw, dtype=np.uint8)
    return (
        a[:n_y].reshape(eh, ew),
        a[n_y : n_y + n_c].reshape(eh // 2, ew // 2),
        a[n_y + n_c :].reshape(eh // 2, ew // 2),
    )


def yuv420p_full_to_rgb(planes: tuple[np.ndarray, np.ndarray, np.ndarray], timeout: float | None = None) -> np.ndarray:
    """8-bit full-range BT.601 4:2:0 planes -> (H, W, 3) uint8 RGB (the platform's ``-src_range 1``)."""
    y, u, v = planes
    eh, ew = y.shape
    with tempfile.TemporaryDirectory(prefix="fcm_vvc_") as tmp:
        src, dst = Path(tmp, "in.yuv"), Path(tmp, "out.rgb")
        src.write_bytes(b"".join(np.ascontiguousarray(p, dtype=np.uint8).tobytes() for p in (y, u, v)))
        args = [
            *_LOG_ARGS, "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{ew}x{eh}", "-i", os.fspath(src),
            "-frames:v", "1", "-vf", "scale=in_color_matrix=bt601:in_range=full,format=rgb24",
            "-f", "rawvideo", "-pix_fmt", "rgb24", os.fspath(dst),
        ]  # fmt: skip
        proc = _run_checked(args, resolve_timeout(timeout, ew * eh))
        raw = _read_output(dst, args, _decode(proc.stderr))
    if len(raw) != 3 * ew * eh:
        raise FfmpegToolError(f"ffmpeg wrote {len(raw)} bytes for a {ew}x{eh} RGB picture", cmd=args)
    return np.frombuffer(raw, dtype=np.uint8).reshape(eh, ew, 3)


def _encode_yuv420p10(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray], qp: int, preset: str, timeout: float | None, all_intra: bool
) -> bytes:
    y, u, v = planes
    h, w = y.shape
    cw, ch = coded_size(w, h)
    y = _pad_edge(y.astype("<u2"), cw, ch)
    u = _pad_edge(u.astype("<u2"), cw // 2, ch // 2)
    v = _pad_edge(v.astype("<u2"), cw // 2, ch // 2)
    with tempfile.TemporaryDirectory(prefix="fcm_vvc_") as tmp:
        src, dst = Path(tmp, "in.yuv"), Path(tmp, "out.vvc")
        src.write_bytes(b"".join(np.ascontiguousarray(p).tobytes() for p in (y, u, v)))
        args = vvenc_encode_args(src, dst, cw, ch, qp, preset, all_intra)
        return _encode_output(dst, args, resolve_timeout(timeout, cw * ch, preset), w, h, None)


def encode_rgb_image_mpeg(image: np.ndarray, qp: int, preset: str = "faster", timeout: float | None = None) -> bytes:
    """The platform's image anchor: RGB -> 8-bit full-range BT.601 4:2:0 (even-padded) -> x4 to
    10 bits -> one all-intra VVC picture at the nominal QP."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    _check_size(w, h)
    _check_qp(qp)
    _check_preset(preset)
    planes = rgb_to_yuv420p_full(image, timeout)
    shifted = tuple(p.astype(np.uint16) << 2 for p in planes)
    return _encode_yuv420p10(shifted, qp, preset, timeout, all_intra=True)  # type: ignore[arg-type]


def decode_rgb_image_mpeg(bitstream: bytes, width: int, height: int, timeout: float | None = None) -> np.ndarray:
    """Decode an encode_rgb_image_mpeg stream: 10-bit 4:2:0 -> (v + 2) >> 2 to 8 bits -> RGB,
    cropped to (height, width)."""
    data = _check_bitstream(bitstream)
    _check_size(width, height)
    ew, eh = _even(width), _even(height)
    cw, ch = coded_size(ew, eh)
    raw, args, stderr = _decode_to_raw(data, vvc_decode_args, resolve_timeout(timeout, cw * ch))
    for w, h in ((cw, ch), (ew, eh)):
        if len(raw) == _yuv420_nbytes(w, h):
            a = np.frombuffer(raw, dtype="<u2")
            n_y, n_c = w * h, (w // 2) * (h // 2)
            planes = (
                a[:n_y].reshape(h, w)[:eh, :ew],
                a[n_y : n_y + n_c].reshape(h // 2, w // 2)[: eh // 2, : ew // 2],
                a[n_y + n_c : n_y + 2 * n_c].reshape(h // 2, w // 2)[: eh // 2, : ew // 2],
            )
            eight = tuple(np.clip((p.astype(np.int32) + 2) >> 2, 0, 255).astype(np.uint8) for p in planes)
            return yuv420p_full_to_rgb(eight, timeout)[:height, :width].copy()  # type: ignore[arg-type]
    raise FfmpegError(
        f"decoded picture has {len(raw)} bytes, not a 4:2:0 10-bit picture of {cw}x{ch} or {ew}x{eh}",
        cmd=args,
        stderr=stderr,
        returncode=0,
    )


# --------------------------------------------------------------------------------------------
# NAL units (H.266 clause 7.3.1.2 and Annex B)
# --------------------------------------------------------------------------------------------


class VvcNalUnitType(IntEnum):
    """nal_unit_type values with a name in H.266 Table 5 (others are reserved or unspecified)."""

    TRAIL = 0
    STSA = 1
    RADL = 2
    RASL = 3
    IDR_W_RADL = 7
    IDR_N_LP = 8
    CRA = 9
    GDR = 10
    OPI = 12
    DCI = 13
    VPS = 14
    SPS = 15
    PPS = 16
    PREFIX_APS = 17
    SUFFIX_APS = 18
    PH = 19
    AUD = 20
    EOS = 21
    EOB = 22
    PREFIX_SEI = 23
    SUFFIX_SEI = 24
    FD = 25


def nal_unit_type_name(nal_unit_type: int) -> str:
    """Name of a VVC nal_unit_type (0..31) as in H.266 Table 5, without the ``_NUT`` suffix."""
    if not 0 <= nal_unit_type <= 31:
        raise ValueError(f"nal_unit_type must be in 0..31, got {nal_unit_type}")
    try:
        return VvcNalUnitType(nal_unit_type).name
    except ValueError:
        pass
    if 4 <= nal_unit_type <= 6:
        return f"RSV_VCL_{nal_unit_type}"
    if nal_unit_type == 11:
        return "RSV_IRAP_11"
    if nal_unit_type in (26, 27):
        return f"RSV_NVCL_{nal_unit_type}"
    return f"UNSPEC_{nal_unit_type}"


@dataclass
class NalUnit:
    """One NAL unit of an Annex-B stream.

    ``offset`` is the position of its first header byte (after the start code) and ``size`` its
    length in bytes including the 2-byte header, excluding start codes and trailing zero bytes.
    """

    offset: int
    size: int
    nal_unit_type: int
    type_name: str
    layer_id: int
    temporal_id: int

    @property
    def is_vcl(self) -> bool:
        """True for coded slice NAL units (nal_unit_type 0..11)."""
        return self.nal_unit_type <= 11


_START_CODE = re.compile(b"\x00\x00\x01")


def parse_nal_units(bitstream: bytes) -> list[NalUnit]:
    """Split an Annex-B VVC byte stream on start codes and decode each 2-byte NAL unit header.

    Header: forbidden_zero_bit f(1), nuh_reserved_zero_bit u(1), nuh_layer_id u(6),
    nal_unit_type u(5), nuh_temporal_id_plus1 u(3). Raises NalParseError on bytes that are not
    such a stream (data before the first start code, a NAL unit shorter than its header,
    forbidden_zero_bit set, nuh_temporal_id_plus1 equal to 0).
    """
    data = bytes(bitstream)
    if not data:
        return []
    starts = [m.end() for m in _START_CODE.finditer(data)]
    if not starts:
        raise NalParseError("no Annex-B start code (00 00 01) found")
    if data[: starts[0] - 3].strip(b"\x00"):
        raise NalParseError(f"{starts[0] - 3} bytes of non-zero data before the first start code")
    units: list[NalUnit] = []
    for i, begin in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        # Zero bytes before the next start code are trailing_zero_8bits / zero_byte, not payload:
        # a NAL unit never ends in 0x00 (rbsp_trailing_bits, or cabac_zero_word 0x0000 03).
        while end > begin and data[end - 1] == 0:
            end -= 1
        size = end - begin
        if size < 2:
            raise NalParseError(f"NAL unit at byte {begin} has {size} bytes, shorter than its 2-byte header")
        b0, b1 = data[begin], data[begin + 1]
        if b0 & 0x80:
            raise NalParseError(f"forbidden_zero_bit is 1 in the NAL unit at byte {begin}")
        tid_plus1 = b1 & 0x07
        if tid_plus1 == 0:
            raise NalParseError(f"nuh_temporal_id_plus1 is 0 in the NAL unit at byte {begin}")
        nut = b1 >> 3
        units.append(
            NalUnit(
                offset=begin,
                size=size,
                nal_unit_type=nut,
                type_name=nal_unit_type_name(nut),
                layer_id=b0 & 0x3F,
                temporal_id=tid_plus1 - 1,
            )
        )
    return units


# NAL unit types of one intra-coded picture, as the encoder functions produce it: parameter
# sets, then the slices of an IRAP picture (H.266 clause 7.4.2.2 orders them so).
_IRAP_TYPES = frozenset({VvcNalUnitType.IDR_W_RADL, VvcNalUnitType.IDR_N_LP, VvcNalUnitType.CRA})
_INTRA_STREAM_TYPES = _IRAP_TYPES | {
    VvcNalUnitType.OPI,
    VvcNalUnitType.DCI,
    VvcNalUnitType.VPS,
    VvcNalUnitType.SPS,
    VvcNalUnitType.PPS,
    VvcNalUnitType.PREFIX_APS,
    VvcNalUnitType.SUFFIX_APS,
    VvcNalUnitType.PH,
    VvcNalUnitType.AUD,
    VvcNalUnitType.EOS,
    VvcNalUnitType.EOB,
    VvcNalUnitType.PREFIX_SEI,
    VvcNalUnitType.SUFFIX_SEI,
    VvcNalUnitType.FD,
}


def check_intra_stream(bitstream: bytes) -> list[NalUnit]:
    """Check that ``bitstream`` is an Annex-B stream of one intra (IRAP) picture, structurally:
    it starts with a start code, every NAL unit header is valid (parse_nal_units), every
    nal_unit_type is a named, non-reserved type a single intra picture may use, all in layer 0
    with temporal id 0, and an SPS and a PPS precede the picture's slices (one or more IRAP
    slices, nothing VCL of another type). Returns the NAL units; NalParseError otherwise.

    This is what ``encode_luma10`` and ``encode_rgb_image`` require of ffmpeg's output before
    returning it; it rejects random bytes (no start code, or a reserved header) without running
    a decoder."""
    data = bytes(bitstream)
    if not data:
        raise NalParseError("empty stream")
    if not (data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")):
        raise NalParseError("the stream does not start with an Annex-B start code")
    units = parse_nal_units(data)
    seen: set[int] = set()
    slices = 0
    for u in units:
        if u.nal_unit_type not in _INTRA_STREAM_TYPES:
            raise NalParseError(f"NAL unit at byte {u.offset} has type {u.type_name}, not one of an intra picture")
        if u.layer_id != 0 or u.temporal_id != 0:
            raise NalParseError(
                f"NAL unit {u.type_name} at byte {u.offset} is in layer {u.layer_id}, temporal id {u.temporal_id}"
            )
        if u.is_vcl:
            missing = [t.name for t in (VvcNalUnitType.SPS, VvcNalUnitType.PPS) if t not in seen]
            if missing:
                raise NalParseError(f"slice at byte {u.offset} comes before any {' and '.join(missing)}")
            if u.size < 3:
                raise NalParseError(f"slice at byte {u.offset} has {u.size} bytes, no slice header")
            slices += 1
        seen.add(u.nal_unit_type)
    if slices == 0:
        raise NalParseError("no slice NAL unit (the stream has no picture)")
    return units
