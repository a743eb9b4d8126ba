"""The codec models: one registry from the container's codec_model_id to its shipped
weights file, and one loader that always verifies a weights file against its record.

A weights file ``NAME.pt`` has a record ``NAME.json`` beside it whose
``weights_sha256`` is the sha256 of the .pt bytes (written when the weights are
saved, with the command that produced them). Loading any weights file, shipped or
given by the user, first checks that sha256: a missing file, a missing record or a
mismatch is a `CodecModelError` (one line, exit status 2 in the applications); so is a
file that verifies but cannot be read as the model. A decoder then compares the
digest with the header's codec_model_hash (`check_model_hash`).

Importing this module needs no torch; the builders import their model modules."""

from __future__ import annotations

import functools
import importlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codec.bitstream import CodecModelId
from codec.errors import CodecModelError, CodecModelMismatchError, MalformedError
from codec.files import file_sha256, note_input

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class CodecModelEntry:
    """A codec model of the id table: its shipped weights and how to build it."""

    model_id: CodecModelId
    stem: str  # codec/models/weights/<stem>.pt and <stem>.json
    builder: str  # "module:function", function(pt: Path, record: dict) -> model
    kind: str  # the record's "model": which model family a weights file holds

    @property
    def weights(self) -> Path:
        return WEIGHTS_DIR / f"{self.stem}.pt"


CODEC_MODELS: dict[CodecModelId, CodecModelEntry] = {
    CodecModelId.FENET_NANODET_NECK: CodecModelEntry(
        CodecModelId.FENET_NANODET_NECK, "fenet_nanodet_neck", "codec.models.fenet:model_from_file", "fenet_drnet"
    ),
    CodecModelId.FENET_NANODET_NECK_P4: CodecModelEntry(
        CodecModelId.FENET_NANODET_NECK_P4,
        "fenet_nanodet_neck_p4",
        "codec.models.fenet:model_from_file",
        "fenet_drnet",
    ),
    CodecModelId.FENET_NANODET_NECK_G3: CodecModelEntry(
        CodecModelId.FENET_NANODET_NECK_G3,
        "fenet_nanodet_neck_g3",
        "codec.models.fenet:model_from_file",
        "fenet_drnet",
    ),
    CodecModelId.FENET_NANODET_NECK_G4: CodecModelEntry(
        CodecModelId.FENET_NANODET_NECK_G4,
        "fenet_nanodet_neck_g4",
        "codec.models.fenet:model_from_file",
        "fenet_drnet",
    ),
    CodecModelId.FENET_YOLOV5S_SEG_NECK: CodecModelEntry(
        CodecModelId.FENET_YOLOV5S_SEG_NECK,
        "fenet_yolov5s_seg_neck",
        "codec.models.fenet:model_from_file",
        "fenet_drnet",
    ),
    CodecModelId.FENET_PS_NANODET_NECK: CodecModelEntry(
        CodecModelId.FENET_PS_NANODET_NECK,
        "fenet_ps_nanodet_neck",
        "codec.models.fenet_ps:model_from_file",
        "fenet_ps",
    ),
    CodecModelId.MSFF_NANODET_NECK: CodecModelEntry(
        CodecModelId.MSFF_NANODET_NECK, "msff_nanodet_neck", "codec.models.msff:model_from_file", "msff_msfr"
    ),
    CodecModelId.MSFF_NANODET_NECK_G2: CodecModelEntry(
        CodecModelId.MSFF_NANODET_NECK_G2, "msff_nanodet_neck_g2", "codec.models.msff:model_from_file", "msff_msfr"
    ),
}


def entry(model_id: CodecModelId | int) -> CodecModelEntry:
    try:
        return CODEC_MODELS[CodecModelId(model_id)]
    except (KeyError, ValueError):
        raise MalformedError(f"codec_model_id {int(model_id)} has no codec model in this decoder") from None


def record_path(pt: str | Path) -> Path:
    return Path(pt).with_suffix(".json")


def verify_weights(pt: str | Path) -> tuple[dict[str, Any], str]:
    """(record, sha256 hex) of a weights file whose sha256 matches its record."""
    pt = Path(pt)
    if not pt.is_file():
        raise CodecModelError(f"codec model weights not found: {pt}")
    js = record_path(pt)
    if not js.is_file():
        raise CodecModelError(f"codec model weights {pt.name} have no record {js.name} to verify them against")
    try:
        record = json.loads(js.read_text(encoding="utf-8"))
        expected = record["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CodecModelError(f"{js}: not a weights record (a JSON object with weights_sha256)") from None
    digest = file_sha256(pt)
    if digest != expected:
        raise CodecModelError(
            f"codec model weights {pt.name} are corrupt or replaced: sha256 {digest[:12]}..., "
            f"its record says {str(expected)[:12]}..."
        )
    return record, digest


def verified_record(pt: str | Path) -> dict[str, Any]:
    """The record of a weights file, verified against the file (cached per version of both):
    what a model was trained for (its config's scales), without building it or importing torch."""
    pt = Path(pt)
    note_input(pt)  # what chose the model is an input of the result, as a loaded model's file is
    note_input(record_path(pt))
    try:
        st, js = pt.stat(), record_path(pt).stat()
    except OSError:
        return verify_weights(pt)[0]  # its one-line error for a missing file or record
    return _verified_record(str(pt.resolve()), st.st_mtime_ns, st.st_size, js.st_mtime_ns, js.st_size)


@functools.lru_cache(maxsize=16)
def _verified_record(path: str, mtime_ns: int, size: int, record_mtime_ns: int, record_size: int) -> dict[str, Any]:
    return verify_weights(path)[0]


def load_weights(
    pt: str | Path, build: Callable[[Path, dict[str, Any]], Any], kind: str | None = None
) -> tuple[Any, dict[str, Any], str]:
    """(model, record, sha256 hex): verify, check the record's model family against `kind`,
    then build. Every failure is a CodecModelError."""
    record, digest = verify_weights(pt)
    if kind is not None and record.get("model", kind) != kind:
        raise CodecModelError(f"codec model weights {Path(pt).name} hold a {record.get('model')} model, not {kind}")
    try:
        model = build(Path(pt), record)
    except CodecModelError:
        raise
    except Exception as e:  # whatever torch.load or the model raises on a file it cannot read
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CodecModelError(f"cannot load codec model weights {pt}: {first}") from None
    return model, record, digest


def _builder(spec: str) -> Callable[[Path, dict[str, Any]], Any]:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


# Seconds spent in codec-model loads that were not cached (verifying and building), so that the
# applications can report model loading apart from coding time (load_seconds).
_load_time = [0.0]
_load_time_lock = threading.Lock()


def load_seconds() -> float:
    """Seconds this process has spent loading codec models so far (cached loads cost nothing)."""
    with _load_time_lock:
        return _load_time[0]


@functools.lru_cache(maxsize=8)
def _load_cached(model_id: CodecModelId, path: str, mtime_ns: int, size: int) -> tuple[Any, bytes]:
    e = entry(model_id)
    t0 = time.perf_counter()
    try:
        model, _, digest = load_weights(path, _builder(e.builder), e.kind)
    finally:
        with _load_time_lock:
            _load_time[0] += time.perf_counter() - t0
    return model, bytes.fromhex(digest)


def load_codec_model(model_id: CodecModelId | int, weights: str | Path | None = None) -> tuple[Any, bytes]:
    """(model in eval mode, sha256 of its weights file) for a codec model id; `weights`
    replaces the shipped file. Verified on every load; cached per file version."""
    e = entry(model_id)
    path = Path(weights) if weights is not None else e.weights
    note_input(path)  # on every call: what a result depends on, also when served from the cache
    note_input(record_path(path))
    try:
        st = path.stat()
    except OSError:
        raise CodecModelError(f"codec model weights not found: {path}") from None
    return _load_cached(e.model_id, str(path.resolve()), st.st_mtime_ns, st.st_size)


def check_model_hash(header_hash: bytes, digest: bytes) -> None:
    """Refuse a stream coded with other codec-model weights than the decoder's."""
    if bytes(header_hash) != digest:
        raise CodecModelMismatchError(
            f"codec model weights differ: bitstream {bytes(header_hash).hex()[:12]}..., decoder {digest.hex()[:12]}..."
        )


__all__ = [
    "CODEC_MODELS",
    "CodecModelEntry",
    "WEIGHTS_DIR",
    "check_model_hash",
    "entry",
    "load_codec_model",
    "load_weights",
    "record_path",
    "verify_weights",
]
