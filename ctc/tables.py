"""Markdown tables of a finished run, from the csv files `fcm_ctc run` / `fcm_ctc report` wrote:
rate points per codec, BD-rate / BD-mAP against each anchor, near-lossless rates.

``fcm_ctc tables DIR`` prints them; the README's CTC tables are this command's output, so anyone
can regenerate them from a run directory."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .errors import CtcError

_METRIC_NAMES = {"map50": "mAP@0.5", "map": "mAP@[.5:.95]", "map75": "mAP@0.75"}


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
    """One row per codec: its rate points as bpp / mAP@0.5 % / mAP %, lowest rate first."""
    by_codec: dict[str, list[dict[str, str]]] = {}
    for r in _read(run_dir / "summary.csv"):
        by_codec.setdefault(r["codec"], []).append(r)
    rows = []
    for codec, pts in by_codec.items():
        pts = sorted(pts, key=lambda r: _num(r["bpp"]))
        cells = [
            f"{r['point']}: {_num(r['bpp']):.4g} / {100 * _num(r['map50']):.2f} / {100 * _num(r['map']):.2f}"
            for r in pts
        ]
        rows.append([codec, pts[0]["n_images"], "; ".join(cells)])
    return _table(["codec", "images", "point: bpp / mAP@0.5 (%) / mAP@[.5:.95] (%)"], rows)


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
                _METRIC_NAMES.get(r["metric"], r["metric"]),
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
                _METRIC_NAMES.get(r["metric"], r["metric"]),
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
