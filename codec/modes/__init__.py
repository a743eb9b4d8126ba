"""Coding modes, one module each, shared by encoder and decoder. The registry
maps the ModeId written into the container to the module that implements it."""

from __future__ import annotations

from types import ModuleType

from codec.bitstream import ModeId
from codec.errors import EncodeError, UnsupportedModeError

from . import anchor, bypass, learned_e2e
from .base import EncodeParams

# ModeId -> implementing module. VVC_MSFF and LEARNED_E2E are reserved ids
# without an implementation here yet.
MODES: dict[ModeId, ModuleType] = {
    ModeId.BYPASS: bypass,
    ModeId.ANCHOR: anchor,
    ModeId.LEARNED_E2E: learned_e2e,
}


def available_modes() -> list[str]:
    return sorted(m.NAME for m in MODES.values())


def mode_by_id(mode_id: ModeId) -> ModuleType:
    try:
        mid = ModeId(mode_id)
    except ValueError:
        raise UnsupportedModeError(f"coding mode id {int(mode_id)} is reserved") from None
    if mid not in MODES:
        raise UnsupportedModeError(f"coding mode {mid.name} ({int(mid)}) is not implemented by this decoder")
    return MODES[mid]


def mode_by_name(name: str) -> ModuleType:
    for m in MODES.values():
        if m.NAME == name:
            return m
    raise EncodeError(f"unknown coding mode {name!r}; choose one of {', '.join(available_modes())}")


__all__ = ["EncodeParams", "MODES", "available_modes", "conformance_digest", "mode_by_id", "mode_by_name"]


def conformance_digest(data: bytes) -> str:
    """Text of a conformance NAME.md5 file (bitstream_spec.md, section 9.1): md5 of
    the decoded integer data and of each reconstructed float32 scale."""
    import hashlib

    import numpy as np

    from codec.bitstream import parse_container

    parsed = parse_container(data)
    mode = mode_by_id(parsed.header.mode_id)
    symbols = mode.decode_symbols(parsed.header, parsed.units)
    features = mode.reconstruct(parsed.header, symbols)
    lines = []
    for key, arr in symbols.items():
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        lines.append(f"integer {key} {hashlib.md5(le.tobytes()).hexdigest()}")
    for name, t in features.items():
        f32 = np.ascontiguousarray(t.numpy()[0], dtype="<f4")
        lines.append(f"float32 {name} {hashlib.md5(f32.tobytes()).hexdigest()}")
    return "\n".join(lines) + "\n"
