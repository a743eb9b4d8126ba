"""BD-rate between the dev evaluations of training runs (mAP@0.5 over bits per pixel on the
dev set, pchip on each curve's rate-accuracy front), for ablations at equal steps or equal
training time:

    python -m tools.dev_compare runs/g3b/f.log@1308 runs/g4/f.log@1281
    python -m tools.dev_compare codec/models/weights/fenet_nanodet_neck_g3.json runs/g4/f.json

A run is a training log (``<out>.log``, its "dev step" lines) or a weights record
(``.json``, its dev history); ``@STEP`` picks the evaluation at that step, otherwise the
run's best (the record's best_step; in a log, the evaluation marked best last). The first
run is the reference; every other is compared with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def dev_history(path: Path) -> tuple[list[dict], int | None]:
    """(evaluations with per-phi figures, best step or None)."""
    if path.suffix == ".json":
        dev = json.loads(path.read_text()).get("dev") or {}
        return [h for h in dev.get("history", []) if "per_phi" in h], dev.get("best_step")
    hist, best = [], None
    for line in path.read_text().splitlines():
        if line.startswith("dev step "):
            entry = json.loads(line.split(": ", 1)[1].removesuffix("  (best)"))
            if "per_phi" in entry:
                hist.append(entry)
                if line.endswith("(best)"):
                    best = entry["step"]
    return hist, best


def pick(spec: str) -> tuple[str, dict]:
    path, _, step = spec.partition("@")
    hist, best = dev_history(Path(path))
    want = int(step) if step else best
    for h in hist:
        if h["step"] == want:
            return f"{path}@{want}", h
    raise SystemExit(f"error: {path} has no dev evaluation at step {want} (steps: {[h['step'] for h in hist]})")


def main(argv: list[str] | None = None) -> int:
    from ctc.bd_rate import bd_rate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="PATH[@STEP]: a training log or weights record; the first is the reference")
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        print("error: give a reference run and at least one other", file=sys.stderr)
        return 2
    ref_name, ref = pick(args.runs[0])

    def curve(h: dict) -> tuple[list[float], list[float]]:
        """The rate-accuracy front, the rule of ctc.metrics.rate_accuracy_front (which takes
        the harness's PointResult objects): points no lower-rate point matches or beats."""
        front: list[tuple[float, float]] = []
        for bpp, m in sorted((v["bpp"], 100 * v["map50"]) for v in h["per_phi"].values()):
            if not front or m > front[-1][1]:
                front.append((bpp, m))
        return [p[0] for p in front], [p[1] for p in front]

    r_x, r_y = curve(ref)
    print(f"reference {ref_name}: mean mAP@0.5 {100 * ref.get('mean_map50', 0):.2f}")
    for spec in args.runs[1:]:
        name, h = pick(spec)
        x, y = curve(h)
        bd = bd_rate(r_x, r_y, x, y, method="pchip")
        mean = 100 * h.get("mean_map50", 0)
        pts = ", ".join(f"{a:.4f}/{b:.1f}" for a, b in zip(x, y))
        print(f"{name}: mean mAP@0.5 {mean:.2f}; BD-rate {bd:+.1f} % against the reference; bpp/mAP@0.5 {pts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
