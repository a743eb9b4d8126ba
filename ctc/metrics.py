"""From job results to the CTC figures: per rate point bpp / mAP / stage times /
kMAC per pixel; BD-rate and BD-mAP against every anchor; near-lossless rates.

Rate: bpp = total bits of the set / total original-image pixels of the set (as
CompressAI-Vision's ``avg_bpp`` and the MPEG CTC); the mean of per-image bpp is
reported beside it as ``bpp_mean``. mAP: ``ctc.coco_eval.evaluate_detections`` over
the whole set at each rate point, box AP always and, for each further task of the config
(``ctc.tasks``: mask AP ``segm_*``, keypoint AP ``keypoints_*``), that task's AP of the same
detections. Stage times: mean seconds per image. Complexity:
kMAC per original-image pixel (total MACs / total pixels / 1000) per stage.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from .bd_rate import (
    METHODS,
    MIN_OVERLAP,
    BDError,
    bd_metric_result,
    bd_rate_result,
    monotone_fit,
    near_lossless_rate,
)
from .coco_eval import METRIC_KEYS, evaluate_detections, evaluate_detections_per_class
from .codecs import STAGES
from .config import CtcConfig
from .tasks import metric_label, metric_name, metric_task


@dataclass
class PointResult:
    codec: str
    codec_type: str
    point: str
    param: str | None
    value: Any
    n_images: int
    total_bits: int
    total_pixels: int
    bpp: float  # total bits / total pixels (primary)
    bpp_mean: float  # mean of per-image bpp
    raw_feature_bpp: float  # float32 split features, bits / pixel
    map: float
    map50: float
    map75: float
    n_detections: int
    time_s: dict[str, float] = field(default_factory=dict)  # mean seconds per image per stage
    kmac_per_pixel: dict[str, float] = field(default_factory=dict)
    # AP@[.5:.95] by object size (COCO areas: small < 32^2 <= medium < 96^2 <= large; -1: no
    # ground truth of that size), and per class ({"category_id", "name", "n_gt", "map", "map50"})
    map_small: float = -1.0
    map_medium: float = -1.0
    map_large: float = -1.0
    per_class: list[dict[str, Any]] = field(default_factory=list)
    # the other tasks' figures by metric name ("segm_map50", "keypoints_map_large", ...; ctc.tasks)
    task_metrics: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        if metric_task(name) == "bbox":
            return float(getattr(self, name))
        try:
            return float(self.task_metrics[name])
        except KeyError:
            raise KeyError(f"{self.codec}/{self.point}: {name!r} was not measured") from None


def aggregate_point(
    codec: str,
    codec_type: str,
    point: str,
    param: str | None,
    value: Any,
    results: list[tuple[int, dict[str, Any]]],
    annotation_file: str | os.PathLike,
    tasks: tuple[str, ...] = ("bbox",),
) -> tuple[PointResult, list[dict[str, Any]]]:
    """One rate point from its per-image results [(image_id, result)]; also returns the COCO
    detections (with their masks and keypoints when `tasks` measures them). Box AP (and per
    class box AP) always; mask AP and keypoint AP for "segm" and "keypoints" in `tasks`."""
    from .errors import JobError
    from .runner import detections_to_coco

    if not results:
        raise ValueError(f"{codec}/{point}: no results")
    dets: list[dict[str, Any]] = []
    for image_id, r in results:
        try:
            dets.extend(detections_to_coco(r, image_id, tasks))
        except JobError as e:
            raise JobError(f"{codec}/{point}: {e}") from None
    ids = [i for i, _ in results]
    ev, per_class = evaluate_detections_per_class(dets, annotation_file, ids)
    task_metrics: dict[str, float] = {}
    for task in tasks:
        if task == "bbox":
            continue
        tev = evaluate_detections(dets, annotation_file, ids, iou_type=task)
        task_metrics.update({metric_name(task, k): float(tev[k]) for k in METRIC_KEYS})
    bits = sum(r["bits"] for _, r in results)
    pixels = sum(r["pixels"] for _, r in results)
    n = len(results)
    pr = PointResult(
        codec=codec,
        codec_type=codec_type,
        point=point,
        param=param,
        value=value,
        n_images=n,
        total_bits=int(bits),
        total_pixels=int(pixels),
        bpp=bits / pixels,
        bpp_mean=sum(r["bits"] / r["pixels"] for _, r in results) / n,
        raw_feature_bpp=sum(r["raw_feature_bits"] for _, r in results) / pixels,
        map=float(ev["map"]),
        map50=float(ev["map50"]),
        map75=float(ev["map75"]),
        n_detections=len(dets),
        time_s={s: sum(r["timings"][s] for _, r in results) / n for s in STAGES},
        kmac_per_pixel={s: sum(r["macs"][s] for _, r in results) / pixels / 1000.0 for s in STAGES},
        map_small=float(ev["map_small"]),
        map_medium=float(ev["map_medium"]),
        map_large=float(ev["map_large"]),
        per_class=per_class,
        task_metrics=task_metrics,
    )
    return pr, dets


def curves(points: list[PointResult]) -> dict[str, list[PointResult]]:
    """Points grouped by codec, each curve sorted by rate."""
    out: dict[str, list[PointResult]] = {}
    for p in points:
        out.setdefault(p.codec, []).append(p)
    return {k: sorted(v, key=lambda p: p.bpp) for k, v in out.items()}


def rate_accuracy_front(curve: list[PointResult], metric: str) -> list[PointResult]:
    """The points of a rate-sorted curve that no lower-rate point matches or beats in `metric`.

    Near saturation, task accuracy is not monotonic in rate (a higher-rate point can score
    a little lower by chance), and the Bjontegaard integral needs a monotonic curve; a
    dominated point is one an encoder would never choose, so it is left out (and reported)."""
    front: list[PointResult] = []
    for p in sorted(curve, key=lambda q: q.bpp):
        if not front or p.metric(metric) > front[-1].metric(metric):
            front.append(p)
    return front


# codec types whose points are references (lossless or no coding at all), never BD curves
REFERENCE_POINT_TYPES = frozenset({"uncompressed", "bypass"})

# how a measured curve becomes the monotone curve the BD integral needs
BD_CURVES = ("front", "monotone")
BD_COLUMNS = [f"{kind}_{method}" for kind in ("bd_rate", "bd_metric") for method in METHODS]


def _is_reference_point(c) -> bool:
    return c.type in REFERENCE_POINT_TYPES or c.mode == "bypass"


def is_bd_curve(c) -> bool:
    """A codec whose curve is compared against the anchors (not a reference point, not opted out)."""
    return not _is_reference_point(c) and getattr(c, "bd", True)


def bd_points(curve: list[PointResult], metric: str, kind: str) -> tuple[list[float], list[float], str]:
    """(rates, metric values, note) of a curve as the BD integral sees it: its rate-accuracy
    front ("front"), or all its points with MPEG's monotone fit of the metric ("monotone")."""
    if kind == "front":
        front = rate_accuracy_front(curve, metric)
        dropped = [p.point for p in curve if p not in front]
        note = f"dominated points left out: {', '.join(map(str, dropped))}" if dropped else ""
        return [p.bpp for p in front], [p.metric(metric) for p in front], note
    if kind == "monotone":
        rates = [p.bpp for p in curve]
        measured = [p.metric(metric) for p in curve]
        fitted = [float(v) for v in monotone_fit(rates, measured, 0.0, 1.0)]
        moved = max(abs(f - m) for f, m in zip(fitted, measured))
        return rates, fitted, f"monotone fit moves points by up to {100 * moved:.2f} points of %"
    raise ValueError(f"unknown BD curve kind {kind!r}")


def _axis(metric: str, kind: str) -> str:
    return {"bd_rate": metric_label(metric), "bd_metric": "log-rate"}[kind]


def bd_rows(config: CtcConfig, points: list[PointResult]) -> list[dict[str, Any]]:
    """BD-rate (%) and BD-metric (mAP, same units as mAP) of every codec against every anchor,
    for every reported metric, with both interpolation methods, once per curve kind of the
    config (``front``: each curve's rate-accuracy front, see rate_accuracy_front, the dropped
    points named in `note`; ``monotone``: MPEG's monotone fit of every curve, see monotone_fit).

    Each row also carries the overlap of the two curves (``overlap_metric``: on the metric axis,
    the range BD-rate integrates over; ``overlap_rate``: on the log-rate axis, BD-metric's) as
    a fraction of their combined range, a ``warning`` when one is below the config's minimum
    (the reference implementation's rule, 75 %), and in ``unreliable`` the columns whose figure
    lies outside the interval any monotone curve through the points allows (a cubic overshoot):
    those columns are left empty."""
    by_codec = curves(points)
    curve_kinds = getattr(config, "bd_curves", ("front",))
    min_overlap = getattr(config, "bd_min_overlap", MIN_OVERLAP)
    prepared: dict[tuple[str, str, str], tuple[list[float], list[float], str] | BDError] = {}

    def prepare(codec: str, metric: str, kind: str):
        key = (codec, metric, kind)
        if key not in prepared:
            try:
                prepared[key] = bd_points(by_codec[codec], metric, kind)
            except BDError as e:
                prepared[key] = e
        return prepared[key]

    rows = []
    for anchor in config.anchors:
        if anchor not in by_codec:
            continue
        for c in config.codecs:
            if c.name == anchor or c.name not in by_codec or not is_bd_curve(c):
                # the uncompressed network and the lossless bypass dtypes are reference
                # points, not rate-accuracy curves; a real curve with too few points still
                # gets a row whose note says why it has no figure
                continue
            for metric in config.report_metrics:
                for kind in curve_kinds:
                    row: dict[str, Any] = {"codec": c.name, "anchor": anchor, "metric": metric, "curve": kind}
                    row.update({col: math.nan for col in BD_COLUMNS})
                    row.update(overlap_metric=math.nan, overlap_rate=math.nan)
                    notes, unreliable, warnings = [], [], []
                    a, t = prepare(anchor, metric, kind), prepare(c.name, metric, kind)
                    for name, prep in ((anchor, a), (c.name, t)):
                        text = str(prep) if isinstance(prep, BDError) else prep[2]
                        if text:
                            notes.append(f"{name}: {text}")
                    if isinstance(a, tuple) and isinstance(t, tuple):
                        for method in METHODS:
                            for kind_name, fn in (("bd_rate", bd_rate_result), ("bd_metric", bd_metric_result)):
                                col = f"{kind_name}_{method}"
                                try:
                                    res = fn(a[0], a[1], t[0], t[1], method=method)
                                except BDError as e:
                                    if str(e) not in notes:
                                        notes.append(str(e))
                                    continue
                                overlap_col = "overlap_metric" if kind_name == "bd_rate" else "overlap_rate"
                                row[overlap_col] = res.overlap
                                if res.reliable:
                                    row[col] = res.value
                                else:
                                    unreliable.append(col)
                        for overlap_col, kind_name in (("overlap_metric", "bd_rate"), ("overlap_rate", "bd_metric")):
                            v = row[overlap_col]
                            if math.isfinite(v) and v < min_overlap:
                                warnings.append(
                                    f"curves overlap on {100 * v:.0f} % of the {_axis(metric, kind_name)} range "
                                    f"(< {100 * min_overlap:.0f} %)"
                                )
                    if unreliable:
                        notes.append(
                            f"{', '.join(unreliable)} outside the range any monotone curve through the points "
                            "allows (cubic overshoot): unreliable, not given"
                        )
                    row["unreliable"] = " ".join(unreliable)
                    row["warning"] = "; ".join(warnings)
                    row["note"] = "; ".join(notes)
                    rows.append(row)
    return rows


def near_lossless_rows(config: CtcConfig, points: list[PointResult]) -> list[dict[str, Any]]:
    """Per codec: the lowest bpp with < max_rel_loss relative loss of the primary metric (and of
    the others) vs the uncompressed network, and its compression ratio vs raw float32 features."""
    by_codec = curves(points)
    if config.reference is None or config.reference not in by_codec:
        return []
    ref = by_codec[config.reference][0]
    rows = []
    for c in config.codecs:
        if c.name == config.reference or c.name not in by_codec:
            continue
        curve = by_codec[c.name]
        raw_bpp = ref.raw_feature_bpp
        for metric in config.report_metrics:
            row: dict[str, Any] = {
                "codec": c.name,
                "metric": metric,
                "reference_map": ref.metric(metric),
                "max_rel_loss": config.near_lossless_max_rel_loss,
                "raw_feature_bpp": raw_bpp,
                "near_lossless_bpp": math.nan,
                "compression_ratio": math.nan,
                "note": "",
            }
            try:
                r = near_lossless_rate(
                    [p.bpp for p in curve],
                    [p.metric(metric) for p in curve],
                    ref.metric(metric),
                    config.near_lossless_max_rel_loss,
                )
            except BDError as e:
                row["note"] = str(e)
            else:
                if r is None:
                    row["note"] = "not reached at any rate point"
                else:
                    row["near_lossless_bpp"] = r
                    row["compression_ratio"] = raw_bpp / r
                    if len(curve) > 1 and r == curve[0].bpp:
                        row["note"] = "reached at the lowest rate point: the near-lossless rate may be lower"
            rows.append(row)
    return rows
