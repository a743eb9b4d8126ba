"""fcm_ctc: run the FCM common test conditions and report.

Examples::

    fcm_ctc configs                    # the bundled configurations
    fcm_ctc run quick --out runs/quick # a bundled config by name (or any YAML file by path)
    fcm_ctc run coco128 --out runs/coco128 --workers 2
    fcm_ctc run val2017-103 --out runs/val --codecs image_anchor,feature_anchor --limit 20
    fcm_ctc run my_config.yaml --out runs/mine --dask tcp://scheduler:8786
    fcm_ctc report runs/quick          # rebuild the csv files and report.html from the cache
    fcm_ctc tables runs/quick          # the run's rate points, BD-rates and near-lossless rates as Markdown

A config is checked whole before anything runs. With stdout and stderr on a terminal,
progress is a bar; otherwise (a log file, a pipe) a line at most every 30 seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import CtcError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fcm_ctc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or resume) a CTC configuration into DIR and write the report")
    r.add_argument("config", help="CTC configuration: a bundled one by name (see `fcm_ctc configs`) or a YAML file")
    r.add_argument("--out", required=True, help="run directory (cache.sqlite, csv files, report.html)")
    r.add_argument(
        "--force",
        action="store_true",
        help="use --out even if it holds another config's run (its outputs are replaced) or other files",
    )
    r.add_argument(
        "--assets",
        help="assets directory for ${assets} in the config (default: $FCM_ASSETS, else <repo>/../shared/assets)",
    )
    r.add_argument("--images", help="image directory (overrides the config's dataset)")
    r.add_argument("--annotations", help="COCO instances json (overrides the config's dataset)")
    r.add_argument("--limit", type=int, help="use only the first N images")
    r.add_argument("--codecs", help="comma-separated subset of the config's codecs")
    r.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: in this process)")
    r.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every job, whatever the backend (default 1); part of the cache key, since "
        "NN part 1's last bits, and so a bitstream, can differ between thread counts",
    )
    r.add_argument("--dask", metavar="ADDRESS", help="submit the jobs to this Dask scheduler instead")
    r.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    r.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="without a terminal: a progress line at most every SECONDS (default 30)",
    )
    rep = sub.add_parser("report", help="rebuild the outputs of DIR from its cache (runs nothing)")
    rep.add_argument("dir", help="run directory of an earlier `fcm_ctc run`")
    tab = sub.add_parser("tables", help="print DIR's rate points, BD-rates and near-lossless rates as Markdown")
    tab.add_argument("dir", help="run directory of an earlier `fcm_ctc run`")
    sub.add_parser("configs", help="list the bundled configurations (run one with `fcm_ctc run NAME`)")
    return p


def _configs() -> int:
    from .config import bundled_configs, config_summary

    configs = bundled_configs()
    if not configs:
        print("no bundled configurations found (ctc/configs is missing from this installation)")
        return 0
    width = max(len(n) for n in configs)
    for name, path in configs.items():
        print(f"{name.ljust(width)}  {config_summary(path)}")
    print("\nrun one with: fcm_ctc run NAME --out DIR")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .config import load_config, with_overrides
    from .report import build_report, run_environment
    from .runner import run_ctc

    if args.workers < 1:
        raise CtcError(f"--workers must be >= 1, got {args.workers}")
    if args.threads < 1:
        raise CtcError(f"--threads must be >= 1, got {args.threads}")
    if (args.images is None) != (args.annotations is None):
        raise CtcError("--images and --annotations go together")
    if not args.progress_every >= 0:
        raise CtcError(f"--progress-every must be >= 0, got {args.progress_every}")
    config = load_config(args.config, args.assets)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs is not None else None
    config = with_overrides(config, args.images, args.annotations, args.limit, codecs)
    t0 = time.perf_counter()
    info = run_ctc(
        config,
        args.out,
        workers=args.workers,
        dask_address=args.dask,
        progress="none" if args.no_progress else "bar" if sys.stdout.isatty() and sys.stderr.isatty() else "lines",
        torch_threads=args.threads,
        force=args.force,
        progress_interval=args.progress_every,
    )
    s = info.stats
    print(
        f"{config.name}: {len(info.images)} images, {s.planned} jobs: {s.cached} cached, {s.computed} computed "
        f"in {s.seconds:.1f} s"
    )
    report = build_report(args.out, run_environment())
    print(report.table())
    if report.bd:
        print()
        print(report.bd_table())
    print(f"wall time {time.perf_counter() - t0:.1f} s; outputs in {Path(args.out)} (report.html)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    if not (Path(args.dir) / "cache.sqlite").is_file():
        raise CtcError(f"{args.dir}: no cache.sqlite (not a run directory)")
    report = build_report(args.dir)
    print(report.table())
    if report.missing_jobs:
        print(f"{report.missing_jobs} planned jobs have no result yet; rerun `fcm_ctc run` to complete")
    if report.stale_results:
        print(
            f"{report.stale_results} results were computed by code or weights that have changed since; "
            "`fcm_ctc run` recomputes them"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from .bd_rate import BDError
    from .coco_eval import CocoEvalError

    args = _parser().parse_args(argv)
    try:
        if args.command == "configs":
            return _configs()
        if args.command == "tables":
            from .tables import markdown_tables

            print(markdown_tables(args.dir))
            return 0
        return _run(args) if args.command == "run" else _report(args)
    except (CtcError, CocoEvalError, BDError) as e:
        print(f"fcm_ctc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fcm_ctc: interrupted; finished jobs are kept in the cache, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
