"""Memory safety for CompressAI's rANS decoder on untrusted strings.

CompressAI 1.2.8's ``RansDecoder`` (``decode_with_indexes``, ``set_stream`` +
``decode_stream``, and ``EntropyBottleneck.decompress`` through them) reads the
string through a ``uint32_t`` pointer with no bounds check: the number of symbols
comes from the caller (here: from the container header), and a string shorter than
the symbols need is read past its end until the process dies (SIGSEGV; a related
report is CompressAI issue 300). The library offers no bounded decoder, and a
second rANS implementation would be a second copy of the bitstream's entropy
coder, so the decoder gets a string followed by enough zero bytes that it can
never leave the buffer, whatever the string holds.

How many bytes can the decoder read past the end of the real data? (rans64.h of
CompressAI, precision 16, bypass precision 4, ``RANS64_L = 2^31``; the state x is
kept in [2^31, 2^64).)

* ``Rans64DecInit`` reads 2 words; ``Rans64DecAdvance`` (every symbol) reads at most
  1 word (a 32-bit renormalisation when x < 2^31).
* A symbol equal to its CDF's last entry is bypass coded: 4-bit chunks are taken
  with ``Rans64DecGetBits`` while they equal 15 (the count n_bypass is their sum),
  then n_bypass more chunks. Each ``GetBits`` reads at most 1 word, and after a
  read x >= 2^59, so at most 1 read in 7 calls, plus 1.
* Past the end every word read is 0, so after one such read the next chunk is 0
  and the "while 15" loop ends: per symbol the loop takes at most 17 chunks from
  bits already in x (64 bits) plus 8 per word of real data it consumes (at most
  2 per byte of the string over all symbols, 2L). Hence, over N symbols,
  sum n_bypass <= 15 (2L + 17N) and the GetBits calls <= 16 (2L + 17N) + N.

Words read past the end <= 2 + N + N + (32L + 273N) / 7 + N < 2 + 43N + 4.6L, i.e.
fewer than ``4 * (2 + 43 N) + 19 L`` bytes. :func:`padded` appends that many zero
bytes (plus a margin). Decoding a valid string is unchanged: the decoder reads
exactly the words the encoder wrote and never reaches the padding.

The padding is proportional to the symbols the header asks for, so the modes bound
that count (:data:`MAX_SYMBOLS`) before decoding.

The torch-free encoder (:class:`BufferedRansEncoder`, :func:`encode_with_indexes`) writes
exactly the strings of CompressAI's ``BufferedRansEncoder`` / ``RansEncoder``, for the
camera's learned encoder (codec/models/fenet_onnx.py), where CompressAI cannot be imported:
it needs torch. No package on PyPI writes this format: the ANS coders there (constriction,
py-rans, ...) each have their own word layout, initial state and escape coding. It is a
small, clean implementation of the same arithmetic (ryg_rans' 64-bit rANS with 32-bit
renormalisation, 16-bit CDF precision, CompressAI's 4-bit bypass escape for values outside
a CDF's range), tested byte for byte against CompressAI (tests/unit/test_rans_encoder.py).

The format, as an encoder sees it (symbols coded in reverse, the string read forwards):

* state x in [2^31, 2^63), starting at 2^31; a symbol of frequency f and start c (out of
  2^16) first renormalises (if x >= f * 2^47: emit the low 32 bits of x, x >>= 32), then
  x = (x // f) * 2^16 + x % f + c;
* a 4-bit raw chunk v renormalises at 2^59 and sets x = x * 16 + v;
* the string is the final state (two little-endian 32-bit words, low first), then the
  emitted words, last emitted first;
* a value v = symbol - offset[table] outside 0 .. L - 3 (L: the table's CDF length) is coded
  as the sentinel L - 2 followed by raw chunks: the number n of 4-bit chunks of
  r = -2v - 1 (v < 0) or 2 (v - (L - 2)) (v >= L - 2) in chunks of 15 plus the remainder,
  then r's chunks, least significant first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# at most this many symbols in one rANS string (the padding is then < 4 * 43 * 2^20 + 19 L bytes, 181 MB + 19 L)
MAX_SYMBOLS = 1 << 20

_WORDS_PER_SYMBOL = 43
_BYTES_PER_STRING_BYTE = 19
_MARGIN = 64


def padding_bytes(length: int, n_symbols: int) -> int:
    """Zero bytes that keep CompressAI's decoder inside the buffer (see the module docstring)."""
    if n_symbols < 0 or length < 0:
        raise ValueError("negative length or symbol count")
    return 4 * (2 + _WORDS_PER_SYMBOL * n_symbols) + _BYTES_PER_STRING_BYTE * length + _MARGIN


def padded(data: bytes, n_symbols: int) -> bytes:
    """`data` followed by :func:`padding_bytes` zero bytes: safe to hand to CompressAI's rANS
    decoder for `n_symbols` symbols."""
    if n_symbols > MAX_SYMBOLS:
        raise ValueError(f"{n_symbols} symbols in one rANS string exceed the limit {MAX_SYMBOLS}")
    return bytes(data) + bytes(padding_bytes(len(data), n_symbols))


# -- the encoder (torch-free) -------------------------------------------------------------

PRECISION = 16  # CompressAI's rANS: CDFs out of 2^16
_RANS_L = 1 << 31  # lower bound of the normalised state
_BYPASS_BITS = 4
_MAX_BYPASS = (1 << _BYPASS_BITS) - 1
_MAX_RAW = 1 << 28  # raw bypass values below 2^28 (7 chunks): CompressAI's uint32 loop is defined there


class BufferedRansEncoder:
    """Symbols of several `encode_with_indexes` calls, coded into one string by `flush`
    (CompressAI's ``BufferedRansEncoder``: the same calls give the same bytes)."""

    def __init__(self) -> None:
        # one coding step per entry, in stream order: (start, frequency) of a CDF interval,
        # or (chunk, 0) for a 4-bit raw chunk of the bypass escape
        self._starts: list[int] = []
        self._freqs: list[int] = []

    def encode_with_indexes(
        self,
        symbols: Sequence[int] | np.ndarray,
        indexes: Sequence[int] | np.ndarray,
        cdfs: Sequence[Sequence[int]] | np.ndarray,
        cdf_lengths: Sequence[int] | np.ndarray,
        offsets: Sequence[int] | np.ndarray,
    ) -> None:
        """Queue `symbols`, symbol i with the CDF table `indexes[i]`: row `cdfs[k]` (its first
        `cdf_lengths[k]` entries, 0 .. 2^16), values offset by `offsets[k]`."""
        sym = np.asarray(symbols, dtype=np.int64).reshape(-1)
        idx = np.asarray(indexes, dtype=np.int64).reshape(-1)
        if sym.shape != idx.shape:
            raise ValueError(f"{sym.size} symbols but {idx.size} indexes")
        table = _cdf_table(cdfs)
        lengths = np.asarray(cdf_lengths, dtype=np.int64).reshape(-1)
        offs = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if sym.size == 0:
            return
        if idx.min() < 0 or idx.max() >= min(len(table), len(lengths), len(offs)):
            raise ValueError("a CDF index is outside the tables")
        max_value = lengths[idx] - 2
        if (max_value < 0).any() or (lengths > table.shape[1]).any():
            raise ValueError("a CDF length is outside its table")
        value = sym - offs[idx]
        low, high = value < 0, value >= max_value
        coded = np.where(low | high, max_value, value)
        start = table[idx, coded]
        # CompressAI stores the frequency in 16 bits
        freq = (table[idx, coded + 1] - start) & 0xFFFF
        if (freq == 0).any():
            raise ValueError("a CDF interval is empty or the whole range: not codable")
        starts, freqs = start.tolist(), freq.tolist()
        escapes = np.flatnonzero(low | high)
        if escapes.size == 0:
            self._starts += starts
            self._freqs += freqs
            return
        raw = np.where(low, -2 * value - 1, 2 * (value - max_value))
        if raw[escapes].max() >= _MAX_RAW:
            raise ValueError(f"a symbol is too far outside its CDF to be bypass coded (|value| >= {_MAX_RAW // 2})")
        done = 0
        for i, r in zip(escapes.tolist(), raw[escapes].tolist()):
            self._starts += starts[done : i + 1]  # up to and with the sentinel
            self._freqs += freqs[done : i + 1]
            n = 0
            while r >> (n * _BYPASS_BITS):
                n += 1
            chunks = [_MAX_BYPASS] * (n // _MAX_BYPASS) + [n % _MAX_BYPASS]
            chunks += [(r >> (j * _BYPASS_BITS)) & _MAX_BYPASS for j in range(n)]
            self._starts += chunks
            self._freqs += [0] * len(chunks)
            done = i + 1
        self._starts += starts[done:]
        self._freqs += freqs[done:]

    def flush(self) -> bytes:
        """The string of every symbol queued so far; the queue is emptied."""
        x = _RANS_L
        words: list[int] = []
        emit = words.append
        mask = 0xFFFFFFFF
        shift = 63 - PRECISION  # x_max = f * 2^(31 - PRECISION + 32)
        bypass_max = 1 << (63 - _BYPASS_BITS)
        for c, f in zip(reversed(self._starts), reversed(self._freqs)):
            if f:
                if x >= f << shift:
                    emit(x & mask)
                    x >>= 32
                q, r = divmod(x, f)
                x = (q << PRECISION) + r + c
            else:
                if x >= bypass_max:
                    emit(x & mask)
                    x >>= 32
                x = (x << _BYPASS_BITS) | c
        self._starts, self._freqs = [], []
        out = np.empty(2 + len(words), dtype="<u4")
        out[0], out[1] = x & mask, x >> 32
        out[2:] = words[::-1]
        return out.tobytes()


def encode_with_indexes(
    symbols: Sequence[int] | np.ndarray,
    indexes: Sequence[int] | np.ndarray,
    cdfs: Sequence[Sequence[int]] | np.ndarray,
    cdf_lengths: Sequence[int] | np.ndarray,
    offsets: Sequence[int] | np.ndarray,
) -> bytes:
    """One string of `symbols` (CompressAI's ``RansEncoder.encode_with_indexes``)."""
    enc = BufferedRansEncoder()
    enc.encode_with_indexes(symbols, indexes, cdfs, cdf_lengths, offsets)
    return enc.flush()


def _cdf_table(cdfs: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """CDF rows as one int64 array (ragged rows padded with their last entry)."""
    if isinstance(cdfs, np.ndarray):
        return cdfs.astype(np.int64, copy=False)
    rows = [list(r) for r in cdfs]
    width = max((len(r) for r in rows), default=0)
    return np.array([r + [r[-1] if r else 0] * (width - len(r)) for r in rows], dtype=np.int64)
