"""Bjøntegaard-delta metrics (BD-rate, BD-metric) and the near-lossless rate.

Two interpolation methods are provided:

* ``"cubic"``: the original VCEG-M33 method. A third-order polynomial is fitted (least squares; exact
  through 4 points) to log-rate as a function of the metric (BD-rate), or to the metric as a function
  of log-rate (BD-metric), and integrated over the overlap of the two curves.
* ``"pchip"``: piecewise cubic Hermite interpolation (Fritsch-Carlson, as in MATLAB's ``pchip`` and
  scipy's ``PchipInterpolator``) through the same points, integrated exactly over the overlap. This is
  what the JCT-VC / JVET common-test-condition Excel sheets use (JCTVC-L1100, JVET-T2010), and the
  ``"pchip"`` method of the ``bjontegaard`` Python package. It is the default: a global cubic can
  overshoot between points and give misleading numbers.

Rates can be in any unit (bits, bpp, kbit/s), as long as anchor and test use the same one. The metric
must increase with rate (PSNR, mAP). BD-rate is in percent, negative when the test curve needs fewer
bits for the same metric; BD-metric is in the metric's unit, positive when the test curve is better.

Task accuracy is not always monotonic in rate (near saturation a higher rate can score a little lower
by chance). :func:`monotone_fit` is MPEG's answer (m63692, H. Wang et al., "Improvements of the
BD-Rate Metrics Using Monotonic Curve-Fitting Methods", PCS 2024, as used by the FCM/VCM evaluation
scripts of CompressAI-Vision): a least-squares cubic in log-rate, constrained to be non-decreasing
and concave at the rate points and to stay within the metric's range; the fitted values replace the
measured ones before the BD integral.

:func:`bd_rate_result` and :func:`bd_metric_result` also say how far a figure can be trusted:

* ``overlap``: the length of the interval the integral runs over (the overlap of the two curves)
  as a fraction of the combined range, the rule of the reference ``bjontegaard`` package, which
  warns below :data:`MIN_OVERLAP` (75 %);
* ``plausible``: the interval in which any monotone curve through the points puts the figure
  (on the overlap, each curve lies between its points that bracket the overlap). Pchip is monotone,
  so its figures always lie inside; a cubic polynomial that overshoots between points (or outside
  them) gives figures outside, such as +1e20 %, which are unreliable, not results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = [
    "BDError",
    "BDResult",
    "METHODS",
    "MIN_OVERLAP",
    "MIN_POINTS",
    "MAX_POINTS",
    "bd_metric",
    "bd_metric_result",
    "bd_rate",
    "bd_rate_result",
    "monotone_fit",
    "near_lossless_rate",
    "overlap_fraction",
]

METHODS: tuple[str, ...] = ("pchip", "cubic")
MIN_POINTS = 4
MAX_POINTS = 8
MIN_OVERLAP = 0.75  # the bjontegaard package's default min_overlap

ArrayLike = Sequence[float] | np.ndarray


class BDError(ValueError):
    """The rate-metric points cannot give a Bjøntegaard delta (too few points, non-monotonic, no overlap)."""


def _curve(rates: ArrayLike, metrics: ArrayLike, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one RD curve; return (log-rate, metric) sorted by increasing rate."""
    r = np.asarray(rates, dtype=np.float64)
    m = np.asarray(metrics, dtype=np.float64)
    if r.ndim != 1 or m.ndim != 1:
        raise BDError(f"{which}: rates and metrics must be 1-D sequences")
    if r.shape != m.shape:
        raise BDError(f"{which}: {r.size} rates but {m.size} metric values")
    if not MIN_POINTS <= r.size <= MAX_POINTS:
        raise BDError(f"{which}: {r.size} points, need {MIN_POINTS} to {MAX_POINTS}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(m))):
        raise BDError(f"{which}: rates and metrics must be finite")
    if np.any(r <= 0):
        raise BDError(f"{which}: rates must be > 0, got {r.min():g}")
    order = np.argsort(r, kind="stable")
    r, m = r[order], m[order]
    if np.any(np.diff(r) <= 0):
        raise BDError(f"{which}: duplicate rate values")
    if np.any(np.diff(m) <= 0):
        raise BDError(f"{which}: metric is not strictly increasing with rate: {m.tolist()}")
    return np.log(r), m


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral over [lo, hi] of the curve y(x) interpolated through the points (x increasing)."""
    if method == "pchip":
        return float(PchipInterpolator(x, y).integrate(lo, hi))
    # cubic: centre and scale x before fitting so the Vandermonde system stays well conditioned;
    # the fitted polynomial (and so the integral) is the same as a fit in raw x.
    c, s = float(np.mean(x)), float(np.ptp(x))
    p = np.polyint(np.polyfit((x - c) / s, y, 3))
    return float((np.polyval(p, (hi - c) / s) - np.polyval(p, (lo - c) / s)) * s)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise BDError(f"unknown interpolation method {method!r}; use one of {', '.join(METHODS)}")


def overlap_fraction(x_anchor: ArrayLike, x_test: ArrayLike) -> float:
    """Length of the overlap of two curves' ranges on one axis, as a fraction of their combined
    range (0 when they do not overlap, 1 when the ranges are equal)."""
    a, t = np.asarray(x_anchor, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    total = max(a.max(), t.max()) - min(a.min(), t.min())
    if not total > 0:
        return 1.0
    return float(max(min(a.max(), t.max()) - max(a.min(), t.min()), 0.0) / total)


@dataclass(frozen=True)
class BDResult:
    """One Bjøntegaard delta with what tells whether to trust it.

    value: BD-rate in percent or BD-metric in metric units; overlap: see overlap_fraction (on the
    axis the integral runs over: the metric for BD-rate, log-rate for BD-metric); plausible: the
    (low, high) interval in the unit of value that any monotone interpolation allows."""

    value: float
    overlap: float
    plausible: tuple[float, float]

    @property
    def reliable(self) -> bool:
        """The value is finite and inside the plausible interval (up to rounding)."""
        lo, hi = self.plausible
        tol = 1e-9 * max(1.0, abs(lo), abs(hi))
        return math.isfinite(self.value) and lo - tol <= self.value <= hi + tol

    def low_overlap(self, min_overlap: float = MIN_OVERLAP) -> bool:
        return self.overlap < min_overlap


def _bracket(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Range of y over [lo, hi] for any monotone curve through (x, y) (x increasing, y monotone):
    between the points that bracket the interval."""
    i = int(np.searchsorted(x, lo, side="right")) - 1  # last point with x <= lo
    j = int(np.searchsorted(x, hi, side="left"))  # first point with x >= hi
    seg = y[max(i, 0) : min(j, x.size - 1) + 1]
    return float(seg.min()), float(seg.max())


def _average_difference(
    x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, method: str, axis: str
) -> tuple[float, float, tuple[float, float]]:
    """Mean of y_test(x) - y_anchor(x) over the overlap of the two x ranges, the overlap
    fraction, and the interval any monotone interpolation puts that mean in."""
    lo = max(x_anchor.min(), x_test.min())
    hi = min(x_anchor.max(), x_test.max())
    if not hi > lo:
        raise BDError(f"anchor and test curves do not overlap in {axis}")
    diff = _integral(x_test, y_test, lo, hi, method) - _integral(x_anchor, y_anchor, lo, hi, method)
    a_lo, a_hi = _bracket(x_anchor, y_anchor, lo, hi)
    t_lo, t_hi = _bracket(x_test, y_test, lo, hi)
    return diff / (hi - lo), overlap_fraction(x_anchor, x_test), (t_lo - a_hi, t_hi - a_lo)


def bd_rate_result(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    method: str = "pchip",
) -> BDResult:
    """BD-rate (see :func:`bd_rate`) with its overlap (on the metric axis) and plausible interval."""
    _check_method(method)
    lr_a, m_a = _curve(rate_anchor, metric_anchor, "anchor")
    lr_t, m_t = _curve(rate_test, metric_test, "test")
    # log-rate as a function of the metric (metric strictly increasing, so x is sorted)
    avg, overlap, (lo, hi) = _average_difference(m_a, lr_a, m_t, lr_t, method, "metric")

    def percent(log_ratio: float) -> float:
        try:
            return (math.exp(log_ratio) - 1.0) * 100.0
        except OverflowError:
            return math.inf

    return BDResult(percent(avg), overlap, (percent(lo), percent(hi)))


def bd_metric_result(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    method: str = "pchip",
) -> BDResult:
    """BD-metric (see :func:`bd_metric`) with its overlap (on the log-rate axis) and plausible interval."""
    _check_method(method)
    lr_a, m_a = _curve(rate_anchor, metric_anchor, "anchor")
    lr_t, m_t = _curve(rate_test, metric_test, "test")
    avg, overlap, plausible = _average_difference(lr_a, m_a, lr_t, m_t, method, "rate")
    return BDResult(avg, overlap, plausible)


def bd_rate(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    method: str = "pchip",
) -> float:
    """Average rate difference of test vs anchor at equal metric, in percent.

    Negative means the test saves bits (-10.0: 10 % fewer bits on average over the overlapping
    metric range). Points may be given in any order; 4 to 8 per curve.
    Raises BDError on invalid input, a metric that does not increase with rate, or no overlap.
    """
    return bd_rate_result(rate_anchor, metric_anchor, rate_test, metric_test, method).value


def bd_metric(
    rate_anchor: ArrayLike,
    metric_anchor: ArrayLike,
    rate_test: ArrayLike,
    metric_test: ArrayLike,
    method: str = "pchip",
) -> float:
    """Average metric difference of test vs anchor at equal rate (BD-PSNR, BD-mAP), in metric units.

    Positive means the test is better. Same input rules as :func:`bd_rate`.
    """
    return bd_metric_result(rate_anchor, metric_anchor, rate_test, metric_test, method).value


# --- MPEG's monotone curve fit ---------------------------------------------------------------------


def monotone_fit(rates: ArrayLike, metrics: ArrayLike, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """The metric values, at the given rates, of MPEG's monotone cubic fit (m63692; Wang et al.,
    PCS 2024): the cubic f(log rate) that minimises the squared error to the measured metric
    subject to f' >= 0 and f'' <= 0 at every rate point, f(lowest rate) >= lo and
    f(highest rate) <= hi (the metric's range: 0 and 1 for mAP; MPEG's scripts use 0 and 100 for
    a percentage). Returned in the order of the input.

    The constraints are linear in the cubic's coefficients, so this is a convex quadratic
    programme with a unique solution (4 or more distinct rates); it is solved exactly, by
    enumerating active sets, rather than iteratively: the same points give the same fit on every
    machine. The problem is the same whatever the base of the logarithm or the metric's scale
    (MPEG fits percentages against log10 rates), so the fit is computed on centred log-rates."""
    r = np.asarray(rates, dtype=np.float64)
    m = np.asarray(metrics, dtype=np.float64)
    if r.ndim != 1 or r.shape != m.shape:
        raise BDError(f"rates and metrics must be 1-D sequences of equal length ({r.size}, {m.size})")
    if not MIN_POINTS <= r.size <= MAX_POINTS:
        raise BDError(f"{r.size} points, need {MIN_POINTS} to {MAX_POINTS} for a monotone fit")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(m))) or np.any(r <= 0):
        raise BDError("rates must be finite and > 0, metrics finite")
    if not lo < hi:
        raise BDError(f"metric range must have lo < hi, got {lo}, {hi}")
    x = np.log(r)
    if np.unique(x).size != x.size:
        raise BDError("duplicate rate values")
    c, s = float(np.mean(x)), float(np.ptp(x))
    t = (x - c) / s
    basis = np.stack([np.ones_like(t), t, t**2, t**3], axis=1)  # f(t) = b0 + b1 t + b2 t^2 + b3 t^3
    first = np.stack([np.zeros_like(t), np.ones_like(t), 2 * t, 3 * t**2], axis=1)  # f'(t)
    second = np.stack([np.zeros_like(t), np.zeros_like(t), 2 * np.ones_like(t), 6 * t], axis=1)  # f''(t)
    i_min, i_max = int(np.argmin(t)), int(np.argmax(t))
    # every constraint as g . b >= h
    g = np.concatenate([first, -second, basis[[i_min]], -basis[[i_max]]])
    h = np.concatenate([np.zeros(2 * t.size), [lo, -hi]])
    b = _constrained_least_squares(basis, m, g, h)
    return basis @ b


def _constrained_least_squares(a: np.ndarray, y: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """argmin |a b - y|^2 subject to g b >= h, for a of full column rank k (k = 4 here).

    The minimiser satisfies the KKT conditions with at most k linearly independent active
    constraints; for each such set S the minimiser with S held as equalities is one linear solve.
    Among the feasible ones the lowest objective is the minimum (strict convexity makes it unique)."""
    from itertools import combinations

    k = a.shape[1]
    ata, aty = a.T @ a, a.T @ y
    tol = 1e-10 * max(1.0, float(np.abs(h).max()), float(np.abs(y).max()))
    best, best_cost = None, math.inf
    for size in range(k + 1):
        for active in combinations(range(g.shape[0]), size):
            ga = g[list(active)]
            kkt = np.zeros((k + size, k + size))
            kkt[:k, :k] = ata
            kkt[:k, k:] = ga.T
            kkt[k:, :k] = ga
            rhs = np.concatenate([aty, h[list(active)]])
            try:
                sol = np.linalg.solve(kkt, rhs)
            except np.linalg.LinAlgError:
                continue  # dependent constraints: the same point is reached from a smaller set
            b = sol[:k]
            if not np.all(np.isfinite(b)) or np.any(g @ b < h - tol):
                continue
            cost = float(np.sum((a @ b - y) ** 2))
            if best is None or cost < best_cost:
                best, best_cost = b, cost
    if best is None:  # cannot happen: b = (lo, 0, 0, 0) is always feasible
        raise BDError("monotone fit found no feasible curve")
    return best


def near_lossless_rate(
    rates: ArrayLike, maps: ArrayLike, reference_map: float, max_rel_loss: float = 0.01
) -> float | None:
    """Lowest rate at which the relative mAP loss vs ``reference_map`` drops below ``max_rel_loss``.

    The relative loss of a point is ``(reference_map - map) / reference_map``. Points are sorted by
    rate and scanned from the lowest; at the first point with loss < ``max_rel_loss``, the rate is
    interpolated linearly in log-rate between it and the previous point, where the loss equals
    ``max_rel_loss``. If the lowest-rate point already qualifies, its rate is returned (no
    extrapolation). Returns None if no point qualifies.
    """
    r = np.asarray(rates, dtype=np.float64)
    m = np.asarray(maps, dtype=np.float64)
    if r.ndim != 1 or r.shape != m.shape or r.size == 0:
        raise BDError(f"rates and maps must be non-empty 1-D sequences of equal length ({r.size}, {m.size})")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(m))) or np.any(r <= 0):
        raise BDError("rates must be finite and > 0, maps finite")
    if not (math.isfinite(reference_map) and reference_map > 0):
        raise BDError(f"reference_map must be > 0, got {reference_map}")
    if not (math.isfinite(max_rel_loss) and max_rel_loss > 0):
        raise BDError(f"max_rel_loss must be > 0, got {max_rel_loss}")
    order = np.argsort(r, kind="stable")
    r, m = r[order], m[order]
    if np.any(np.diff(r) <= 0):
        raise BDError("duplicate rate values")
    loss = (reference_map - m) / reference_map
    ok = np.flatnonzero(loss < max_rel_loss)
    if ok.size == 0:
        return None
    i = int(ok[0])
    if i == 0:
        return float(r[0])
    # loss[i - 1] >= max_rel_loss > loss[i]: the crossing lies in (r[i-1], r[i]]
    t = (loss[i - 1] - max_rel_loss) / (loss[i - 1] - loss[i])
    log_rate = math.log(r[i - 1]) + t * (math.log(r[i]) - math.log(r[i - 1]))
    return float(math.exp(log_rate))
