"""The torch-free rANS encoder (codec/inner/rans.py) writes CompressAI's strings byte for byte:
random CDF tables and symbol streams, values far outside the tables (bypass coding), several
calls into one buffered string, and the shipped learned model's own tables; CompressAI's
RansDecoder reads them back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from codec.inner import rans

ans = pytest.importorskip("compressai.ans", reason="CompressAI (the reference rANS) is not installed")


def random_tables(rng: np.random.Generator, n: int, max_len: int = 40) -> tuple[list[list[int]], list[int], list[int]]:
    """n CDFs of random lengths, strictly increasing from 0 to 2^16 (some with one tiny
    interval), rows zero-padded as CompressAI's _quantized_cdf; their lengths and offsets."""
    cdfs, lengths, offsets = [], [], []
    for _ in range(n):
        size = int(rng.integers(3, max_len))
        pmf = rng.random(size - 1) ** 3 + 1e-4
        cdf = np.concatenate([[0], np.cumsum(pmf) / pmf.sum() * (1 << 16)]).astype(np.int64)
        cdf[-1] = 1 << 16
        for i in range(1, size):  # strictly increasing (CompressAI's pmf_to_quantized_cdf ensures it)
            cdf[i] = max(cdf[i], cdf[i - 1] + 1)
        for i in range(size - 2, 0, -1):
            cdf[i] = min(cdf[i], cdf[i + 1] - 1)
        cdfs.append(cdf.tolist())
        lengths.append(size)
        offsets.append(int(rng.integers(-25, 6)))
    width = max(lengths)
    return [c + [0] * (width - len(c)) for c in cdfs], lengths, offsets


def random_stream(rng: np.random.Generator, n: int, tables: int, outliers: int) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, tables, n)
    sym = rng.integers(-40, 45, n)  # many below the offset or past the table: the bypass escape
    if n and outliers:
        pos = rng.integers(0, n, outliers)
        sym[pos] = rng.integers(-(10**7), 10**7, outliers)  # up to 7 raw chunks
    return sym, idx


@pytest.mark.parametrize("seed", range(12))
def test_strings_equal_compressai_s_and_decode(seed):
    rng = np.random.default_rng(seed)
    cdfs, lengths, offsets = random_tables(rng, int(rng.integers(1, 20)))
    sym, idx = random_stream(rng, int(rng.integers(32, 4000)), len(cdfs), outliers=seed % 4)
    ref = ans.RansEncoder().encode_with_indexes(sym.tolist(), idx.tolist(), cdfs, lengths, offsets)
    got = rans.encode_with_indexes(sym, idx, cdfs, lengths, offsets)
    assert got == ref
    assert rans.encode_with_indexes(sym.tolist(), idx.tolist(), np.array(cdfs), lengths, offsets) == ref
    decoded = ans.RansDecoder().decode_with_indexes(got, idx.tolist(), cdfs, lengths, offsets)
    assert decoded == sym.tolist()


def test_bypass_extremes_round_trip():
    """Values just outside each end of the table, on it, and with 1..7 raw 4-bit chunks.

    After 32 values in range: CompressAI's encoder sizes its output buffer by the number of
    coding steps, and a stream of one or two symbols overflows it (a heap corruption in
    CompressAI 1.2.8; the learned mode's strings hold thousands of symbols)."""
    cdfs, lengths, offsets = [[0, 30000, 60000, 65000, 65536]], [5], [-1]
    extremes = [-1, 0, 1, 2, 3, -2, -9, 9, 200, -200, 70000, -(1 << 26), (1 << 26) + 5]
    sym = np.array([0, 1, 2] * 11 + extremes)
    idx = np.zeros_like(sym)
    ref = ans.RansEncoder().encode_with_indexes(sym.tolist(), idx.tolist(), cdfs, lengths, offsets)
    assert rans.encode_with_indexes(sym, idx, cdfs, lengths, offsets) == ref
    assert ans.RansDecoder().decode_with_indexes(ref, idx.tolist(), cdfs, lengths, offsets) == sym.tolist()


def test_buffered_encoder_equals_compressai_s_over_several_calls():
    rng = np.random.default_rng(7)
    cdfs, lengths, offsets = random_tables(rng, 9)
    ref_enc, enc = ans.BufferedRansEncoder(), rans.BufferedRansEncoder()
    streams = [random_stream(rng, n, len(cdfs), outliers=2) for n in (500, 0, 1, 3000)]
    for sym, idx in streams:
        ref_enc.encode_with_indexes(sym.tolist(), idx.tolist(), cdfs, lengths, offsets)
        enc.encode_with_indexes(sym, idx, cdfs, lengths, offsets)
    got = enc.flush()
    assert got == ref_enc.flush()
    dec = ans.RansDecoder()
    dec.set_stream(got)
    for sym, idx in streams:  # decode_stream, call by call, as the learned mode's passes
        assert dec.decode_stream(idx.tolist(), cdfs, lengths, offsets) == sym.tolist()
    assert enc.flush() == rans.encode_with_indexes([], [], cdfs, lengths, offsets)  # flushed: empty again


def test_the_shipped_model_s_tables():
    torch = pytest.importorskip("torch")
    from codec.models.registry import load_codec_model
    from codec.modes import learned_e2e

    model, _ = load_codec_model(learned_e2e.MODEL_NAMES[learned_e2e.Params().codec_model])
    rng = np.random.default_rng(3)
    for em in (model.gaussian_conditional, model.entropy_bottleneck):
        cdf = em._quantized_cdf
        lengths = em._cdf_length.reshape(-1).int().tolist()
        offsets = em._offset.reshape(-1).int().tolist()
        idx = rng.integers(0, len(lengths), 20000)
        sym = np.round(rng.normal(0, 6, idx.size)).astype(np.int64)
        ref = ans.RansEncoder().encode_with_indexes(sym.tolist(), idx.tolist(), cdf.tolist(), lengths, offsets)
        assert rans.encode_with_indexes(sym, idx, cdf.numpy(), lengths, offsets) == ref
    assert torch.is_tensor(cdf)


def test_bad_input_is_refused():
    cdfs, lengths, offsets = [[0, 100, 65536]], [3], [0]
    with pytest.raises(ValueError, match="indexes"):
        rans.encode_with_indexes([0, 1], [0], cdfs, lengths, offsets)
    with pytest.raises(ValueError, match="outside the tables"):
        rans.encode_with_indexes([0], [1], cdfs, lengths, offsets)
    with pytest.raises(ValueError, match="too far outside"):
        rans.encode_with_indexes([1 << 30], [0], cdfs, lengths, offsets)


def test_the_encoder_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; from codec.inner import rans; import codec.models.fenet_onnx; "
        "print(len(rans.encode_with_indexes([0, 5, -3], [0, 0, 0], [[0, 100, 65536]], [3], [0])))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) % 4 == 0
