"""Markdown tables of a finished run, from the csv files `fcm_ctc run` / `fcm_ctc report` wrote:
rate points per codec, BD-rate / BD-mAP against each anchor, near-lossless rates.

``fcm_ctc tables DIR`` prints them; the README's CTC tables are this command's output, so anyone
can regenerate them from a run directory."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .errors import CtcError
from .tasks import metric_label


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise CtcError(f"{path}: missing (run `fcm_ctc report {path.parent}` first)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float, spec: str, suffix: str = "") -> str:
    return "n/a" if not math.isfinite(value) else f"{value:{spec}}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def points_table(run_dir: Path) -> str:
    """One row per codec: its rate points as bpp / mAP@0.5 % / mAP %, lowest rate first, and the
    same two figures of every other task the run measured (mask AP, keypoint AP)."""
    from .tasks import TASKS, metric_name

    rows_in = _read(run_dir / "summary.csv")
    columns = [
        m
        for t in TASKS
        for m in (metric_name(t, "map50"), metric_name(t, "map"))
        if rows_in and m in rows_in[0] and rows_in[0][m] != ""
    ] or ["map50", "map"]
    by_codec: dict[str, list[dict[str, str]]] = {}
    for r in rows_in:
        by_codec.setdefault(r["codec"], []).append(r)
    rows = []
    for codec, pts in by_codec.items():
        pts = sorted(pts, key=lambda r: _num(r["bpp"]))
        cells = [
            f"{r['point']}: {_num(r['bpp']):.4g} / " + " / ".join(f"{100 * _num(r[m]):.2f}" for m in columns)
            for r in pts
        ]
        rows.append([codec, pts[0]["n_images"], "; ".join(cells)])
    head = "point: bpp / " + " / ".join(f"{metric_label(m)} (%)" for m in columns)
    return _table(["codec", "images", head], rows)


def bd_table(run_dir: Path) -> str:
    """BD-rate (%) and BD-mAP (points of %) with both interpolations, per curve kind (front /
    monotone), with the overlap of the two curves; n/a rows keep their reason, figures outside
    the plausible range read "unreliable"."""
    from .report import bd_cell

    rows = []
    for r in _read(run_dir / "bd_rate.csv"):
        overlap = (
            f"{_fmt(100 * _num(r.get('overlap_metric', '')), '.0f')} / "
            f"{_fmt(100 * _num(r.get('overlap_rate', '')), '.0f')} %"
        )
        note = "; ".join(t for t in (r.get("warning", ""), r["note"]) if t)
        rows.append(
            [
                r["codec"],
                r["anchor"],
                metric_label(r["metric"]),
                r.get("curve", "front"),
                bd_cell(r, "bd_rate_pchip", 1, "+.1f") + " %" * _is_number(bd_cell(r, "bd_rate_pchip")),
                bd_cell(r, "bd_rate_cubic", 1, "+.1f") + " %" * _is_number(bd_cell(r, "bd_rate_cubic")),
                bd_cell(r, "bd_metric_pchip", 100, "+.2f"),
                bd_cell(r, "bd_metric_cubic", 100, "+.2f"),
                overlap,
                note.replace("|", "/"),
            ]
        )
    return _table(
        [
            "codec",
            "anchor",
            "metric",
            "curve",
            "BD-rate pchip",
            "BD-rate cubic",
            "BD-mAP pchip",
            "BD-mAP cubic",
            "overlap mAP / rate",
            "note",
        ],
        rows,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def near_lossless_table(run_dir: Path) -> str:
    """Lowest bpp within the configured relative loss of the uncompressed network, and the
    compression ratio against raw float32 features."""
    rows = []
    for r in _read(run_dir / "near_lossless.csv"):
        rows.append(
            [
                r["codec"],
                metric_label(r["metric"]),
                f"{100 * _num(r['reference_map']):.2f}",
                _fmt(_num(r["near_lossless_bpp"]), ".4g"),
                f"{_num(r['raw_feature_bpp']):.2f}",
                _fmt(_num(r["compression_ratio"]), ".0f", "x"),
                r["note"].replace("|", "/"),
            ]
        )
    return _table(
        ["codec", "metric", "uncompressed (%)", "near-lossless bpp", "raw float32 bpp", "ratio", "note"], rows
    )


def markdown_tables(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    return "\n\n".join(
        [
            "Rate points\n\n" + points_table(run_dir),
            "BD-rate (negative: fewer bits than the anchor for the same accuracy)\n\n" + bd_table(run_dir),
            "Near-lossless rate\n\n" + near_lossless_table(run_dir),
        ]
    )
