"""The per-scale variable-rate codec (codec/models/fenet_ps.py): configuration, weights
files through the verifying loader, and coding every scale at its own quality index."""

from __future__ import annotations

import json

import pytest
import torch

from codec.errors import CodecModelError
from codec.models.fenet import FenetConfigError
from codec.models.fenet_ps import PerScaleCodec, PerScaleConfig, load_fenet_ps, save_fenet_ps
from codec.vision.base import ScaleInfo

SCALES = (ScaleInfo("p3", 16, 8), ScaleInfo("p4", 16, 16), ScaleInfo("p5", 16, 32))


def tiny(**kw) -> PerScaleCodec:
    torch.manual_seed(0)
    cfg = PerScaleConfig(SCALES, width=8, latent_channels=8, hyper_channels=8, num_qualities=3,
                         lambdas=(0.1, 1.0, 10.0), **kw)  # fmt: skip
    m = PerScaleCodec(cfg).eval()
    m.update()
    return m


def features(seed: int = 1, h: int = 12, w: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn(1, 16, -(-h // (s.stride // 8)), -(-w // (s.stride // 8)), generator=g)
            for s in SCALES}  # fmt: skip


def test_config_json_round_trip_and_checks():
    cfg = tiny().cfg
    assert PerScaleConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    assert cfg.scale_config(1).scales == (SCALES[1],) and cfg.scale_config(1).linear_path
    with pytest.raises(FenetConfigError, match="lambdas"):
        PerScaleConfig(SCALES, num_qualities=3, lambdas=(1.0,))
    with pytest.raises(FenetConfigError, match="linear path"):
        PerScaleConfig(SCALES, latent_downsample=True, linear_path=True)


@pytest.mark.parametrize("downsample", [False, True])
def test_every_scale_decodes_at_its_own_phi_as_forward_quantised(downsample):
    m = tiny(latent_downsample=downsample, linear_path=not downsample)
    f = features()
    c = m.compress(f, [0, 2, 1])
    assert [x.phi for x in c] == [0, 2, 1]
    rec = m.decompress(c)
    for i, s in enumerate(SCALES):
        assert rec[s.name].shape == f[s.name].shape
        assert torch.equal(rec[s.name], m.forward_quantised_scale(i, f[s.name], c[i].phi))


def test_a_scales_bits_depend_on_its_own_phi_only():
    m = tiny()
    f = features(2)
    a = m.compress(f, [0, 1, 2])
    b = m.compress(f, [2, 1, 0])
    assert a[1].y_string == b[1].y_string and a[1].z_string == b[1].z_string
    assert len(a[0].y_string) < len(b[0].y_string)


def test_phis_are_checked():
    m = tiny()
    with pytest.raises(ValueError, match="2 quality indices for 3 scales"):
        m.compress(features(), [0, 1])
    with pytest.raises(ValueError, match="0..2"):
        m.compress(features(), [0, 1, 3])


def test_training_forward_gives_one_result_per_scale():
    m = tiny().train()
    f = features(3, 16, 16)
    xs = [torch.cat([f[s.name]] * 2) for s in SCALES]
    res = m(xs, torch.tensor([[0, 1, 2], [2, 2, 0]]))
    assert len(res) == 3 and res[2]["rec_norm"][0].shape == xs[2].shape
    loss = sum(-torch.log2(r["likelihoods"]["y"]).sum() for r in res)
    loss.backward()
    assert m.codec(0).gain.grad is not None


def test_weights_file_round_trip_through_the_verifying_loader(tmp_path):
    m = tiny()
    pt = tmp_path / "ps.pt"
    digest = save_fenet_ps(m, pt)
    loaded, digest2 = load_fenet_ps(pt)
    assert digest == digest2 and json.loads(pt.with_suffix(".json").read_text())["model"] == "fenet_ps"
    f = features(4)
    assert [x.y_string for x in loaded.compress(f, [1, 1, 1])] == [x.y_string for x in m.compress(f, [1, 1, 1])]
    pt.write_bytes(pt.read_bytes() + b"x")
    with pytest.raises(CodecModelError, match="corrupt or replaced"):
        load_fenet_ps(pt)


def test_a_training_checkpoint_restores_into_a_fresh_model(tmp_path):
    """A run resumed without --init builds a fresh model (empty CDF buffers) and restores the
    checkpoint's, whose entropy models were updated by a dev evaluation or an export: plain
    load_state_dict refuses the sizes, the checkpoint's loader takes them."""
    import numpy as np

    from codec.models.fenet_ps import load_state
    from codec.training.loop import Checkpoint, RunState

    trained = tiny()  # update()d: CDF buffers of their own size
    Checkpoint(tmp_path / "r.ckpt", {"model": trained}, np.random.default_rng(0)).save(RunState(step=7))
    torch.manual_seed(1)
    fresh = PerScaleCodec(trained.cfg)
    with pytest.raises(RuntimeError, match="size mismatch"):
        Checkpoint(tmp_path / "r.ckpt", {"model": fresh}, np.random.default_rng(0)).load()
    fresh = PerScaleCodec(trained.cfg)
    ck = Checkpoint(tmp_path / "r.ckpt", {"model": fresh}, np.random.default_rng(0),
                    loaders={"model": lambda sd: load_state(fresh, sd)})  # fmt: skip
    assert ck.load().step == 7
    f = features(5)
    fresh.eval()
    assert [x.y_string for x in fresh.compress(f, [2, 0, 1])] == [x.y_string for x in trained.compress(f, [2, 0, 1])]
    with pytest.raises(ValueError, match="does not hold"):
        Checkpoint(tmp_path / "r.ckpt", {"model": fresh}, np.random.default_rng(0), loaders={"opt": print})
