"""fcm_enc with NN part 1 in PyTorch against ONNX (onnxruntime, torch never imported):
time and peak memory of one encoding process over N images, and the accuracy of what the
reference decoder makes of each engine's containers.

    python -m tools.bench_onnx --count 10 --mode anchor --threads 1     # a markdown table

    python -m tools.bench_onnx --count 10 --mode learned_e2e --threads 1  # the codec model's export too

Each engine runs in a fresh process (`fcm_enc` on the images as one batch, --json), in which
the ONNX one blocks `import torch` for the modes whose encoders need none (bypass, anchor, and
learned_e2e with its codec model's export, python -m tools.export_onnx --codec learned_e2e;
vvc_msff runs its codec model in torch); the process reports its peak resident memory
(ru_maxrss). The containers are then decoded with `fcm_dec` (PyTorch NN part 2) into one
COCO results file per engine and scored against val2017-103's annotations; the ONNX row also
counts its containers that are byte-identical to the PyTorch engine's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codec.files import assets_dir

TORCH_FREE_MODES = ("bypass", "anchor", "learned_e2e")  # vvc_msff's encoder runs its codec model in torch

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
if {block_torch}:
    sys.modules["torch"] = None  # the camera has no torch: any import of it fails
from codec.apps import fcm_enc
rc = fcm_enc.main({argv!r})
print(json.dumps({{"rc": rc, "wall": time.perf_counter() - t0,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": sys.modules.get("torch") is not None}}), file=sys.stderr)
"""


def run_engine(
    engine: str,
    images: Path,
    out: Path,
    mode: str,
    threads: int,
    onnx_model: Path | None,
    codec_model: Path | None = None,
) -> dict:
    argv = [str(images), "-o", str(out), "--mode", mode, "--threads", str(threads), "--json", "--force"]
    if engine == "onnx":
        argv += ["--engine", "onnx"] + (["--onnx-model", str(onnx_model)] if onnx_model else [])
        argv += ["--codec-weights", str(codec_model)] if codec_model else []
    code = CHILD.format(block_torch=engine == "onnx" and mode in TORCH_FREE_MODES, argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    if stats["rc"] != 0:
        raise SystemExit(f"{engine}: fcm_enc failed:\n{proc.stderr}")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    stats["nn_part1_ms"] = 1000 * statistics.median(r["times"]["nn_part1"] for r in records)
    stats["encode_ms"] = 1000 * statistics.median(sum(r["times"].values()) for r in records)
    stats["bpp"] = statistics.mean(r["bpp"] for r in records)
    return stats


def score(bins: Path, tmp: Path, image_ids: list[int]) -> float:
    from ctc.coco_eval import evaluate_detections

    dets = tmp / f"{bins.name}.json"
    subprocess.run(
        [sys.executable, "-m", "codec.apps.fcm_dec", str(bins), "--detections", str(dets), "-q", "--force"],
        check=True,
        timeout=3600,
    )
    annotations = assets_dir() / "coco/val2017-103/annotations/instances_val2017_103.json"
    return evaluate_detections(json.loads(dets.read_text()), annotations, image_ids)["map"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10, help="images of val2017-103 (default: %(default)s)")
    p.add_argument("--mode", default="anchor", help="coding mode (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="NN part 1 threads (default: %(default)s)")
    p.add_argument("--onnx-model", type=Path, help="the exported NN part 1 (default: the cache's)")
    p.add_argument("--onnx-codec-model", type=Path, help="learned_e2e: the codec model's export (default: the cache's)")
    args = p.parse_args(argv)
    root = assets_dir()
    if root is None:
        raise SystemExit("bench_onnx: needs the shared assets (FCM_ASSETS)")
    src = root / "coco/val2017-103/images"
    names = sorted(p.name for p in src.iterdir())[: args.count]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = tmp / "images"
        images.mkdir()
        for n in names:
            (images / n).symlink_to(src / n)
        rows = {}
        for engine in ("torch", "onnx"):
            t0 = time.perf_counter()
            rows[engine] = run_engine(
                engine, images, tmp / engine, args.mode, args.threads, args.onnx_model, args.onnx_codec_model
            )
            rows[engine]["map"] = score(tmp / engine, tmp, [int(Path(n).stem) for n in names])
            rows[engine]["total"] = time.perf_counter() - t0
        identical = sum(
            (tmp / "torch" / f"{Path(n).stem}.bin").read_bytes() == (tmp / "onnx" / f"{Path(n).stem}.bin").read_bytes()
            for n in names
        )
    print(f"fcm_enc --mode {args.mode} --threads {args.threads}, {len(names)} val2017-103 images in one process\n")
    print("| engine | torch imported | process wall (s) | peak memory (MB) | NN part 1 (ms, median) "
          "| encode per image (ms, median) | mean bpp | mAP@[.5:.95] (fcm_dec) "
          "| containers identical to torch's |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for engine, r in rows.items():
        same = "-" if engine == "torch" else f"{identical} of {len(names)}"
        print(
            f"| {engine} | {'yes' if r['torch'] else 'no'} | {r['wall']:.1f} | {r['maxrss_mb']:.0f} | "
            f"{r['nn_part1_ms']:.1f} | {r['encode_ms']:.0f} | {r['bpp']:.4f} | {r['map']:.4f} | {same} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
