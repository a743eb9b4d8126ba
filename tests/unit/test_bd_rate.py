"""BD-rate / BD-metric against published reference values, plus properties, and near_lossless_rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctc.bd_rate import (
    METHODS,
    MIN_OVERLAP,
    BDError,
    BDResult,
    bd_metric,
    bd_metric_result,
    bd_rate,
    bd_rate_result,
    monotone_fit,
    near_lossless_rate,
    overlap_fraction,
)

# --- Published reference data ------------------------------------------------------------------
#
# VCEG-M33 example curves (G. Bjøntegaard, "Calculation of average PSNR differences between
# RD-curves", VCEG-M33, 2001), with the reference results asserted in tbr/bjontegaard_cpp,
# example.cpp ("VCEG-M33 numbers": bdsnr 0.800713 dB, bdbr -13.261773 %), a port of the
# bjontegaard_etro Excel VBA code that complies with VCEG-M33 (cubic fit) for 4 points.
M33_A = ([90.33, 181.03, 332.99, 547.79], [27.95, 31.17, 34.44, 38.11])
M33_B = ([127.1719, 186.14, 307.2924, 481.5588], [29.9286, 32.4165, 34.7013, 37.4561])
M33_BD_RATE_CUBIC = -13.261773
M33_BD_PSNR_CUBIC = 0.800713

# JCTVC-E137 data with the PCHIP (JCT-VC CTC Excel) BD-rates, as published in Netflix/vmaf
# python/test/calculate_bd_rate_test.py (CalculateBdRateJCTVCTest, values as fractions).
E137_1_A = ([108048.8736, 61279.976, 33905.6656, 18883.6928], [43.6471, 40.3953, 37.247, 34.2911])
E137_1_B = ([108061.2784, 61299.9936, 33928.7472, 18910.912], [43.6768, 40.4232, 37.2761, 34.3147])
E137_1_BD_RATE_PCHIP = -0.00465215420752807 * 100
E137_2_A = ([40433.8848, 7622.7456, 2394.488, 1017.6184], [37.5761, 35.3756, 33.8977, 32.0603])
E137_2_B = ([40370.12, 7587.0024, 2390.0944, 1017.0984], [37.5982, 35.4025, 33.9194, 32.0822])
E137_2_BD_RATE_PCHIP = -0.018779823450567612 * 100

# Half a unit of the last published digit would be 5e-7; 1e-4 % leaves room for float
# differences while being 100x tighter than the ~0.01 % the CTC reports use.
TOL_PERCENT = 1e-4


def test_vceg_m33_cubic_bd_rate():
    assert bd_rate(*M33_A, *M33_B, method="cubic") == pytest.approx(M33_BD_RATE_CUBIC, abs=TOL_PERCENT)


def test_vceg_m33_cubic_bd_psnr():
    assert bd_metric(*M33_A, *M33_B, method="cubic") == pytest.approx(M33_BD_PSNR_CUBIC, abs=1e-5)


@pytest.mark.parametrize(
    ("anchor", "test", "expected"),
    [(E137_1_A, E137_1_B, E137_1_BD_RATE_PCHIP), (E137_2_A, E137_2_B, E137_2_BD_RATE_PCHIP)],
    ids=["E137-1", "E137-2"],
)
def test_jctvc_e137_pchip_bd_rate(anchor, test, expected):
    assert bd_rate(*anchor, *test) == pytest.approx(expected, abs=TOL_PERCENT)  # pchip is the default
    assert bd_rate(*anchor, *test, method="pchip") == pytest.approx(expected, abs=TOL_PERCENT)


def test_methods_really_differ():
    # On E137-2 the cubic fit and PCHIP differ by ~0.03 %, on M33 by ~0.03 % and 0.008 dB:
    # a method silently falling back to the other would fail here.
    assert abs(bd_rate(*E137_2_A, *E137_2_B, method="cubic") - E137_2_BD_RATE_PCHIP) > 0.02
    assert abs(bd_rate(*M33_A, *M33_B, method="pchip") - M33_BD_RATE_CUBIC) > 0.02
    assert abs(bd_metric(*M33_A, *M33_B, method="pchip") - M33_BD_PSNR_CUBIC) > 0.005


# --- Properties --------------------------------------------------------------------------------

RATES8 = np.array([0.012, 0.021, 0.035, 0.06, 0.1, 0.17, 0.3, 0.52])
MAPS8 = np.array([0.18, 0.24, 0.29, 0.325, 0.35, 0.366, 0.374, 0.378])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [4, 5, 6, 8])
def test_identical_curves_give_zero(method, n):
    r, m = RATES8[:n], MAPS8[:n]
    assert bd_rate(r, m, r, m, method=method) == pytest.approx(0.0, abs=1e-10)
    assert bd_metric(r, m, r, m, method=method) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [4, 6, 8])
def test_rates_scaled_by_0_9_give_minus_10_percent(method, n):
    r, m = RATES8[:n], MAPS8[:n]
    assert bd_rate(r, m, 0.9 * r, m, method=method) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(r, m, 1.25 * r, m, method=method) == pytest.approx(25.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("anchor", "test"), [(M33_A, M33_B), (E137_2_A, E137_2_B)])
def test_swapping_anchor_and_test_inverts(method, anchor, test):
    forward = bd_rate(*anchor, *test, method=method)
    backward = bd_rate(*test, *anchor, method=method)
    # average log-ratio flips sign: (1 + f)(1 + b) = 1
    assert (1 + forward / 100) * (1 + backward / 100) == pytest.approx(1.0, abs=1e-12)
    assert bd_metric(*test, *anchor, method=method) == pytest.approx(
        -bd_metric(*anchor, *test, method=method), abs=1e-12
    )


def test_better_test_curve_has_negative_bd_rate_and_positive_bd_metric():
    r, m = RATES8[:6], MAPS8[:6]
    assert bd_rate(r, m, r, m + 0.01) < 0
    assert bd_metric(r, m, r, m + 0.01) == pytest.approx(0.01, abs=1e-12)  # pure vertical shift


@pytest.mark.parametrize("method", METHODS)
def test_point_order_does_not_matter(method):
    perm = [2, 0, 3, 1]
    ra, ma = np.array(M33_A[0])[perm], np.array(M33_A[1])[perm]
    rb, mb = np.array(M33_B[0])[::-1], np.array(M33_B[1])[::-1]
    assert bd_rate(ra, ma, rb, mb, method=method) == pytest.approx(bd_rate(*M33_A, *M33_B, method=method))
    assert bd_metric(ra, ma, rb, mb, method=method) == pytest.approx(bd_metric(*M33_A, *M33_B, method=method))


def test_cubic_with_more_than_four_points_is_least_squares():
    # Points that lie exactly on a cubic in log-rate are reproduced by the least-squares fit, so
    # BD-metric vs. the same cubic shifted up by 0.5 is exactly 0.5.
    lr = np.log(RATES8)
    m = 0.3 + 0.05 * lr + 0.004 * lr**2 + 0.0003 * lr**3
    assert np.all(np.diff(m) > 0)
    assert bd_metric(RATES8, m, RATES8, m + 0.5, method="cubic") == pytest.approx(0.5, abs=1e-9)


# --- Errors ------------------------------------------------------------------------------------


def test_non_monotonic_metric_is_rejected():
    r, m = [1.0, 2.0, 3.0, 4.0], [30.0, 32.0, 31.0, 35.0]
    with pytest.raises(BDError, match="not strictly increasing"):
        bd_rate(r, m, r, [30.0, 32.0, 33.0, 35.0])
    with pytest.raises(BDError, match="not strictly increasing"):
        bd_metric([1.0, 2.0, 3.0, 4.0], [30.0, 32.0, 33.0, 35.0], r, m)


def test_no_overlap_is_rejected():
    r, m = [1.0, 2.0, 3.0, 4.0], [30.0, 31.0, 32.0, 33.0]
    with pytest.raises(BDError, match="do not overlap in metric"):
        bd_rate(r, m, r, [40.0, 41.0, 42.0, 43.0])
    with pytest.raises(BDError, match="do not overlap in rate"):
        bd_metric(r, m, [10.0, 20.0, 30.0, 40.0], m)


@pytest.mark.parametrize("n", [3, 9])
def test_point_count_outside_4_to_8_is_rejected(n):
    r = np.geomspace(0.01, 1.0, n)
    m = np.linspace(20.0, 40.0, n)
    with pytest.raises(BDError, match=f"{n} points"):
        bd_rate(r, m, r, m)


@pytest.mark.parametrize(
    ("rates", "metrics", "message"),
    [
        ([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], "rates must be > 0"),
        ([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], "duplicate rate"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0], "4 rates but 3 metric"),
        ([1.0, 2.0, 3.0, math.nan], [1.0, 2.0, 3.0, 4.0], "finite"),
    ],
)
def test_bad_curves_are_rejected(rates, metrics, message):
    good = ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(BDError, match=message):
        bd_rate(*good, rates, metrics)


def test_unknown_method_is_rejected():
    with pytest.raises(BDError, match="unknown interpolation method 'akima'"):
        bd_rate(*M33_A, *M33_B, method="akima")


def test_bd_error_is_a_value_error():
    assert issubclass(BDError, ValueError)


# --- near_lossless_rate ------------------------------------------------------------------------


def test_near_lossless_rate_interpolates_in_log_rate():
    # relative losses: 0.25, 0.1, 0.0125, 0.0 -> crossing of 1 % between rates 4 and 8 at
    # t = (0.0125 - 0.01) / 0.0125 = 0.2 of the log-rate step: 4 * 2 ** 0.2
    rate = near_lossless_rate([1, 2, 4, 8], [0.30, 0.36, 0.395, 0.40], reference_map=0.40)
    assert rate == pytest.approx(4 * 2**0.2, rel=1e-12)


def test_near_lossless_rate_other_threshold_and_unsorted_input():
    # 5 % loss: losses 0.25, 0.1, 0.0125 -> between 2 and 4, t = (0.1 - 0.05) / (0.1 - 0.0125)
    t = (0.1 - 0.05) / (0.1 - 0.0125)
    rate = near_lossless_rate([8, 2, 4, 1], [0.40, 0.36, 0.395, 0.30], 0.40, max_rel_loss=0.05)
    assert rate == pytest.approx(2 * 2**t, rel=1e-12)


def test_near_lossless_rate_lowest_point_already_good():
    assert near_lossless_rate([0.1, 0.2, 0.4, 0.8], [0.399, 0.40, 0.40, 0.40], 0.40) == pytest.approx(0.1)


def test_near_lossless_rate_never_reached():
    assert near_lossless_rate([0.1, 0.2, 0.4, 0.8], [0.2, 0.3, 0.35, 0.39], 0.40) is None


def test_near_lossless_rate_loss_must_be_strictly_below_threshold():
    # losses exactly equal to the threshold (0.25, exact in binary) do not qualify
    assert near_lossless_rate([1.0, 2.0], [0.75, 0.75], 1.0, max_rel_loss=0.25) is None
    assert near_lossless_rate([1.0, 2.0], [0.75, 0.875], 1.0, max_rel_loss=0.25) == pytest.approx(1.0)


def test_near_lossless_rate_better_than_reference_counts():
    # a test curve may beat the reference (negative loss)
    assert near_lossless_rate([1.0, 2.0, 4.0], [0.2, 0.41, 0.42], 0.40) == pytest.approx(
        math.exp(math.log(1.0) + (0.5 - 0.01) / (0.5 + 0.025) * math.log(2.0)), rel=1e-12
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([], [], 0.4), "non-empty"),
        (([1.0, 2.0], [0.3], 0.4), "equal length"),
        (([0.0, 2.0], [0.3, 0.4], 0.4), "> 0"),
        (([1.0, 2.0], [0.3, 0.4], 0.0), "reference_map must be > 0"),
        (([1.0, 1.0], [0.3, 0.4], 0.4), "duplicate"),
    ],
)
def test_near_lossless_rate_rejects_bad_input(args, message):
    with pytest.raises(BDError, match=message):
        near_lossless_rate(*args)


# --- Reliability: overlap and plausible range --------------------------------------------------

# an anchor that saturates slowly and a test curve that saturates early (the shape of
# learned_e2e_gen1 against the image anchor on val2017-103): the cubic polynomial through the
# test's four points overshoots between them
SAT_A = ([0.05, 0.1, 0.2, 0.4, 0.8, 1.6], [0.15, 0.24, 0.30, 0.34, 0.365, 0.373])
SAT_T = ([0.0448, 0.0887, 0.164, 0.205], [0.231, 0.277, 0.285, 0.286])


def test_overlap_fraction_is_the_reference_rule():
    # bjontegaard package: (overlap interval) / (combined interval) on the integration axis
    assert overlap_fraction([30.0, 40.0], [35.0, 45.0]) == pytest.approx(5 / 15)
    assert overlap_fraction([30.0, 32.0, 40.0], [30.0, 40.0]) == 1.0
    assert overlap_fraction([30.0, 31.0], [35.0, 45.0]) == 0.0
    assert overlap_fraction([1.0, 2.0], [2.0, 1.0]) == 1.0
    res = bd_rate_result(*SAT_A, *SAT_T)
    assert res.overlap == pytest.approx((0.286 - 0.231) / (0.373 - 0.15))  # on the mAP axis
    assert res.low_overlap() and not res.low_overlap(0.2) and MIN_OVERLAP == 0.75
    metric = bd_metric_result(*SAT_A, *SAT_T)  # on the log-rate axis
    assert metric.overlap == pytest.approx(math.log(0.205 / 0.05) / math.log(1.6 / 0.0448))


def test_cubic_overshoot_is_unreliable_and_pchip_is_not():
    pchip = bd_rate_result(*SAT_A, *SAT_T, method="pchip")
    cubic = bd_rate_result(*SAT_A, *SAT_T, method="cubic")
    assert pchip.reliable and pchip.value == pytest.approx(-47.585, abs=1e-3)
    assert not cubic.reliable and cubic.value > 400  # test needs 5x the anchor's bits: implausible
    lo, hi = cubic.plausible  # the same interval for both methods: it depends on the points only
    assert (lo, hi) == pchip.plausible and lo < pchip.value < hi and hi < cubic.value
    # over the overlap [0.231, 0.286] of mAP, the anchor lies between its points at 0.15 and 0.30
    # (rates 0.05 and 0.2), the test between 0.0448 and 0.205
    assert lo == pytest.approx((0.0448 / 0.2 - 1) * 100) and hi == pytest.approx((0.205 / 0.05 - 1) * 100)
    assert not BDResult(math.inf, 1.0, (-50.0, 50.0)).reliable
    assert not BDResult(math.nan, 1.0, (-50.0, 50.0)).reliable


@pytest.mark.parametrize("seed", range(20))
def test_pchip_figures_are_always_plausible(seed):
    # pchip is monotone between points, so its figures lie in the interval whatever the curves
    rng = np.random.default_rng(seed)
    n_a, n_t = rng.integers(4, 9, 2)
    ra, rt = np.sort(rng.uniform(0.01, 2.0, n_a)), np.sort(rng.uniform(0.01, 2.0, n_t))
    ma, mt = np.sort(rng.uniform(0.1, 0.4, n_a)), np.sort(rng.uniform(0.1, 0.4, n_t))
    try:
        rate, metric = bd_rate_result(ra, ma, rt, mt), bd_metric_result(ra, ma, rt, mt)
    except BDError:
        return  # no overlap
    assert rate.reliable and metric.reliable


def test_float_results_are_the_values_of_the_results():
    for method in METHODS:
        assert bd_rate(*M33_A, *M33_B, method=method) == bd_rate_result(*M33_A, *M33_B, method=method).value
        assert bd_metric(*M33_A, *M33_B, method=method) == bd_metric_result(*M33_A, *M33_B, method=method).value
    assert bd_rate_result(*M33_A, *M33_B, method="cubic").reliable


# --- MPEG's monotone fit -----------------------------------------------------------------------


def _mpeg_formulation(rates, metrics_percent):
    """The fit as MPEG's evaluation scripts pose it (cubic in log10 of the rate, metric in percent,
    bounds 0 and 100), solved iteratively with SLSQP: an independent check of monotone_fit's
    exact active-set solution."""
    from scipy.optimize import minimize

    x = np.log10(np.asarray(rates, dtype=np.float64))
    y = np.asarray(metrics_percent, dtype=np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]

    def f(b, x):
        return b[0] * x**3 + b[1] * x**2 + b[2] * x + b[3]

    cons = [
        {"type": "ineq", "fun": lambda b: 3 * b[0] * x**2 + 2 * b[1] * x + b[2]},  # f' >= 0
        {"type": "ineq", "fun": lambda b: -(6 * b[0] * x + 2 * b[1])},  # f'' <= 0
        {"type": "ineq", "fun": lambda b: f(b, x[0])},  # >= 0 at the lowest rate
        {"type": "ineq", "fun": lambda b: 100 - f(b, x[-1])},  # <= 100 at the highest
    ]
    # SLSQP is sensitive to its start (scipy versions differ too): several starts, the best that converged
    starts = [np.ones(4), np.zeros(4), np.array([0.0, 0.0, *np.polyfit(x, y, 1)])]
    runs = [
        minimize(lambda b: np.sum((f(b, x) - y) ** 2), b0, method="SLSQP", constraints=cons,
                 options={"ftol": 1e-14, "maxiter": 1000})
        for b0 in starts
    ]  # fmt: skip

    # SLSQP may stop with "Positive directional derivative for linesearch" (status 8) when it
    # cannot improve at ftol 1e-14 (seen in fresh environments, whatever the start): such an
    # iterate counts when it is feasible; the comparison with monotone_fit checks it anyway
    def feasible(r) -> bool:
        return all(np.all(np.asarray(c["fun"](r.x)) >= -1e-9) for c in cons)

    done = [r for r in runs if r.success or (r.status == 8 and feasible(r))]
    assert done, [r.message for r in runs]
    res = min(done, key=lambda r: r.fun)
    out = np.empty_like(y)
    out[order] = f(res.x, x)
    return out


NON_MONOTONIC = [
    ([0.05, 0.1, 0.2, 0.4, 0.8, 1.6], [0.30, 0.36, 0.38, 0.375, 0.39, 0.385]),
    (np.geomspace(0.01, 1, 8), [0.10, 0.20, 0.25, 0.30, 0.29, 0.31, 0.30, 0.32]),
    ([0.0448, 0.0887, 0.123, 0.164, 0.205, 0.239], [0.231, 0.277, 0.276, 0.285, 0.286, 0.284]),
    ([0.3, 0.1, 0.2, 0.05], [0.30, 0.28, 0.31, 0.10]),  # unsorted input
]


@pytest.mark.parametrize(("rates", "maps"), NON_MONOTONIC)
def test_monotone_fit_solves_mpegs_problem(rates, maps):
    fitted = monotone_fit(rates, maps)
    reference = _mpeg_formulation(rates, 100 * np.asarray(maps)) / 100
    np.testing.assert_allclose(fitted, reference, atol=2e-6)
    # and it is the constrained optimum: no lower squared error among the SLSQP solution's
    assert np.sum((fitted - maps) ** 2) <= np.sum((reference - maps) ** 2) + 1e-12


@pytest.mark.parametrize(("rates", "maps"), NON_MONOTONIC)
def test_monotone_fit_is_monotone_concave_and_usable_for_bd(rates, maps):
    fitted = monotone_fit(rates, maps)
    order = np.argsort(rates)
    f = fitted[order]
    assert np.all(np.diff(f) > 0)  # strictly increasing at the points: bd_rate accepts it
    lr = np.log(np.asarray(rates)[order])
    slopes = np.diff(f) / np.diff(lr)
    assert np.all(np.diff(slopes) <= 1e-9)  # concave
    assert 0.0 <= f[0] and f[-1] <= 1.0
    assert bd_rate(rates, fitted, rates, fitted) == pytest.approx(0.0, abs=1e-9)


def test_monotone_fit_keeps_points_that_already_lie_on_an_admissible_cubic():
    lr = np.log(RATES8)
    c = lr - lr.mean()
    maps = 0.3 + 0.05 * c - 0.01 * c**2 - 0.001 * c**3  # increasing and concave over the range
    np.testing.assert_allclose(monotone_fit(RATES8, maps), maps, atol=1e-12)
    np.testing.assert_allclose(monotone_fit(RATES8[:4], MAPS8[:4] * 0 + maps[:4]), maps[:4], atol=1e-12)


def test_monotone_fit_does_not_depend_on_units():
    rates, maps = NON_MONOTONIC[0]
    base = monotone_fit(rates, maps)
    np.testing.assert_allclose(monotone_fit(np.asarray(rates) * 1000, maps), base, atol=1e-12)  # kbit vs bit
    np.testing.assert_allclose(monotone_fit(rates, 100 * np.asarray(maps), 0, 100), 100 * base, atol=1e-10)


def test_monotone_fit_respects_the_metric_range():
    # a curve that wants to pass above 1 at its highest rate is held at the bound
    rates = [0.1, 0.2, 0.4, 0.8]
    fitted = monotone_fit(rates, [0.5, 0.8, 0.95, 1.2])
    assert fitted[-1] == pytest.approx(1.0, abs=1e-12) and np.all(np.diff(fitted) > 0)


@pytest.mark.parametrize(
    ("rates", "maps", "message"),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], "3 points"),
        ([0.1, 0.1, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "duplicate rate"),
        ([0.0, 0.1, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "> 0"),
        ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3], "equal length"),
    ],
)
def test_monotone_fit_rejects_bad_input(rates, maps, message):
    with pytest.raises(BDError, match=message):
        monotone_fit(rates, maps)
