"""The ONNX encoder (issue 12, item 6): NanoDet's NN part 1 exported (tools/export_onnx.py) and
run with onnxruntime (codec/vision/onnx_part1.py, fcm_enc --engine onnx), torch not imported;
its containers decode with the reference decoder to the PyTorch engine's detections. The
learned mode's encoder too (codec/models/fenet_onnx.py): exported, run without torch, and its
containers compared with the PyTorch encoder's, symbol by symbol."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from codec.apps import _cli, fcm_dec, fcm_enc

pytest.importorskip("onnxruntime", reason="the ONNX engine needs onnxruntime (pip install 'fcm-codec[export]')")
pytest.importorskip("onnx", reason="exporting to ONNX needs onnx (pip install 'fcm-codec[export]')")
pytest.importorskip("onnxscript", reason="torch.onnx's exporter needs onnxscript (pip install 'fcm-codec[export]')")

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


# -- the learned mode's encoder ------------------------------------------------------------


@pytest.fixture(scope="session")
def codec_cache(nanodet, tmp_path_factory):
    """A cache folder holding the default learned_e2e model's export, where the ONNX engine
    looks by default (FCM_CACHE_DIR/onnx/CODEC_MODEL.onnx)."""
    from codec.modes import learned_e2e
    from tools.export_onnx import export_codec

    cache = tmp_path_factory.mktemp("cache")
    name = learned_e2e.Params().codec_model
    report = export_codec(name, cache / "onnx" / f"{name}.onnx", net=nanodet)
    assert report.exact_backend and report.worst < 1e-5  # float rounding of other kernels, not another graph
    assert report.identical_symbols > 0.99
    return cache


@pytest.fixture(scope="session")
def codec_model(codec_cache):
    from codec.modes import learned_e2e

    return codec_cache / "onnx" / f"{learned_e2e.Params().codec_model}.onnx"


def test_the_codec_export_records_what_the_container_needs(codec_model):
    from codec.models.fenet_onnx import OnnxFenetEncoder, metadata
    from codec.models.registry import load_codec_model
    from codec.modes import learned_e2e

    meta = metadata(codec_model)
    name = learned_e2e.Params().codec_model
    model, digest = load_codec_model(learned_e2e.MODEL_NAMES[name])
    assert (meta["codec_model"], meta["codec_model_id"]) == (name, int(learned_e2e.MODEL_NAMES[name]))
    assert meta["weights_sha256"] == digest.hex()  # the header's codec_model_hash: what fcm_dec checks
    assert meta["config"] == model.cfg.to_json() and "fixed_point_tables" not in meta
    enc = OnnxFenetEncoder(codec_model)
    assert enc.scales == [(s.name, s.channels, s.stride) for s in model.cfg.scales]


def _symbols(path):
    from codec.bitstream import parse_container
    from codec.modes import learned_e2e

    parsed = parse_container(path.read_bytes())
    return learned_e2e.decode_symbols(parsed.header, parsed.units)


@pytest.mark.parametrize("phi", [1, 4])
def test_the_learned_encoder_runs_without_torch_and_matches_pytorch_s(
    onnx_model, codec_cache, nanodet, image_path, tmp_path, monkeypatch, phi
):
    """fcm_enc --engine onnx --mode learned_e2e in a process where `import torch` fails (the
    codec model's export found where it is by default); fcm_dec decodes the container, and it
    agrees with the PyTorch encoder's: symbols, bytes, features and detections."""
    out = tmp_path / "camera.bin"
    argv = [str(image_path), "-o", str(out), "--engine", "onnx", "--onnx-model", str(onnx_model)]
    argv += ["--mode", "learned_e2e", "--phi", str(phi), "--threads", "1"]
    code = (
        "import sys; sys.modules['torch'] = None; from codec.apps import fcm_enc; "
        f"rc = fcm_enc.main({argv!r}); print(rc, sys.modules.get('torch') is not None)"
    )
    env = {**os.environ, "FCM_CACHE_DIR": str(codec_cache)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.stdout.strip().splitlines()[-1] == "0 False", proc.stderr
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: nanodet)
    ref = tmp_path / "torch.bin"
    assert fcm_enc.main([str(image_path), "-o", str(ref), "--mode", "learned_e2e", "--phi", str(phi)]) == 0
    # the latent symbols: all but the few that a last-bit difference of the float graph rounds
    # the other way (none on this image at the time of writing)
    got, want = _symbols(out), _symbols(ref)
    same = sum(int((got[k] == want[k]).sum()) for k in ("z", "y"))
    fraction = same / sum(want[k].size for k in ("z", "y"))
    a, b = out.read_bytes(), ref.read_bytes()
    same_bytes = sum(x == y for x, y in zip(a, b)) / max(len(a), len(b))
    print(f"phi {phi}: {100 * fraction:.3f} % of the symbols, {100 * same_bytes:.2f} % of the bytes identical")
    assert fraction > 0.99 and abs(len(a) - len(b)) <= 0.01 * len(b)
    # the reference decoder: features and detections as the PyTorch encoder's container gives them
    results = {}
    for engine, path in (("onnx", out), ("torch", ref)):
        assert fcm_dec.main([str(path), "-o", str(tmp_path / f"{engine}.npz"), "--detections",
                             str(tmp_path / f"{engine}.json")]) == 0  # fmt: skip
        results[engine] = json.loads((tmp_path / f"{engine}.json").read_text())
    f_onnx, f_torch = np.load(tmp_path / "onnx.npz"), np.load(tmp_path / "torch.npz")
    for k in f_torch.files:  # a symbol rounded the other way moves the features near it only
        r = f_torch[k]
        assert np.abs(f_onnx[k] - r).mean() <= 0.01 * np.abs(r).mean(), k
    strong = [(x, y) for x, y in zip(results["torch"], results["onnx"]) if x["score"] > 0.3]
    assert strong and all(x["category_id"] == y["category_id"] for x, y in strong)
    assert max(abs(u - v) for x, y in strong for u, v in zip(x["bbox"], y["bbox"])) < 1.0  # pixels
    assert max(abs(x["score"] - y["score"]) for x, y in strong) < 0.01


def test_the_api_encodes_learned_e2e_with_onnx_networks(onnx_model, codec_model, nanodet, val_image):
    import codec
    from codec.vision.onnx_part1 import OnnxPart1

    enc = codec.encode(
        val_image, network=OnnxPart1(onnx_model), mode="learned_e2e", phi=2, codec_weights=str(codec_model)
    )
    ref = codec.encode(val_image, network=nanodet, mode="learned_e2e", phi=2)
    assert abs(len(enc.bitstream) - len(ref.bitstream)) <= 0.01 * len(ref.bitstream)
    dec = codec.decode(enc.bitstream)
    assert {tuple(t.shape) for t in dec.features.values()} == {(1, 128, 52, 52), (1, 128, 26, 26), (1, 128, 13, 13)}
    assert len(codec.run_task(dec, network=nanodet).scores) > 0


def test_the_onnx_engine_s_learned_encoder_errors(onnx_model, codec_model, image_path, tmp_path, monkeypatch, capsys):
    """No export where the engine looks, a PyTorch weights file instead of an export, an export
    of another codec model than --codec-model names: one line each, exit status 2."""
    monkeypatch.setenv("FCM_CACHE_DIR", str(tmp_path / "empty"))
    base = [str(image_path), "-o", str(tmp_path / "o.bin"), "--engine", "onnx", "--onnx-model", str(onnx_model)]
    base += ["--mode", "learned_e2e", "--force"]
    cases = [
        ([], "ONNX learned encoder not found"),
        (["--codec-weights", "codec/models/weights/fenet_nanodet_neck_g3.pt"], "is a PyTorch weights file"),
        (["--codec-weights", str(codec_model), "--codec-model", "fenet_nanodet_neck_p4"], "not fenet_nanodet_neck_p4"),
    ]
    for extra, message in cases:
        assert fcm_enc.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    swapped = [str(image_path), "-o", str(tmp_path / "o.bin"), "--engine", "onnx", "--onnx-model", str(codec_model)]
    assert fcm_enc.main(swapped) == 2  # the codec export where NN part 1's belongs
    assert "is not an FCM NN part 1 export (format 1, kind 'learned_e2e_encoder'" in capsys.readouterr().err


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
