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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["BDError", "METHODS", "MIN_POINTS", "MAX_POINTS", "bd_rate", "bd_metric", "near_lossless_rate"]

METHODS: tuple[str, ...] = ("pchip", "cubic")
MIN_POINTS = 4
MAX_POINTS = 8

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


def _average_difference(
    x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, method: str, axis: str
) -> float:
    """Mean of y_test(x) - y_anchor(x) over the overlap of the two x ranges."""
    lo = max(x_anchor.min(), x_test.min())
    hi = min(x_anchor.max(), x_test.max())
    if not hi > lo:
        raise BDError(f"anchor and test curves do not overlap in {axis}")
    diff = _integral(x_test, y_test, lo, hi, method) - _integral(x_anchor, y_anchor, lo, hi, method)
    return diff / (hi - lo)


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
    _check_method(method)
    lr_a, m_a = _curve(rate_anchor, metric_anchor, "anchor")
    lr_t, m_t = _curve(rate_test, metric_test, "test")
    # log-rate as a function of the metric (metric strictly increasing, so x is sorted)
    avg_log_ratio = _average_difference(m_a, lr_a, m_t, lr_t, method, "metric")
    return (math.exp(avg_log_ratio) - 1.0) * 100.0


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
    _check_method(method)
    lr_a, m_a = _curve(rate_anchor, metric_anchor, "anchor")
    lr_t, m_t = _curve(rate_test, metric_test, "test")
    return _average_difference(lr_a, m_a, lr_t, m_t, method, "rate")


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
