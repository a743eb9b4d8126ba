"""Outputs of a CTC run, rebuilt from the run directory's cache alone.

In DIR:
* ``summary.csv``: one row per (codec, rate point): bpp (total bits / total pixels),
  bpp_mean, mAP@0.5, mAP@[.5:.95], mAP@0.75, AP by object size (map_small / map_medium /
  map_large, -1 when the set has no object of that size), mean seconds per image per stage,
  kMAC per pixel per stage, raw float32 feature bpp; a run that measures more tasks than boxes
  has their figures too, named by ``ctc.tasks`` (``segm_map50`` ... ``segm_map_large``,
  ``keypoints_map50`` ...), after the box columns.
* ``bd_rate.csv``: every codec against every anchor, per metric and per curve kind (``front``:
  the rate-accuracy front; ``monotone``: MPEG's monotone fit): BD-rate (%) and BD-mAP (mAP
  units, [0, 1]) with pchip and cubic interpolation; ``overlap_metric`` / ``overlap_rate``: the
  overlap of the two curves as a fraction of their combined range (metric axis for BD-rate,
  log-rate axis for BD-mAP); ``warning``: an overlap below the config's ``min_overlap``;
  ``unreliable``: the columns left empty because their figure lies outside what any monotone
  curve through the points allows (see ``ctc.bd_rate``); ``note``: why a figure is missing.
* ``per_class.csv``: per (codec, rate point) and category with ground truth in the set: its
  number of ground-truth boxes, AP@0.5 and AP@[.5:.95] (summary.csv has AP by object size).
* ``near_lossless.csv``: lowest bpp with < 1 % relative mAP loss vs the uncompressed
  network, and its compression ratio vs raw float32 features.
* ``cttc/<codec>.csv``: the MPEG FCM CTTC reporting layout of CompressAI-Vision
  (``summary.csv`` of its split-inference pipeline passed through its
  ``gen_mpeg_cttc_csv.py`` for image datasets): ``Dataset, qp, avg_bpp,
  end_accuracy, y_psnr, nn_part_1, encode, decode, nn_part_2`` with end_accuracy
  the primary metric in percent, y_psnr empty, stage times in seconds summed over
  the set; ``qp`` holds the rate point's parameter value. ``cttc/<codec>_complexity.csv``
  follows its ``summary_complexity.csv``: ``Metric, nn_part1, feature reduction,
  feature restoration, nn_part2`` in kMAC/pixel (reduction/restoration = encode/decode).
* ``detections/<codec>/<point>.json``: COCO results-format detections (with ``segmentation``
  RLEs and ``keypoints`` when the run measures mask or keypoint AP).
* ``report.html``: self-contained (RD curves as embedded PNGs, tables, run metadata). What a
  reader sees (report.html, the tables `fcm_ctc` prints) is in one unit: mAP and BD-mAP in
  (points of) %, BD-rate in %, rounded; each codec keeps its colour in every plot.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import ResultCache
from .codecs import STAGES
from .config import CtcConfig, config_from_dict
from .errors import CacheError
from .metrics import BD_COLUMNS, PointResult, aggregate_point, bd_rows, curves, near_lossless_rows
from .tasks import METRIC_LABELS, metric_label, metric_name

BD_CSV_COLUMNS = [
    "codec",
    "anchor",
    "metric",
    "curve",
    *BD_COLUMNS,
    "overlap_metric",
    "overlap_rate",
    "warning",
    "unreliable",
    "note",
]


@dataclass
class Report:
    config: CtcConfig
    points: list[PointResult]
    bd: list[dict[str, Any]]
    near_lossless: list[dict[str, Any]]
    missing_jobs: int
    out_dir: Path
    stale_results: int = 0  # results whose recorded files (code, weights) have changed since

    def table(self) -> str:
        return format_table(self.points)

    def bd_table(self) -> str:
        return format_bd_table(self.config, self.bd)


# -- environment -------------------------------------------------------------------------


def run_environment() -> dict[str, Any]:
    """git commit, package versions and machine: recorded with each run."""
    from importlib import metadata

    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit += " (modified)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (not a git checkout)"
    versions = {}
    for pkg in (
        "fcm-codec",
        "torch",
        "torchvision",
        "numpy",
        "compressai",
        "pycocotools",
        "scipy",
        "matplotlib",
        "construct",
        "imageio-ffmpeg",
        "distributed",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    try:
        import imageio_ffmpeg

        versions["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_version()
    except (ImportError, RuntimeError):
        versions["ffmpeg"] = "unavailable"
    return {
        "git_commit": commit,
        "python": sys.version.split()[0],
        "packages": versions,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "node": platform.node(),
        },
    }


# -- building ----------------------------------------------------------------------------


def collect(out_dir: str | os.PathLike) -> tuple[CtcConfig, list[PointResult], dict, int]:
    """Aggregate the cached results of a run directory: (config, points, detections by (codec, point),
    number of planned jobs without a result)."""
    out = Path(out_dir)
    with ResultCache(out / "cache.sqlite", create=False) as cache:
        run = cache.get_meta("run")
        if run is None:
            raise CacheError(f"{out}: the cache holds no run record; run `fcm_ctc run` first")
        config = config_from_dict(run["config"])
        results = cache.get_many([j["key"] for j in run["jobs"]])
    grouped: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    missing = 0
    for j in run["jobs"]:
        r = results.get(j["key"])
        if r is None:
            missing += 1
            continue
        grouped.setdefault((j["codec"], j["point"]), []).append((j["image_id"], r))
    n_images = len(run["images"])
    points, dets = [], {}
    for c in config.codecs:
        for p in c.points:
            rs = grouped.get((c.name, p.name), [])
            if len(rs) < n_images:  # an incomplete point would bias mAP and bpp: leave it out
                continue
            pr, d = aggregate_point(
                c.name, c.type, p.name, p.param, p.value, rs, config.dataset.annotations, config.tasks
            )
            points.append(pr)
            dets[(c.name, p.name)] = d
    return config, points, dets, missing


def build_report(out_dir: str | os.PathLike, environment: dict[str, Any] | None = None) -> Report:
    """Write every output of DIR from DIR/cache.sqlite."""
    out = Path(out_dir)
    config, points, dets, missing = collect(out)
    bd = bd_rows(config, points)
    nl = near_lossless_rows(config, points)
    with ResultCache(out / "cache.sqlite", create=False) as cache:
        if environment is not None:
            cache.set_meta("environment", environment)
        env = cache.get_meta("environment") or {}
        stats = cache.get_meta("last_stats") or {}
        run = cache.get_meta("run") or {}

    _write_csv(out / "summary.csv", summary_rows(points))
    _write_csv(out / "bd_rate.csv", bd, BD_CSV_COLUMNS)
    _write_csv(
        out / "per_class.csv",
        [{"codec": p.codec, "point": p.point, "bpp": p.bpp, **c} for p in points for c in p.per_class],
        ["codec", "point", "bpp", "category_id", "name", "n_gt", "map50", "map"],
    )
    _write_csv(
        out / "near_lossless.csv",
        nl,
        [
            "codec",
            "metric",
            "reference_map",
            "max_rel_loss",
            "near_lossless_bpp",
            "raw_feature_bpp",
            "compression_ratio",
            "note",
        ],
    )
    # outputs are rebuilt whole: a codec no longer in the run leaves no files behind
    for folder in ("cttc", "detections"):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)
    write_cttc(out / "cttc", config, points)
    for (codec, point), d in dets.items():
        path = out / "detections" / codec / f"{point}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(d))
    with ResultCache(out / "cache.sqlite", create=False) as cache:
        keys = [j["key"] for j in run.get("jobs", [])]
        stale = len(cache.get_many(keys)) - len(cache.done_keys(keys))
    report = Report(config, points, bd, nl, missing, out, stale)
    _atomic_write(out / "report.html", render_html(report, env, stats, run))
    return report


def summary_rows(points: list[PointResult]) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        row = {
            "codec": p.codec,
            "type": p.codec_type,
            "point": p.point,
            "param": p.param or "",
            "value": "" if p.value is None else p.value,
            "n_images": p.n_images,
            "total_bits": p.total_bits,
            "total_pixels": p.total_pixels,
            "bpp": p.bpp,
            "bpp_mean": p.bpp_mean,
            "map": p.map,
            "map50": p.map50,
            "map75": p.map75,
            "map_small": p.map_small,
            "map_medium": p.map_medium,
            "map_large": p.map_large,
            "n_detections": p.n_detections,
            "raw_feature_bpp": p.raw_feature_bpp,
        }
        row.update(p.task_metrics)  # the other tasks' figures (none for a boxes-only run)
        row.update({f"time_{s}_s": p.time_s[s] for s in STAGES})
        row.update({f"kmac_px_{s}": p.kmac_per_pixel[s] for s in STAGES})
        rows.append(row)
    return rows


def write_cttc(folder: Path, config: CtcConfig, points: list[PointResult]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for codec, curve in curves(points).items():
        rows = [
            {
                "Dataset": config.dataset.name,
                "qp": p.value if p.value is not None else "",
                "avg_bpp": p.bpp,
                "end_accuracy": 100.0 * p.metric(config.primary_metric),
                "y_psnr": "",
                "nn_part_1": p.time_s["nn_part1"] * p.n_images,
                "encode": p.time_s["encode"] * p.n_images,
                "decode": p.time_s["decode"] * p.n_images,
                "nn_part_2": p.time_s["nn_part2"] * p.n_images,
            }
            for p in curve
        ]
        _write_csv(folder / f"{codec}.csv", rows)
        p = curve[-1]
        _write_csv(
            folder / f"{codec}_complexity.csv",
            [
                {
                    "Metric": "KMAC/pixel",
                    "nn_part1": p.kmac_per_pixel["nn_part1"],
                    "feature reduction": p.kmac_per_pixel["encode"],
                    "feature restoration": p.kmac_per_pixel["decode"],
                    "nn_part2": p.kmac_per_pixel["nn_part2"],
                }
            ],
        )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def _write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> None:
    fieldnames = fieldnames or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k, "")) for k in fieldnames})
    _atomic_write(path, buf.getvalue())


def _other_tasks(points: list[PointResult]) -> list[str]:
    """The tasks besides boxes that the points measured, in ctc.tasks order."""
    from .tasks import TASKS

    measured = {m for p in points for m in p.task_metrics}
    return [t for t in TASKS[1:] if metric_name(t, "map") in measured]


def format_table(points: list[PointResult]) -> str:
    """The run's figures as a fixed-width text table (printed by fcm_ctc)."""
    short = {"segm": "mask", "keypoints": "kp"}
    others = _other_tasks(points)
    extra_head = [f"{short[t]} {k}" for t in others for k in ("mAP50", "mAP")]
    head = ["codec", "point", "bpp", "mAP50", "mAP", *extra_head, "part1 ms", "enc ms", "dec ms", "part2 ms"]
    head.append("kMAC/px")
    lines = [head]
    for p in points:
        lines.append(
            [
                p.codec,
                p.point,
                f"{p.bpp:.4f}",
                f"{100 * p.map50:.2f}",
                f"{100 * p.map:.2f}",
                *(f"{100 * p.metric(metric_name(t, k)):.2f}" for t in others for k in ("map50", "map")),
                *(f"{1000 * p.time_s[s]:.1f}" for s in STAGES),
                f"{p.kmac_per_pixel['nn_part1'] + p.kmac_per_pixel['nn_part2']:.1f}",
            ]
        )
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in lines
    )


def bd_cell(row: dict[str, Any], column: str, scale: float = 1.0, spec: str = "+.1f") -> str:
    """One BD figure as shown: the number (times `scale`, rounded), "unreliable" when it lies
    outside the plausible range, "n/a" when there is none (the row's note says why)."""
    if column in str(row.get("unreliable", "")).split():
        return "unreliable"
    v = row.get(column, math.nan)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{scale * v:{spec}}" if math.isfinite(v) else "n/a"


def format_bd_table(config: CtcConfig, rows: list[dict[str, Any]]) -> str:
    """BD-rate of every codec against every anchor on the primary metric (pchip), one column
    per curve kind, as a fixed-width text table (printed by fcm_ctc); '!' marks a low overlap."""
    primary = [r for r in rows if r["metric"] == config.primary_metric]
    if not primary:
        return ""
    kinds = list(dict.fromkeys(r["curve"] for r in primary))
    by_pair: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in primary:
        by_pair.setdefault((r["codec"], r["anchor"]), {})[r["curve"]] = r
    head = ["codec", "anchor", *(f"BD-rate % ({k}, pchip)" for k in kinds)]
    lines = [head]
    flagged = False
    for (codec, anchor), per_kind in by_pair.items():
        cells = []
        for k in kinds:
            row = per_kind.get(k)
            cell = "" if row is None else bd_cell(row, "bd_rate_pchip")
            if row is not None and row.get("warning"):
                cell += " !"
                flagged = True
            cells.append(cell)
        lines.append([codec, anchor, *cells])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = "\n".join(
        "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in lines
    )
    title = f"BD-rate vs anchors, {METRIC_LABELS[config.primary_metric]} (negative: fewer bits for the same accuracy)"
    legend = (
        f"\n! the two curves overlap on less than {100 * config.bd_min_overlap:.0f} % of their range (bd_rate.csv)"
        if flagged
        else ""
    )
    return f"{title}\n{text}{legend}"


# -- HTML --------------------------------------------------------------------------------

# colours by codec name, so that a codec looks the same in every plot and every report
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
)  # fmt: skip
_KNOWN_COLOURS = {
    "image_anchor": "#000000",
    "feature_anchor": "#7f7f7f",
    "uncompressed": "#2ca02c",
    "bypass": "#17becf",
    "vvc_msff": "#1f77b4",
    "learned_e2e": "#d62728",
}


def codec_colours(names: list[str]) -> dict[str, str]:
    """A colour per codec: the project's own codecs have fixed ones; any other name gets a
    palette colour chosen by a hash of the name (the next free one if two collide), so that
    it keeps its colour across plots and across runs."""
    colours = {n: _KNOWN_COLOURS[n] for n in names if n in _KNOWN_COLOURS}
    used = set(colours.values())
    for n in names:
        if n in colours:
            continue
        i = zlib.crc32(n.encode()) % len(_PALETTE)
        for step in range(len(_PALETTE)):
            c = _PALETTE[(i + step) % len(_PALETTE)]
            if c not in used:
                break
        colours[n] = c
        used.add(c)
    return colours


def _point_label(p: PointResult) -> str:
    """A rate point's label on the plot: its parameter value ("37", "2", "float16")."""
    return "" if p.value is None else (f"{p.value:g}" if isinstance(p.value, float) else str(p.value))


def plot_rate_range(points: list[PointResult]) -> tuple[float, float] | None:
    """The bpp range the plots show: the coded curves' (a raw float32 reference sits far to the
    right of them), with a margin; None when there is no curve of two points or more."""
    coded = [p.bpp for curve in curves(points).values() if len(curve) > 1 for p in curve]
    return (min(coded) / 1.25, max(coded) * 1.25) if coded else None


def rd_plot_png(config: CtcConfig, points: list[PointResult], metric: str) -> bytes:
    """The rate-accuracy curves of one metric (in %), zoomed to the coded curves' range: a
    single-point reference (uncompressed, a one-dtype bypass) is a horizontal line whose label
    gives its rate. Each point is labelled with its rate parameter's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_codec = curves(points)
    colours = codec_colours([c.name for c in config.codecs if c.name in by_codec])
    coded = [p for curve in by_codec.values() if len(curve) > 1 for p in curve]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for codec, curve in by_codec.items():
            xs = [p.bpp for p in curve]
            ys = [100 * p.metric(metric) for p in curve]
            colour = colours.get(codec)
            if len(curve) == 1:  # a reference line (uncompressed, one-point bypass)
                label = f"{codec} (reference, {xs[0]:.3g} bpp)"
                ax.axhline(ys[0], linestyle="--", linewidth=1, color=colour, alpha=0.8, label=label)
                if not coded:
                    ax.plot(xs, ys, "s", color=colour)
                continue
            anchor = codec in config.anchors
            ax.plot(xs, ys, "o-" if anchor else "^-", color=colour, label=codec + (" (anchor)" if anchor else ""))
            for p, x, y in zip(curve, xs, ys):
                ax.annotate(_point_label(p), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6,
                            color=colour)  # fmt: skip
        ax.set_xscale("log")
        xlim = plot_rate_range(points)
        if xlim is not None:
            ax.set_xlim(*xlim)
        ax.set_xlabel("bits per pixel (total bits / total pixels)")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
        ax.set_title(f"{config.name}: {METRIC_LABELS[metric]} vs rate ({config.network.name})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _sig(v: Any, digits: int = 4) -> str:
    """A number rounded to `digits` significant digits ("n/a" when missing)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"


def _fixed(v: Any, spec: str) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:{spec}}" if math.isfinite(v) else "n/a"


def _size_ap(v: float) -> str:
    return "-" if v < 0 else f"{100 * v:.1f}"  # -1: no ground truth of that size


def _html_table(rows: list[dict[str, Any]], columns: list[str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(_fmt(r.get(c, ''))))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _tasks_text(tasks: tuple[str, ...]) -> str:
    words = {"bbox": "box mAP", "segm": "mask mAP", "keypoints": "keypoint (OKS) mAP"}
    return ", ".join(words[t] for t in tasks)


def render_html(report: Report, env: dict[str, Any], stats: dict[str, Any], run: dict[str, Any]) -> str:
    cfg = report.config
    title = f"FCM CTC report: {cfg.name}"
    plots = []
    for m in cfg.report_metrics:
        if report.points:
            png = base64.b64encode(rd_plot_png(cfg, report.points, m)).decode()
            plots.append(
                f'<figure><img class="rd" alt="RD curve {m}" src="data:image/png;base64,{png}">'
                f"<figcaption>{html.escape(METRIC_LABELS[m])} vs bpp</figcaption></figure>"
            )
    others = _other_tasks(report.points)
    summary = [
        {
            "codec": p.codec,
            "point": p.point,
            "bpp": _sig(p.bpp),
            "bpp (mean/image)": _sig(p.bpp_mean),
            "mAP@0.5 %": _fixed(100 * p.map50, ".2f"),
            "mAP %": _fixed(100 * p.map, ".2f"),
            "AP S / M / L %": " / ".join(_size_ap(v) for v in (p.map_small, p.map_medium, p.map_large)),
            **{
                f"{metric_label(metric_name(t, k))} %": _fixed(100 * p.metric(metric_name(t, k)), ".2f")
                for t in others
                for k in ("map50", "map")
            },
            "nn_part1 ms": _fixed(1000 * p.time_s["nn_part1"], ".1f"),
            "encode ms": _fixed(1000 * p.time_s["encode"], ".1f"),
            "decode ms": _fixed(1000 * p.time_s["decode"], ".1f"),
            "nn_part2 ms": _fixed(1000 * p.time_s["nn_part2"], ".1f"),
            "kMAC/px part1": _fixed(p.kmac_per_pixel["nn_part1"], ".1f"),
            "kMAC/px enc": _fixed(p.kmac_per_pixel["encode"], ".1f"),
            "kMAC/px dec": _fixed(p.kmac_per_pixel["decode"], ".1f"),
            "kMAC/px part2": _fixed(p.kmac_per_pixel["nn_part2"], ".1f"),
        }
        for p in report.points
    ]
    bd = [
        {
            "codec": r["codec"],
            "anchor": r["anchor"],
            "metric": METRIC_LABELS.get(r["metric"], r["metric"]),
            "curve": r["curve"],
            "BD-rate % (pchip)": bd_cell(r, "bd_rate_pchip"),
            "BD-rate % (cubic)": bd_cell(r, "bd_rate_cubic"),
            "BD-mAP, points of % (pchip)": bd_cell(r, "bd_metric_pchip", 100, "+.2f"),
            "BD-mAP, points of % (cubic)": bd_cell(r, "bd_metric_cubic", 100, "+.2f"),
            "overlap % (mAP / rate)": f"{_fixed(100 * r['overlap_metric'], '.0f')} / "
            f"{_fixed(100 * r['overlap_rate'], '.0f')}",
            "warning": r["warning"],
            "note": r["note"],
        }
        for r in report.bd
    ]
    nl = [
        {
            "codec": r["codec"],
            "metric": METRIC_LABELS.get(r["metric"], r["metric"]),
            "uncompressed %": _fixed(100 * r["reference_map"], ".2f"),
            "near-lossless bpp": _sig(r["near_lossless_bpp"]),
            "raw float32 bpp": _fixed(r["raw_feature_bpp"], ".2f"),
            "compression ratio": _fixed(r["compression_ratio"], ".0f"),
            "note": r["note"],
        }
        for r in report.near_lossless
    ]
    pk = env.get("packages", {})
    meta_rows = [
        {"item": "git commit", "value": env.get("git_commit", "unknown")},
        {"item": "config file", "value": cfg.source_path or ""},
        {
            "item": "dataset",
            "value": f"{cfg.dataset.name}: {len(run.get('images', []))} images, "
            f"annotations {cfg.dataset.annotations.name}",
        },
        {
            "item": "network / split",
            "value": f"{cfg.network.name} / {run.get('split', '')} "
            f"(weights sha256 {run.get('weights_sha256', '')[:16]}...)",
        },
        {"item": "code version", "value": json.dumps(run.get("code_version", {}))},
        {
            "item": "jobs (planned / cached / computed)",
            "value": f"{stats.get('planned', '?')} / {stats.get('cached', '?')} / {stats.get('computed', '?')}",
        },
        {
            "item": "last run wall time",
            "value": f"{stats.get('seconds', float('nan')):.1f} s, "
            f"workers {stats.get('workers', '?')}, dask {stats.get('dask')}",
        },
        {"item": "python", "value": env.get("python", "")},
        *({"item": k, "value": v} for k, v in pk.items()),
        *({"item": f"machine {k}", "value": v} for k, v in env.get("machine", {}).items()),
    ]
    missing = (
        (
            f"<p class='warn'>{report.missing_jobs} planned jobs have no result yet; rate points with "
            "missing images are left out.</p>"
        )
        if report.missing_jobs
        else ""
    ) + (
        (
            f"<p class='warn'>{report.stale_results} results were computed by code or weights that have "
            "changed since; <code>fcm_ctc run</code> recomputes them.</p>"
        )
        if report.stale_results
        else ""
    )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "margin:1em 0;font-size:13px}td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}"
        "th{background:#eee}td:first-child{text-align:left}pre{background:#f6f6f6;padding:1em;"
        "overflow:auto}.warn{color:#a00}figure{display:inline-block;margin:0 1em 1em 0}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{style}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{missing}
<p>Rate: bits per pixel = total coded bits of the set / total original-image pixels (primary);
accuracy: COCO {html.escape(_tasks_text(cfg.tasks))} over the whole set at each rate point (primary: {
        html.escape(METRIC_LABELS[cfg.primary_metric])
    }). Anchors: {html.escape(", ".join(cfg.anchors) or "none")}.</p>
<h2>Rate-accuracy curves</h2>
{"".join(plots)}
<h2>BD-rate and BD-mAP vs anchors</h2>
<p>Negative BD-rate: fewer bits than the anchor at equal accuracy; BD-mAP in points of %, positive: more
accurate at equal rate. Curve <i>front</i>: dominated points left out; <i>monotone</i>: MPEG's monotone
cubic fit of every curve. Overlap: the share of the two curves' combined range (mAP axis for BD-rate,
log-rate axis for BD-mAP) that the figure averages over; below {100 * cfg.bd_min_overlap:.0f} % a warning.
<i>unreliable</i>: a figure outside what any monotone curve through the points allows (a cubic
overshoot), not given.</p>
{_html_table(bd, list(bd[0]) if bd else ["codec"], "bd")}
<h2>Near-lossless rates</h2>
<p>Lowest bpp with relative mAP loss below {100 * cfg.near_lossless_max_rel_loss:g} % vs the uncompressed
network ({html.escape(str(cfg.reference))}), interpolated in log-rate; compression ratio vs raw float32
features.</p>
{_html_table(nl, list(nl[0]) if nl else ["codec"], "near_lossless")}
<h2>Rate points</h2>
<p>Times: mean per image on this machine. Complexity: kMAC per original-image pixel
(Conv2d / ConvTranspose2d / Linear multiply-accumulates).</p>
{_html_table(summary, list(summary[0]) if summary else ["codec"], "summary")}
<h2>Run metadata</h2>
{_html_table(meta_rows, ["item", "value"], "meta")}
<h3>Configuration</h3>
<pre>{html.escape(cfg.source)}</pre>
</body></html>
"""
