"""MFIBA (codec/allocation/mfiba.py): importance normalisation, the closed form against a
numerical optimum, the rate-phi lines, the target search and the fine-tuned weights, on a
synthetic codec whose bits and losses are known."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from codec.allocation import mfiba
from codec.errors import EncodeError

AREAS = [(16, 16), (8, 8), (4, 4)]
Q = 8


class FakeCodec:
    """Scale i at phi: bits = area * (A_I[i] * phi + B_I[i]) (rounded to bytes), reconstruction
    = the input plus noise that shrinks with phi."""

    A_I = (0.4, 0.6, 0.9)
    B_I = (0.2, 0.4, 0.8)

    def __init__(self) -> None:
        self.cfg = SimpleNamespace(num_qualities=Q)
        self.calls = 0

    def compress_scale(self, i, x, phi):
        self.calls += 1
        nbytes = int(round(x.shape[-2] * x.shape[-1] * (self.A_I[i] * phi + self.B_I[i]) / 8))
        return SimpleNamespace(z_string=b"", y_string=bytes(nbytes))

    def forward_quantised_scale(self, i, x, phi):
        return x + 2.0 ** (-phi) * (i + 1)


def probe_for(store=None):
    xs = [torch.zeros(1, 1, h, w) for h, w in AREAS]

    def task(feats):  # the loss grows with every scale's error, scale 2 weighs most
        return sum((k + 1) * float((f - x).abs().mean()) for k, (f, x) in enumerate(zip(feats, xs)))

    return mfiba.ImageProbe(FakeCodec(), xs, task, store), xs, task


def fitted(alpha=1.0, beta=1.0):
    lines = tuple(mfiba.RatePhiLine(a, b) for a, b in zip(FakeCodec.A_I, FakeCodec.B_I))
    return mfiba.FittedModels(alpha, beta, lines, ("p3", "p4", "p5"), Q, "00" * 32)


def test_normalised_importance_normalises_each_level_then_averages():
    d = np.array([[1.0, 2.0], [3.0, 2.0], [0.0, 0.0]])
    w = mfiba.normalised_importance(d)
    assert w == pytest.approx([(0.25 + 0.5) / 2, (0.75 + 0.5) / 2, 0.0]) and w.sum() == pytest.approx(1.0)
    assert mfiba.normalised_importance(np.zeros((3, 2))) == pytest.approx([1 / 3] * 3)


def test_closed_form_is_the_minimum_of_the_lagrangian():
    w, alpha, beta, lam = np.array([0.5, 0.3, 0.2]), 0.7, 1.3, 0.05
    k = mfiba.area_ratios([256, 64, 16])
    assert k.tolist() == [1.0, 4.0, 16.0]
    r = mfiba.closed_form_rates(w, alpha, beta, lam, k)

    def cost(rates):
        return float(np.sum(w * alpha * rates ** (-beta)) + lam * np.sum(rates / k))

    for i in range(3):
        for eps in (0.99, 1.01):
            moved = r.copy()
            moved[i] *= eps
            assert cost(moved) > cost(r)


def test_snap_and_line_inversion():
    line = mfiba.RatePhiLine(0.5, 0.25)
    assert line.phi(line.rate(3.0)) == pytest.approx(3.0)
    assert mfiba.snap(2.6, Q) == 3 and mfiba.snap(-4, Q) == 0 and mfiba.snap(99, Q) == Q - 1
    assert mfiba.snap(math.inf, Q) == Q - 1 and mfiba.snap(math.nan, Q) == 0


def test_fit_line_uses_the_prior_slope_with_one_point():
    prior = mfiba.RatePhiLine(2.0, 0.0)
    two = mfiba.fit_line([1, 3], [1.0, 2.0], prior)
    assert (two.a, two.b) == pytest.approx((0.5, 0.5))
    one = mfiba.fit_line([2], [5.0], prior)
    assert (one.a, one.b) == (2.0, 1.0)
    assert mfiba.fit_line([], [], prior) == prior


def test_predicted_bits_interpolates_between_measured_levels():
    probe, *_ = probe_for()
    line = mfiba.RatePhiLine(1.0, 0.0)
    b2, b6 = probe.bits(0, 2), probe.bits(0, 6)
    assert mfiba.predicted_bits(probe, 0, 4, line) == pytest.approx((b2 + b6) / 2)
    assert mfiba.predicted_bits(probe, 0, 7, line) == pytest.approx(b6 + 256)  # along the line above
    assert mfiba.predicted_bits(probe, 0, 6, line) == b6


def test_probe_store_shares_the_work_not_the_measurements():
    store = mfiba.ProbeStore()
    p1, *_ = probe_for(store)
    p1.bits(0, 3)
    p2, *_ = probe_for(store)
    assert p2.measured(0) == {}
    p2.bits(0, 3)
    assert store.compress_calls == 1 and p2.compress_calls == 1 and p2.measured(0) == p1.measured(0)


def test_mfip_ranks_the_scale_that_hurts_the_task_most_first():
    probe, *_ = probe_for()
    w, d = mfiba.mfip(probe, [2, 4, 6])
    assert d.shape == (3, 3) and w.sum() == pytest.approx(1.0)
    assert w[2] > w[1] > w[0]  # the fake task weighs scale i by (i + 1)^2


@pytest.mark.parametrize("target", [500.0, 900.0, 1100.0, 5000.0])
def test_a_target_search_lands_close_and_its_bits_are_measured(target):
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    plan = mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=target, lam=None,
                          allocation="mfiba", levels=[2, 4, 6], task_loss=task)  # fmt: skip
    exact = sum(8 * len(probe.model.compress_scale(i, xs[i], p).y_string) for i, p in enumerate(plan.phis))
    assert plan.latent_bits == exact
    if target > 1200:  # more than the top quality of every scale spends (1176 bits): the top
        assert plan.phis == [Q - 1] * 3
    else:  # near the target (the fake codec's steps are coarse at low rates)
        assert abs(exact / target - 1) <= 0.1


@pytest.mark.parametrize("allocation", ["mfiba", "mfiba_ft", "exhaustive", "uniform"])
@pytest.mark.parametrize("target", [-760.0, 0.0, 10.0])
def test_a_target_below_the_lowest_rate_gives_the_lowest_allocation(allocation, target):
    """Below phi 0 of every scale (even below the header alone: target_bits <= 0), the
    closest reachable rate is the lowest allocation, whatever the allocation."""
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    plan = mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=target, lam=None,
                          allocation=allocation, levels=[2, 4, 6], task_loss=task)  # fmt: skip
    assert plan.phis == [0, 0, 0]
    assert plan.latent_bits == sum(8 * len(probe.model.compress_scale(i, xs[i], 0).y_string) for i in range(3))


def test_uniform_allocation_for_a_target_is_the_closest_single_phi():
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    plan = mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=1000.0, lam=None,
                          allocation="uniform", levels=[2, 4, 6], task_loss=task)  # fmt: skip
    totals = {p: sum(8 * len(probe.model.compress_scale(i, xs[i], p).y_string) for i in range(3)) for p in range(Q)}
    best = min(totals, key=lambda p: abs(totals[p] - 1000.0))
    assert plan.phis == [best] * 3 and plan.latent_bits == totals[best]


def test_a_larger_lambda_never_spends_more_bits():
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    bits = []
    for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        plan = mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=None, lam=lam,
                              allocation="mfiba", levels=[2, 4, 6], task_loss=task)  # fmt: skip
        alloc = mfiba.Allocator(probe, fitted(), list(fitted().rate_phi))
        bits.append(alloc.bits_of(plan.phis))
    assert bits == sorted(bits, reverse=True) and bits[0] > bits[-1]


def test_fine_tuned_weights_never_do_worse_on_the_measured_loss():
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    kw = dict(target_bits=1200.0, lam=None, levels=[2, 4, 6], task_loss=task)
    base = mfiba.allocate(probe.model, fitted(), arrays, None, allocation="mfiba", **kw)
    ft = mfiba.allocate(probe.model, fitted(), arrays, None, allocation="mfiba_ft", **kw)
    assert ft.details["ft_candidates"] == 3 * 20
    assert sum(ft.weights) == pytest.approx(1.0)
    p, *_ = probe_for()
    assert p.loss(ft.phis) <= p.loss(base.phis) + 1e-12
    assert ft.latent_bits <= max(base.latent_bits, 1200.0)


def _brute_force(probe, xs, task, score):
    import itertools

    best = None
    for c in itertools.product(range(Q), repeat=3):
        bits = sum(8 * len(probe.model.compress_scale(i, xs[i], p).y_string) for i, p in enumerate(c))
        key = score(task([probe.model.forward_quantised_scale(i, x, p) for i, (x, p) in enumerate(zip(xs, c))]), bits)
        if key is not None and (best is None or key < best[0]):
            best = (key, list(c), bits)
    return best


@pytest.mark.parametrize("target", [300.0, 700.0, 1000.0])
def test_exhaustive_allocation_is_the_best_combination_within_the_target(target):
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    plan = mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=target, lam=None,
                          allocation="exhaustive", levels=[2, 4, 6], task_loss=task)  # fmt: skip
    _, phis, bits = _brute_force(probe, xs, task, lambda loss, bits: (loss, bits) if bits <= target else None)
    assert plan.phis == phis and plan.latent_bits == bits <= target
    assert len(plan.details["measured_losses"]) == 3 and sum(plan.weights) == pytest.approx(1.0)
    other = mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=target, lam=None,
                           allocation="mfiba", levels=[2, 4, 6], task_loss=task)  # fmt: skip
    if other.latent_bits <= target:  # within the same bits, MFIBA's model cannot beat the measurement
        assert probe.loss(plan.phis) <= probe.loss(other.phis) + 1e-12


@pytest.mark.parametrize("lam", [1e-3, 1e-2, 1e-1])
def test_exhaustive_allocation_at_a_lambda_minimises_the_lagrangian(lam):
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    plan = mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=None, lam=lam,
                          allocation="exhaustive", levels=[2, 4, 6], task_loss=task)  # fmt: skip
    k = mfiba.area_ratios(probe.areas)

    def lagrangian(phis):
        rates = [probe.bits(i, p) / probe.areas[i] / k[i] for i, p in enumerate(phis)]
        return probe.loss(phis) + lam * sum(rates)

    import itertools

    best = min(itertools.product(range(Q), repeat=3), key=lagrangian)
    assert lagrangian(plan.phis) == pytest.approx(lagrangian(best))


def test_allocate_refuses_what_it_cannot_do():
    probe, xs, task = probe_for()
    arrays = [(n, x[0].numpy()) for n, x in zip(("p3", "p4", "p5"), xs)]
    with pytest.raises(EncodeError, match="exactly one"):
        mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=1.0, lam=1.0, allocation="mfiba",
                       levels=[2], task_loss=task)  # fmt: skip
    with pytest.raises(EncodeError, match="unknown allocation"):
        mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=-5.0, lam=None, allocation="mfibaa",
                       levels=[2], task_loss=task)  # fmt: skip
    with pytest.raises(EncodeError, match="needs --target-bpp"):
        mfiba.allocate(probe.model, fitted(), arrays, None, target_bits=None, lam=1.0, allocation="uniform",
                       levels=[2], task_loss=task)  # fmt: skip
    big = FakeCodec()
    big.cfg = SimpleNamespace(num_qualities=mfiba.EXHAUSTIVE_MAX_Q + 1)
    coder = mfiba.LearnedScaleCoder(big)
    many = mfiba.FittedModels(1.0, 1.0, fitted().rate_phi, ("p3", "p4", "p5"), mfiba.EXHAUSTIVE_MAX_Q + 1, "00" * 32)
    with pytest.raises(EncodeError, match="at most 16"):
        mfiba.allocate(coder, many, arrays, None, target_bits=500.0, lam=None, allocation="exhaustive",
                       levels=[2], task_loss=task)  # fmt: skip
    with pytest.raises(EncodeError, match="for scales"):
        mfiba.allocate(probe.model, fitted(), arrays[:2], None, target_bits=100.0, lam=None, allocation="mfiba",
                       levels=[2], task_loss=task)  # fmt: skip


def test_fitted_models_json_and_the_weights_check(tmp_path):
    f = fitted(0.5, 1.5)
    assert mfiba.FittedModels.from_json(json.loads(json.dumps(f.to_json()))) == f
    pt = tmp_path / "m.pt"
    assert mfiba.fitted_path(pt).name == "m.mfiba.json"
    with pytest.raises(EncodeError, match="not found"):
        mfiba.load_fitted(pt, None, bytes(32))
    mfiba.fitted_path(pt).write_text(json.dumps(f.to_json()))
    assert mfiba.load_fitted(pt, None, bytes(32)) == f
    with pytest.raises(EncodeError, match="other weights"):
        mfiba.load_fitted(pt, None, b"\x01" * 32)
    mfiba.fitted_path(pt).write_text("{}")
    with pytest.raises(EncodeError, match="not a file of fitted"):
        mfiba.load_fitted(pt, None, bytes(32))


def test_log_linear_rate_model_for_vvc():
    line = mfiba.RatePhiLine(0.15, -3.0, log=True)
    assert line.rate(20) == pytest.approx(np.exp(0.15 * 20 - 3.0))
    assert line.phi(line.rate(26)) == pytest.approx(26)
    prior = mfiba.RatePhiLine(0.1, 0.0, log=True)
    fit = mfiba.fit_line([10, 20, 30], [np.exp(0.2 * q - 1) for q in (10, 20, 30)], prior)
    assert fit.log and fit.a == pytest.approx(0.2) and fit.b == pytest.approx(-1)
    one = mfiba.fit_line([10], [np.exp(2.0)], prior)  # the prior's slope through the one point
    assert one.a == 0.1 and one.b == pytest.approx(1.0)
    f = fitted()
    back = mfiba.FittedModels.from_json(json.loads(json.dumps({**f.to_json(), "rate_model": "log_linear"})))
    assert back.rate_model == "log_linear" and all(ln.log for ln in back.rate_phi)
    with pytest.raises(EncodeError, match="rate_model"):
        mfiba.FittedModels.from_json({**f.to_json(), "rate_model": "cubic"})


def test_log_lines_interpolate_measured_bits_geometrically():
    probe, _, _ = probe_for()
    b2, b6 = probe.bits(0, 2), probe.bits(0, 6)
    line = mfiba.RatePhiLine(0.3, 0.0, log=True)
    assert mfiba.predicted_bits(probe, 0, 4, line) == pytest.approx(np.sqrt(b2 * b6))
    assert mfiba.predicted_bits(probe, 0, 7, line) == pytest.approx(b6 * np.exp(0.3))
