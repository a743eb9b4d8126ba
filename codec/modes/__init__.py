"""Coding modes, shared by encoder and decoder: one registry of `CodingMode`
objects, keyed by the mode_id written into the container.

Every module of this package that defines `MODE` (a CodingMode) is a built-in mode,
found by scanning the package: adding a mode is adding its module (and its spec
section). Modes from elsewhere (third-party packages, tests) call `register_mode`.
Mode modules import their heavy dependencies (torch, CompressAI) inside their
functions, so that listing the modes and reading their parameters stays fast."""

from __future__ import annotations

import importlib
import pkgutil

from codec.bitstream import ModeId, syntax
from codec.bitstream.container import register_mode_header, unregister_mode_header
from codec.errors import EncodeError, UnsupportedModeError

from .base import CodingMode, ParamSpec, option, param_specs

_REGISTRY: dict[int, CodingMode] = {}
_BUILTINS_LOADED = False


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        mode = getattr(importlib.import_module(f"{__name__}.{info.name}"), "MODE", None)
        if isinstance(mode, CodingMode):
            register_mode(mode)


def register_mode(mode: CodingMode) -> CodingMode:
    """Add a mode to the registry; its id and name must be new."""
    if not isinstance(mode, CodingMode):
        raise TypeError(f"register_mode expects a CodingMode, got {type(mode).__name__}")
    _load_builtins()
    mid = int(mode.mode_id)
    if mid in _REGISTRY and _REGISTRY[mid] is not mode:
        raise ValueError(f"mode_id {mid} is already the mode {_REGISTRY[mid].name!r}")
    if any(m.name == mode.name and m is not mode for m in _REGISTRY.values()):
        raise ValueError(f"a mode named {mode.name!r} is already registered")
    if mid in {int(m) for m in ModeId} and ModeId(mid).name.lower() != mode.name:
        raise ValueError(f"mode_id {mid} is {ModeId(mid).name} in bitstream_spec.md, not {mode.name!r}")
    if mode.header_syntax is not None:
        if mid in syntax.MODE_HEADERS and _REGISTRY.get(mid) is not mode:
            raise ValueError(f"mode_id {mid} already has a mode header syntax")
        register_mode_header(mid, mode.header_syntax)
    _REGISTRY[mid] = mode
    return mode


def unregister_mode(mode: CodingMode) -> None:
    """Remove a mode added with register_mode (tests)."""
    if _REGISTRY.get(int(mode.mode_id)) is mode:
        del _REGISTRY[int(mode.mode_id)]
        unregister_mode_header(int(mode.mode_id))


def all_modes() -> list[CodingMode]:
    """Every registered mode, by mode_id."""
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def available_modes() -> list[str]:
    return sorted(m.name for m in all_modes())


def mode_by_id(mode_id: int) -> CodingMode:
    _load_builtins()
    mode = _REGISTRY.get(int(mode_id))
    if mode is not None:
        return mode
    try:
        mid = ModeId(int(mode_id))
    except ValueError:
        raise UnsupportedModeError(f"coding mode id {int(mode_id)} is not implemented by this decoder") from None
    raise UnsupportedModeError(f"coding mode {mid.name} ({int(mid)}) is not implemented by this decoder")


def mode_by_name(name: str) -> CodingMode:
    for mode in all_modes():
        if mode.name == name:
            return mode
    raise EncodeError(f"unknown coding mode {name!r}; choose one of {', '.join(available_modes())}")


def conformance_digest(data: bytes) -> str:
    """Text of a conformance NAME.md5 file (bitstream_spec.md, section 9.1): md5 of
    the decoded integer data and of each reconstructed float32 scale, then what an
    IMAGE_INFO unit records."""
    import hashlib

    import numpy as np

    from codec.bitstream import parse_container

    parsed = parse_container(data)
    mode = mode_by_id(parsed.header.mode_id)
    mode.check(parsed.header, parsed.units)
    symbols = mode.decode_symbols(parsed.header, parsed.units)
    features = mode.features(parsed.header, symbols)
    lines = []
    for key, arr in symbols.items():
        le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        lines.append(f"integer {key} {hashlib.md5(le.tobytes()).hexdigest()}")
    for name, t in features.items():
        f32 = np.ascontiguousarray(t.numpy()[0], dtype="<f4")
        lines.append(f"float32 {name} {hashlib.md5(f32.tobytes()).hexdigest()}")
    info = parsed.image_info
    if info is not None:  # the optional IMAGE_INFO unit (section 5.5)
        if info.image_id is not None:
            lines.append(f"image_info image_id {info.image_id}")
        if info.source_name:
            lines.append(f"image_info source_name {hashlib.md5(info.source_name.encode('utf-8')).hexdigest()}")
    return "\n".join(lines) + "\n"


__all__ = [
    "CodingMode",
    "ParamSpec",
    "all_modes",
    "available_modes",
    "conformance_digest",
    "mode_by_id",
    "mode_by_name",
    "option",
    "param_specs",
    "register_mode",
    "unregister_mode",
]
