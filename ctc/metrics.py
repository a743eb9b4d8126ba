"""From job results to the CTC figures: per rate point bpp / mAP / stage times /
kMAC per pixel; BD-rate and BD-mAP against every anchor; near-lossless rates.

Rate: bpp = total bits of the set / total original-image pixels of the set (as
CompressAI-Vision's ``avg_bpp`` and the MPEG CTC); the mean of per-image bpp is
reported beside it as ``bpp_mean``. mAP: ``ctc.coco_eval.evaluate_detections`` over
the whole set at each rate point. Stage times: mean seconds per image. Complexity:
kMAC per original-image pixel (total MACs / total pixels / 1000) per stage.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from .bd_rate import METHODS, BDError, bd_metric, bd_rate, near_lossless_rate
from .coco_eval import evaluate_detections
from .codecs import STAGES
from .config import CtcConfig


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

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


def aggregate_point(
    codec: str,
    codec_type: str,
    point: str,
    param: str | None,
    value: Any,
    results: list[tuple[int, dict[str, Any]]],
    annotation_file: str | os.PathLike,
) -> tuple[PointResult, list[dict[str, Any]]]:
    """One rate point from its per-image results [(image_id, result)]; also returns the COCO detections."""
    from .runner import detections_to_coco

    if not results:
        raise ValueError(f"{codec}/{point}: no results")
    dets: list[dict[str, Any]] = []
    for image_id, r in results:
        dets.extend(detections_to_coco(r, image_id))
    ids = [i for i, _ in results]
    ev = evaluate_detections(dets, annotation_file, ids)
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


def _is_reference_point(c) -> bool:
    return c.type in REFERENCE_POINT_TYPES or c.mode == "bypass"


def bd_rows(config: CtcConfig, points: list[PointResult]) -> list[dict[str, Any]]:
    """BD-rate (%) and BD-metric (mAP, same units as mAP) of every codec against every anchor,
    for every reported metric, with both interpolation methods, over each curve's
    rate-accuracy front (see rate_accuracy_front; the dropped points are named in `note`)."""
    by_codec = curves(points)
    rows = []
    for anchor in config.anchors:
        if anchor not in by_codec:
            continue
        for c in config.codecs:
            if c.name == anchor or c.name not in by_codec or _is_reference_point(c):
                # the uncompressed network and the lossless bypass dtypes are reference
                # points, not rate-accuracy curves; a real curve with too few points still
                # gets a row whose note says why it has no figure
                continue
            for metric in config.report_metrics:
                row: dict[str, Any] = {"codec": c.name, "anchor": anchor, "metric": metric}
                notes = []
                a = rate_accuracy_front(by_codec[anchor], metric)
                t = rate_accuracy_front(by_codec[c.name], metric)
                for name, full, front in ((anchor, by_codec[anchor], a), (c.name, by_codec[c.name], t)):
                    dropped = [p.point for p in full if p not in front]
                    if dropped:
                        notes.append(f"{name}: dominated points left out: {', '.join(map(str, dropped))}")
                for method in METHODS:
                    for kind, fn in (("bd_rate", bd_rate), ("bd_metric", bd_metric)):
                        try:
                            row[f"{kind}_{method}"] = fn(
                                [p.bpp for p in a],
                                [p.metric(metric) for p in a],
                                [p.bpp for p in t],
                                [p.metric(metric) for p in t],
                                method=method,
                            )
                        except BDError as e:
                            row[f"{kind}_{method}"] = math.nan
                            if str(e) not in notes:
                                notes.append(str(e))
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
