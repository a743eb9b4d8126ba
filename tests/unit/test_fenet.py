"""FENet/DRNet learned codec (codec/models/fenet.py) and its coding mode
(codec/modes/learned_e2e.py): shapes, exact round trip, bit-exact decoding across
runs and thread counts, detectable mismatches, and the trained model's rates."""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.bitstream import (
    CodecModelId,
    ContainerHeader,
    NetworkId,
    ResizeMode,
    build_container,
    parse_container,
)
from codec.errors import CodecModelMismatchError, EncodeError
from codec.files import assets_path
from codec.models.fenet import (
    FenetCodec,
    FenetConfig,
    FenetConfigError,
    LatentChecksumError,
    checkerboard_anchor,
    load_fenet,
    save_fenet,
    shipped_weights_paths,
)
from codec.modes import learned_e2e
from codec.vision.base import Preprocessing, ScaleInfo, SplitPoint

NECK = SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 128, 16), ScaleInfo("p5", 128, 32)))
FPN5 = SplitPoint("fpn", 1, tuple(ScaleInfo(f"p{i + 2}", 256, 4 << i) for i in range(5)))
REPO = Path(__file__).resolve().parents[2]


def tiny_model(split: SplitPoint = NECK, seed: int = 0) -> FenetCodec:
    """A small randomly initialised model with built entropy tables (no training needed)."""
    torch.manual_seed(seed)
    cfg = FenetConfig.for_split_point(
        split, width=16, latent_channels=16, hyper_channels=8, num_qualities=3, lambdas=(0.01, 0.1, 1.0)
    )
    model = FenetCodec(cfg)
    with torch.no_grad():
        model.gain.mul_(torch.tensor([4.0, 16.0, 64.0]).view(3, 1))  # non-trivial symbols
        model.inv_gain.div_(torch.tensor([4.0, 16.0, 64.0]).view(3, 1))
    model.eval()
    model.update()
    return model


def smooth_features(split: SplitPoint, input_size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in split.scales:
        n = -(-input_size // s.stride)
        base = torch.randn(1, s.channels, max(1, n // 4 + 1), max(1, n // 4 + 1), generator=g)
        f = torch.nn.functional.interpolate(base, size=(n, n), mode="bilinear", align_corners=False)
        out[s.name] = torch.relu(f * 2 + 0.3 * torch.randn(1, s.channels, n, n, generator=g))
    return out


def _md5(*arrays) -> str:
    h = hashlib.md5()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# -- shapes ---------------------------------------------------------------------------


def test_shapes_nanodet_neck():
    model = FenetCodec(FenetConfig.for_split_point(NECK))
    feats = [torch.randn(2, 128, 52, 52), torch.randn(2, 128, 26, 26), torch.randn(2, 128, 13, 13)]
    out = model(feats, torch.tensor([0, 5]))
    assert [tuple(r.shape) for r in out["rec_norm"]] == [(2, 128, 52, 52), (2, 128, 26, 26), (2, 128, 13, 13)]
    assert tuple(out["likelihoods"]["y"].shape) == (2, 64, 7, 7)  # latent at stride 64: 416 / 64 -> 7
    assert tuple(out["likelihoods"]["z"].shape) == (2, 48, 4, 4)
    assert sum(p.numel() for p in model.parameters()) * 4 < 5_000_000  # < 5 MB of float32 weights


def test_shapes_fpn_like_five_scales():
    model = FenetCodec(FenetConfig.for_split_point(FPN5, width=16, latent_channels=16, hyper_channels=8))
    sizes = [(25, 38), (13, 19), (7, 10), (4, 5), (2, 3)]  # an R-CNN-like 100 x 150 input
    feats = [torch.randn(1, 256, h, w) for h, w in sizes]
    out = model(feats, torch.tensor([2]))
    assert [tuple(r.shape[-2:]) for r in out["rec_norm"]] == sizes
    assert all(r.shape[1] == 256 for r in out["rec_norm"])
    assert tuple(out["likelihoods"]["y"].shape[-2:]) == (1, 2)


def test_config_rejects_bad_scales():
    with pytest.raises(FenetConfigError, match="two apart"):
        FenetConfig(scales=(ScaleInfo("a", 8, 8), ScaleInfo("b", 8, 32)))
    with pytest.raises(FenetConfigError, match="lambdas"):
        FenetConfig.for_split_point(NECK, num_qualities=2)


def test_checkerboard_anchor_pattern():
    a = checkerboard_anchor(3, 4)[0, 0]
    assert a.tolist() == [[True, False, True, False], [False, True, False, True], [True, False, True, False]]


# -- entropy coding -----------------------------------------------------------------------


def test_round_trip_equals_forward_pass_quantised_reconstruction():
    model = tiny_model()
    feats = smooth_features(NECK, 128)
    for phi in (0, 2):
        c = model.compress(feats, phi)
        rec = model.decompress(c)
        y_hat, ref = model.forward_quantised(feats, phi)
        d = model.decode_latents(c.z_string, c.y_string, phi, c.sizes)
        assert torch.equal(d.y_hat, y_hat)
        for name in ref:
            assert rec[name].shape == feats[name].shape
            assert torch.equal(rec[name], ref[name])
        assert np.count_nonzero(d.y_symbols) > 10  # a real test: many non-zero symbols
    bits = [8 * (len(c.z_string) + len(c.y_string)) for c in (model.compress(feats, p) for p in range(3))]
    assert bits[0] < bits[1] < bits[2]  # larger gain, more bits (even untrained)


def linear_model(
    seed: int = 0, latent_scale: int = -1, input_size: int = 128, feature_seed: int = 7, perturb: bool = False
) -> tuple[FenetCodec, dict[str, torch.Tensor]]:
    """A tiny model with the linear path, initialised from PCA of its own test features (y at
    scale `latent_scale`; `perturb`: non-zero conv paths in DRNet, so that every branch counts)."""
    from codec.models import linear_path

    torch.manual_seed(seed)
    cfg = FenetConfig.for_split_point(
        NECK, width=8, latent_channels=24, hyper_channels=8, latent_downsample=False, num_qualities=3,
        lambdas=(0.01, 0.1, 1.0), linear_path=True, latent_scale=latent_scale,
    )  # fmt: skip
    model = FenetCodec(cfg).eval()
    feats = smooth_features(NECK, input_size, seed=feature_seed)
    model.set_feature_scale(torch.tensor([1.0, 1.5, 2.0]))
    mean, comp, _ = linear_path.pca([model.stack(feats)], cfg.latent_channels)
    model.init_linear_path(mean, comp)
    with torch.no_grad():
        model.gain.mul_(torch.tensor([4.0, 16.0, 64.0]).view(3, 1))
        model.inv_gain.div_(torch.tensor([4.0, 16.0, 64.0]).view(3, 1))
        if perturb:
            for p in model.drnet.parameters():
                p.add_(0.01 * torch.randn_like(p))
    model.update()
    return model, feats


def check_exact_round_trip(model: FenetCodec, feats: dict[str, torch.Tensor]) -> None:
    """compress -> decompress equals the quantised forward pass for every phi, the error falls
    with phi, and decoding gives the same bits with 1 and 2 torch threads."""
    errs = []
    for phi in range(3):
        c = model.compress(feats, phi)
        out = model.decompress(c)
        _, ref = model.forward_quantised(feats, phi)
        assert all(out[k].shape == feats[k].shape and torch.equal(out[k], ref[k]) for k in feats)
        errs.append(sum(float((out[k] - feats[k]).pow(2).mean() / feats[k].pow(2).mean()) for k in feats))
    assert errs[2] < errs[0]  # finer quantisation, closer to the features
    threads = torch.get_num_threads()
    c = model.compress(feats, 1)
    digests = set()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            rec = model.decompress(c)
            digests.add(_md5(*[rec[k].numpy() for k in rec]))
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1


def test_linear_path_starts_as_pca_and_round_trips_bit_exactly():
    model, feats = linear_model()
    with torch.no_grad():
        y = model.fenet(model._normalised(feats))
    stack = model.stack(feats).double()
    w = model.fenet.linear.weight.double().flatten(1)
    expect = torch.einsum("cd,ndhw->nchw", w, stack) + model.fenet.linear.bias.double().view(1, -1, 1, 1)
    assert torch.allclose(y.double(), expect, atol=1e-4)  # the conv path starts at zero
    assert model.stack(feats).shape[1] == model.cfg.stacked_channels == 128 * (16 + 4 + 1)
    # float DRNet of y equals the PCA reconstruction P^T y + mean, unstacked
    sizes = [tuple(feats[s.name].shape[-2:]) for s in NECK.scales]
    with torch.no_grad():
        rec = model.drnet(y, sizes)
    proj = torch.einsum("cd,nchw->ndhw", w, y.double()) + model.drnet.linear.bias.double().view(1, -1, 1, 1)
    parts = model.drnet._unstack(proj.float(), sizes)
    for r, p in zip(rec, parts):
        assert torch.allclose(r, p, atol=1e-4)
    check_exact_round_trip(model, feats)


def test_linear_path_config_checks():
    with pytest.raises(FenetConfigError):
        FenetConfig.for_split_point(NECK, latent_downsample=True, linear_path=True)
    plain = tiny_model()
    with pytest.raises(FenetConfigError):
        plain.init_linear_path(torch.zeros(2688), torch.zeros(16, 2688))
    d = plain.cfg.to_json()
    del d["linear_path"]  # records written before the linear path load as before
    assert FenetConfig.from_json(d) == plain.cfg


def test_decoding_is_bit_exact_across_runs_and_thread_counts():
    model = tiny_model()
    feats = smooth_features(NECK, 128, seed=5)
    c = model.compress(feats, 1)
    threads = torch.get_num_threads()
    digests = set()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for _ in range(3):
                d = model.decode_latents(c.z_string, c.y_string, c.phi, c.sizes, c.z_crc32, c.y_crc32)
                rec = model.reconstruct(d.y_hat, c.sizes)
                digests.add(_md5(d.y_symbols, d.y_indexes, d.y_hat_g, *[rec[k].numpy() for k in rec]))
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1


def test_mismatched_entropy_parameters_are_detected():
    model = tiny_model()
    feats = smooth_features(NECK, 128, seed=2)
    c = model.compress(feats, 2)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.ep2.weight.mul_(1.5)  # a decoder that derives different scales / means
    other.invalidate_fixed()
    with pytest.raises(LatentChecksumError, match="CRC32"):
        other.decode_latents(c.z_string, c.y_string, c.phi, c.sizes, c.z_crc32, c.y_crc32)
    with pytest.raises(LatentChecksumError, match="CRC32"):
        model.decode_latents(c.z_string, c.y_string, c.phi, c.sizes, c.z_crc32, c.y_crc32 ^ 1)


def test_weights_file_round_trip_keeps_cdf_tables(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.pt"
    digest = save_fenet(model, path)
    loaded, digest2 = load_fenet(path)
    assert digest == digest2
    assert torch.equal(loaded.gaussian_conditional._quantized_cdf, model.gaussian_conditional._quantized_cdf)
    c = model.compress(smooth_features(NECK, 128), 1)
    assert torch.equal(loaded.decompress(c)["p3"], model.decompress(c)["p3"])


# -- the coding mode ------------------------------------------------------------------------


def _header(mode_header) -> ContainerHeader:
    prep = Preprocessing(160, 120, 128, 128, ResizeMode.STRETCH, 128 / 160, 128 / 120)
    return ContainerHeader(NetworkId.NANODET, bytes(32), 1, "neck", prep, learned_e2e.MODE_ID, mode_header)


def test_mode_container_round_trip_and_refusals(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.pt"
    digest = bytes.fromhex(save_fenet(model, path))
    feats = smooth_features(NECK, 128)
    mh, units = learned_e2e.encode_with_model(feats, NECK, 1, model, CodecModelId.FENET_NANODET_NECK, digest)
    assert [s.phi_index for s in mh.scales] == [1, 1, 1] and mh.entropy_precision == 16
    data = build_container(_header(mh), units)
    parsed = parse_container(data)
    symbols = learned_e2e.decode_symbols(parsed.header, parsed.units, weights=path)
    rec = learned_e2e.reconstruct(parsed.header, symbols, weights=path)
    _, ref = model.forward_quantised(feats, 1)
    assert all(torch.equal(rec[k], ref[k]) for k in ref)
    assert set(symbols) == {"z", "y", "y_indexes", "y_hat_g"}
    assert all(np.issubdtype(v.dtype, np.integer) for v in symbols.values())

    other = tiny_model(seed=7)  # other weights: refused by hash before anything is decoded
    other_path = tmp_path / "other.pt"
    save_fenet(other, other_path)
    with pytest.raises(CodecModelMismatchError, match="codec model weights differ"):
        learned_e2e.decode_symbols(parsed.header, parsed.units, weights=other_path)
    with pytest.raises(EncodeError, match="phi"):
        learned_e2e.quality_index(learned_e2e.Params(phi=3), 3)
    assert learned_e2e.quality_index(learned_e2e.Params(phi=2), 3) == 2


# -- the shipped, trained model -------------------------------------------------------------


def _assets() -> Path:
    return assets_path()


@pytest.fixture(scope="module")
def shipped_and_features():
    pt, _ = shipped_weights_paths()
    if not pt.is_file():
        pytest.skip("shipped FENet weights not present (tools/train_fenet.py)")
    sample = sorted((REPO / "samples").glob("*.jpg"))
    if not sample:
        pytest.skip("no sample image in samples/")
    try:
        from codec.vision import get_network

        net = get_network("nanodet")
    except Exception as e:  # network weights unavailable offline
        pytest.skip(f"NanoDet unavailable: {e}")
    from codec.pipeline import load_image

    x, _ = net.preprocess(load_image(sample[0]))
    with torch.no_grad():
        feats = net.part1(x, "neck")
    model, digest = load_fenet(pt)
    return model, feats


@pytest.mark.needs_assets
def test_trained_model_rate_is_monotone_in_phi_and_quality_improves(shipped_and_features):
    model, feats = shipped_and_features
    bits, mse = [], []
    for phi in range(model.cfg.num_qualities):
        c = model.compress(feats, phi)
        bits.append(8 * (len(c.z_string) + len(c.y_string)))
        rec = model.decompress(c)
        mse.append(sum(float(((rec[k] - feats[k]) ** 2).mean()) for k in feats))
    assert all(a < b for a, b in zip(bits, bits[1:])), bits
    assert mse[-1] < mse[0], mse
    raw = sum(f.numel() for f in feats.values()) * 32
    assert bits[-1] < raw / 100 and math.isfinite(mse[-1])


@pytest.mark.gpu
def test_cpu_and_gpu_decode_identically(shipped_and_features):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, feats = shipped_and_features
    c = model.compress(feats, 2)
    d_cpu = model.decode_latents(c.z_string, c.y_string, c.phi, c.sizes, c.z_crc32, c.y_crc32)
    rec_cpu = model.reconstruct(d_cpu.y_hat, c.sizes)
    gpu = copy.deepcopy(model).cuda()
    gpu.invalidate_fixed()
    d_gpu = gpu.decode_latents(c.z_string, c.y_string, c.phi, c.sizes, c.z_crc32, c.y_crc32)
    rec_gpu = gpu.reconstruct(d_gpu.y_hat, c.sizes)
    cpu_md5 = _md5(d_cpu.y_symbols, d_cpu.y_indexes, d_cpu.y_hat_g)
    assert cpu_md5 == _md5(d_gpu.y_symbols, d_gpu.y_indexes, d_gpu.y_hat_g)
    assert all(torch.equal(rec_cpu[k], rec_gpu[k].cpu()) for k in rec_cpu)


# -- the golden vector (tests/conformance, tools/make_conformance.py) ------------------------

GOLDEN = REPO / "tests" / "conformance" / "learned_e2e-phi3.bin"


def test_golden_vector_is_bit_exact_over_runs_and_thread_counts():
    from codec.bitstream import CodecModelId
    from codec.modes import conformance_digest

    assert GOLDEN.is_file(), "golden vector missing (python -m tools.make_conformance --regenerate)"
    expected = GOLDEN.with_suffix(".md5").read_text()
    assert [line.split()[1] for line in expected.splitlines()] == ["z", "y", "y_indexes", "y_hat_g", "p3", "p4", "p5"]
    data = GOLDEN.read_bytes()
    assert parse_container(data).header.mode.codec_model_id == CodecModelId.FENET_NANODET_NECK
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for _ in range(3):
                assert conformance_digest(data) == expected, n
    finally:
        torch.set_num_threads(threads)


def test_golden_vector_with_a_foreign_model_hash_is_refused():
    from codec.bitstream.container import header_to_dict, unit_to_dict
    from codec.bitstream.syntax import fcm_container
    from codec.errors import WeightsMismatchError

    parsed = parse_container(GOLDEN.read_bytes())
    d = header_to_dict(parsed.header, len(parsed.units))
    d["codec_model_hash"] = hashlib.sha256(b"other weights").digest()
    data = fcm_container.build(
        dict(version_major=1, version_minor=0, header=dict(value=d), header_crc32=None,
             payload_units=[unit_to_dict(u) for u in parsed.units])
    )  # fmt: skip
    p2 = parse_container(data)
    with pytest.raises(WeightsMismatchError, match="codec model weights differ"):
        learned_e2e.decode_symbols(p2.header, p2.units)


def test_the_loader_always_verifies_the_weights_against_their_record(tmp_path):
    from codec.errors import CodecModelError

    path = tmp_path / "tiny.pt"
    save_fenet(tiny_model(), path)
    path.with_suffix(".json").unlink()  # no record: nothing to verify against, refused
    with pytest.raises(CodecModelError, match="have no record tiny.json"):
        load_fenet(path)
    digest = save_fenet(tiny_model(), path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CodecModelError, match="corrupt or replaced"):
        load_fenet(path)
    path.write_bytes(b"not a torch file")
    js = path.with_suffix(".json")
    js.write_text(js.read_text().replace(digest, hashlib.sha256(b"not a torch file").hexdigest()))
    with pytest.raises(CodecModelError, match="cannot load codec model weights"):
        load_fenet(path)


# -- latent at a finer scale (latent_scale) ------------------------------------------


def level_model(latent_scale: int = 1, seed: int = 0) -> tuple[FenetCodec, dict[str, torch.Tensor]]:
    """y at the stride of scale `latent_scale`; 120x120 input: 15x15 / 8x8 / 4x4, odd sizes and padding."""
    return linear_model(seed, latent_scale, input_size=120, feature_seed=3, perturb=True)


@pytest.mark.parametrize("latent_scale", [0, 1])
def test_latent_at_a_finer_scale_round_trips_bit_exactly(latent_scale):
    from codec.models.fenet import stack_at_level, unstack_from_level

    model, feats = level_model(latent_scale)
    cfg = model.cfg
    lv_size = tuple(feats[NECK.scales[latent_scale].name].shape[-2:])
    # the stack at the latent's grid: space-to-depth below, depth-to-space above; exactly invertible
    xs = [feats[s.name] for s in NECK.scales]
    st = stack_at_level(xs, cfg)
    assert st.shape[1] == cfg.stacked_channels and tuple(st.shape[-2:]) == lv_size
    back = unstack_from_level(st, cfg, [tuple(x.shape[-2:]) for x in xs])
    for i, (x, b) in enumerate(zip(xs, back)):
        assert b.shape == x.shape
        # what the latent grid covers comes back exactly: all of the finer scales (zero-padded
        # on the way in), the coarser ones up to the grid's extent
        r = NECK.scales[i].stride // NECK.scales[latent_scale].stride if i > latent_scale else 0
        if r:
            h, w = lv_size[0] // r, lv_size[1] // r
            assert torch.equal(b[..., :h, :w], x[..., :h, :w])
        else:
            assert torch.equal(b, x)
    c = model.compress(feats, 2)
    (hy, wy), _ = model.latent_sizes(c.sizes)
    assert (hy, wy) == lv_size
    d = model.decode_latents(c.z_string, c.y_string, 2, c.sizes, c.z_crc32, c.y_crc32)
    assert d.y_symbols.shape == (cfg.latent_channels, hy, wy)
    check_exact_round_trip(model, feats)


def test_latent_scale_config_checks():
    with pytest.raises(FenetConfigError):
        FenetConfig.for_split_point(NECK, latent_scale=3)
    with pytest.raises(FenetConfigError):
        FenetConfig.for_split_point(NECK, latent_scale=1, latent_downsample=True)
    cfg = FenetConfig.for_split_point(NECK, latent_scale=1, latent_downsample=False)
    assert cfg.stacked_channels == 128 * 4 + 128 + 128 // 4
    d = cfg.to_json()
    assert FenetConfig.from_json(d) == cfg
    del d["latent_scale"]  # records written before latent_scale load as y at the coarsest scale
    assert FenetConfig.from_json(d).latent_scale == -1


# -- channel order and channel-importance groups (codec_model_id 5 on) -----------------


def tiny_linear_model(groups: tuple[int, ...] = (), seed: int = 0) -> FenetCodec:
    """A tiny model of the shipped kind (y at p4, linear path), optionally channel-grouped."""
    torch.manual_seed(seed)
    cfg = FenetConfig.for_split_point(
        NECK,
        width=16,
        latent_channels=16,
        hyper_channels=8,
        num_qualities=3,
        lambdas=(0.01, 0.1, 1.0),
        latent_downsample=False,
        linear_path=True,
        latent_scale=1,
        channel_groups=groups,
    )
    model = FenetCodec(cfg)
    with torch.no_grad():
        model.gain.mul_(torch.tensor([4.0, 16.0, 64.0]).view(3, 1))
        model.inv_gain.div_(torch.tensor([4.0, 16.0, 64.0]).view(3, 1))
        model.ctx.weight.mul_(4.0)  # a context that moves the entropy parameters
    model.eval()
    model.update()
    return model


def test_context_mask_structure():
    from codec.models.fenet import checkerboard_mask, context_mask

    groups = [(0, 2), (2, 3), (3, 6)]
    m = context_mask(groups, 5)
    cb = checkerboard_mask(5)
    assert m.shape == (6, 6, 5, 5)
    assert torch.equal(m[0, 1], cb) and torch.equal(m[5, 3], cb)  # same group: its anchors only
    assert torch.equal(m[2, 0], torch.ones(5, 5)) and torch.equal(m[4, 2], torch.ones(5, 5))  # earlier: all taps
    assert not m[0, 2].any() and not m[2, 5].any()  # later groups: never
    assert torch.equal(context_mask([(0, 6)], 5), cb.expand(6, 6, 5, 5))  # one group: the checkerboard


def test_coding_passes_cover_every_position_once():
    from codec.models.fenet import coding_passes

    passes = coding_passes([(0, 2), (2, 5)], 3, 4)
    assert len(passes) == 4
    total = sum(p.expand(1, 5, 3, 4).int() for p in passes)
    assert torch.equal(total, torch.ones(1, 5, 3, 4, dtype=torch.int32))
    assert passes[0][0, :2].any() and not passes[0][0, 2:].any()  # the first group comes first


def test_permuted_channels_code_the_same_reconstruction():
    from codec.models.fenet import permute_latent_channels

    model = tiny_linear_model()
    feats = smooth_features(NECK, 96)
    _, rec = model.forward_quantised(feats, 2)
    c = model.compress(feats, 2)
    other = copy.deepcopy(model)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    permute_latent_channels(other, order)
    _, rec_p = other.forward_quantised(feats, 2)
    c_p = other.compress(feats, 2)
    for k in rec:
        assert torch.equal(rec[k], rec_p[k])  # the same numbers, in another channel order
    assert c_p.z_string == c.z_string
    assert abs(len(c_p.y_string) - len(c.y_string)) <= 4  # the same symbols, coded in another order
    with pytest.raises(FenetConfigError, match="permutation"):
        permute_latent_channels(other, [0] * 16)


def test_one_group_is_the_checkerboard_schedule():
    from codec.models.fenet import with_channel_groups

    model = tiny_linear_model()
    feats = smooth_features(NECK, 96)
    c = model.compress(feats, 1)
    one = with_channel_groups(model, (16,))
    one.update()
    c1 = one.compress(feats, 1)
    assert (c1.y_string, c1.z_string, c1.y_crc32) == (c.y_string, c.z_string, c.y_crc32)


def test_grouped_model_round_trip_and_context():
    from codec.models.fenet import with_channel_groups

    model = tiny_linear_model()
    grouped = with_channel_groups(model, (2, 2, 4, 8))
    # the taps the groups open start at zero; give them weight so that the context matters
    with torch.no_grad():
        opened = (grouped.ctx_mask > 0) & ~(model.ctx_mask.expand_as(grouped.ctx_mask) > 0)
        assert opened.any() and not grouped.ctx.weight[opened].any()
        grouped.ctx.weight[opened] = 0.05
    grouped.eval()
    grouped.update()
    feats = smooth_features(NECK, 96)
    c = grouped.compress(feats, 2)
    d = grouped.decode_latents(c.z_string, c.y_string, 2, c.sizes, c.z_crc32, c.y_crc32)
    _, rec_q = grouped.forward_quantised(feats, 2)
    rec = grouped.decompress(c)
    for k in rec:
        assert torch.equal(rec[k], rec_q[k])
    # later groups' parameters depend on earlier groups: a change in group 0 moves them
    hp = grouped.hyper_params_fixed(
        grouped._z_hat(c.z_string, grouped.latent_sizes(c.sizes)[1], 2)[0], *grouped.latent_sizes(c.sizes)[0]
    )
    known = torch.from_numpy(d.y_hat_g).unsqueeze(0).to(torch.float64)
    known[:, 2:] = 0
    _, mu1 = grouped.entropy_params_fixed(hp, known)
    known[:, :2] += 1 << 12
    _, mu2 = grouped.entropy_params_fixed(hp, known)
    assert not torch.equal(mu1[:, 2:], mu2[:, 2:])
    # the group gains divide the inverse gain: the weights file round-trips them
    with torch.no_grad():
        grouped.group_gain.copy_(torch.tensor([2.0, 1.5, 1.0, 0.5]))
    assert torch.allclose(grouped.gain_table("gain")[:, 0], model.gain.abs()[:, 0] * 2.0)
    assert torch.allclose(grouped.gain_table("inv_gain")[:, 15], model.inv_gain.abs()[:, 15] / 0.5)


def test_grouped_model_saves_and_loads(tmp_path):
    from codec.models.fenet import with_channel_groups

    grouped = with_channel_groups(tiny_linear_model(), (4, 12))
    with torch.no_grad():
        grouped.group_gain.copy_(torch.tensor([1.25, 0.8]))
    grouped.eval()
    grouped.update()
    digest = save_fenet(grouped, tmp_path / "g.pt")
    loaded, digest2 = load_fenet(tmp_path / "g.pt")
    assert digest == digest2 and loaded.cfg.channel_groups == (4, 12)
    feats = smooth_features(NECK, 64)
    assert grouped.compress(feats, 1).y_string == loaded.compress(feats, 1).y_string


def test_channel_groups_must_cover_the_latent():
    with pytest.raises(FenetConfigError, match="add up"):
        FenetConfig.for_split_point(NECK, latent_channels=16, hyper_channels=8, channel_groups=(4, 4))
    with pytest.raises(FenetConfigError, match="positive"):
        FenetConfig.for_split_point(NECK, latent_channels=16, hyper_channels=8, channel_groups=(16, 0))


def test_channel_importance_ranks_a_channel_the_task_needs():
    from codec.training.importance import channel_importance, group_shares, importance_order

    model = tiny_linear_model()

    class ToyTask:
        """Loss = squared change of the reconstruction's p4 channel 0 against the unablated
        model's: only what feeds that channel matters."""

        def teacher(self, xs):
            xn = model._normalised(xs)
            t = torch.tensor([2])
            y = model.fenet(xn) * model._gains(t, "gain") * model._gains(t, "inv_gain")
            rec = model.drnet(y, [tuple(x.shape[-2:]) for x in xn])
            return rec[1][:, 0] * model.feature_scale[1] + model._mean(1)[:, 0]

        def __call__(self, rec, teacher):
            d = ((rec[1][:, 0] - teacher) ** 2).flatten(1).mean(1)
            return d, d, d

    with torch.no_grad():  # make latent channel 5 alone carry p4's channel 0 (through the linear path)
        model.drnet.linear.weight.zero_()
        model.drnet.linear.bias.zero_()
        p4_first = 128 * 4  # stacked order: p3 space-to-depth (4 x 128), then p4
        model.drnet.linear.weight[p4_first, 5] = 1.0
        for c in model.drnet.head_out:
            c.weight.zero_()
            c.bias.zero_()
    feats = smooth_features(NECK, 64)
    xs = [feats[s.name] for s in NECK.scales]
    imp = channel_importance(model, ToyTask(), [xs])
    order = importance_order(imp)
    assert order[0] == 5 and imp[5] > 0
    assert np.allclose(np.delete(imp, 5), 0.0)
    assert group_shares(imp[order], [(0, 1), (1, 16)]) == [1.0, 0.0]


# -- the YOLOv5s-seg model (codec_model_id FENET_YOLOV5S_SEG_NECK) ----------------------------

SEG_NECK = SplitPoint("neck", 1, (ScaleInfo("p3", 128, 8), ScaleInfo("p4", 256, 16), ScaleInfo("p5", 512, 32)))


def test_the_split_point_of_every_shipped_model_read_from_its_record_is_the_models():
    # model_id_for matches split points on the records (no weights loaded, no torch needed
    # by the ONNX engine): the record must say what the loaded model is
    for mid in learned_e2e.MODEL_IDS:
        model, _ = learned_e2e.model_for(mid)
        assert learned_e2e.trained_scales(mid) == tuple((s.name, s.channels, s.stride) for s in model.cfg.scales)
    assert learned_e2e.model_id_for(NECK) == learned_e2e.MODEL_IDS[0]
    assert learned_e2e.model_id_for(NECK, "fenet_nanodet_neck_g3") == CodecModelId.FENET_NANODET_NECK_G3
    other = SplitPoint("neck", 1, (ScaleInfo("p3", 64, 8), ScaleInfo("p4", 64, 16)))
    with pytest.raises(EncodeError, match="no learned_e2e model for split point"):
        learned_e2e.model_id_for(other)


def test_yolov5s_seg_neck_has_its_own_shipped_model_chosen_by_default():
    import json

    from codec.models.registry import entry

    e = entry(CodecModelId.FENET_YOLOV5S_SEG_NECK)
    record = json.loads(e.weights.with_suffix(".json").read_text())
    assert (record["network"], record["split"]) == ("yolov5s_seg", "neck")
    assert record["config"]["scales"] == [{"name": s.name, "channels": s.channels, "stride": s.stride}
                                          for s in SEG_NECK.scales]  # fmt: skip
    # NanoDet's default name on YOLOv5s-seg's split point stands for the model of that split point
    assert learned_e2e.model_id_for(SEG_NECK) == CodecModelId.FENET_YOLOV5S_SEG_NECK
    assert learned_e2e.model_id_for(SEG_NECK, "fenet_yolov5s_seg_neck") == CodecModelId.FENET_YOLOV5S_SEG_NECK
    with pytest.raises(EncodeError, match="not for split point"):
        learned_e2e.model_id_for(NECK, "fenet_yolov5s_seg_neck")
    # what the apps echo and write into their JSON: the model the encoder uses, by name
    assert learned_e2e.MODE.resolve(learned_e2e.Params(), SEG_NECK).codec_model == "fenet_yolov5s_seg_neck"
    assert learned_e2e.MODE.describe(learned_e2e.MODE.resolve(learned_e2e.Params(), NECK)) == (
        "phi 3, codec_model fenet_nanodet_neck_g4"
    )
    feats = {k: torch.nn.functional.silu(v * 3 - 1) for k, v in smooth_features(SEG_NECK, 128, seed=5).items()}
    bits, err = [], []
    for phi in (0, 5):
        mh, units = learned_e2e.encode(feats, SEG_NECK, learned_e2e.Params(phi=phi))
        assert mh.codec_model_id == CodecModelId.FENET_YOLOV5S_SEG_NECK
        bits.append(sum(len(u.data) for u in units))
        model, _ = learned_e2e.model_for(CodecModelId.FENET_YOLOV5S_SEG_NECK)
        rec = model.decompress(model.compress(feats, phi))
        assert {k: tuple(v.shape) for k, v in rec.items()} == {k: tuple(v.shape) for k, v in feats.items()}
        err.append(sum(float(((rec[k] - feats[k]) ** 2).mean()) for k in feats))
    assert bits[0] < bits[1] and err[1] < err[0], (bits, err)


def _hard_objective(model: FenetCodec, feats, y_g, z_g, phi: int, lam: float) -> float:
    xs = model._normalised(feats)
    sizes = [tuple(x.shape[-2:]) for x in xs]
    with torch.no_grad():
        out = model.synthesise_soft(y_g, z_g, torch.tensor([phi]), sizes, noise=False)
        bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
        mse = sum(((r - t) ** 2).mean() for r, t in zip(out["rec_norm"], xs))
    return float(bits / (sizes[0][0] * 8 * sizes[0][1] * 8) + lam * mse)


def test_refined_latents_lower_the_objective_and_decode_with_the_unchanged_decoder():
    model = tiny_model()
    feats = smooth_features(NECK, 96, seed=3)

    def mse(rec_norm, target_norm):
        return sum(((r - t) ** 2).flatten(1).mean(dim=1) for r, t in zip(rec_norm, target_norm))

    phi, lam = 1, 5.0
    xs = model._normalised(feats)
    y0, z0 = model.analyse(xs, torch.tensor([phi]))
    state = torch.random.get_rng_state()
    y1, z1 = model.refine_latents(feats, phi, mse, lam, steps=30, lr=0.02)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is kept
    y2, z2 = model.refine_latents(feats, phi, mse, lam, steps=30, lr=0.02)
    assert torch.equal(y1, y2) and torch.equal(z1, z2)  # its own seeded noise: the same image, the same latents
    before, after = (_hard_objective(model, feats, y, z, phi, lam) for y, z in ((y0, z0), (y1, z1)))
    assert after < before, (before, after)
    assert not torch.equal(y0, y1)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # the model is left as it was
    # the refined latents go through the same coder: the decoder reconstructs exactly what the
    # encoder's own quantised path gives for them
    sizes = [tuple(x.shape[-2:]) for x in xs]
    c = model.compress_latents(y1, z1, phi, sizes)
    rec = model.decompress(c)
    ref = model.compress_latents(y0, z0, phi, sizes)
    assert (c.y_string, c.z_string) != (ref.y_string, ref.z_string)
    assert {k: tuple(v.shape) for k, v in rec.items()} == {k: tuple(v.shape) for k, v in feats.items()}
    assert model.compress(feats, phi).y_string == ref.y_string  # compress() is analyse + compress_latents
    with pytest.raises(ValueError, match="do not fit"):
        model.compress_latents(y1[..., :-1], z1, phi, sizes)


def test_refinement_with_zero_steps_returns_the_analysis_latents():
    model = tiny_model()
    feats = smooth_features(NECK, 64, seed=4)
    y0, z0 = model.analyse(model._normalised(feats), torch.tensor([2]))
    y1, z1 = model.refine_latents(feats, 2, lambda r, t: sum(((a - b) ** 2).mean() for a, b in zip(r, t)), 1.0, 0)
    assert torch.equal(y0, y1) and torch.equal(z0, z1)


@pytest.mark.needs_assets
def test_refine_option_codes_a_stream_the_decoder_reads_and_refuses_what_it_cannot_do():
    sample = sorted((REPO / "samples").glob("*.jpg"))
    if not sample:
        pytest.skip("no sample image in samples/")
    from codec import pipeline
    from codec.models.registry import entry, verified_record
    from codec.vision import get_network

    net = get_network("nanodet")
    image = pipeline.load_image(sample[0])
    plain = pipeline.encode_image(image, net, None, "learned_e2e", {"phi": 1})
    refined = pipeline.encode_image(image, net, None, "learned_e2e", {"phi": 1, "refine": 3})
    assert refined.bitstream != plain.bitstream
    dec = pipeline.decode_bitstream(refined.bitstream, net)
    assert {k: tuple(v.shape) for k, v in dec.features.items()} == {
        k: tuple(v.shape) for k, v in plain.features.items()
    }
    params = learned_e2e.MODE.make_params({"phi": 1, "refine": 3})
    with pytest.raises(EncodeError, match="needs the network"):
        learned_e2e.encode(plain.features, NECK, params)
    with pytest.raises(EncodeError, match="PyTorch encoder"):
        learned_e2e.encode_onnx(plain.features, NECK, params)
    with pytest.raises(EncodeError, match="must be"):
        learned_e2e.MODE.make_params({"refine": 0})
    # the step size is the encoder's choice: another one gives another stream, the same decoder
    faster = pipeline.encode_image(image, net, None, "learned_e2e", {"phi": 1, "refine": 3, "refine_lr": 0.03})
    assert faster.bitstream not in (plain.bitstream, refined.bitstream)
    pipeline.decode_bitstream(faster.bitstream, net)
    default_lr = {"phi": 1, "refine": 3, "refine_lr": learned_e2e.REFINE_LR}
    assert pipeline.encode_image(image, net, None, "learned_e2e", default_lr).bitstream == refined.bitstream
    for bad, match in (({"refine_lr": 0.01}, "needs --refine"), ({"refine": 3, "refine_lr": 0.0}, "must be in"),
                       ({"refine": 3, "refine_lr": float("nan")}, "must be in"),
                       ({"refine": 3, "refine_lr": 2.0}, "must be in")):  # fmt: skip
        with pytest.raises(EncodeError, match=match):
            learned_e2e.encode(plain.features, NECK, learned_e2e.MODE.make_params({"phi": 1, **bad}))
    model, _ = learned_e2e.model_for(CodecModelId.FENET_NANODET_NECK_G4)
    seg_record = verified_record(entry(CodecModelId.FENET_YOLOV5S_SEG_NECK).weights)
    with pytest.raises(EncodeError, match="trained on yolov5s_seg/neck"):
        learned_e2e.refinement_objective(seg_record, net, "neck", model)
    with pytest.raises(EncodeError, match="training record"):
        learned_e2e.refinement_objective({"weights_sha256": "0" * 64}, net, "neck", model)
