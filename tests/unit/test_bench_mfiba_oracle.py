"""tools/bench_mfiba_oracle.py: the oracle's choices, its argument checks, and one small real run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools import bench_mfiba_oracle as oracle


def test_the_budget_choice_takes_the_lowest_loss_that_fits():
    losses = np.array([5.0, 1.0, 2.0, 0.5, 1.0])
    bits = np.array([10.0, 30.0, 20.0, 50.0, 25.0])
    assert oracle.choose_within_budget(losses, bits, 30.0) == 4  # losses 1.0 at 30 and 25 bits: the fewer bits
    assert oracle.choose_within_budget(losses, bits, 60.0) == 3
    assert oracle.choose_within_budget(losses, bits, 19.0) == 0
    assert oracle.choose_within_budget(losses, bits, 5.0) == 0  # nothing fits: the fewest bits


def test_the_lambda_choice_trades_loss_against_rate():
    losses = np.array([4.0, 2.0, 1.0])
    bpp = np.array([0.01, 0.1, 1.0])
    assert oracle.choose_for_lambda(losses, bpp, 0.1) == 2
    assert oracle.choose_for_lambda(losses, bpp, 10.0) == 1
    assert oracle.choose_for_lambda(losses, bpp, 1000.0) == 0
    assert oracle.choose_for_lambda(np.array([1.0, 1.0]), np.array([0.2, 0.1]), 0.0) == 1  # a tie: fewer bits


def test_bad_arguments_exit_2(tmp_path, capsys):
    for argv in (["--limit", "0"], ["--phis", "a"], ["--json", str(tmp_path / "no" / "x.json")]):
        with pytest.raises(SystemExit) as e:
            oracle.parse_args(argv)
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        oracle.main(["--targets", "0,-1", "--limit", "1"])
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.needs_assets
def test_a_small_oracle_run_is_never_worse_than_uniform_at_its_budget(tmp_path):
    out = tmp_path / "o.json"
    assert oracle.main(["--limit", "1", "--phis", "0,7", "--targets", "0.05,0.3", "--lambdas", "0.1,100",
                        "--json", str(out)]) == 0  # fmt: skip
    r = json.loads(out.read_text())
    assert r["images"] == 1 and r["phis"] == [0, 7]
    assert r["additive_loss_max_relative_deviation"] < 1e-4  # NanoDet's per-level heads: the shortcut holds
    uniform = {p["phi"]: p for p in r["points"]["uniform-phi"]}
    assert set(uniform) == {0, 7} and uniform[0]["bpp"] < uniform[7]["bpp"]
    for p in r["points"]["oracle-target"]:  # within the budget, or the smallest combination
        assert p["bpp"] <= p["target_bpp"] or p["phis_mean"] == [0.0, 0.0, 0.0]
    lam = {p["lambda"]: p for p in r["points"]["oracle-lambda"]}
    assert lam[100.0]["bpp"] <= lam[0.1]["bpp"]
    assert set(r["bd_rate_vs_uniform_phi"]) == {"oracle-target", "oracle-lambda"}


class _Probe:
    """Two scales; the loss of a combination given by a function of it."""

    num_scales = 2

    def __init__(self, loss):
        self._loss = loss
        self.calls = 0

    def loss(self, c):
        self.calls += 1
        return self._loss(tuple(c))

    def scale_loss(self, i, p):
        return self.loss([p if j == i else None for j in range(2)])


def _lossf(additive):
    def f(c):
        parts = [0.0 if p is None else 1.0 / (1 + p) for p in c]
        extra = 0.0 if additive or None in c else 0.5 * parts[0] * parts[1]
        return sum(parts) + extra

    return f


def test_combination_losses_use_the_sum_only_where_it_holds():
    import itertools

    combos = list(itertools.product([0, 1, 2], repeat=2))
    for additive in (True, False):
        probe, deviation = _Probe(_lossf(additive)), []
        got = oracle.combination_losses(probe, combos, [0, 1, 2], np.random.default_rng(0), deviation)
        assert got == pytest.approx([_lossf(additive)(c) for c in combos])
        assert (deviation[0] < 1e-12) == additive


def test_results_report_again_on_a_subset_of_the_points(tmp_path):
    uniform = [{"phi": p, "bpp": 0.02 * 2**p, "map50": 0.1 * (p + 1), "map": 0.05 * (p + 1)} for p in range(5)]
    lam = [{"lambda": v, "bpp": 0.9 * u["bpp"], "map50": u["map50"], "map": u["map"]}
           for v, u in zip([100.0, 10.0, 1.0, 0.1, 0.01], uniform)]  # fmt: skip
    tgt = [{"target_bpp": u["bpp"], "bpp": u["bpp"], "map50": u["map50"], "map": u["map"]} for u in uniform]
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"points": {"uniform-phi": uniform, "oracle-lambda": lam, "oracle-target": tgt}}))
    out = tmp_path / "again.json"
    targets = ",".join(str(u["bpp"]) for u in uniform)
    assert oracle.main(["--results", str(path), "--lambdas", "10,1,0.1,0.01", "--targets", targets,
                        "--json", str(out)]) == 0  # fmt: skip
    r = json.loads(out.read_text())
    assert [p["lambda"] for p in r["points"]["oracle-lambda"]] == [10.0, 1.0, 0.1, 0.01]
    assert r["bd_rate_vs_uniform_phi"]["oracle-lambda"]["map50"]["front"]["bd_rate"] == pytest.approx(-10.0, abs=0.01)
    assert r["bd_rate_vs_uniform_phi"]["oracle-target"]["map50"]["front"]["bd_rate"] == pytest.approx(0.0, abs=0.01)
    assert oracle.main(["--results", str(tmp_path / "missing.json")]) == 2
