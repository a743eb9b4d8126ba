"""The ONNX encoder (issue 12, item 6): NanoDet's NN part 1 exported (tools/export_onnx.py) and
run with onnxruntime (codec/vision/onnx_part1.py, fcm_enc --engine onnx), torch not imported;
its containers decode with the reference decoder to the PyTorch engine's detections."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from codec.apps import _cli, fcm_dec, fcm_enc

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.needs_assets


@pytest.fixture(scope="session")
def onnx_model(nanodet, tmp_path_factory):
    from tools.export_onnx import export

    path, worst = export("nanodet", "neck", tmp_path_factory.mktemp("onnx") / "nanodet_neck.onnx", net=nanodet)
    assert worst < 1e-5  # float rounding of other kernels, not another graph
    return path


@pytest.fixture
def image_path(val_image, tmp_path):
    path = tmp_path / "000000001000.png"
    Image.fromarray(val_image).save(path)
    return path


def test_the_export_records_what_the_container_needs(onnx_model, nanodet):
    from codec.vision.onnx_part1 import OnnxPart1, metadata

    meta = metadata(onnx_model)
    assert (meta["network"], meta["network_id"], meta["split"], meta["split_id"]) == ("nanodet", 1, "neck", 1)
    assert meta["weights_sha256"] == nanodet.weights_sha256()
    assert meta["scales"] == [["p3", 128, 8], ["p4", 128, 16], ["p5", 128, 32]]
    net = OnnxPart1(onnx_model)
    assert net.split_points == {"neck": nanodet.split_points["neck"]} and net.network_id == nanodet.network_id


def test_preprocessing_is_exact_and_features_match_pytorch(onnx_model, nanodet, val_image):
    from codec.vision.onnx_part1 import OnnxPart1

    net = OnnxPart1(onnx_model, threads=1)
    x, prep = net.preprocess(val_image)
    x_ref, prep_ref = nanodet.preprocess(val_image)
    assert prep == prep_ref and np.array_equal(x, x_ref.numpy())  # numpy reproduces it bit for bit
    got = net.part1(x)
    with torch.inference_mode():
        ref = nanodet.part1(x_ref, "neck")
    for name, t in ref.items():
        r = t.numpy()
        assert got[name].shape == r.shape and got[name].dtype == np.float32
        assert np.abs(got[name] - r).max() <= 1e-5 * np.abs(r).max(), name


def test_onnx_engine_containers_decode_to_the_pytorch_engine_s_detections(
    onnx_model, nanodet, image_path, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: nanodet)
    results = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.bin"
        extra = ["--engine", "onnx", "--onnx-model", str(onnx_model)] if engine == "onnx" else []
        args = [str(image_path), "-o", str(out), "--mode", "bypass", "--bypass-dtype", "float32", *extra]
        assert fcm_enc.main(args) == 0
        assert fcm_dec.main([str(out), "--detections", str(tmp_path / f"{engine}.json")]) == 0
        results[engine] = json.loads((tmp_path / f"{engine}.json").read_text())
    assert "NN part 1: ONNX" in capsys.readouterr().out
    torch_dets, onnx_dets = results["torch"], results["onnx"]
    assert len(torch_dets) == len(onnx_dets) > 0
    strong = [(a, b) for a, b in zip(torch_dets, onnx_dets) if a["score"] > 0.3]
    assert strong and all(a["category_id"] == b["category_id"] for a, b in strong)
    assert max(abs(u - v) for a, b in strong for u, v in zip(a["bbox"], b["bbox"])) < 0.05
    assert max(abs(a["score"] - b["score"]) for a, b in strong) < 1e-3


@pytest.mark.needs_ffmpeg
@pytest.mark.parametrize("mode", ["bypass", "anchor"])
def test_the_onnx_engine_encodes_without_torch(onnx_model, image_path, tmp_path, mode):
    """A process in which `import torch` fails encodes with the ONNX engine, and fcm_dec decodes it."""
    out = tmp_path / "camera.bin"
    argv = [str(image_path), "-o", str(out), "--engine", "onnx", "--onnx-model", str(onnx_model), "--mode", mode]
    code = (
        "import sys; sys.modules['torch'] = None; from codec.apps import fcm_enc; "
        f"rc = fcm_enc.main({argv!r}); print(rc, sys.modules.get('torch') is not None)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "0 False", proc.stderr
    assert fcm_dec.main([str(out), "-o", str(tmp_path / "f.npz")]) == 0


def test_the_learned_mode_takes_onnx_features_too(onnx_model, nanodet, image_path, tmp_path, monkeypatch):
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: nanodet)
    out = tmp_path / "e2e.bin"
    args = [str(image_path), "-o", str(out), "--engine", "onnx", "--onnx-model", str(onnx_model)]
    assert fcm_enc.main([*args, "--mode", "learned_e2e", "--phi", "2"]) == 0
    assert fcm_dec.main([str(out), "--detections", str(tmp_path / "d.json")]) == 0
    assert {r["image_id"] for r in json.loads((tmp_path / "d.json").read_text())} == {1000}


def test_onnx_engine_arguments_are_checked_first(image_path, tmp_path, monkeypatch, capsys):
    def no_network(name, weights=None):
        raise AssertionError("a network was loaded")

    monkeypatch.setattr(_cli, "load_network", no_network)
    monkeypatch.setenv("FCM_CACHE_DIR", str(tmp_path / "cache"))
    base = [str(image_path), "-o", str(tmp_path / "o.bin"), "--mode", "bypass"]
    cases = [
        (["--engine", "onnx"], f"ONNX model not found: {tmp_path / 'cache' / 'onnx' / 'nanodet_neck.onnx'}"),
        (["--onnx-model", "x.onnx"], "--onnx-model is for --engine onnx"),
        (["--engine", "onnx", "--weights", "w.pt"], "--weights is for the torch engine"),
    ]
    for extra, message in cases:
        assert fcm_enc.main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    assert fcm_enc.main([*base, "--engine", "onnx", "--onnx-model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot load ONNX model" in err and len(err.strip().splitlines()) == 1
