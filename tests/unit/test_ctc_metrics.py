"""BD rows over the rate-accuracy front: dominated (non-monotonic) points are left out and named."""

from __future__ import annotations

import dataclasses
import math

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


def _config(anchor_points: list, test_points: list, curves=("front", "monotone"), min_overlap=0.75):
    from pathlib import Path

    from ctc.config import CodecConfig, CtcConfig, DatasetConfig, NetworkConfig, RatePoint

    def codec(name, pts):
        return CodecConfig(name, "fake", tuple(RatePoint(p.point, "qp", p.value, {}) for p in pts))

    return CtcConfig(
        name="t",
        dataset=DatasetConfig("d", Path("i"), Path("a.json")),
        network=NetworkConfig("fake"),
        codecs=(codec("anchor", anchor_points), codec("test", test_points)),
        anchors=("anchor",),
        report_metrics=("map50",),
        bd_curves=tuple(curves),
        bd_min_overlap=min_overlap,
    )


def _curve(codec, rates, maps):
    return [_pt(codec, f"p{i}", r, m) for i, (r, m) in enumerate(zip(rates, maps))]


def test_monotone_curves_give_figures_where_the_front_has_too_few_points():
    from ctc.bd_rate import monotone_fit
    from ctc.metrics import bd_rows

    anchor = _curve("anchor", [0.05, 0.1, 0.2, 0.4, 0.8], [0.20, 0.28, 0.33, 0.36, 0.37])
    # saturated and noisy: only 3 points on its front
    test = _curve("test", [0.03, 0.06, 0.12, 0.24, 0.48], [0.25, 0.32, 0.31, 0.36, 0.355])
    rows = {r["curve"]: r for r in bd_rows(_config(anchor, test), anchor + test)}
    assert set(rows) == {"front", "monotone"}
    front, mono = rows["front"], rows["monotone"]
    assert math.isnan(front["bd_rate_pchip"]) and "test: dominated points left out: p2, p4" in front["note"]
    assert "3 points, need 4 to 8" in front["note"]
    expected = bd_rate(
        [p.bpp for p in anchor],
        monotone_fit([p.bpp for p in anchor], [p.map50 for p in anchor]),
        [p.bpp for p in test],
        monotone_fit([p.bpp for p in test], [p.map50 for p in test]),
    )
    assert mono["bd_rate_pchip"] == pytest.approx(expected) and mono["bd_rate_pchip"] < 0
    assert "test: monotone fit moves points by up to" in mono["note"]
    assert 0 < mono["overlap_metric"] <= 1 and 0 < mono["overlap_rate"] <= 1
    # one kind only, as a config may choose
    only = bd_rows(_config(anchor, test, curves=("monotone",)), anchor + test)
    assert [r["curve"] for r in only] == ["monotone"] and only[0]["bd_rate_pchip"] == mono["bd_rate_pchip"]


def test_low_overlap_warns_and_implausible_figures_are_left_out():
    from ctc.metrics import bd_rows

    anchor = _curve("anchor", [0.05, 0.1, 0.2, 0.4, 0.8, 1.6], [0.15, 0.24, 0.30, 0.34, 0.365, 0.373])
    test = _curve("test", [0.0448, 0.0887, 0.164, 0.205], [0.231, 0.277, 0.285, 0.286])
    (row,) = bd_rows(_config(anchor, test, curves=("front",)), anchor + test)
    assert row["overlap_metric"] == pytest.approx((0.286 - 0.231) / (0.373 - 0.15))
    assert "curves overlap on 25 % of the mAP@0.5 range (< 75 %)" in row["warning"]
    assert "of the log-rate range" in row["warning"]
    # the cubic BD-rate (+410 %) lies outside what any monotone curve allows: not given
    assert row["unreliable"] == "bd_rate_cubic" and math.isnan(row["bd_rate_cubic"])
    assert "bd_rate_cubic outside the range any monotone curve" in row["note"]
    assert row["bd_rate_pchip"] == pytest.approx(-47.585, abs=1e-3)
    (quiet,) = bd_rows(_config(anchor, test, curves=("front",), min_overlap=0.2), anchor + test)
    assert quiet["warning"] == ""
