"""BD rows over the rate-accuracy front: dominated (non-monotonic) points are left out and named."""

from __future__ import annotations

import dataclasses

import pytest

from ctc.bd_rate import bd_rate
from ctc.metrics import PointResult, rate_accuracy_front


def _pt(codec: str, point: str, bpp: float, map50: float) -> PointResult:
    fields = {f.name: 0 for f in dataclasses.fields(PointResult)}
    fields.update(
        codec=codec, codec_type=codec, point=point, param="qp", value=point, bpp=bpp, map50=map50, map=map50 / 2
    )
    return PointResult(**fields)


def test_front_drops_points_that_a_lower_rate_point_matches_or_beats():
    curve = [
        _pt("c", "qp22", 2.0, 0.70),
        _pt("c", "qp27", 1.0, 0.71),
        _pt("c", "qp32", 0.5, 0.60),
        _pt("c", "qp37", 0.25, 0.50),
        _pt("c", "qp42", 0.1, 0.30),
        _pt("c", "qp47", 0.05, 0.30),
    ]
    front = rate_accuracy_front(curve, "map50")
    assert [p.point for p in front] == ["qp47", "qp37", "qp32", "qp27"]
    # the front is strictly increasing in both rate and accuracy, so bd_rate accepts it
    rates, maps = [p.bpp for p in front], [p.map50 for p in front]
    assert bd_rate(rates, maps, [r * 0.8 for r in rates], maps) == pytest.approx(-20.0)
