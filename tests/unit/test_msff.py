"""MSFF/MSFR (codec/models/msff.py), SLS masking, the exact decoder, the truncation
table and the vvc_msff mode (codec/modes/vvc_msff.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.bitstream import CodecModelId, ContainerHeader, build_container, parse_container
from codec.errors import CodecModelError, CodecModelMismatchError, EncodeError, MalformedError
from codec.files import assets_path
from codec.models.msff import (
    ExactMsfr,
    MsffCodecModel,
    MsffConfig,
    MsffConfigError,
    count_parameters,
    file_sha256,
    init_linear_path,
    load_msff,
    shipped_weights_paths,
    sls_mask,
    stacked_channels,
)
from codec.modes import available_modes, mode_by_id, mode_by_name, vvc_msff
from codec.vision.base import NetworkId, Preprocessing, ResizeMode, ScaleInfo, SplitPoint

REPO = Path(__file__).resolve().parents[2]
NANODET_NECK = SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 128, 16), ScaleInfo("p5", 128, 32)))
RCNN_FPN = SplitPoint("fpn", 1, tuple(ScaleInfo(f"p{i}", 256, 2**i) for i in range(2, 7)))


def _features(sp: SplitPoint, h: int, w: int, seed: int = 0, scale: float = 0.1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(1, c, hh, ww, generator=g) * scale for name, (c, hh, ww) in sp.shapes(h, w).items()}


def _vvc_available() -> bool:
    from codec.inner import vvc

    return vvc.ffmpeg_supports_vvc()


needs_vvc = pytest.mark.skipif(not _vvc_available(), reason="ffmpeg lacks libvvenc or the vvc decoder")


# -- model shapes ---------------------------------------------------------------------


def test_nanodet_neck_shapes_and_size():
    torch.manual_seed(0)
    model = MsffCodecModel(MsffConfig.for_split_point(NANODET_NECK)).eval()
    feats = _features(NANODET_NECK, 416, 416)
    with torch.no_grad():
        z = model.msff(feats)
        rec = model(feats)
    assert tuple(z.shape) == (1, 256, 13, 13)
    assert {k: tuple(v.shape) for k, v in rec.items()} == {
        "p3": (1, 128, 52, 52), "p4": (1, 128, 26, 26), "p5": (1, 128, 13, 13)
    }  # fmt: skip
    # float32 weights must stay below 5 MB
    assert 4 * count_parameters(model) < 5_000_000


def test_rcnn_fpn_like_config_shapes_with_odd_sizes():
    torch.manual_seed(0)
    model = MsffCodecModel(MsffConfig.for_split_point(RCNN_FPN, fused_channels=64, width=32)).eval()
    feats = _features(RCNN_FPN, 200, 296)  # ceil division: 50x74, 25x37, 13x19, 7x10, 4x5
    with torch.no_grad():
        z = model.msff(feats)
        rec = model(feats, kept_channels=10)
    assert tuple(z.shape) == (1, 64, 4, 5)
    assert {k: tuple(v.shape[1:]) for k, v in rec.items()} == {k: v for k, v in RCNN_FPN.shapes(200, 296).items()}
    assert list(rec) == RCNN_FPN.scale_names()


@pytest.mark.parametrize(
    "scales",
    [
        (ScaleInfo("a", 8, 8), ScaleInfo("b", 8, 24)),  # ratio 3
        (ScaleInfo("a", 8, 16), ScaleInfo("b", 8, 8)),  # coarsest first
        (),
    ],
)
def test_invalid_split_points_are_refused(scales):
    with pytest.raises(MsffConfigError):
        MsffCodecModel(MsffConfig(scales=scales))


# -- SLS ----------------------------------------------------------------------------------


def test_sls_mask_zeroes_exactly_the_trailing_channels():
    z = torch.randn(4, 16, 3, 5) + 10.0  # no zeros in the input
    n = torch.tensor([0, 1, 7, 16])
    out = sls_mask(z, n)
    for i, k in enumerate(n.tolist()):
        assert torch.equal(out[i, :k], z[i, :k])
        assert bool((out[i, k:] == 0).all())
    assert torch.equal(sls_mask(z, 16), z)
    assert int((sls_mask(z, 3) != 0).sum()) == 4 * 3 * 3 * 5
    with pytest.raises(ValueError):
        sls_mask(z, 17)


# -- exact (fixed-point) MSFR ---------------------------------------------------------------


def _exact_with_1_and_2_threads(model, z, sizes):
    """The exact MSFR's reconstruction with torch threads 1, then 2."""
    exact = ExactMsfr(model.msfr)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = exact(z, sizes)
        torch.set_num_threads(2)
        b = exact(z, sizes)
    finally:
        torch.set_num_threads(threads)
    return a, b


def test_exact_msfr_matches_float_and_is_thread_independent():
    torch.manual_seed(1)
    model = MsffCodecModel(MsffConfig.for_split_point(NANODET_NECK)).eval()
    model.set_feature_scale(torch.tensor([0.1, 0.2, 0.3]))
    feats = _features(NANODET_NECK, 128, 160)
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    with torch.no_grad():
        z = model.msff(feats)
        ref = model.msfr(z, sizes)
    a, b = _exact_with_1_and_2_threads(model, z, sizes)
    for k in ref:
        assert torch.equal(a[k], b[k])
        assert a[k].dtype == torch.float32
        err = float((a[k] - ref[k]).abs().max())
        assert err < 1e-3 * float(ref[k].abs().max()), (k, err)


def test_fusion_at_stride_16_shapes_and_exact_decoder():
    """fusion_scale 1: Z at p4's stride (26x26 for a 416x416 input); p5 leaves the trunk through
    stride-2 convolutions, and the exact MSFR still matches the float one with any thread count."""
    torch.manual_seed(2)
    cfg = MsffConfig.for_split_point(NANODET_NECK, fused_channels=64, width=16, linear_path=True, fusion_scale=1)
    assert cfg.level == 1 and stacked_channels(cfg) == 128 * 4 + 128 + 128 // 4
    assert MsffConfig.from_json(cfg.to_json()) == cfg
    model = MsffCodecModel(cfg).eval()
    for prm in model.parameters():  # the linear path's and heads' zero starts would hide the new branches
        torch.nn.init.normal_(prm, std=0.05)
    model.set_feature_scale(torch.tensor([0.1, 0.2, 0.3]))
    feats = _features(NANODET_NECK, 136, 160)  # 17x20, 9x10, 5x5: odd sizes
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    with torch.no_grad():
        z = model.msff(feats)
        ref = model.msfr(z, sizes)
    assert tuple(z.shape) == (1, 64, 9, 10)
    assert {k: tuple(v.shape[-2:]) for k, v in ref.items()} == sizes
    a, b = _exact_with_1_and_2_threads(model, z, sizes)
    for k in ref:
        assert torch.equal(a[k], b[k])
        err = float((a[k] - ref[k]).abs().max())
        assert err < 1e-3 * float(ref[k].abs().max()), (k, err)
    # the old records have no fusion_scale: Z at the coarsest stride
    old = cfg.to_json()
    del old["fusion_scale"]
    assert MsffConfig.from_json(old).level == 2


def test_fusion_scale_is_checked():
    with pytest.raises(MsffConfigError, match="fusion_scale"):
        MsffConfig.for_split_point(NANODET_NECK, fusion_scale=3)
    odd = SplitPoint("s", 1, (ScaleInfo("a", 4, 8), ScaleInfo("b", 3, 16), ScaleInfo("c", 2, 32)))
    with pytest.raises(MsffConfigError, match="depth-to-space"):
        MsffCodecModel(MsffConfig.for_split_point(odd, fusion_scale=1))


def test_linear_path_at_the_fusion_scale_inverts_pca_exactly():
    """With fusion_scale 1 and all D components, MSFF's linear path is an orthonormal change of
    basis of the stack at the fusion stride (finer scales space-to-depth, the coarser one
    depth-to-space), and MSFR's inverts it."""
    sp = SplitPoint("s", 1, (ScaleInfo("a", 4, 8), ScaleInfo("b", 3, 16), ScaleInfo("c", 8, 32)))
    torch.manual_seed(4)
    cfg = MsffConfig.for_split_point(sp, fused_channels=4 * 4 + 3 + 2, width=8, linear_path=True, fusion_scale=1)
    d = stacked_channels(cfg)
    assert d == 21
    model = MsffCodecModel(cfg).eval()
    basis, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    mean = torch.randn(d, dtype=torch.float64) * 0.1
    init_linear_path(model, mean, basis.t())
    feats = _features(sp, 64, 96, seed=3, scale=1.0)  # 8x12, 4x6, 2x3
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    with torch.no_grad():
        z = model.msff(feats)
        rec = model.msfr(z, sizes)
        stack = model.msff.stack(feats)
    assert tuple(z.shape) == (1, d, 4, 6)
    assert torch.equal(stack[0, -2:, ::2, ::2], feats["c"][0, 0::4])  # depth-to-space of "c"
    for k in feats:
        assert torch.allclose(rec[k], feats[k], atol=1e-4), k


# -- linear (PCA-initialised) path ---------------------------------------------------------------

SMALL = SplitPoint("s", 1, (ScaleInfo("a", 4, 8), ScaleInfo("b", 3, 16), ScaleInfo("c", 2, 32)))


def _pca_model(fused: int, seed: int = 0) -> tuple[MsffCodecModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = MsffConfig.for_split_point(SMALL, fused_channels=fused, width=8, linear_path=True)
    model = MsffCodecModel(cfg).eval()
    model.set_feature_scale(torch.tensor([0.5, 1.0, 2.0]))
    d = stacked_channels(cfg)
    assert d == 4 * 16 + 3 * 4 + 2
    basis, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))  # orthonormal columns
    mean = torch.randn(d, dtype=torch.float64) * 0.1
    init_linear_path(model, mean, basis.t()[:fused])
    return model, mean, basis.t()[:fused]


def test_linear_path_starts_as_the_given_pca_and_inverts_it_with_every_component():
    model, mean, comp = _pca_model(fused=78)  # all D components: an orthonormal change of basis
    feats = _features(SMALL, 64, 96, seed=3, scale=1.0)  # 8x12, 4x6, 2x3
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    with torch.no_grad():
        z = model.msff(feats)
        stack = model.msff.stack(feats)  # (1, 78, 2, 3), normalised
        expect = torch.einsum("cd,ndhw->nchw", comp, stack.double() - mean.view(1, -1, 1, 1))
        assert torch.allclose(z.double(), expect, atol=1e-5)
        rec = model.msfr(z, sizes)
    exact = ExactMsfr(model.msfr)(z, sizes)
    for k in feats:
        assert torch.allclose(rec[k], feats[k], atol=1e-4), k  # conv paths start at zero
        # fixed point: weights on a 2^-14 grid, as for the convolutional path
        assert float((exact[k] - feats[k]).abs().max()) < 1e-3 * float(feats[k].abs().max()), k
    # the stack really is space-to-depth: channel 0 of "a" at offset (0, 0) of each 4x4 block
    assert torch.equal(stack[0, 0], feats["a"][0, 0, ::4, ::4] / 0.5)


def test_linear_path_truncation_is_the_pca_projection_and_exact_decoding_is_thread_independent():
    model, mean, comp = _pca_model(fused=20, seed=1)
    feats = _features(SMALL, 60, 90, seed=4)  # ceil sizes: 8x12, 4x6, 2x3 -> fitted
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    with torch.no_grad():
        z = sls_mask(model.msff(feats), 5)
        rec = model.msfr(z, sizes)
    a, b = _exact_with_1_and_2_threads(model, z, sizes)
    stack = model.msff.stack(feats).double() - mean.view(1, -1, 1, 1)
    p = comp[:5]
    proj = torch.einsum("dc,nchw->ndhw", p.t(), torch.einsum("cd,ndhw->nchw", p, stack)) + mean.view(1, -1, 1, 1)
    want = model.msfr.unstack(proj.float(), sizes)
    for i, k in enumerate(feats):
        assert torch.equal(a[k], b[k])
        assert torch.allclose(rec[k], want[k] * model.msfr.feature_scale[i], atol=1e-5), k
        assert float((a[k] - rec[k]).abs().max()) < 1e-3 * float(rec[k].abs().max()), k


def test_linear_path_init_checks_shapes_and_config():
    model, mean, comp = _pca_model(fused=10)
    with pytest.raises(MsffConfigError):
        init_linear_path(model, mean[:5], comp)
    plain = MsffCodecModel(MsffConfig.for_split_point(SMALL, fused_channels=10, width=8))
    with pytest.raises(MsffConfigError):
        init_linear_path(plain, mean, comp)
    # old records (no linear_path key) still load as the plain model
    d = plain.cfg.to_json()
    del d["linear_path"]
    assert MsffConfig.from_json(d) == plain.cfg


def test_pca_of_cache_orders_components_by_variance():
    from tools.train_msff import pca_of_cache

    rng = np.random.default_rng(0)
    cfg = MsffConfig.for_split_point(SMALL, fused_channels=6, width=8, linear_path=True)
    model = MsffCodecModel(cfg)
    d = stacked_channels(cfg)
    # low-rank data: 3 directions with variances 9, 4, 1, plus tiny noise
    dirs, _ = np.linalg.qr(rng.standard_normal((d, 3)))
    coef = rng.standard_normal((40 * 2 * 3, 3)) * np.array([3.0, 2.0, 1.0])
    x = (coef @ dirs.T + 1e-3 * rng.standard_normal((240, d))).reshape(40, 2, 3, d).transpose(0, 3, 1, 2)
    stack = torch.from_numpy(x.astype(np.float32))
    cache = model.msfr.unstack(stack, {"a": (16, 24), "b": (8, 12), "c": (2, 3)})
    cache = {k: v.numpy() for k, v in cache.items()}
    mean, comp, explained = pca_of_cache(model.msff.stack, cache, ["a", "b", "c"], 40, 40, 6)
    assert comp.shape == (6, d) and torch.allclose(comp @ comp.t(), torch.eye(6, dtype=torch.float64), atol=1e-9)
    for i in range(3):  # the leading components are the planted directions, in order
        assert abs(float(comp[i] @ torch.from_numpy(dirs[:, i]))) > 0.99
    assert explained > 0.999


# -- truncation table -------------------------------------------------------------------------


def test_truncation_table_is_monotone_and_in_range():
    table = vvc_msff.TRUNCATION_TABLE
    qps = sorted(table)
    kept = [table[q] for q in qps]
    assert kept == sorted(kept, reverse=True)
    c = 256
    assert all(1 <= k <= c for k in kept)
    by_qp = [vvc_msff.kept_channels_for_qp(q, c) for q in range(0, 64)]
    assert all(a >= b for a, b in zip(by_qp, by_qp[1:]))
    assert vvc_msff.kept_channels_for_qp(qps[0], c) == table[qps[0]]
    assert vvc_msff.kept_channels_for_qp(qps[-1] + 5, c) == table[qps[-1]]
    assert vvc_msff.kept_channels_for_qp(qps[0] - 1, c) == c


def test_split_kept_is_greedy_in_scale_order():
    assert vvc_msff.split_kept(200, [128, 128, 128]) == [128, 72, 0]
    assert vvc_msff.split_kept(5, [128, 128]) == [5, 0]
    with pytest.raises(EncodeError):
        vvc_msff.split_kept(300, [128, 128])


# -- shipped weights ---------------------------------------------------------------------------


def test_shipped_weights_match_their_record():
    pt, js = shipped_weights_paths()
    assert pt.is_file() and js.is_file()
    record = json.loads(js.read_text())
    assert file_sha256(pt) == record["weights_sha256"]
    assert pt.stat().st_size < 5_000_000
    assert record["data"]["folder"] == "${assets}/train-images"
    assert record["data"]["count"] == 909
    assert "train_msff.py" in record["command"]
    assert record["steps"] > 0 and np.isfinite(record["final_loss"])
    model, rec2, sha = load_msff()
    assert sha == record["weights_sha256"] and rec2 == record
    assert torch.allclose(model.msff.feature_scale, torch.tensor(record["feature_scale"]))
    from codec.models.registry import entry

    assert entry(CodecModelId.MSFF_NANODET_NECK).weights == pt
    assert vvc_msff.MODEL_IDS == (CodecModelId.MSFF_NANODET_NECK_G2, CodecModelId.MSFF_NANODET_NECK)
    assert set(vvc_msff.TRUNCATION_TABLES) == set(vvc_msff.MODEL_IDS)


def test_second_generation_weights_keep_the_first_generations_msff():
    """msff_nanodet_neck_g2: its record matches the file, it was trained on the real VVC round trip
    with MSFF frozen, and its MSFF is bit for bit the first generation's (a stream's size depends on the QP
    and the kept count alone)."""
    pt, js = shipped_weights_paths("msff_nanodet_neck_g2")
    record = json.loads(js.read_text())
    assert file_sha256(pt) == record["weights_sha256"] and pt.stat().st_size < 5_000_000
    assert record["loss"]["freeze_msff"] is True and record["loss"]["vvc_qps"] == [27, 32, 37, 42, 47]
    assert record["data"]["folder"] == "${assets}/train-images" and record["init"]["weights"] == "msff_nanodet_neck.pt"
    from codec.models.registry import entry

    assert entry(CodecModelId.MSFF_NANODET_NECK_G2).weights == pt
    g1 = torch.load(shipped_weights_paths()[0], weights_only=True)
    g2 = torch.load(pt, weights_only=True)
    assert g1.keys() == g2.keys()
    assert all(torch.equal(g1[k], g2[k]) for k in g1 if k.startswith("msff."))
    assert any(not torch.equal(g1[k], g2[k]) for k in g1 if k.startswith("msfr."))


def test_tampered_weights_are_refused(tmp_path):
    pt, js = shipped_weights_paths()
    bad = tmp_path / pt.name
    state = torch.load(pt, weights_only=True)
    key = sorted(state)[0]
    state[key] = state[key] + 1e-3
    torch.save(state, bad)
    shutil.copy(js, bad.with_suffix(".json"))
    with pytest.raises(CodecModelError, match="corrupt or replaced"):
        load_msff(bad)


def test_mode_is_registered():
    assert "vvc_msff" in available_modes()
    assert mode_by_id(vvc_msff.MODE_ID) is vvc_msff.MODE and mode_by_name("vvc_msff") is vvc_msff.MODE


# -- mode round trip through the container ----------------------------------------------------


def _container(mh, units, h: int, w: int, version_major: int | None = None) -> bytes:
    prep = Preprocessing(w, h, w, h, ResizeMode.STRETCH, 1.0, 1.0)
    header = ContainerHeader(NetworkId.NANODET, bytes(32), 1, "neck", prep, vvc_msff.MODE_ID, mh)
    return build_container(header, units, version_major)


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_round_trip_through_the_container_with_shipped_weights(tmp_path):

    feats = _features(NANODET_NECK, 128, 128, seed=3)
    qp = 32
    mh, units = vvc_msff.encode(feats, NANODET_NECK, vvc_msff.Params(qp=qp))
    data = _container(mh, units, 128, 128)
    parsed = parse_container(data)
    h = parsed.header
    model, _, digest = vvc_msff.model_for(CodecModelId.MSFF_NANODET_NECK_G2)  # the encoder's default
    kept = vvc_msff.kept_channels_for_qp(qp, model.cfg.fused_channels)
    assert h.mode.codec_model_id == CodecModelId.MSFF_NANODET_NECK_G2
    assert bytes(h.mode.codec_model_hash) == digest
    assert [s.kept_channels for s in h.scales] == vvc_msff.split_kept(kept, [128, 128, 128])
    sym = vvc_msff.decode_symbols(h, parsed.units)
    rows, cols = vvc_msff.anchor.grid_shape(kept)
    assert sym["frame"].shape == (rows * 4, cols * 4)
    rec = vvc_msff.reconstruct(h, sym)
    assert {k: tuple(v.shape) for k, v in rec.items()} == {k: tuple(v.shape) for k, v in feats.items()}
    again = vvc_msff.decode(h, parsed.units)
    assert all(torch.equal(rec[k], again[k]) for k in rec)
    # the decoded fused tensor is close to the encoder's (10-bit + VVC at QP 32)
    with torch.no_grad():
        z = model.msff(feats)[0, :kept]
    zhat = vvc_msff.fused_tensor(h, sym["frame"], model.cfg.fused_channels)[0]
    assert bool((zhat[kept:] == 0).all())
    rel = float((zhat[:kept] - z).pow(2).mean() / z.pow(2).mean())
    assert rel < 0.05, rel

    # a decoder with other MSFF weights refuses the stream
    pt, _ = shipped_weights_paths()
    other = tmp_path / "other.pt"
    state = torch.load(pt, weights_only=True)
    key = sorted(state)[-1]
    state[key] = state[key] * 1.01
    torch.save(state, other)
    record = json.loads(pt.with_suffix(".json").read_text())
    record["weights_sha256"] = file_sha256(other)
    other.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(CodecModelMismatchError):
        vvc_msff.decode_symbols(h, parsed.units, weights=other)


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_a_model_fused_at_stride_16_codes_its_frame_at_that_stride(tmp_path):
    """vvc_msff with a fusion_scale-1 model (given as codec weights): the VVC frame tiles the
    kept channels at p4's size, and the decoder rebuilds every scale from it."""
    torch.manual_seed(6)
    cfg = MsffConfig.for_split_point(NANODET_NECK, fused_channels=32, width=8, linear_path=True, fusion_scale=1)
    model = MsffCodecModel(cfg).eval()
    model.set_feature_scale(torch.tensor([0.1, 0.1, 0.1]))
    pt = tmp_path / "msff16.pt"
    torch.save(model.state_dict(), pt)
    pt.with_suffix(".json").write_text(
        json.dumps({"model": "msff_msfr", "config": cfg.to_json(), "weights_sha256": file_sha256(pt)})
    )
    feats = _features(NANODET_NECK, 128, 160, seed=7)  # p3 16x20, p4 8x10, p5 4x5
    mh, units = vvc_msff.encode(feats, NANODET_NECK, vvc_msff.Params(qp=32, kept_channels=20, codec_weights=str(pt)))
    parsed = parse_container(_container(mh, units, 128, 160))
    sym = vvc_msff.decode_symbols(parsed.header, parsed.units, weights=pt)
    rows, cols = vvc_msff.anchor.grid_shape(20)
    assert sym["frame"].shape == (rows * 8, cols * 10)
    rec = vvc_msff.reconstruct(parsed.header, sym, weights=pt)
    assert {k: tuple(v.shape) for k, v in rec.items()} == {k: tuple(v.shape) for k, v in feats.items()}
    zhat = vvc_msff.fused_tensor(parsed.header, sym["frame"], 32, cfg.level)
    assert tuple(zhat.shape) == (1, 32, 8, 10) and bool((zhat[0, 20:] == 0).all())


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_inconsistent_kept_fields_are_malformed():
    from dataclasses import replace

    feats = _features(NANODET_NECK, 64, 64, seed=4)
    mh, units = vvc_msff.encode(feats, NANODET_NECK, vvc_msff.Params(qp=42))
    scales = list(mh.scales)
    scales[1] = replace(scales[1], kept_channels=1)  # not greedy: scale 0 is not full
    # container 1.0 carries KeptChannels spread over the scales (2.0 carries it once)
    parsed = parse_container(_container(replace(mh, scales=tuple(scales)), units, 64, 64, version_major=1))
    with pytest.raises(MalformedError):
        vvc_msff.validate(parsed.header, parsed.units)


# relative feature MSE at QP 27 on samples/baseball.jpg, measured, with a margin (1.0 = all zeros):
# the first generation p3 0.19, p4 0.096, p5 0.041; the second (trained on the task loss with a
# 0.1 feature weight, so its features drift more while the detections improve) p3 0.25, p4 0.12, p5 0.056
ROUND_TRIP_BOUNDS = {
    "msff_nanodet_neck": {"p3": 0.25, "p4": 0.13, "p5": 0.06},
    "msff_nanodet_neck_g2": {"p3": 0.33, "p4": 0.17, "p5": 0.085},
}


@pytest.mark.needs_ffmpeg
@pytest.mark.needs_assets
@needs_vvc
@pytest.mark.parametrize("codec_model", sorted(ROUND_TRIP_BOUNDS))
def test_nanodet_pipeline_round_trip_keeps_detections(codec_model):
    assets = assets_path()
    if not (assets / "models").is_dir():
        pytest.skip(f"assets not found at {assets}")
    from codec.pipeline import decode_bitstream, encode_image, load_image, run_part2
    from codec.vision import get_network

    net = get_network("nanodet")
    image = load_image(REPO / "samples" / "baseball.jpg")
    enc = encode_image(image, net, "neck", "vvc_msff", {"qp": 27, "codec_model": codec_model})
    dec = decode_bitstream(enc.bitstream, net)
    assert dec.header.mode.codec_model_id == vvc_msff.MODEL_NAMES[codec_model]
    for k, f in enc.features.items():
        rel = float((dec.features[k] - f).pow(2).mean() / f.pow(2).mean())
        assert rel < ROUND_TRIP_BOUNDS[codec_model][k], (k, rel)
    ref = net.part2(enc.features, "neck", enc.preprocessing)
    got, _ = run_part2(net, dec)
    assert len(ref) > 0 and len(got) > 0
    # the best detection of the uncompressed features is found again (IoU > 0.5)
    from torchvision.ops import box_iou

    best = ref.boxes[np.argmax(ref.scores)][None]
    iou = box_iou(torch.as_tensor(best), torch.as_tensor(got.boxes)).max()
    assert float(iou) > 0.5


@pytest.mark.needs_ffmpeg
@needs_vvc
def test_an_ablation_is_the_mode_with_other_weights_through_the_one_data_path(tmp_path, capsys):
    """vvc_msff with the shipped no-SLS weights and a kept-channel count, coded and decoded
    by codec.pipeline (the apps' and the CTC's path); the decoder needs the same weights."""
    from codec.apps import fcm_dec, fcm_inspect
    from codec.pipeline import decode_bitstream, encode_features
    from codec.vision.base import Preprocessing, ResizeMode

    class Net:
        name, network_id, default_split = "nanodet", NetworkId.NANODET, "neck"
        split_points = {"neck": NANODET_NECK}

        def weights_sha256(self) -> str:
            return "ab" * 32

    nosls = shipped_weights_paths("msff_nanodet_neck_nosls")[0]
    feats = _features(NANODET_NECK, 256, 256, seed=5)
    prep = Preprocessing(256, 256, 256, 256, ResizeMode.STRETCH, 1.0, 1.0)
    params = {"qp": 32, "kept_channels": 40, "codec_weights": str(nosls)}
    data = encode_features(feats, Net(), "neck", prep, "vvc_msff", params)
    header = parse_container(data).header
    assert sum(s.kept_channels for s in header.scales) == 40
    shipped = encode_features(feats, Net(), "neck", prep, "vvc_msff", {"qp": 32, "kept_channels": 40})
    assert parse_container(shipped).header.mode.codec_model_hash != header.mode.codec_model_hash
    dec = decode_bitstream(data, Net(), nosls)
    assert set(dec.features) == {"p3", "p4", "p5"}
    with pytest.raises(CodecModelMismatchError):
        decode_bitstream(data, Net())  # the shipped weights refuse the ablation's stream
    path = tmp_path / "ablation.bin"
    path.write_bytes(data)
    assert fcm_inspect.main([str(path), "--codec-weights", str(nosls)]) == 0
    assert fcm_dec.main([str(path), "--codec-weights", str(nosls)]) == 0
    capsys.readouterr()
    assert fcm_dec.main([str(path)]) == 2
    assert "codec model weights differ" in capsys.readouterr().err
