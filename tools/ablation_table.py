"""One table from the records of several FENet/DRNet training runs: what was varied
(loss mix, latent stride, channels, width, context model, init), the budget, the dev figure, and the
figures of tools/eval_fenet on a labelled set (the ceiling and, if measured, the
rate points).

    python -m tools.eval_fenet --weights RUN/f.pt --dataset val2017-103 --json RUN/eval_val.json
    python -m tools.ablation_table RUN1 RUN2 ...        # each RUN holds f.json (+ eval_val.json)

A run folder holds the weights record written by tools/train_fenet (``*.json`` beside the
``.pt``; ``--record NAME`` picks it) and optionally ``eval_val.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _stride(cfg: dict) -> int:
    scales = cfg["scales"]
    lv = cfg.get("latent_scale", -1) % len(scales)
    return scales[lv]["stride"] * (2 if cfg.get("latent_downsample") else 1)


def row(run: Path, record: str) -> dict:
    rec = json.loads((run / record).read_text())
    cfg, loss = rec["config"], rec.get("loss", {})
    ev_path = run / "eval_val.json"
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else None
    dev = rec.get("dev") or {}
    if loss.get("task_weight", 0) and loss.get("feature_weight", 1):
        mix = f"feature {loss['feature_weight']:g} + task {loss['task_weight']:g}"
    elif loss.get("task_weight", 0):
        mix = "task only"
    else:
        mix = "feature MSE only"
    out = {
        "run": run.name,
        "training": "transform only (ceiling)" if loss.get("ceiling") else "rate-distortion",
        "loss": mix,
        "y stride": _stride(cfg),
        "M": cfg["latent_channels"],
        "width": cfg["width"],
        "linear path": "yes" if cfg.get("linear_path") else "no",
        "context": (
            "channel groups " + "/".join(str(g) for g in cfg["channel_groups"]) + " + checkerboard"
            if cfg.get("channel_groups")
            else "checkerboard"
        ),
        "init": (rec.get("init") or {}).get("weights", "PCA" if rec.get("linear_path_init") else "random"),
        "steps": rec["steps"],
        "CPU hours": rec.get("train_hours", round(rec.get("train_seconds", 0) / 3600, 3)),
        "dev figure": f"{dev['best_figure']:.4f}" if dev.get("best_figure") is not None else "-",
    }
    if ev:
        ref = ev["uncompressed"]["map50"]
        out["ceiling mAP@0.5 (val)"] = f"{ev['ceiling']['map50']:.4f} ({100 * ev['ceiling']['map50'] / ref:.1f} %)"
        if ev.get("per_phi"):
            top = max(ev["per_phi"].values(), key=lambda r: r["map50"])
            out["best coded mAP@0.5 (val)"] = f"{top['map50']:.4f} at {top['bpp']:.4f} bpp"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--record", default="f.json", help="the weights record's file name in each run folder")
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        if not (run / args.record).is_file():
            print(f"error: {run / args.record} not found", file=sys.stderr)
            return 2
        rows.append(row(run, args.record))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "-")) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
