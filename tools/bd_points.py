"""BD-rate between rate points measured in different runs: an `fcm_ctc` run's codec against the
points of another run's table (e.g. the README's anchors), without rerunning the anchors.

A curve is ``NAME=BPP:ACC,BPP:ACC,...`` (accuracy in %, as in the fcm_ctc tables) or
``NAME@RUN_DIR`` (that codec's points in RUN_DIR/summary.csv, the file `fcm_ctc run` writes,
mAP@0.5 or with ``--metric map`` mAP@[.5:.95]). Each ``--test`` curve is compared with each
``--anchor`` curve the way `fcm_ctc` does it: BD-rate on each curve's rate-accuracy front,
pchip (ctc.metrics.rate_accuracy_front, ctc.bd_rate), with the overlap on the accuracy axis.

    python -m tools.bd_points --test learned_e2e_refine50@runs/val50 \\
        --anchor "feature_anchor=0.02117:5.89,0.03528:10.30,0.06616:14.93,0.1284:19.43"
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ctc.bd_rate import BDError, bd_rate_result

METRICS = ("map50", "map")


def parse_points(spec: str) -> tuple[str, list[tuple[float, float]]]:
    """``NAME=BPP:ACC,BPP:ACC,...`` -> (name, [(bpp, accuracy)]); ValueError."""
    name, _, pts = spec.partition("=")
    try:
        points = [tuple(float(x) for x in p.split(":")) for p in pts.split(",")]
    except ValueError:
        raise ValueError(f"{spec!r}: give NAME=BPP:ACC,BPP:ACC,...") from None
    if not name or any(len(p) != 2 for p in points):
        raise ValueError(f"{spec!r}: give NAME=BPP:ACC,BPP:ACC,...")
    return name, [(p[0], p[1]) for p in points]


def read_curve(spec: str, metric: str) -> tuple[str, list[tuple[float, float]]]:
    """``NAME=BPP:ACC,...`` or ``NAME@RUN_DIR`` -> (name, [(bpp, accuracy in %)]); ValueError."""
    if "=" in spec:
        return parse_points(spec)
    if "@" in spec:
        name, _, run = spec.partition("@")
        path = Path(run) / "summary.csv"
        try:
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("codec") == name]
        except OSError as e:
            raise ValueError(f"{spec!r}: cannot read {path}: {e.strerror}") from None
        if not rows:
            raise ValueError(f"{spec!r}: {path} has no codec {name!r}")
        try:
            return name, [(float(r["bpp"]), 100.0 * float(r[metric])) for r in rows]
        except (KeyError, ValueError):
            raise ValueError(f"{spec!r}: {path} is not an fcm_ctc summary.csv (bpp, {metric})") from None
    raise ValueError(f"{spec!r}: give NAME=BPP:ACC,... or NAME@RUN_DIR")


def front(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The rate-accuracy front: the points that no lower-rate point matches or beats (the rule
    of ctc.metrics.rate_accuracy_front, on plain pairs)."""
    out: list[tuple[float, float]] = []
    for bpp, m in sorted(points):
        if not out or m > out[-1][1]:
            out.append((bpp, m))
    return [p[0] for p in out], [p[1] for p in out]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", action="append", required=True, help="NAME=BPP:ACC,... or NAME@RUN_DIR (repeatable)")
    ap.add_argument("--anchor", action="append", required=True, help="NAME=BPP:ACC,... or NAME@RUN_DIR (repeatable)")
    ap.add_argument("--metric", choices=METRICS, default="map50", help="the column of a run's summary.csv")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    try:
        tests = [read_curve(s, args.metric) for s in args.test]
        anchors = [read_curve(s, args.metric) for s in args.anchor]
    except ValueError as e:
        ap.error(str(e))
    out = []
    for t_name, t_pts in tests:
        t_x, t_y = front(t_pts)
        for a_name, a_pts in anchors:
            a_x, a_y = front(a_pts)
            try:
                r = bd_rate_result(a_x, a_y, t_x, t_y)
            except BDError as e:
                print(f"{t_name} against {a_name}: no BD-rate ({e})")
                out.append({"test": t_name, "anchor": a_name, "bd_rate": None, "error": str(e)})
                continue
            warn = "" if r.overlap >= 0.75 else "  (overlap < 75 %)"
            print(
                f"{t_name} against {a_name}: BD-rate ({args.metric}, pchip) {r.value:+.2f} %, "
                f"overlap {100 * r.overlap:.0f} %{warn}"
            )
            out.append({"test": t_name, "anchor": a_name, "bd_rate": round(r.value, 2), "overlap": round(r.overlap, 3)})
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps({"metric": args.metric, "tests": dict(tests), "anchors": dict(anchors), "bd": out}, indent=1)
                + "\n"
            )
        except OSError as e:
            print(f"error: --json {args.json}: {e.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
