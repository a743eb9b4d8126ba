"""Outputs of a CTC run, rebuilt from the run directory's cache alone.

In DIR:
* ``summary.csv``: one row per (codec, rate point): bpp (total bits / total pixels),
  bpp_mean, mAP@0.5, mAP@[.5:.95], mAP@0.75, mean seconds per image per stage,
  kMAC per pixel per stage, raw float32 feature bpp.
* ``bd_rate.csv``: every codec against every anchor, per metric: BD-rate (%) and
  BD-mAP (mAP units, [0, 1]) with pchip and cubic interpolation.
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
* ``detections/<codec>/<point>.json``: COCO results-format detections.
* ``report.html``: self-contained (RD curves as embedded PNGs, tables, run metadata).
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
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import ResultCache
from .codecs import STAGES
from .config import CtcConfig, config_from_dict
from .errors import CacheError
from .metrics import PointResult, aggregate_point, bd_rows, curves, near_lossless_rows

METRIC_LABELS = {"map50": "mAP@0.5", "map": "mAP@[.5:.95]", "map75": "mAP@0.75"}


@dataclass
class Report:
    config: CtcConfig
    points: list[PointResult]
    bd: list[dict[str, Any]]
    near_lossless: list[dict[str, Any]]
    missing_jobs: int
    out_dir: Path

    def table(self) -> str:
        return format_table(self.points)


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
            pr, d = aggregate_point(c.name, c.type, p.name, p.param, p.value, rs, config.dataset.annotations)
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
    _write_csv(
        out / "bd_rate.csv",
        bd,
        ["codec", "anchor", "metric", "bd_rate_pchip", "bd_rate_cubic", "bd_metric_pchip", "bd_metric_cubic", "note"],
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
    write_cttc(out / "cttc", config, points)
    for (codec, point), d in dets.items():
        path = out / "detections" / codec / f"{point}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(d))
    report = Report(config, points, bd, nl, missing, out)
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
            "n_detections": p.n_detections,
            "raw_feature_bpp": p.raw_feature_bpp,
        }
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


def format_table(points: list[PointResult]) -> str:
    """The run's figures as a fixed-width text table (printed by fcm_ctc)."""
    head = ["codec", "point", "bpp", "mAP50", "mAP", "part1 ms", "enc ms", "dec ms", "part2 ms", "kMAC/px"]
    lines = [head]
    for p in points:
        lines.append(
            [
                p.codec,
                p.point,
                f"{p.bpp:.4f}",
                f"{100 * p.map50:.2f}",
                f"{100 * p.map:.2f}",
                *(f"{1000 * p.time_s[s]:.1f}" for s in STAGES),
                f"{p.kmac_per_pixel['nn_part1'] + p.kmac_per_pixel['nn_part2']:.1f}",
            ]
        )
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in lines
    )


# -- HTML --------------------------------------------------------------------------------


def rd_plot_png(config: CtcConfig, points: list[PointResult], metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for codec, curve in curves(points).items():
            xs = [p.bpp for p in curve]
            ys = [100 * p.metric(metric) for p in curve]
            if len(curve) == 1:  # a reference line (uncompressed, one-point bypass)
                (marker,) = ax.plot(xs, ys, "s", label=f"{codec} (reference)")
                ax.axhline(ys[0], linestyle="--", linewidth=1, color=marker.get_color(), alpha=0.7)
            else:
                style = "o-" if codec in config.anchors else "^-"
                ax.plot(xs, ys, style, label=codec + (" (anchor)" if codec in config.anchors else ""))
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (total bits / total pixels)")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
        ax.set_title(f"{config.name}: {METRIC_LABELS[metric]} vs rate ({config.network.name})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _html_table(rows: list[dict[str, Any]], columns: list[str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(_fmt(r.get(c, ''))))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


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
    summary = [
        {
            "codec": p.codec,
            "point": p.point,
            "bpp": p.bpp,
            "bpp (mean/image)": p.bpp_mean,
            "mAP@0.5 %": 100 * p.map50,
            "mAP %": 100 * p.map,
            "nn_part1 ms": 1000 * p.time_s["nn_part1"],
            "encode ms": 1000 * p.time_s["encode"],
            "decode ms": 1000 * p.time_s["decode"],
            "nn_part2 ms": 1000 * p.time_s["nn_part2"],
            "kMAC/px part1": p.kmac_per_pixel["nn_part1"],
            "kMAC/px enc": p.kmac_per_pixel["encode"],
            "kMAC/px dec": p.kmac_per_pixel["decode"],
            "kMAC/px part2": p.kmac_per_pixel["nn_part2"],
        }
        for p in report.points
    ]
    bd = [{**r, "metric": METRIC_LABELS.get(r["metric"], r["metric"])} for r in report.bd]
    nl = [{**r, "metric": METRIC_LABELS.get(r["metric"], r["metric"])} for r in report.near_lossless]
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
accuracy: COCO box mAP over the whole set at each rate point (primary: {
        html.escape(METRIC_LABELS[cfg.primary_metric])
    }). Anchors: {html.escape(", ".join(cfg.anchors) or "none")}.</p>
<h2>Rate-accuracy curves</h2>
{"".join(plots)}
<h2>BD-rate (%) and BD-mAP vs anchors</h2>
<p>Negative BD-rate: fewer bits than the anchor at equal accuracy. BD-mAP in mAP units ([0, 1]).</p>
{
        _html_table(
            bd,
            [
                "codec",
                "anchor",
                "metric",
                "bd_rate_pchip",
                "bd_rate_cubic",
                "bd_metric_pchip",
                "bd_metric_cubic",
                "note",
            ],
            "bd",
        )
    }
<h2>Near-lossless rates</h2>
<p>Lowest bpp with relative mAP loss below {100 * cfg.near_lossless_max_rel_loss:g} % vs the uncompressed
network ({html.escape(str(cfg.reference))}), interpolated in log-rate; compression ratio vs raw float32
features.</p>
{
        _html_table(
            nl,
            ["codec", "metric", "reference_map", "near_lossless_bpp", "raw_feature_bpp", "compression_ratio", "note"],
            "near_lossless",
        )
    }
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
