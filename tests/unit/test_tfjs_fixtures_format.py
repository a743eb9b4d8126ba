"""The TF.js reference fixtures (tests/fixtures/tfjs, made by tools/make_tfjs_fixtures.py):
present, complete, well-formed, reproducible in their sampling, and tied to the exact
model files of ../shared/assets (MANIFEST.sha256) and the pinned @tensorflow/tfjs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "tfjs"
TFJS_DIR = REPO / "tools" / "tfjs_reference"
MAX_FIXTURE_BYTES = 400_000


def _load_script():
    spec = importlib.util.spec_from_file_location("make_tfjs_fixtures", REPO / "tools" / "make_tfjs_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


mtf = _load_script()
NANODET = sorted(FIXTURES.glob("nanodet_*.npz"))
CENTERNET = sorted(FIXTURES.glob("centernet_*.npz"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pinned_tfjs_version() -> str:
    return json.loads((TFJS_DIR / "package.json").read_text())["dependencies"]["@tensorflow/tfjs"]


def _read_manifest(assets: Path) -> dict[str, str]:
    manifest = assets / "MANIFEST.sha256"
    if not manifest.is_file():
        pytest.skip(f"{manifest} missing")
    out = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            sha, name = line.split(maxsplit=1)
            out[name.strip().removeprefix("./")] = sha
    return out


# -- the set of fixtures -------------------------------------------------------------
def test_every_default_image_has_a_fixture():
    for image in mtf.NANODET_IMAGES:
        assert (FIXTURES / mtf.fixture_name("nanodet", image, None)).is_file(), image
    for image in mtf.CENTERNET_IMAGES:
        assert (FIXTURES / mtf.fixture_name("centernet", image, None)).is_file(), image
    assert len(NANODET) >= 2


def test_index_lists_exactly_the_fixture_files_with_their_sha256():
    index = json.loads((FIXTURES / "index.json").read_text())
    assert sorted(index) == sorted(p.name for p in FIXTURES.glob("*.npz"))
    for name, entry in index.items():
        path = FIXTURES / name
        assert _sha256(path) == entry["sha256"], f"{name} changed without regenerating index.json"
        assert path.stat().st_size < MAX_FIXTURE_BYTES, name
        z = np.load(path)
        assert str(z["input_sha256"]) == entry["input_sha256"]
        assert entry["model_sha256"] == dict(zip(z["model_files"].tolist(), z["model_sha256"].tolist()))


def test_tfjs_is_pinned_exactly_and_the_lock_file_has_no_registry_urls():
    version = _pinned_tfjs_version()
    assert version.count(".") == 2 and version.replace(".", "").isdigit(), version
    lock = (TFJS_DIR / "package-lock.json").read_text()
    assert '"resolved"' not in lock
    assert json.loads(lock)["packages"]["node_modules/@tensorflow/tfjs"]["version"] == version


def test_save_npz_is_byte_reproducible(tmp_path):
    arrays = {"b": np.arange(5, dtype=np.float32), "a": np.str_("x"), "c": np.int64(3)}
    mtf.save_npz(tmp_path / "1.npz", arrays)
    mtf.save_npz(tmp_path / "2.npz", dict(reversed(arrays.items())))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    z = np.load(tmp_path / "1.npz")
    assert z["b"].tolist() == [0, 1, 2, 3, 4] and str(z["a"]) == "x" and int(z["c"]) == 3


def test_run_graph_argument_list():
    cmd = mtf.run_graph_args("node", "/tmp/job.json")
    assert cmd == ["node", str(TFJS_DIR / "run_graph.js"), "--job", "/tmp/job.json"]


# -- common provenance ---------------------------------------------------------------
@pytest.mark.parametrize("path", NANODET + CENTERNET, ids=lambda p: p.stem)
def test_provenance(path):
    z = np.load(path)
    assert int(z["format_version"]) == mtf.FORMAT_VERSION
    assert str(z["tfjs_version"]) == _pinned_tfjs_version()
    assert str(z["tfjs_backend"]) == "cpu"
    assert len(str(z["input_sha256"])) == 64 and len(str(z["image_sha256"])) == 64
    network = str(z["network"])
    assert path.name == mtf.fixture_name(network, str(z["image"]), None)
    assert z["model_files"].tolist() == [f"{mtf.MODEL_SUBDIR}/{network}.json", f"{mtf.MODEL_SUBDIR}/{network}.bin"]
    x_sum, x_sumsq, n = float(z["input_sum"]), float(z["input_sumsq"]), int(np.prod(z["input_shape"]))
    assert x_sumsq >= x_sum**2 / n * (1 - 1e-9)  # Cauchy-Schwarz: the two moments are consistent
    sums, sumsqs = z["output_sum"], z["output_sumsq"]
    shapes = json.loads(str(z["output_shapes"]))
    assert len(shapes) == len(z["output_names"]) == len(sums) == len(sumsqs)
    for shape, s, sq in zip(shapes, sums, sumsqs):
        assert np.isfinite(s) and sq >= s**2 / np.prod(shape) * (1 - 1e-9)


@pytest.mark.needs_assets
@pytest.mark.parametrize("path", NANODET + CENTERNET, ids=lambda p: p.stem)
def test_model_and_image_hashes_match_the_assets(path, assets):
    manifest = _read_manifest(assets)
    z = np.load(path)
    for rel, sha in zip(z["model_files"].tolist(), z["model_sha256"].tolist()):
        assert manifest[rel] == sha, rel
        assert _sha256(assets / rel) == sha, rel
    image = str(z["image"])
    assert manifest[image] == str(z["image_sha256"]) == _sha256(assets / image)


# -- NanoDet -------------------------------------------------------------------------
@pytest.mark.parametrize("path", NANODET, ids=lambda p: p.stem)
def test_nanodet_fixture_layout(path):
    z = np.load(path)
    assert sorted(z.files) == sorted(mtf.NANODET_KEYS)
    assert z["input_shape"].tolist() == [1, 3, 416, 416] and str(z["input_layout"]) == "NCHW"
    assert str(z["input_name"]) == "input_1"
    assert str(z["input_source"]) == "codec.vision.nanodet.preprocess"
    meta = json.loads(str(z["preprocessing_json"]))
    assert (meta["input_w"], meta["input_h"]) == (416, 416) and meta["orig_w"] > 0 and meta["orig_h"] > 0

    assert z["strides"].tolist() == [8, 16, 32] and z["grid_sizes"].tolist() == [52, 26, 13]
    assert z["score_outputs"].tolist() == ["Identity", "Identity_1", "Identity_2"]
    assert z["dist_outputs"].tolist() == ["Identity_3", "Identity_4", "Identity_5"]
    shapes = dict(zip(z["output_names"].tolist(), map(tuple, json.loads(str(z["output_shapes"])))))
    for g, score_name, dist_name in zip(z["grid_sizes"], z["score_outputs"], z["dist_outputs"]):
        assert shapes[str(score_name)] == (1, g * g, 80) and shapes[str(dist_name)] == (1, g * g, 44)

    # the sampled locations are the seeded ones: 128 per stride, distinct, in range
    assert int(z["sample_seed"]) == mtf.SAMPLE_SEED
    expected = mtf.nanodet_sample_locations((52, 26, 13))
    assert z["loc_stride"].tolist() == [8] * 128 + [16] * 128 + [32] * 128
    assert z["loc_index"].tolist() == np.concatenate(expected).tolist()
    assert z["loc_values"].shape == (384, 124) and z["loc_values"].dtype == np.float32
    assert z["top_values"].shape == (mtf.TOP_LOCATIONS, 124) and z["top_values"].dtype == np.float32

    # scores are sigmoid outputs; distribution logits are not all zero; the top locations
    # are sorted by their best class score and dominate the sampled ones
    scores, top_scores = z["loc_values"][:, :80], z["top_values"][:, :80]
    assert scores.min() >= 0.0 and scores.max() <= 1.0 and top_scores.max() <= 1.0
    assert np.abs(z["loc_values"][:, 80:]).max() > 1.0
    top_best = top_scores.max(1)
    assert np.all(np.diff(top_best) <= 0)
    top_set = set(zip(z["top_stride"].tolist(), z["top_index"].tolist()))
    in_top = np.array([loc in top_set for loc in zip(z["loc_stride"].tolist(), z["loc_index"].tolist())])
    assert scores[~in_top].max() <= top_best[-1]
    for loc, values in zip(zip(z["loc_stride"].tolist(), z["loc_index"].tolist()), z["loc_values"]):
        if loc in top_set:  # a location both sampled and in the top set carries the same values
            k = list(zip(z["top_stride"].tolist(), z["top_index"].tolist())).index(loc)
            assert np.array_equal(values, z["top_values"][k])
    assert top_best[0] > 0.3, "a real image should give at least one confident detection"
    grid_of = dict(zip(z["strides"].tolist(), z["grid_sizes"].tolist()))
    assert all(0 <= i < grid_of[int(s)] ** 2 for s, i in zip(z["top_stride"], z["top_index"]))
    # scores' sums lie in [0, numel]
    for name, s in zip(z["output_names"].tolist(), z["output_sum"]):
        if name in z["score_outputs"].tolist():
            assert 0.0 <= s <= np.prod(shapes[name])


# -- CenterNet -----------------------------------------------------------------------
@pytest.mark.parametrize("path", CENTERNET, ids=lambda p: p.stem)
def test_centernet_fixture_layout(path):
    z = np.load(path)
    assert sorted(z.files) == sorted(mtf.CENTERNET_KEYS)
    assert z["input_shape"].tolist() == [1, 512, 512, 3] and str(z["input_layout"]) == "NHWC"
    assert str(z["input_name"]) == "tower_0/images"
    shapes = dict(zip(z["output_names"].tolist(), map(tuple, json.loads(str(z["output_shapes"])))))
    assert shapes == {
        "tower_0/detections": (1, 100, 6),
        "tower_0/keypoints": (1, 128, 128, 80),
        "tower_0/wh": (1, 128, 128, 4),
    }
    assert z["loc_index"].tolist() == mtf.centernet_sample_locations(128 * 128).tolist()
    assert z["loc_values"].shape == (384, 84) and z["top_values"].shape == (mtf.TOP_LOCATIONS, 84)
    heat = z["loc_values"][:, :80]
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    det = z["detections"]
    assert det.shape == (100, 6)
    assert np.all(det[:, 5] == np.round(det[:, 5])) and det[:, 5].min() >= 0 and det[:, 5].max() < 80
    assert np.all(np.diff(det[:, 4]) <= 0), "detections come sorted by score"
    # the best detection's score is the heatmap peak
    assert det[0, 4] == pytest.approx(z["top_values"][:, :80].max(), abs=1e-6)


@pytest.mark.needs_assets
@pytest.mark.parametrize("path", CENTERNET, ids=lambda p: p.stem)
def test_centernet_input_is_reproduced(path, assets):
    z = np.load(path)
    prepared = mtf.centernet_input(mtf.load_image(assets / str(z["image"])))
    assert prepared.x.shape == (1, 512, 512, 3)
    assert mtf.tensor_sha256(prepared.x) == str(z["input_sha256"])


def test_tf_resize_bilinear_matches_the_tf_formula():
    # 2x2 -> 4x4, align_corners=False, half_pixel_centers=False: src = dst * 0.5
    img = np.array([[[0], [10]], [[20], [30]]], np.uint8)
    out = mtf.tf_resize_bilinear(img, 4)[:, :, 0]
    assert out.tolist() == [
        [0, 5, 10, 10],
        [10, 15, 20, 20],
        [20, 25, 30, 30],
        [20, 25, 30, 30],
    ]
