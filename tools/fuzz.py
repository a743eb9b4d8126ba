"""Fuzzing of the decoder: mutations of the golden vectors through the full decode path
(`codec.pipeline.decode_bitstream`: parse, mode checks, mode decoder, reconstruction; what
fcm_dec does without NN part 2) and through fcm_inspect's validation.

Mutations (one per case, sometimes two stacked), every one deterministic from (seed, case):

* structure-aware, CRCs recomputed: the vector is parsed with the container's own construct
  definitions (codec/bitstream/syntax.py, the modes' mode_header( ) syntaxes, latent_strings( )),
  one or more fields are edited (header values incl. extreme and boundary ones, scale sizes
  scaled consistently, unit fields, unit data, latent strings), payload units are inserted,
  deleted, swapped or spliced in from another vector, and the container is built again by the
  same definitions, so the CRCs match and the mutation reaches the semantic checks and the
  mode decoders. Variants of the scale-size and unit mutations rebuild through
  `codec.bitstream.build_container`, so that every field the encoder derives is derived again;
* raw byte edits inside the header or one payload unit with that CRC recomputed;
* raw bytes without CRC recomputation: bit flips, byte values, truncation, insertion,
  deletion, duplication, appended data.

Each case runs in a worker subprocess (persistent, fed over a pipe, restarted after a crash
or a hang) under an address-space limit (RLIMIT_AS) and a per-case timeout. A worker that
dies of a signal is a crash, one that runs past the timeout a hang, an exception that the
applications do not map to an exit code (codec/apps/_cli.py exit_code_for) an uncaught
exception, a MemoryError (the address-space limit) a memory blow-up; ffmpeg timing out or
killed by a signal on a case (the inner VVC decoder) is a hang or a crash too. Every such
input is saved with its mutation and the worker's stack for reproduction (`--replay`).

    python -m tools.fuzz --cases 2000 --seed 1               # a short run
    nice -n 10 python -m tools.fuzz --cases 100000 --workers 1 --out fuzz-out --json fuzz.json
    python -m tools.fuzz --replay fuzz-out/crash-*.bin        # reproduce findings
    python -m tools.fuzz --atheris -- -max_total_time=600     # coverage-guided (optional extra)

Exit status: 0 nothing found, 1 a crash, hang, uncaught exception or memory blow-up,
2 bad arguments (or atheris missing).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import faulthandler
import fnmatch
import hashlib
import io
import json
import math
import os
import random
import resource
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from construct import (
    Adapter,
    Array,
    Bytes,
    Container,
    FormatField,
    GreedyBytes,
    IfThenElse,
    ListContainer,
    Prefixed,
    Renamed,
    Struct,
    Subconstruct,
    Switch,
)

from codec.bitstream import ALL_SCALES, UNIT_FLAG_REQUIRED, PayloadUnit, UnitType, build_container, parse_container
from codec.bitstream import syntax as sx
from codec.bitstream.container import _load_mode_headers
from codec.files import REPO_ROOT

CONFORMANCE_DIR = REPO_ROOT / "tests" / "conformance"
DEFAULT_TIMEOUT_S = 5.0
# A worker that decoded every golden vector has a VmPeak of about 3.7 GiB (torch, its
# libraries and the codec models), so 6 GiB leaves ~2 GiB of headroom for allocations.
DEFAULT_RLIMIT_AS_GIB = 6.0
READY_TIMEOUT_S = 600.0  # worker start-up: importing torch and decoding every seed once
FAILURES = ("crash", "hang", "uncaught", "oom", "invariant")
TARGETS = ("decode", "inspect")


# --- seeds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes


def load_seeds(folder: Path = CONFORMANCE_DIR, pattern: str = "*") -> list[Seed]:
    """Every golden vector of `folder` (NAME.bin with its NAME.md5) whose NAME matches
    `pattern` (fnmatch), by name."""
    seeds = [
        Seed(p.stem, p.read_bytes())
        for p in sorted(Path(folder).glob("*.bin"))
        if not p.name.startswith("invalid-") and p.with_suffix(".md5").exists() and fnmatch.fnmatch(p.stem, pattern)
    ]
    if not seeds:
        raise FileNotFoundError(f"no golden vectors (NAME.bin with NAME.md5) matching {pattern!r} in {folder}")
    return seeds


# --- the container as a tree of plain values (parsed and built by codec/bitstream/syntax.py) --


@dataclass
class Tree:
    """A container as plain values: the header body and each payload_unit_body( ). Built
    again by the same construct definitions with every CRC and length recomputed."""

    version_major: int
    version_minor: int
    header: dict[str, Any]
    units: list[dict[str, Any]]

    def copy(self) -> Tree:
        return Tree(self.version_major, self.version_minor, _plain(self.header), [_plain(u) for u in self.units])


def _plain(value: Any) -> Any:
    if isinstance(value, (dict, Container)):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, ListContainer)):
        return [_plain(v) for v in value]
    return value


def parse_tree(data: bytes) -> Tree:
    """Parse without CRC, id and size checks (the lenient parse of fcm_inspect)."""
    _load_mode_headers()  # the modes' mode_header( ) syntaxes (no torch)
    p = sx.fcm_container.parse(data, verify_crc=False, validate=False)
    return Tree(
        p.version_major,
        p.version_minor,
        _plain(p.header.value),
        [_plain(u.unit.value) for u in p.payload_units],
    )


def build_head(version_major: int, version_minor: int, header: dict[str, Any]) -> bytes:
    value = dict(version_major=version_major, version_minor=version_minor, header=dict(value=header), header_crc32=None)
    return sx.fcm_container_head.build(value)


def build_unit(unit: dict[str, Any]) -> bytes:
    return sx.payload_unit.build(dict(unit=dict(value=unit), unit_crc32=None))


BINDING_FIELD = "payload_units_crc32"  # container 2.1: binds the payload units to the header


def rebind(tree: Tree) -> None:
    """Recompute the header's payload_units_crc32 (if it has one) for the tree's units, as
    build_container does, so that edited units get past the binding check."""
    if tree.header.get(BINDING_FIELD) is not None:
        crcs = [zlib.crc32(sx.payload_unit_body.build(u)) & 0xFFFFFFFF for u in tree.units]
        tree.header[BINDING_FIELD] = sx.units_binding_crc32(crcs)


def build_tree(tree: Tree, bind: bool = True) -> bytes:
    """Head and units built separately, so that num_payload_units may disagree with the
    units; with `bind`, the binding field follows the units (else it stays as it is)."""
    if bind:
        rebind(tree)
    head = build_head(tree.version_major, tree.version_minor, tree.header)
    return head + b"".join(build_unit(u) for u in tree.units)


@dataclass(frozen=True)
class Leaf:
    """One field of a tree: its path, kind ("uint", "int", "float", "bytes" of fixed size,
    "data" of variable size, "name") and its size in bytes (0 where variable)."""

    path: tuple[Any, ...]
    kind: str
    size: int


def leaves(sc: Any, value: Any, path: tuple[Any, ...] = (), parent: Any = None) -> Iterator[Leaf]:
    """The fields of `value` as `sc` (a construct) defines them; lengths and CRCs, which
    are derived when building, are not fields."""
    if isinstance(sc, Renamed):
        yield from leaves(sc.subcon, value, path, parent)
    elif isinstance(sc, Adapter) and type(sc).__name__ == "_Name":
        yield Leaf(path, "name", 0)
    elif isinstance(sc, FormatField):
        code = sc.fmtstr[-1]
        kind = "float" if code in "efd" else ("uint" if code.isupper() else "int")
        yield Leaf(path, kind, sc.length)
    elif isinstance(sc, Bytes):
        yield Leaf(path, "bytes", len(value))
    elif isinstance(sc, type(GreedyBytes)):
        yield Leaf(path, "data", 0)
    elif isinstance(sc, Struct):
        for sub in sc.subcons:
            if sub.name is not None and isinstance(value, dict) and sub.name in value:
                yield from leaves(sub, value[sub.name], (*path, sub.name), value)
    elif isinstance(sc, Array):
        for i, item in enumerate(value):
            yield from leaves(sc.subcon, item, (*path, i), parent)
    elif isinstance(sc, Switch):
        key = sc.keyfunc(parent) if callable(sc.keyfunc) else sc.keyfunc
        yield from leaves(sc.cases.get(key, sc.default), value, path, parent)
    elif isinstance(sc, IfThenElse):  # a field of later minor versions: present when parsed so
        if value is not None:
            yield from leaves(sc.thensubcon, value, path, parent)
    elif isinstance(sc, (Prefixed, Subconstruct)):
        yield from leaves(sc.subcon, value, path, parent)


def tree_leaves(tree: Tree) -> list[Leaf]:
    body = sx.HEADER_BODIES[tree.version_major]
    out = list(leaves(body, tree.header, ("header",)))
    for i, u in enumerate(tree.units):
        out += leaves(sx.payload_unit_body, u, ("units", i))
    return out


def get_at(tree: Any, path: tuple[Any, ...]) -> Any:
    node = tree
    for key in path:
        node = getattr(node, key) if isinstance(node, Tree) else node[key]
    return node


def set_at(tree: Any, path: tuple[Any, ...], value: Any) -> None:
    parent = get_at(tree, path[:-1])
    if isinstance(parent, Tree):
        setattr(parent, path[-1], value)
    else:
        parent[path[-1]] = value


def path_text(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


# --- values -----------------------------------------------------------------------------------

# the conformance limits (bitstream_spec.md, section 6.3), each and one beyond it
_LIMITS = sorted(
    {
        v + d
        for v in (sx.MAX_SCALES, sx.MAX_CHANNELS, sx.MAX_SCALE_DIM, sx.MAX_PAYLOAD_UNITS, sx.MAX_NAME_SIZE, 255, 256)
        for d in (-1, 0, 1)
    }
)
_F32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]
_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


class Skip(Exception):
    """The mutation does not apply to this input; the generator draws another."""


def uint_value(rng: random.Random, value: int, size: int, extreme: bool = False) -> int:
    top = (1 << (8 * size)) - 1
    if extreme:
        cands = {0, 1, top, top - 1, top >> 1, (top >> 1) + 1, *_LIMITS}
    else:
        cands = {0, 1, 2, top, top >> 1, value - 1, value + 1, value * 2, value // 2, value ^ 1, *_LIMITS}
        cands.add(rng.randint(0, top))
        cands.add(rng.randint(0, min(top, 2 * value + 16)))
    choices = sorted(c for c in cands if 0 <= c <= top and c != value)
    if not choices:
        raise Skip("no other value")
    return rng.choice(choices)


def float_value(rng: random.Random, value: float, size: int) -> float:
    cands = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0 * value, value / 2, -value, value + 1.0, value - 1.0, math.nan,
             math.inf, -math.inf, 1e-45, 1e-30, 65504.0, 1e6, 1e30, rng.uniform(-1e3, 1e3)]  # fmt: skip
    if size == 4:
        cands += [_F32_MAX, -_F32_MAX]
        cands = [c for c in cands if not math.isfinite(c) or abs(c) <= _F32_MAX]
    else:
        cands += [1e300, -1e300, 5e-324]
    choices = [c for c in cands if struct.pack(">d", c) != struct.pack(">d", value)]
    return rng.choice(choices)


def bytes_value(rng: random.Random, value: bytes) -> bytes:
    op = rng.randrange(4)
    if op == 0:
        return bytes(len(value))
    if op == 1:
        return b"\xff" * len(value)
    if op == 2 and value:
        b = bytearray(value)
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 0x80 >> (i % 8)
        return bytes(b)
    return rng.randbytes(len(value))


def data_value(rng: random.Random, data: bytes, others: Sequence[bytes] = ()) -> tuple[bytes, str]:
    """A byte-level edit of variable-size data: (new data, what was done)."""
    b = bytearray(data)
    n = len(b)
    op = rng.choice(("flip", "set", "insert", "delete", "truncate", "empty", "extend", "duplicate", "random", "other"))
    if op == "flip" and n:
        k = rng.choice((1, 1, 1, 2, 4, 8))
        for _ in range(k):
            i = rng.randrange(n * 8)
            b[i // 8] ^= 0x80 >> (i % 8)
        return bytes(b), f"flip {k} bit(s)"
    if op == "set" and n:
        i = rng.randrange(n)
        b[i] = rng.choice(_INTERESTING_BYTES)
        return bytes(b), f"byte {i} = 0x{b[i]:02x}"
    if op == "insert":
        i = rng.randint(0, n)
        chunk = rng.randbytes(rng.choice((1, 2, 4, 16, 256)))
        return bytes(b[:i] + chunk + b[i:]), f"insert {len(chunk)} bytes at {i}"
    if op == "delete" and n:
        i = rng.randrange(n)
        k = rng.randint(1, max(1, min(n - i, 64)))
        return bytes(b[:i] + b[i + k :]), f"delete {k} bytes at {i}"
    if op == "truncate" and n:
        k = rng.randrange(n)
        return bytes(b[:k]), f"truncate {n} -> {k} bytes"
    if op == "empty" and n:
        return b"", "empty"
    if op == "extend":
        chunk = rng.choice((bytes(rng.choice((1, 64, 4096))), rng.randbytes(rng.choice((1, 64, 4096)))))
        return bytes(b) + chunk, f"extend by {len(chunk)} bytes"
    if op == "duplicate" and n:
        i = rng.randrange(n)
        k = rng.randint(1, n - i)
        return bytes(b[: i + k] + b[i : i + k] + b[i + k :]), f"duplicate {k} bytes at {i}"
    if op == "random" and n:
        return rng.randbytes(n), f"random {n} bytes"
    if op == "other" and others:
        other = rng.choice(list(others))
        if other != data:
            return other, f"replaced by {len(other)} bytes of another vector"
    b2 = bytearray(data) or bytearray(1)
    i = rng.randrange(len(b2))
    b2[i] ^= 0xFF
    return bytes(b2), f"invert byte {i}"


def name_value(rng: random.Random, value: str, others: Sequence[str]) -> str:
    cands = ["", "x" * (sx.MAX_NAME_SIZE + 1), "x" * sx.MAX_NAME_SIZE, "a b", value + "_", value[:-1], "..", "-",
             "p3", "p4", "p5", "p6", *others]  # fmt: skip
    return rng.choice([c for c in cands if c != value])


# --- mutators ----------------------------------------------------------------------------------


class Corpus:
    """The seeds with their parsed forms (cached) and what the mutators draw from them."""

    def __init__(self, seeds: Sequence[Seed]):
        self.seeds = list(seeds)
        self._trees: dict[bytes, Tree] = {}  # the seeds' trees, by their bytes
        for s in self.seeds:
            self._trees[s.data] = parse_tree(s.data)
        self.unit_data = [u["unit_data"] for s in self.seeds for u in self._trees[s.data].units]

    def tree(self, data: bytes) -> Tree:
        """The tree of `data` (a copy, to be edited); Skip if it does not parse."""
        cached = self._trees.get(data)
        if cached is not None:
            return cached.copy()
        try:  # a mutated case (a stacked mutation)
            return parse_tree(data)
        except Exception as e:
            raise Skip(f"does not parse: {type(e).__name__}") from None

    def mode_headers(self, mode_id: int) -> list[Any]:
        out = []
        for s in self.seeds:
            t = self.tree(s.data)
            if t.version_major >= 2 and t.header["mode_id"] == mode_id:
                out.append(t.header["mode_header"])
        return out


Mutator = Callable[[random.Random, Corpus, bytes], tuple[bytes, str]]


def _edit_leaf(rng: random.Random, corpus: Corpus, tree: Tree, leaf: Leaf, extreme: bool = False) -> str:
    old = get_at(tree, leaf.path)
    where = path_text(leaf.path)
    new: Any
    if leaf.path[-1] == "mode_id" and tree.version_major >= 2:
        new = uint_value(rng, old, leaf.size, extreme)
        # the mode's own header syntax follows mode_id: take one of that mode from a vector,
        # or, for a mode without a syntax, the old mode_header's bytes
        switch = sx.HEADER_BODIES[2].mode_header.subcon.subcon
        raw = switch.build(tree.header["mode_header"], **{**tree.header, "mode_id": old})
        if new in sx.MODE_HEADERS:
            found = corpus.mode_headers(new)
            if not found:
                raise Skip("no vector of that mode")
            tree.header["mode_header"] = rng.choice(found)
        else:
            tree.header["mode_header"] = raw
        set_at(tree, leaf.path, new)
        return f"{where} {old} -> {new}"
    if leaf.kind in ("uint", "int"):
        new = uint_value(rng, old, leaf.size, extreme)
    elif leaf.kind == "float":
        new = float_value(rng, old, leaf.size)
    elif leaf.kind == "bytes":
        new = bytes_value(rng, old)
    elif leaf.kind == "name":
        names = [s["scale_name"] for s in tree.header.get("scales", [])]
        new = name_value(rng, old, names)
    else:
        new, what = data_value(rng, old, corpus.unit_data)
        set_at(tree, leaf.path, new)
        return f"{where}: {what}"
    set_at(tree, leaf.path, new)
    shown = lambda v: v.hex()[:16] if isinstance(v, bytes) else repr(v)  # noqa: E731
    return f"{where} {shown(old)} -> {shown(new)}"


def _build(tree: Tree, bind: bool = True) -> bytes:
    try:
        return build_tree(tree, bind)
    except Skip:
        raise
    except Exception as e:  # a value the field cannot hold (construct says so)
        raise Skip(f"does not build: {type(e).__name__}: {e}") from None


def mutate_field(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """One field of the header or of a unit (not unit data) set to another value."""
    tree = corpus.tree(data)
    fields = [lf for lf in tree_leaves(tree) if lf.kind != "data"]
    leaf = rng.choice(fields)
    what = _edit_leaf(rng, corpus, tree, leaf)
    return _build(tree, bind=leaf.path[-1] != BINDING_FIELD), f"field {what}"


def mutate_fields(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """Two to five fields at once."""
    tree = corpus.tree(data)
    fields = [lf for lf in tree_leaves(tree) if lf.kind != "data" and lf.path[-1] != "mode_id"]
    picked = rng.sample(fields, min(len(fields), rng.randint(2, 5)))
    what = [_edit_leaf(rng, corpus, tree, lf) for lf in picked]
    return _build(tree, bind=all(lf.path[-1] != BINDING_FIELD for lf in picked)), "fields " + "; ".join(what)


def mutate_extreme(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """Integer header fields set to 0, 1, the top of their range or a conformance limit +-1."""
    tree = corpus.tree(data)
    ints = [lf for lf in tree_leaves(tree) if lf.kind == "uint" and lf.path[0] == "header" and lf.path[-1] != "mode_id"]
    picked = rng.sample(ints, min(len(ints), rng.choice((1, 1, 2, 3, len(ints)))))
    what = [_edit_leaf(rng, corpus, tree, lf, extreme=True) for lf in picked]
    return _build(tree, bind=all(lf.path[-1] != BINDING_FIELD for lf in picked)), "extreme " + "; ".join(what)


def _scaled_sizes(rng: random.Random, scales: list[tuple[int, int, int]]) -> tuple[list[tuple[int, int, int]], str]:
    """New (channels, height, width) per scale, within the conformance limits."""

    def fits(cs: list[tuple[int, int, int]]) -> bool:
        return all(
            1 <= c <= sx.MAX_CHANNELS and 1 <= h <= sx.MAX_SCALE_DIM and 1 <= w <= sx.MAX_SCALE_DIM
            and c * h * w <= sx.MAX_SCALE_SAMPLES
            for c, h, w in cs
        )  # fmt: skip

    def halving(h0: int, w0: int) -> list[tuple[int, int, int]]:
        out = []
        h, w = h0, w0
        for c, _, _ in scales:
            out.append((c, h, w))
            h, w = -(-h // 2), -(-w // 2)
        return out

    kind = rng.choice(("halving", "halving", "halving", "each", "shrink", "height", "width", "channels", "max", "off"))
    c0, h0, w0 = scales[0]
    k = rng.choice((2, 2, 3, 4, 8, 16))
    if kind == "halving":
        new = halving(h0 * k, w0 * k)
    elif kind == "each":
        new = [(c, h * k, w * k) for c, h, w in scales]
    elif kind == "shrink":
        new = halving(max(1, h0 // k), max(1, w0 // k))
    elif kind == "height":
        new = [(c, h * k, w) for c, h, w in scales]
    elif kind == "width":
        new = [(c, h, w * k) for c, h, w in scales]
    elif kind == "channels":
        new = [(c * k, h, w) for c, h, w in scales]
    elif kind == "off":  # one more or one fewer row and column in the first scale: the others derived
        d = rng.choice((-1, 1))
        new = halving(max(1, h0 + d), max(1, w0 + d))
    else:  # the largest consistent size within the limits
        k = 1
        while fits(halving(h0 * (k + 1), w0 * (k + 1))):
            k += 1
        new = halving(h0 * k, w0 * k)
    if not fits(new):
        new = halving(h0 * 2, w0 * 2) if fits(halving(h0 * 2, w0 * 2)) else scales
    if new == scales:
        raise Skip("sizes unchanged")
    return new, f"{kind} x{k}" if kind not in ("off", "max") else kind


def mutate_scale_sizes(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """Every scale's size changed consistently (within the limits), the rest unchanged or
    (mostly) the input size with them, so that the split-point table's Ceil(input / stride)
    still holds; rebuilt by the container syntax or by build_container."""
    tree = corpus.tree(data)
    h = tree.header
    scales = h["scales"]
    old = [(s["scale_channels"], s["scale_height"], s["scale_width"]) for s in scales]
    new, kind = _scaled_sizes(rng, old)
    shown = f"scale sizes {kind}: {old} -> {new}"
    in_w, in_h = h["input_width"], h["input_height"]
    if rng.random() < 0.7:  # the input follows: the stride of the first scale kept
        stride_x, stride_y = max(1, round(in_w / old[0][2])), max(1, round(in_h / old[0][1]))
        in_w, in_h = min(65535, new[0][2] * stride_x), min(65535, new[0][1] * stride_y)
        shown += f", input {h['input_width']}x{h['input_height']} -> {in_w}x{in_h}"
    if rng.random() < 0.5:
        with contextlib.suppress(Exception):
            parsed = parse_container(data)
            hdr = parsed.header
            sc = tuple(
                dataclasses.replace(
                    s,
                    channels=c,
                    height=hh,
                    width=ww,
                    kept_channels=c if s.kept_channels == s.channels else s.kept_channels,
                )
                for s, (c, hh, ww) in zip(hdr.scales, new)
            )
            prep = dataclasses.replace(hdr.preprocessing, input_w=in_w, input_h=in_h)
            header = dataclasses.replace(hdr, preprocessing=prep, mode=dataclasses.replace(hdr.mode, scales=sc))
            return build_container(header, parsed.units), f"{shown} (build_container)"
    for s, (c, hh, ww) in zip(scales, new):
        if s.get("kept_channels") == s["scale_channels"]:
            s["kept_channels"] = c
        s["scale_channels"], s["scale_height"], s["scale_width"] = c, hh, ww
    h["input_width"], h["input_height"] = in_w, in_h
    return _build(tree), shown


def mutate_unit_data(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """A byte-level edit of one unit's data, its CRC recomputed."""
    tree = corpus.tree(data)
    if not tree.units:
        raise Skip("no units")
    i = rng.randrange(len(tree.units))
    tree.units[i]["unit_data"], what = data_value(rng, tree.units[i]["unit_data"], corpus.unit_data)
    return _build(tree), f"unit_data of unit {i}: {what}"


def mutate_latent_strings(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """A field of the latent_strings( ) of a LATENT_STRING unit (learned_e2e): a symbol
    CRC, the hyper or latent string edited, swapped, or taken from another vector."""
    tree = corpus.tree(data)
    found = [i for i, u in enumerate(tree.units) if u["unit_type"] == UnitType.LATENT_STRING]
    if not found:
        raise Skip("no LATENT_STRING unit")
    i = rng.choice(found)
    try:
        value = _plain(sx.latent_strings.parse(tree.units[i]["unit_data"]))
    except Exception:
        raise Skip("not a latent_strings( )") from None
    others = []
    for s in corpus.seeds:
        for u in corpus.tree(s.data).units:
            if u["unit_type"] == UnitType.LATENT_STRING:
                with contextlib.suppress(Exception):
                    ls = sx.latent_strings.parse(u["unit_data"])
                    others += [ls.hyper_data, ls.latent_data]
    op = rng.random()
    if op < 0.15:
        value["hyper_data"], value["latent_data"] = value["latent_data"], value["hyper_data"]
        what = "hyper_data and latent_data swapped"
    else:
        lf = rng.choice(list(leaves(sx.latent_strings, value)))
        old = value[lf.path[-1]]
        if lf.kind == "data":
            value[lf.path[-1]], what = data_value(rng, old, others)
        else:
            value[lf.path[-1]] = uint_value(rng, old, lf.size)
            what = f"{old} -> {value[lf.path[-1]]}"
        what = f"{path_text(lf.path)}: {what}"
    tree.units[i]["unit_data"] = sx.latent_strings.build(value)
    return _build(tree), f"latent_strings of unit {i}: {what}"


def _unit_ops(rng: random.Random, corpus: Corpus, units: list[Any], make: Callable[[int, int, int, bytes], Any],
              donor: Callable[[], list[Any]]) -> str:  # fmt: skip
    """Edit a list of units in place (dicts of the tree or PayloadUnits); returns what was done."""
    n = len(units)
    op = rng.choice(("delete", "duplicate", "swap", "reverse", "splice", "splice_all", "unknown_optional",
                     "unknown_required", "empty_known", "clear"))  # fmt: skip
    if op == "delete" and n:
        i = rng.randrange(n)
        del units[i]
        return f"delete unit {i}"
    if op == "duplicate" and n:
        i = rng.randrange(n)
        units.insert(rng.randint(0, n), units[i])
        return f"duplicate unit {i}"
    if op == "swap" and n >= 2:
        i, j = rng.sample(range(n), 2)
        units[i], units[j] = units[j], units[i]
        return f"swap units {i} and {j}"
    if op == "reverse" and n >= 2:
        units.reverse()
        return "reverse units"
    if op == "splice":
        other = donor()
        if other:
            k = rng.randrange(len(other))
            at = rng.randint(0, n)
            if n and rng.random() < 0.5:
                at = rng.randrange(n)
                units[at] = other[k]
                return f"unit {at} replaced by unit {k} of another vector"
            units.insert(at, other[k])
            return f"unit {k} of another vector inserted at {at}"
    if op == "splice_all":
        other = donor()
        units[:] = other
        return f"units replaced by the {len(other)} units of another vector"
    if op in ("unknown_optional", "unknown_required"):
        known = {int(t) for t in UnitType}
        utype = rng.choice([t for t in (0, 7, 100, 200, 254, 255) if t not in known])
        flags = UNIT_FLAG_REQUIRED if op == "unknown_required" else rng.choice((0, 2, 0xFE))
        at = rng.randint(0, n)
        units.insert(at, make(utype, flags, ALL_SCALES, rng.randbytes(rng.choice((0, 1, 16, 300)))))
        return f"{op} unit (type {utype}, flags {flags}) at {at}"
    if op == "empty_known":
        utype = int(rng.choice(list(UnitType)))
        at = rng.randint(0, n)
        units.insert(at, make(utype, UNIT_FLAG_REQUIRED, rng.choice((0, 1, ALL_SCALES)), b""))
        return f"empty required unit of type {utype} at {at}"
    if op == "clear" and n:
        units.clear()
        return "no units"
    raise Skip(f"unit op {op} does not apply")


def mutate_units(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """Payload units deleted, duplicated, swapped, spliced in from another vector, or added
    (unknown optional / required types); num_payload_units follows (mostly)."""
    if rng.random() < 0.5:
        with contextlib.suppress(Skip, Exception):
            parsed = parse_container(data)
            units = list(parsed.units) + list(parsed.skipped_units)

            def make_unit(t: int, f: int, s: int, d: bytes) -> PayloadUnit:
                return PayloadUnit(t, d, scale_index=s, required=bool(f & UNIT_FLAG_REQUIRED), flags=f)

            def donor_units() -> list[PayloadUnit]:
                with contextlib.suppress(Exception):
                    return list(parse_container(rng.choice(corpus.seeds).data).units)
                return []

            what = _unit_ops(rng, corpus, units, make_unit, donor_units)
            return build_container(parsed.header, units), f"units: {what} (build_container)"
    tree = corpus.tree(data)

    def make(t: int, f: int, s: int, d: bytes) -> dict[str, Any]:
        return dict(unit_type=t, unit_flags=f, unit_scale_index=s, unit_data=d)

    what = _unit_ops(rng, corpus, tree.units, make, lambda: corpus.tree(rng.choice(corpus.seeds).data).units)
    if rng.random() < 0.85:
        tree.header["num_payload_units"] = len(tree.units)
    else:
        what += f", num_payload_units stays {tree.header['num_payload_units']}"
    bind = rng.random() < 0.8
    if not bind and tree.header.get(BINDING_FIELD) is not None:
        what += f", {BINDING_FIELD} not recomputed"
    return _build(tree, bind), f"units: {what}"


def mutate_splice_header(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """The header of this vector with the payload units of another one."""
    tree = corpus.tree(data)
    other = rng.choice(corpus.seeds)
    tree.units = corpus.tree(other.data).units
    tree.header["num_payload_units"] = len(tree.units)
    bind = rng.random() < 0.7
    return _build(tree, bind), f"header with the units of {other.name}" + ("" if bind else f" ({BINDING_FIELD} kept)")


def _regions(data: bytes) -> list[tuple[str, int, int]]:
    """(what, start, end) of the bytes each CRC covers: the header (header_size and body),
    then each payload_unit_body( ); its CRC is the 4 bytes after `end`."""
    p = sx.fcm_container.parse(data, verify_crc=False, validate=False)
    out = [("header", p.header.offset1, p.header.offset2)]
    out += [(f"unit {i}", u.unit.offset1, u.unit.offset2) for i, u in enumerate(p.payload_units)]
    return out


def mutate_raw_with_crc(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """A byte edit inside the header or inside one payload unit, that CRC recomputed
    (and, sometimes, the header_size / unit_data_size follows an insertion or deletion)."""
    try:
        regions = _regions(data)
    except Exception:
        raise Skip("does not parse") from None
    what, start, end = rng.choice(regions)
    size_field = 4 if what == "header" else 7  # bytes before the data whose length is prefixed
    region = data[start:end]
    head, body = region[: size_field - 4], region[size_field - 4 :]
    new_body, edit = data_value(rng, body[4:])
    if rng.random() < 0.7:
        length = struct.pack(">I", len(new_body))
        note = ""
    else:
        length = body[:4]
        note = ", size field not updated"
    new = head + length + new_body
    out = data[:start] + new + struct.pack(">I", zlib.crc32(new) & 0xFFFFFFFF) + data[end + 4 :]
    return out, f"raw edit in {what} ({edit}{note}), CRC recomputed"


def mutate_raw(rng: random.Random, corpus: Corpus, data: bytes) -> tuple[bytes, str]:
    """Bytes edited without recomputing any CRC (the CRCs should catch these)."""
    b = bytearray(data)
    n = len(b)
    op = rng.choice(("flip", "flip", "set", "truncate", "insert", "delete", "duplicate", "append", "version"))
    if op == "flip":
        k = rng.choice((1, 1, 2, 8))
        bits = [rng.randrange(n * 8) for _ in range(k)]
        for i in bits:
            b[i // 8] ^= 0x80 >> (i % 8)
        return bytes(b), f"raw flip bit(s) {bits}"
    if op == "set":
        i = rng.randrange(n)
        b[i] = rng.choice(_INTERESTING_BYTES)
        return bytes(b), f"raw byte {i} = 0x{b[i]:02x}"
    if op == "truncate":
        k = rng.choice((rng.randrange(n), max(0, n - rng.randint(1, 8)), rng.randrange(min(n, 64))))
        return bytes(b[:k]), f"raw truncate {n} -> {k}"
    if op == "insert":
        i = rng.randint(0, n)
        chunk = rng.randbytes(rng.choice((1, 4, 64)))
        return bytes(b[:i] + chunk + b[i:]), f"raw insert {len(chunk)} bytes at {i}"
    if op == "delete":
        i = rng.randrange(n)
        k = rng.randint(1, min(64, n - i))
        return bytes(b[:i] + b[i + k :]), f"raw delete {k} bytes at {i}"
    if op == "duplicate":
        i = rng.randrange(n)
        k = rng.randint(1, min(256, n - i))
        return bytes(b[: i + k] + b[i : i + k] + b[i + k :]), f"raw duplicate {k} bytes at {i}"
    if op == "append":
        chunk = rng.choice((b"\x00", rng.randbytes(16), data[:64]))
        return bytes(b) + chunk, f"raw append {len(chunk)} bytes"
    i = rng.choice((4, 5))  # version_major / version_minor: outside the header CRC
    b[i] = rng.choice((0, 1, 2, 3, 255))
    return bytes(b), f"raw version byte {i} = {b[i]}"


MUTATORS: dict[str, tuple[Mutator, float]] = {
    "field": (mutate_field, 10.0),
    "fields": (mutate_fields, 4.0),
    "extreme": (mutate_extreme, 3.0),
    "scale_sizes": (mutate_scale_sizes, 6.0),
    "unit_data": (mutate_unit_data, 6.0),
    "latent_strings": (mutate_latent_strings, 4.0),
    "units": (mutate_units, 4.0),
    "splice_header": (mutate_splice_header, 2.0),
    "raw_crc": (mutate_raw_with_crc, 6.0),
    "raw": (mutate_raw, 6.0),
}
STACK_PROBABILITY = 0.15


@dataclass(frozen=True)
class Case:
    index: int
    seed: str  # the golden vector it came from
    mutator: str  # e.g. "scale_sizes" or "field+raw" (stacked)
    mutation: str  # what was done, in words
    data: bytes


def make_case(corpus: Corpus, seed: int, index: int, mutators: Sequence[str] | None = None) -> Case:
    """Case `index` of the campaign `seed`: the same bytes on every run and machine (for
    the same golden vectors and `mutators`, default: all of MUTATORS)."""
    rng = random.Random(f"fcm-fuzz:{seed}:{index}")
    names = list(mutators or MUTATORS)
    weights = [MUTATORS[n][1] for n in names]
    for _ in range(50):
        origin = rng.choice(corpus.seeds)
        name = rng.choices(names, weights)[0]
        try:
            data, what = MUTATORS[name][0](rng, corpus, origin.data)
            if rng.random() < STACK_PROBABILITY:
                second = rng.choices(names, weights)[0]
                with contextlib.suppress(Skip):
                    data, more = MUTATORS[second][0](rng, corpus, data)
                    name, what = f"{name}+{second}", f"{what}; then {more}"
        except Skip:
            continue
        if data == origin.data:
            continue
        return Case(index, origin.name, name, what, data)
    raise RuntimeError(f"case {index}: no mutation applied in 50 draws")


def generate_cases(
    corpus: Corpus, seed: int, count: int | None, start: int = 0, mutators: Sequence[str] | None = None
) -> Iterator[Case]:
    unknown = sorted(set(mutators or ()) - set(MUTATORS))
    if unknown:
        raise ValueError(f"unknown mutators {unknown}; choose from {', '.join(MUTATORS)}")
    i = start
    while count is None or i < start + count:
        yield make_case(corpus, seed, i, mutators)
        i += 1


# --- the worker: runs the targets on each case ----------------------------------------------------


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "not enough memory" in str(e))
    )


def target_decode(data: bytes, path: Path) -> dict[str, Any]:
    """The full decode path: parse, mode checks, mode decoder, reconstruction; the features
    must have the header's shapes."""
    from codec.pipeline import decode_bitstream

    decoded = decode_bitstream(data)
    for s in decoded.header.scales:
        t = decoded.features.get(s.name)
        shape = tuple(t.shape) if t is not None else None
        if t is None or shape != (1, s.channels, s.height, s.width) or str(t.dtype) != "torch.float32":
            return {"status": "invariant", "message": f"scale {s.name}: decoded {shape}, header {s.shape}"}
    return {"status": "ok"}


def target_inspect(data: bytes, path: Path) -> dict[str, Any]:
    """fcm_inspect (text and --json) on the data as a file: exit 0 (valid) or 2 (refused)."""
    from codec.apps import fcm_inspect

    path.write_bytes(data)
    codes = []
    for extra in ([], ["--json"]):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            codes.append(fcm_inspect.main([str(path), *extra]))
        if codes[-1] not in (0, 2) or (codes[-1] == 2 and "Traceback" in err.getvalue()):
            return {"status": "uncaught", "error": f"exit {codes[-1]}", "message": err.getvalue()[-2000:]}
        if codes[-1] == 2 and len(err.getvalue().strip().splitlines()) != 1:  # the apps' contract: one line
            return {"status": "invariant", "message": f"fcm_inspect refused with {err.getvalue()[-2000:]!r}"}
    if codes[0] != codes[1]:
        return {"status": "invariant", "message": f"fcm_inspect exits {codes[0]} as text, {codes[1]} with --json"}
    return {"status": "ok" if codes[0] == 0 else "refused", "error": f"exit {codes[0]}"}


BUILTIN_TARGETS: dict[str, Callable[[bytes, Path], dict[str, Any]]] = {
    "decode": target_decode,
    "inspect": target_inspect,
}


def resolve_target(name: str) -> Callable[[bytes, Path], dict[str, Any]]:
    """A built-in target, or "module:function" (tests use it to check the harness)."""
    if name in BUILTIN_TARGETS:
        return BUILTIN_TARGETS[name]
    module, _, func = name.partition(":")
    if not func:
        raise ValueError(f"unknown fuzz target {name!r}: {', '.join(BUILTIN_TARGETS)} or module:function")
    import importlib

    return getattr(importlib.import_module(module), func)


def _inner_failure(e: BaseException) -> str | None:
    """ "hang" or "crash" for ffmpeg timing out or dying of a signal on a case (the apps call
    that an external tool failing on its own, exit 1; on fuzzed input the input did it)."""
    from codec.inner import vvc

    if isinstance(e, getattr(vvc, "FfmpegTimeoutError", ())):
        return "hang"
    returncode = getattr(e, "returncode", None)
    if isinstance(e, vvc.FfmpegError) and returncode is not None and returncode < 0:
        return "crash"
    return None


def run_target(fn: Callable[[bytes, Path], dict[str, Any]], data: bytes, path: Path) -> dict[str, Any]:
    from codec.apps._cli import exit_code_for

    try:
        return fn(data, path)
    except Exception as e:
        if _is_oom(e):
            return {"status": "oom", "error": type(e).__name__, "message": _one_line(e)}
        inner = _inner_failure(e)
        if inner is not None:
            return {"status": inner, "error": type(e).__name__, "message": f"ffmpeg: {_one_line(e)}",
                    "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
        if exit_code_for(e) is not None:
            return {"status": "refused", "error": type(e).__name__, "message": _one_line(e)}
        return {"status": "uncaught", "error": type(e).__name__, "message": _one_line(e),
                "traceback": traceback.format_exc()[-4000:]}  # fmt: skip


def _send(fd: int, obj: dict[str, Any]) -> None:
    line = (json.dumps(obj) + "\n").encode()
    while line:
        line = line[os.write(fd, line) :]


def _read_exact(stream: Any, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _vm_peak_kib() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1])
    return 0


def worker_main(targets: Sequence[str], vectors: Path, warmup: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Read cases (u32 length + bytes) from stdin, answer one JSON line per case on the
    original stdout; the apps' own output goes to /dev/null."""
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    faulthandler.enable(file=sys.stderr, all_threads=True)
    import warnings

    warnings.simplefilter("ignore")
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)
    fns = [(name, resolve_target(name)) for name in targets]
    with tempfile.TemporaryDirectory(prefix="fcm-fuzz-worker-") as tmp:
        path = Path(tmp) / "case.bin"
        t0 = time.perf_counter()
        if warmup:  # load the models once, so that the per-case timeout measures decoding
            for seed in load_seeds(vectors):
                for _, fn in fns:
                    run_target(fn, seed.data, path)
        _send(out_fd, {"ready": True, "warmup_s": time.perf_counter() - t0, "vm_peak_kib": _vm_peak_kib()})
        stdin = sys.stdin.buffer
        while True:
            head = _read_exact(stdin, 4)
            if head is None:
                return 0
            data = _read_exact(stdin, int.from_bytes(head, "big"))
            if data is None:
                return 0
            # a case still running shortly before the parent's timeout prints its stack
            faulthandler.dump_traceback_later(max(0.1, 0.9 * timeout_s))
            results = {name: run_target(fn, data, path) for name, fn in fns}
            faulthandler.cancel_dump_traceback_later()
            self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            _send(out_fd, {"results": results, "rss_kib": self_rss})


# --- the parent: workers, timeouts, the report ------------------------------------------------------


@dataclass
class Finding:
    status: str  # one of FAILURES
    case: Case
    detail: str  # signal, exception and traceback, or what the worker printed last
    saved: Path | None = None

    @property
    def headline(self) -> str:
        """One line: the signal or exception, and the innermost frame of a worker's stack."""
        lines = [ln.strip() for ln in self.detail.splitlines() if ln.strip()]
        first = lines[0] if lines else self.status
        frame = next((ln for ln in lines if ln.startswith("File ")), "")
        return f"{first}; {frame}"[:300] if frame else first[:300]


@dataclass
class FuzzReport:
    seed: int
    cases: int = 0
    status: collections.Counter = field(default_factory=collections.Counter)  # overall, per case
    target_status: dict[str, collections.Counter] = field(default_factory=dict)
    refused_by_class: collections.Counter = field(default_factory=collections.Counter)  # decode target
    by_mutator: dict[str, collections.Counter] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    disagreements: int = 0  # decoded fine, but fcm_inspect refused
    peak_rss_kib: int = 0  # the workers' largest resident set
    vm_peak_after_warmup_kib: int = 0
    worker_starts: int = 0
    wall_s: float = 0.0
    command: str = ""
    out_dir: str | None = None

    @property
    def failures(self) -> int:
        return sum(self.status[s] for s in FAILURES)

    def counts(self, status: str) -> int:
        return self.status[status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "seed": self.seed,
            "cases": self.cases,
            "wall_s": round(self.wall_s, 1),
            "cases_per_s": round(self.cases / self.wall_s, 2) if self.wall_s else None,
            "status": dict(sorted(self.status.items())),
            "crashes": self.status["crash"],
            "hangs": self.status["hang"],
            "uncaught_exceptions": self.status["uncaught"],
            "memory_blowups": self.status["oom"],
            "invariant_violations": self.status["invariant"],
            "target_status": {k: dict(sorted(v.items())) for k, v in self.target_status.items()},
            "refused_by_class": dict(self.refused_by_class.most_common()),
            "by_mutator": {k: dict(sorted(v.items())) for k, v in sorted(self.by_mutator.items())},
            "disagreements": self.disagreements,
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "vm_peak_after_warmup_mib": round(self.vm_peak_after_warmup_kib / 1024, 1),
            "worker_starts": self.worker_starts,
            "findings": [
                {
                    "status": f.status,
                    "case": f.case.index,
                    "seed": f.case.seed,
                    "mutation": f.case.mutation,
                    "detail": f.detail[-3000:],
                    "saved": str(f.saved) if f.saved else None,
                }
                for f in self.findings
            ],  # fmt: skip
            "out_dir": self.out_dir,
        }

    def summary(self) -> str:
        d = self.to_dict()
        lines = [
            f"{self.cases} cases in {d['wall_s']} s ({d['cases_per_s']} cases/s), seed {self.seed}, "
            f"{self.worker_starts} worker start(s)",
            "per case: " + ", ".join(f"{k} {v}" for k, v in d["status"].items()),
            f"crashes {d['crashes']}, hangs {d['hangs']}, uncaught exceptions {d['uncaught_exceptions']}, "
            f"memory blow-ups {d['memory_blowups']}, invariant violations {d['invariant_violations']}",
            "decode refused by class: " + ", ".join(f"{k} {v}" for k, v in d["refused_by_class"].items()),
        ]
        for t, c in d["target_status"].items():
            lines.append(f"target {t}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        lines.append(
            f"peak RSS of the workers {d['peak_rss_mib']} MiB; VmPeak after warm-up {d['vm_peak_after_warmup_mib']} MiB"
        )
        if self.disagreements:
            lines.append(f"decoded fine but refused by fcm_inspect: {self.disagreements}")
        for f in self.findings[:20]:
            lines.append(f"FOUND {f.status}: case {f.case.index} ({f.case.seed}; {f.case.mutation}) -> {f.saved}")
            lines.append(f"    {f.headline}")
        if len(self.findings) > 20:
            lines.append(f"... and {len(self.findings) - 20} more (see the output folder)")
        return "\n".join(lines)


def _overall(results: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The status of a case from its targets' results: a failure of any target, else the
    decode target's ok / refused (else ok when every target is), and the failures' details."""
    statuses = [r["status"] for r in results.values()]
    failed = next((s for s in FAILURES if s in statuses), None)
    if failed is not None:
        detail = "\n".join(
            f"[{name}] {r['status']} {r.get('error', '')}: {r.get('message', '')}\n{r.get('traceback', '')}"
            for name, r in results.items()
            if r["status"] in FAILURES
        )
        return failed, detail
    if "decode" in results:
        return results["decode"]["status"], ""
    return ("ok" if all(s == "ok" for s in statuses) else "refused"), ""


def _limits(as_bytes: int, nice: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # segfaults leave no core files
        if nice:
            os.nice(nice)

    return apply


class _Worker:
    def __init__(self, index: int, cmd: list[str], env: dict[str, str], log_dir: Path, as_bytes: int, nice: int):
        self.index, self.cmd, self.env, self.log_dir = index, cmd, env, log_dir
        self.as_bytes, self.nice = as_bytes, nice
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.case: Case | None = None
        self.deadline = 0.0
        self.log_path = log_dir / f"worker{index}.log"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
                env=self.env,
                preexec_fn=_limits(self.as_bytes, self.nice),
                start_new_session=True,  # its own process group: a hang is killed with its ffmpeg
            )
        self.buf = b""
        self.case = None
        os.set_blocking(self.fd, False)

    @property
    def fd(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, case: Case, timeout_s: float) -> bool:
        assert self.proc is not None and self.proc.stdin is not None
        self.case = case
        self.deadline = time.monotonic() + timeout_s
        try:
            self.proc.stdin.write(len(case.data).to_bytes(4, "big") + case.data)
            self.proc.stdin.flush()
            return True
        except BrokenPipeError:
            return False

    def read_lines(self) -> tuple[list[dict[str, Any]], bool]:
        """Complete JSON lines available now, and whether the pipe closed."""
        closed = False
        try:
            chunk = os.read(self.fd, 1 << 16)
            closed = not chunk
            self.buf += chunk
        except BlockingIOError:
            pass
        lines = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            lines.append(json.loads(line))
        return lines, closed

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()  # type: ignore[union-attr]
        self.proc = None
        return rc

    def wait_exit(self) -> int | None:
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return self.kill()
        self.kill()  # leftover children of its group, pipes
        return rc

    def log_tail(self, n: int = 6000) -> str:
        """The end of what the worker wrote to stderr (faulthandler's stacks), without the
        list of extension modules."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_bytes()[-4 * n :].decode("utf-8", "replace")
            return "\n".join(ln for ln in text.splitlines() if not ln.startswith("Extension modules:"))[-n:]
        return ""


def _save(out_dir: Path, finding: Finding) -> Path:
    case = finding.case
    digest = hashlib.sha1(case.data).hexdigest()[:12]
    path = out_dir / f"{finding.status}-{case.index:07d}-{digest}.bin"
    path.write_bytes(case.data)
    path.with_suffix(".txt").write_text(
        f"status: {finding.status}\nseed vector: {case.seed}\ncase: {case.index}\nmutator: {case.mutator}\n"
        f"mutation: {case.mutation}\nreproduce: python -m tools.fuzz --replay {path.name}\n\n{finding.detail}\n"
    )
    return path


def run_cases(
    cases: Iterable[Case],
    *,
    seed: int = 0,
    workers: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    rlimit_as_gib: float = DEFAULT_RLIMIT_AS_GIB,
    targets: Sequence[str] = TARGETS,
    out_dir: Path | None = None,
    vectors: Path = CONFORMANCE_DIR,
    deadline_s: float | None = None,
    nice: int = 0,
    warmup: bool = True,
    progress: Callable[[FuzzReport], None] | None = None,
    progress_every_s: float = 60.0,
    command: str = "",
) -> FuzzReport:
    """Run `cases` through `workers` worker processes; stop early after `deadline_s`."""
    report = FuzzReport(seed=seed, command=command)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report.out_dir = str(out_dir)
    t0 = time.monotonic()
    env = dict(os.environ)
    import codec

    code_root = str(Path(codec.__file__).resolve().parents[1])  # the workers test the same codec
    env["PYTHONPATH"] = os.pathsep.join([code_root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    # ffmpeg runs in a session of its own: stop it (a hang of the inner decoder) before the
    # case's timeout kills the worker, which would leave it running
    env.setdefault("FCM_FFMPEG_TIMEOUT", f"{0.6 * timeout_s:g}")
    cmd = [sys.executable, "-m", "tools.fuzz", "--worker", "--vectors", str(vectors), "--targets", ",".join(targets),
           "--timeout", str(timeout_s)]  # fmt: skip
    if not warmup:
        cmd.append("--no-warmup")
    it = iter(cases)
    exhausted = False
    sel = selectors.DefaultSelector()
    with tempfile.TemporaryDirectory(prefix="fcm-fuzz-") as tmp:
        pool = [_Worker(i, cmd, env, Path(tmp), int(rlimit_as_gib * (1 << 30)), nice) for i in range(workers)]
        ready: dict[int, bool] = {}
        pending: collections.deque[Case] = collections.deque()  # cases to (re)send

        def start(w: _Worker) -> None:
            w.start()
            report.worker_starts += 1
            ready[w.index] = False
            w.deadline = time.monotonic() + READY_TIMEOUT_S
            sel.register(w.fd, selectors.EVENT_READ, w)

        def stop(w: _Worker, how: str) -> int | None:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(w.fd)
            return w.kill() if how == "kill" else w.wait_exit()

        def record(case: Case, status: str, results: dict[str, Any], detail: str = "") -> None:
            report.cases += 1
            report.status[status] += 1
            report.by_mutator.setdefault(case.mutator.split("+")[0], collections.Counter())[status] += 1
            for name, r in results.items():
                report.target_status.setdefault(name, collections.Counter())[r["status"]] += 1
            dec = results.get("decode")
            if dec is not None and dec["status"] == "refused":
                report.refused_by_class[dec["error"]] += 1
            ins = results.get("inspect")
            if dec is not None and ins is not None and dec["status"] == "ok" and ins["status"] == "refused":
                report.disagreements += 1
            if status in FAILURES:
                f = Finding(status, case, detail)
                if out_dir is not None:
                    f.saved = _save(out_dir, f)
                report.findings.append(f)

        for w in pool:
            start(w)
        last_progress = time.monotonic()
        try:
            while True:
                if deadline_s is not None and time.monotonic() - t0 > deadline_s:
                    exhausted = True
                for w in pool:  # a case for every idle worker
                    if w.proc is None or not ready[w.index] or w.case is not None:
                        continue
                    case = pending.popleft() if pending else None
                    if case is None and not exhausted:
                        case = next(it, None)
                        exhausted = case is None
                    if case is not None and not w.send(case, timeout_s):
                        w.case = None  # it died while idle: its end of file restarts it
                        pending.appendleft(case)
                if exhausted and not pending and all(w.case is None for w in pool):
                    break
                now = time.monotonic()
                busy = [w for w in pool if w.proc is not None and (w.case is not None or not ready[w.index])]
                wait = min((w.deadline for w in busy), default=now + 1.0) - now
                for key, _ in sel.select(timeout=min(max(wait, 0.0), 1.0)):
                    w = key.data
                    lines, closed = w.read_lines()
                    for msg in lines:
                        if msg.get("ready"):
                            ready[w.index] = True
                            report.vm_peak_after_warmup_kib = max(report.vm_peak_after_warmup_kib, msg["vm_peak_kib"])
                            continue
                        case, w.case = w.case, None
                        if case is None:
                            continue
                        report.peak_rss_kib = max(report.peak_rss_kib, msg["rss_kib"])
                        results = msg["results"]
                        status, detail = _overall(results)
                        record(case, status, results, detail)
                        if status == "oom":  # its heap may be in a bad state
                            stop(w, "kill")
                            start(w)
                    if closed:
                        rc = stop(w, "wait")
                        case, w.case = w.case, None
                        tail = w.log_tail()
                        if case is not None:
                            how = f"killed by signal {signal.Signals(-rc).name}" if rc and rc < 0 else f"exited {rc}"
                            record(case, "crash", {}, f"worker {how}\n--- worker stderr (tail) ---\n{tail}")
                        elif not ready[w.index]:
                            raise RuntimeError(f"fuzz worker failed to start (exit {rc}):\n{tail}")
                        start(w)
                now = time.monotonic()
                for w in pool:
                    if w.proc is None or now <= w.deadline or (w.case is None and ready[w.index]):
                        continue
                    if w.case is None:
                        stop(w, "kill")
                        raise RuntimeError(f"fuzz worker not ready after {READY_TIMEOUT_S:g} s:\n{w.log_tail()}")
                    case = w.case
                    stop(w, "kill")
                    record(case, "hang", {}, f"no answer within {timeout_s:g} s\n--- worker stderr (tail) ---\n"
                           f"{w.log_tail()}")  # fmt: skip
                    start(w)
                if progress is not None and time.monotonic() - last_progress >= progress_every_s:
                    last_progress = time.monotonic()
                    report.wall_s = last_progress - t0
                    progress(report)
        finally:
            for w in pool:
                if w.proc is not None:
                    with contextlib.suppress(Exception):
                        w.proc.stdin.close()  # type: ignore[union-attr]
                    stop(w, "wait")
    report.wall_s = time.monotonic() - t0
    return report


def run_campaign(
    *, cases: int | None = None, minutes: float | None = None, seed: int = 0, vectors: Path = CONFORMANCE_DIR, **kw: Any
) -> FuzzReport:
    """`cases` mutations of the golden vectors of `vectors` (or as many as fit in `minutes`)."""
    if cases is None and minutes is None:
        raise ValueError("give cases or minutes")
    corpus = Corpus(load_seeds(vectors))
    deadline = minutes * 60.0 if minutes is not None else None
    return run_cases(generate_cases(corpus, seed, cases), seed=seed, vectors=vectors, deadline_s=deadline, **kw)


# --- coverage-guided fuzzing of the container parser (optional: atheris) ----------------------------


def atheris_main(argv: list[str], vectors: Path, out_dir: Path) -> int:
    """libFuzzer (through atheris) on what needs no torch: parse_container, inspect_container
    and the modes' checks, seeded with the golden vectors; `argv` are libFuzzer's flags."""
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print(
            "fuzz: atheris is not installed; coverage-guided fuzzing is an optional extra: "
            "pip install 'fcm-codec[fuzz]' (or pip install atheris)",
            file=sys.stderr,
        )
        return 2
    from codec.apps._cli import exit_code_for
    from codec.bitstream import inspect_container
    from codec.errors import BitstreamError
    from codec.modes import all_modes, mode_by_id

    all_modes()  # every mode's header syntax, loaded before instrumenting
    atheris.instrument_all()  # codec and construct are imported already: instrument what is loaded

    def one_input(data: bytes) -> None:
        inspect_container(data)
        try:
            parsed = parse_container(data)
            mode_by_id(parsed.header.mode_id).check(parsed.header, parsed.units)
        except BitstreamError:
            return
        except Exception as e:
            if exit_code_for(e) is None:
                raise

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_dir = out_dir / "corpus"
    corpus_dir.mkdir(exist_ok=True)
    for s in load_seeds(vectors):
        (corpus_dir / f"{s.name}.bin").write_bytes(s.data)
        one_input(s.data)  # loads the codec models fcm_inspect checks, before libFuzzer times units
    flags = list(argv)
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags.append(f"-artifact_prefix={out_dir}/")
    if not any(f.startswith("-rss_limit_mb=") for f in flags):
        flags.append("-rss_limit_mb=2048")
    print(f"fuzz: atheris on parse_container, inspect_container and the mode checks; corpus and findings in {out_dir}",
          file=sys.stderr)  # fmt: skip
    atheris.Setup([sys.argv[0], *flags, str(corpus_dir)], one_input)
    atheris.Fuzz()
    return 0


# --- command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.fuzz",
        description="Fuzz the decoder (decode_bitstream and fcm_inspect) with mutations of the golden vectors.",
        epilog=__doc__.split("\n\n", 4)[-1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cases", type=int, help="number of cases (default: unlimited with --minutes, else 1000)")
    p.add_argument("--minutes", type=float, help="stop after this many minutes")
    p.add_argument("--seed", type=int, default=0, help="campaign seed (case i is the same for a seed everywhere)")
    p.add_argument("--start", type=int, default=0, help="first case index (to continue a campaign)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per case (default 5)")
    p.add_argument("--rlimit-as-gib", type=float, default=DEFAULT_RLIMIT_AS_GIB, help="address-space limit per worker")
    p.add_argument("--nice", type=int, default=0, help="niceness of the workers")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: decode, inspect or module:function")
    p.add_argument(
        "--vectors", type=Path, default=CONFORMANCE_DIR, help="folder of golden vectors (NAME.bin, NAME.md5)"
    )
    p.add_argument("--mutators", help=f"comma-separated subset of: {', '.join(MUTATORS)} (default: all)")
    p.add_argument("--only", default="*", metavar="PATTERN", help="seed only with golden vectors matching (fnmatch)")
    p.add_argument("--out", type=Path, help="folder for crashing / hanging inputs (default: a new temporary folder)")
    p.add_argument("--json", type=Path, help="write the report as JSON")
    p.add_argument("--replay", nargs="+", type=Path, metavar="FILE", help="run these files instead of mutations")
    p.add_argument("--atheris", action="store_true", help="coverage-guided fuzzing of the container parser")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-warmup", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = build_parser().parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.worker:
        return worker_main(targets, args.vectors, not args.no_warmup, args.timeout)
    out = args.out or Path(tempfile.mkdtemp(prefix="fcm-fuzz-findings-"))
    if args.atheris:
        return atheris_main(extra, args.vectors, out)
    common = dict(
        workers=args.workers, timeout_s=args.timeout, rlimit_as_gib=args.rlimit_as_gib, targets=targets,
        out_dir=out, vectors=args.vectors, nice=args.nice, command=" ".join(["python -m tools.fuzz", *argv]),
        progress=lambda r: print(f"fuzz: {r.cases} cases, {r.cases / max(r.wall_s, 1e-9):.1f}/s, "
                                 + ", ".join(f"{k} {v}" for k, v in sorted(r.status.items())), file=sys.stderr,
                                 flush=True),
    )  # fmt: skip
    cases: Iterable[Case]
    if args.replay:
        cases = [Case(i, p.name, "replay", str(p), p.read_bytes()) for i, p in enumerate(args.replay)]
        report = run_cases(cases, seed=args.seed, **common)  # type: ignore[arg-type]
    else:
        count = args.cases if args.cases is not None or args.minutes is not None else 1000
        corpus = Corpus(load_seeds(args.vectors, args.only))
        deadline = args.minutes * 60.0 if args.minutes is not None else None
        mutators = [m for m in (args.mutators or "").split(",") if m] or None
        if any(m not in MUTATORS for m in mutators or ()):
            build_parser().error(f"--mutators: choose from {', '.join(MUTATORS)}")
        cases = generate_cases(corpus, args.seed, count, args.start, mutators)
        report = run_cases(cases, seed=args.seed, deadline_s=deadline, **common)  # type: ignore[arg-type]
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
