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
"""

from __future__ import annotations

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
