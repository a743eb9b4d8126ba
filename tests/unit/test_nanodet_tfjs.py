"""The PyTorch NanoDet port against the original TF.js graph run in Node.

Fixtures: tests/fixtures/tfjs/nanodet_*.npz, made by tools/make_tfjs_fixtures.py
(pure-JS @tensorflow/tfjs, cpu backend) from the same preprocessed input tensor."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "tfjs").glob("nanodet_*.npz"))
TOL = 1e-3

pytestmark = pytest.mark.needs_assets


def test_there_are_at_least_two_real_images():
    assert len(FIXTURES) >= 2


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_head_outputs_match_tfjs(fixture, nanodet, assets):
    z = np.load(fixture)
    image_path = assets / str(z["image"])
    assert hashlib.sha256(image_path.read_bytes()).hexdigest() == str(z["image_sha256"])
    image = np.asarray(Image.open(image_path).convert("RGB"))
    x, meta = nanodet.preprocess(image)
    # same input tensor as the one fed to the TF.js graph (else the fixture is stale)
    assert hashlib.sha256(x.numpy().astype("<f4").tobytes()).hexdigest() == str(z["input_sha256"])
    assert json.loads(str(z["preprocessing_json"]))["scale_x"] == pytest.approx(meta.scale_x)

    outs = nanodet.head_outputs(nanodet.part1(x))
    # per stride: (HW, 124) = 80 sigmoid scores + 44 distribution logits, as the graph's outputs
    per_stride = {int(s): torch.cat([sc[0], di[0]], 1).numpy() for s, (sc, di) in zip(z["strides"], outs)}

    for strides, index, values in (
        (z["loc_stride"], z["loc_index"], z["loc_values"]),
        (z["top_stride"], z["top_index"], z["top_values"]),
    ):
        ours = np.stack([per_stride[int(s)][int(i)] for s, i in zip(strides, index)])
        diff = np.abs(ours - values).max()
        assert diff <= TOL, f"max abs diff {diff:.2e} at sampled locations"

    # whole tensors through their sums (float64): scores then distributions per stride
    full = [sc[0].double().numpy() for sc, _ in outs] + [di[0].double().numpy() for _, di in outs]
    for name, t, ref_sum, ref_sq in zip(z["output_names"], full, z["output_sum"], z["output_sumsq"]):
        n = t.size
        assert abs(t.sum() - ref_sum) <= TOL * n**0.5 * 4, name
        assert abs((t**2).sum() - ref_sq) <= 1e-4 * max(1.0, abs(ref_sq)), name
