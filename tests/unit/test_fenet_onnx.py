"""The integer part of the torch-free learned encoder (codec/models/fenet_onnx.py, LatentCoder):
fed with PyTorch's y_g and z_g it writes FenetCodec.compress's strings and CRCs byte for
byte, for every kind of model (y downsampled, y at a finer scale with odd sizes, channel
groups); perturbed y_g still gives strings that the reference decoder decodes to exactly
the encoder's symbols. Needs torch and CompressAI (the reference), not onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.models.fenet import FenetCodec, with_channel_groups
from codec.models.fenet_onnx import FixedConv, LatentCoder, coding_passes
from codec.models.fixed_point import FixedConv2d
from tests.unit.test_fenet import NECK, level_model, smooth_features, tiny_linear_model, tiny_model


def float_part(model: FenetCodec, feats: dict[str, torch.Tensor], phi: int) -> tuple[np.ndarray, np.ndarray]:
    """y_g and z_g as FenetCodec.compress computes them."""
    with torch.no_grad():
        phi_t = torch.tensor([phi])
        y_g = model.fenet(model._normalised(feats)) * model._gains(phi_t, "gain")
        z_g = model.h_a(y_g) * model._gains(phi_t, "hyper_gain")
    return y_g.numpy(), z_g.numpy()


def grouped_model() -> FenetCodec:
    model = with_channel_groups(tiny_linear_model(), (2, 2, 4, 8))
    with torch.no_grad():  # weight on the taps the groups open, and group gains: every path counts
        opened = model.ctx_mask > 0
        model.ctx.weight[opened] += 0.02 * torch.randn_like(model.ctx.weight[opened])
        model.group_gain.copy_(torch.tensor([2.0, 1.5, 1.0, 0.5]))
    model.eval()
    model.update()
    return model


MODELS = {
    "downsampled": lambda: (tiny_model(), smooth_features(NECK, 128)),
    "p4_odd_sizes": lambda: level_model(1),
    "p3": lambda: level_model(0),
    "groups": lambda: (grouped_model(), smooth_features(NECK, 96)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_integer_part_writes_compress_s_bytes(kind):
    model, feats = MODELS[kind]()
    coder = LatentCoder.from_model(model)
    for phi in range(model.cfg.num_qualities):
        ref = model.compress(feats, phi)
        got = coder.code(*float_part(model, feats, phi), phi)
        assert (got.z_string, got.y_string) == (ref.z_string, ref.y_string), phi
        assert (got.z_crc32, got.y_crc32) == (ref.z_crc32, ref.y_crc32)
        d = model.decode_latents(ref.z_string, ref.y_string, phi, ref.sizes)
        assert np.array_equal(got.y_symbols, d.y_symbols) and np.array_equal(got.y_indexes, d.y_indexes)
        assert np.array_equal(got.z_symbols, d.z_symbols)
        assert np.count_nonzero(got.y_symbols) > 10  # a real test: many non-zero symbols


def test_perturbed_latents_still_decode_to_the_encoder_s_symbols():
    """What another float engine does: y_g and z_g a little off, values near a rounding boundary
    round the other way; the decoder follows the symbols written, the CRCs agree."""
    model, feats = level_model(1)
    coder = LatentCoder.from_model(model)
    y_g, z_g = float_part(model, feats, 2)
    rng = np.random.default_rng(0)
    y_p = (y_g + rng.normal(0, 0.05, y_g.shape)).astype(np.float32)
    z_p = (z_g + rng.normal(0, 0.05, z_g.shape)).astype(np.float32)
    got = coder.code(y_p, z_p, 2)
    ref = coder.code(y_g, z_g, 2)
    assert not np.array_equal(got.y_symbols, ref.y_symbols)  # the perturbation moved symbols
    sizes = [tuple(f.shape[-2:]) for f in feats.values()]
    d = model.decode_latents(got.z_string, got.y_string, 2, sizes, got.z_crc32, got.y_crc32)
    assert np.array_equal(d.y_symbols, got.y_symbols) and np.array_equal(d.z_symbols, got.z_symbols)


def test_the_numpy_fixed_convolution_equals_fixed_conv2d():
    torch.manual_seed(0)
    for k, stride, pad in ((5, 1, 2), (3, 2, 1), (1, 1, 0), (3, 1, 1)):
        conv = torch.nn.Conv2d(6, 7, k, stride, pad)
        mask = (torch.rand_like(conv.weight) > 0.3).float()
        ref = FixedConv2d(conv, mask)
        x = torch.round(torch.randn(1, 6, 9, 11, dtype=torch.float64) * 5000)
        ours = FixedConv(
            ref.weight_int.numpy(),
            ref.bias_int.numpy(),
            np.array([*ref.kernel_size, *ref.padding, *ref.stride]),
            14,
            ref.act_limit,
        )
        assert np.array_equal(ours(x[0].numpy()), ref(x)[0].numpy())


def test_coding_passes_are_the_models():
    from codec.models.fenet import coding_passes as torch_passes

    groups = [(0, 2), (2, 5), (5, 8)]
    ours = coding_passes(groups, 5, 4)
    ref = torch_passes(groups, 5, 4)
    assert len(ours) == len(ref) == 6
    assert all(np.array_equal(a, b[0].expand(8, 5, 4).numpy()) for a, b in zip(ours, ref))
