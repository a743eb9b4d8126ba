"""Batch use of the apps, measured: a folder of images encoded by one `fcm_enc` process and
decoded by one `fcm_dec` process into one COCO results file, against per-image runs.

It runs the installed console scripts as a user would (subprocesses), times them, counts the
network loads each batch process reports in its summary, evaluates the results file with
pycocotools (ctc/coco_eval.py), and for the first ``--per-image`` images also runs one
`fcm_enc` and one `fcm_dec` process per image: their containers must be byte-identical to
the batch's, and the mAP of the batch results restricted to those images equal to the
per-image results' mAP.

    python -m tools.bench_batch --dataset val2017-103 --mode learned_e2e --phi 2 --per-image 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codec.files import assets_path

DATASETS = {
    "val2017-103": ("coco/val2017-103/images", "coco/val2017-103/annotations/instances_val2017_103.json"),
    "coco128": ("coco/coco128/images", "coco/coco128/annotations/instances_train2017_128.json"),
}


def _app(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return dt, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="val2017-103")
    ap.add_argument("--limit", type=int, default=None, help="first N images (sorted by name)")
    ap.add_argument("--mode", default="learned_e2e")
    ap.add_argument("--phi", type=int, default=2, help="learned_e2e quality index")
    ap.add_argument("--qp", type=int, default=None, help="QP of the VVC modes (instead of --phi)")
    ap.add_argument("--per-image", type=int, default=5, help="images also run one process each (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")
    if args.per_image < 0:
        ap.error("--per-image must be >= 0")

    images_rel, ann_rel = DATASETS[args.dataset]
    images_dir, ann = assets_path() / images_rel, assets_path() / ann_rel
    if not images_dir.is_dir() or not ann.is_file():
        print(f"bench_batch: error: {images_dir} or {ann} not found", file=sys.stderr)
        return 2
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    files = files[: args.limit] if args.limit else files
    rate = (
        ["--qp", str(args.qp)]
        if args.qp is not None
        else (["--phi", str(args.phi)] if args.mode == "learned_e2e" else [])
    )

    try:
        command = "python -m tools.bench_batch " + " ".join(argv if argv is not None else sys.argv[1:])
        return _measure(args, files, ann, rate, command)
    except RuntimeError as e:  # an app refused or failed: its own message, no traceback
        print(f"bench_batch: error: {e}", file=sys.stderr)
        return 1


def _measure(args: argparse.Namespace, files: list[Path], ann: Path, rate: list[str], command: str) -> int:
    from ctc.coco_eval import evaluate_detections

    common = ["--threads", str(args.threads)]
    with tempfile.TemporaryDirectory(prefix="fcm_bench_batch_") as tmp:
        t = Path(tmp)
        src = t / "images"
        src.mkdir()
        for f in files:
            (src / f.name).symlink_to(f)
        bins, dets = t / "bins", t / "dets.json"
        t_enc, out_enc = _run([_app("fcm_enc"), str(src), "-o", str(bins), "--mode", args.mode, *rate, *common])
        t_dec, out_dec = _run([_app("fcm_dec"), str(bins), "--detections", str(dets), *common])
        results = json.loads(dets.read_text())
        ids = sorted({r["image_id"] for r in results})
        m_batch = evaluate_detections(results, ann)
        containers = sorted(bins.glob("*.bin"))
        total_bytes = sum(p.stat().st_size for p in containers)
        res = {
            "command": command,
            "images": len(files),
            "containers": len(containers),
            "image_ids_in_results": len(ids),
            "encode_process_s": round(t_enc, 2),
            "decode_process_s": round(t_dec, 2),
            "network_loads_reported": {
                "fcm_enc": out_enc.count("network load"),
                "fcm_dec": out_dec.count("network load"),
            },
            "bytes": total_bytes,
            "map": round(m_batch["map"], 6),
            "map50": round(m_batch["map50"], 6),
        }
        if args.per_image:
            sub = files[: args.per_image]
            t_pe, identical, per_results = 0.0, 0, []
            for f in sub:
                one, one_dets = t / f"one_{f.stem}.bin", t / f"one_{f.stem}.json"
                dt1, _ = _run([_app("fcm_enc"), str(f), "-o", str(one), "--mode", args.mode, *rate, *common])
                dt2, _ = _run([_app("fcm_dec"), str(one), "--detections", str(one_dets), *common])
                t_pe += dt1 + dt2
                identical += one.read_bytes() == (bins / f"{f.stem}.bin").read_bytes()
                per_results += json.loads(one_dets.read_text())
            sub_ids = sorted({r["image_id"] for r in per_results})
            m_per = evaluate_detections(per_results, ann, image_ids=sub_ids)
            m_sub = evaluate_detections([r for r in results if r["image_id"] in set(sub_ids)], ann, image_ids=sub_ids)
            res["per_image"] = {
                "images": len(sub),
                "processes_s": round(t_pe, 2),
                "identical_containers": identical,
                "map_per_image_runs": round(m_per["map"], 6),
                "map_batch_same_images": round(m_sub["map"], 6),
            }
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    ok = res["containers"] == len(files) and (
        "per_image" not in res
        or (
            res["per_image"]["identical_containers"] == res["per_image"]["images"]
            and res["per_image"]["map_per_image_runs"] == res["per_image"]["map_batch_same_images"]
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
