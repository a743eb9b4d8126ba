"""Coding modes, one module each, shared by encoder and decoder. The registry
maps the ModeId written into the container to the module that implements it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

from codec.bitstream import ModeId
from codec.errors import EncodeError, UnsupportedModeError

from .base import EncodeParams

# ModeId -> (module, mode name). Modules are imported on first use: the learned
# modes import CompressAI, whose import alone takes seconds (it pulls in
# torch_geometric), and an app that only reads an anchor stream must not pay it.
_MODE_TABLE: dict[ModeId, tuple[str, str]] = {
    ModeId.BYPASS: ("codec.modes.bypass", "bypass"),
    ModeId.ANCHOR: ("codec.modes.anchor", "anchor"),
    ModeId.VVC_MSFF: ("codec.modes.vvc_msff", "vvc_msff"),
    ModeId.LEARNED_E2E: ("codec.modes.learned_e2e", "learned_e2e"),
}


class _LazyModes(Mapping):
    """ModeId -> implementing module, imported on access."""

    def __getitem__(self, mode_id: ModeId) -> ModuleType:
        module_name, _ = _MODE_TABLE[mode_id]
        return importlib.import_module(module_name)

    def __iter__(self) -> Iterator[ModeId]:
        return iter(_MODE_TABLE)

    def __len__(self) -> int:
        return len(_MODE_TABLE)


MODES: Mapping[ModeId, ModuleType] = _LazyModes()


def available_modes() -> list[str]:
    return sorted(name for _, name in _MODE_TABLE.values())


def mode_by_id(mode_id: ModeId) -> ModuleType:
    try:
        mid = ModeId(mode_id)
    except ValueError:
        raise UnsupportedModeError(f"coding mode id {int(mode_id)} is reserved") from None
    if mid not in MODES:
        raise UnsupportedModeError(f"coding mode {mid.name} ({int(mid)}) is not implemented by this decoder")
    return MODES[mid]


def mode_by_name(name: str) -> ModuleType:
    for mode_id, (_, mode_name) in _MODE_TABLE.items():
        if mode_name == name:
            return MODES[mode_id]
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
