"""fcm_enc / fcm_dec / fcm_inspect: end to end with a small fake network (and
NanoDet when the assets are there), overwrite refusal, atomic writes, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codec.apps import _cli, fcm_dec, fcm_enc, fcm_inspect
from codec.vision.base import Detections, NetworkId, Preprocessing, ResizeMode, ScaleInfo, SplitPoint


class FakeNet:
    """A tiny deterministic split network: 32x32 stretch input, two pooled scales,
    part 2 turns the mean of each scale into one box."""

    name = "nanodet"
    network_id = NetworkId.CENTERNET_MBV3  # no rows in table 8.2: a fake may have any scales
    split_points = {"neck": SplitPoint("neck", 1, (ScaleInfo("p3", 4, 8), ScaleInfo("p4", 4, 16)))}
    default_split = "neck"

    def __init__(self, tag: bytes = b"fake weights"):
        self.tag = tag

    def weights_sha256(self) -> str:
        return hashlib.sha256(self.tag).hexdigest()

    def preprocess(self, image):
        h, w = image.shape[:2]
        x = torch.from_numpy(np.asarray(Image.fromarray(image).resize((32, 32)), dtype=np.float32) / 255)
        return x.permute(2, 0, 1)[None], Preprocessing(w, h, 32, 32, ResizeMode.STRETCH, 32 / w, 32 / h)

    def part1(self, x, split):
        f = torch.cat([x, x.mean(1, keepdim=True)], 1)
        return {"p3": torch.nn.functional.avg_pool2d(f, 8), "p4": torch.nn.functional.avg_pool2d(f, 16)}

    def part2(self, features, split, meta):
        m = float(features["p3"].mean())
        boxes = meta.boxes_to_original(np.array([[4.0, 4.0, 4 + 20 * m, 4 + 24 * m]]))
        return Detections(boxes, np.array([0.9]), np.array([1]))


@pytest.fixture
def fake_net(monkeypatch):
    net = FakeNet()
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: net)
    return net


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    path = tmp_path / "000000000139.png"
    Image.fromarray(img).save(path)
    return path


def test_enc_inspect_dec_bypass(fake_net, image_file, tmp_path, capsys):
    out = tmp_path / "000000000139.bin"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "--bypass-dtype", "float32"]) == 0
    text = capsys.readouterr().out
    nbytes = out.stat().st_size
    assert f"{nbytes} bytes, {8 * nbytes / (64 * 48):.5f} bpp" in text and "nn_part1" in text and "encode" in text

    assert fcm_inspect.main([str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["valid"] and info["header"]["mode_id"] == 1 and info["header_names"]["mode_id"] == "BYPASS"
    assert [u["type_name"] for u in info["payload_units"]] == ["RAW_TENSOR", "RAW_TENSOR"]
    assert [u["size"] for u in info["payload_units"]] == [4 * 4 * 4 * 4, 4 * 2 * 2 * 4]
    assert all(u["crc_ok"] for u in info["payload_units"])
    assert info["overhead_bytes"] == nbytes - 16 * 16 - 16 * 4

    npz, dets, png = tmp_path / "f.npz", tmp_path / "d.json", tmp_path / "d.png"
    args = [str(out), "-o", str(npz), "--detections", str(dets), "--draw", str(image_file), str(png)]
    assert fcm_dec.main(args) == 0
    x, _ = fake_net.preprocess(np.asarray(Image.open(image_file)))
    ref = fake_net.part1(x, "neck")
    with np.load(npz) as z:
        assert sorted(z.files) == ["p3", "p4"]
        assert np.array_equal(z["p3"], ref["p3"].numpy())  # float32 bypass is lossless
    results = json.loads(dets.read_text())
    assert len(results) == 1 and results[0]["image_id"] == 139 and results[0]["category_id"] == 1
    with Image.open(png) as im:
        assert im.size == (64, 48)


@pytest.mark.needs_ffmpeg
def test_enc_inspect_dec_anchor_lists_nal_units(fake_net, image_file, tmp_path, capsys):
    out = tmp_path / "a.bin"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--qp", "30"]) == 0
    capsys.readouterr()
    assert fcm_inspect.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "VVC_NAL_STREAM" in text and "NAL SPS" in text and "mode_header.inner_qp" in text and " 30" in text
    assert "header overhead" in text
    assert fcm_dec.main([str(out), "--detections", str(tmp_path / "d.json"), "--image-id", "7"]) == 0
    assert json.loads((tmp_path / "d.json").read_text())[0]["image_id"] == 7


def test_overwrite_refused_without_force(fake_net, image_file, tmp_path, capsys):
    out = tmp_path / "x.bin"
    out.write_bytes(b"precious")
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass"]) == 2
    assert "output exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "--force"]) == 0
    assert out.read_bytes()[:4] == b"FCMB"


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _cli.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temp file left behind
    monkeypatch.undo()
    _cli.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"


def test_weights_mismatch_is_refused(fake_net, image_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "w.bin"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass"]) == 0
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: FakeNet(b"other weights"))
    capsys.readouterr()
    assert fcm_dec.main([str(out), "--detections", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert "weights differ from the encoder's" in err and "Traceback" not in err
    assert not (tmp_path / "d.json").exists()


def test_inspect_crc_bad_file_prints_header_and_exits_2(fake_net, image_file, tmp_path, capsys):
    out = tmp_path / "c.bin"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass"]) == 0
    data = bytearray(out.read_bytes())
    data[-10] ^= 0xFF  # inside the last payload
    out.write_bytes(bytes(data))
    capsys.readouterr()
    assert fcm_inspect.main([str(out)]) == 2
    cap = capsys.readouterr()
    assert "split_point_name       neck" in cap.out and "MISMATCH" in cap.out
    assert "unit_crc32 of payload unit 1 mismatch" in cap.err and len(cap.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("app", "args", "message"),
    [
        (fcm_enc, ["{missing}", "-o", "{tmp}/o.bin"], "image not found"),
        (fcm_enc, ["{text}", "-o", "{tmp}/o.bin"], "not an image file"),
        (fcm_enc, ["{image}", "-o", "{tmp}/o.bin", "--qp", "99"], "qp must be an integer in 0..63"),
        (fcm_enc, ["{image}", "-o", "{tmp}/o.bin", "--split", "nowhere"], "no split point 'nowhere'"),
        (fcm_enc, ["{image}", "-o", "{tmp}/nodir/o.bin", "--mode", "bypass"], "output folder does not exist"),
        (fcm_enc, ["{image}"], "required: -o"),
        (fcm_enc, ["{image}", "-o", "x", "--mode", "zip"], "invalid choice"),
        (fcm_enc, ["{image}", "-o", "{tmp}/o.bin", "--phi", "2"], "--phi is not an option of mode anchor"),
        (
            fcm_enc,
            ["{image}", "-o", "{tmp}/o.bin", "--mode", "learned_e2e", "--phi", "32"],
            "phi must be an integer in 0..5",
        ),
        (
            fcm_enc,
            ["{image}", "-o", "{tmp}/o.bin", "--mode", "bypass", "--bypass-dtype", "int8"],
            "one of float16, float32",
        ),
        (fcm_dec, ["{missing}"], "bitstream file not found"),
        (fcm_dec, ["{text}"], "not an FCM container"),
        (fcm_dec, ["{tmp}"], "is a directory"),
        (fcm_inspect, ["{text}"], "not an FCM container"),
        (fcm_inspect, ["{missing}"], "bitstream file not found"),
    ],
)
def test_exit_code_2_with_one_line_message(fake_net, image_file, tmp_path, capsys, app, args, message):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image and not a container")
    fill = dict(missing=str(tmp_path / "missing.jpg"), text=str(text), image=str(image_file), tmp=str(tmp_path))
    assert app.main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mode_parameters_are_checked_before_anything_loads(image_file, tmp_path, monkeypatch, capsys):
    def no_network(name, weights=None):
        raise AssertionError("the network was loaded before the parameters were checked")

    monkeypatch.setattr(_cli, "load_network", no_network)
    for extra in (["--mode", "learned_e2e", "--phi", "6"], ["--mode", "vvc_msff", "--qp", "64"], ["--phi", "1"]):
        assert fcm_enc.main([str(image_file), "-o", str(tmp_path / "o.bin"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fcm_enc: error: ") and len(err.strip().splitlines()) == 1


def test_help_shows_every_mode_s_rate_flag_with_its_range_and_default(capsys):
    assert fcm_enc.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--phi PHI" in out and "learned_e2e rate parameter: 0..5, default 3" in out
    assert "anchor rate parameter: 0..63, default 32" in out and "vvc_msff rate parameter: 0..63, default 32" in out
    assert "bypass rate parameter: float16|float32, default float16" in out
    assert "--kept-channels" in out and "--codec-weights" in out


@pytest.mark.parametrize("app", [fcm_enc, fcm_dec, fcm_inspect])
def test_help_has_examples_and_exits_0(app, capsys):
    assert app.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "exit status" in out


@pytest.mark.needs_assets
@pytest.mark.needs_ffmpeg
def test_nanodet_end_to_end(nanodet, val_image, tmp_path, monkeypatch, capsys):
    """Real NanoDet: float32 bypass gives exactly the detections of the uncoded
    features; the anchor at QP 27 keeps the confident detections."""
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: nanodet)
    img = tmp_path / "000000001000.png"
    Image.fromarray(val_image).save(img)
    with torch.inference_mode():
        x, prep = nanodet.preprocess(val_image)
        ref = nanodet.part2(nanodet.part1(x, "neck"), "neck", prep)
    assert len(ref) > 0
    for mode, extra in (("bypass", ["--bypass-dtype", "float32"]), ("anchor", ["--qp", "27"])):
        out = tmp_path / f"000000001000_{mode}.bin"
        assert fcm_enc.main([str(img), "-o", str(out), "--mode", mode, *extra]) == 0
        dets_path = tmp_path / f"{mode}.json"
        assert fcm_dec.main([str(out), "--detections", str(dets_path)]) == 0
        results = json.loads(dets_path.read_text())
        assert {r["image_id"] for r in results} == {1000}
        if mode == "bypass":
            assert results == ref.to_coco(1000)
        else:
            strong = {r["category_id"] for r in ref.to_coco(1000) if r["score"] > 0.5}
            assert strong <= {r["category_id"] for r in results if r["score"] > 0.3}


@pytest.mark.needs_assets
@pytest.mark.needs_ffmpeg
def test_every_mode_encodes_with_its_defaults_and_echoes_its_rate_parameter(
    nanodet, val_image, tmp_path, monkeypatch, capsys
):
    """fcm_enc --mode M with no other flag, for every registered mode, then fcm_dec."""
    from codec.modes import all_modes

    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: nanodet)
    img = tmp_path / "000000001000.png"
    Image.fromarray(val_image).save(img)
    for mode in all_modes():
        out = tmp_path / f"{mode.name}.bin"
        assert fcm_enc.main([str(img), "-o", str(out), "--mode", mode.name]) == 0, mode.name
        text = capsys.readouterr().out
        rate = mode.rate_param
        default = next(s.default for s in mode.param_specs() if s.rate)
        assert f"mode {mode.name}, {rate} {default}" in text, text
        assert fcm_dec.main([str(out)]) == 0
        assert f"mode {mode.name}, network nanodet" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["missing", "corrupt", "no record"])
@pytest.mark.parametrize("vector", ["learned_e2e-phi3", "learned_e2e-p4-phi3", "vvc_msff-qp37"])
def test_missing_or_corrupt_codec_model_weights_give_exit_2_and_one_line(
    fake_net, image_file, tmp_path, monkeypatch, capsys, damage, vector
):
    import shutil

    from codec.models import registry

    mode = vector.split("-")[0]
    weights = tmp_path / "weights"
    weights.mkdir()
    for f in registry.WEIGHTS_DIR.iterdir():
        shutil.copy(f, weights / f.name)
    stem = {"learned_e2e-phi3": "fenet_nanodet_neck", "learned_e2e-p4-phi3": "fenet_nanodet_neck_p4"}.get(
        vector, "msff_nanodet_neck"
    )
    pt = weights / f"{stem}.pt"
    if damage == "missing":
        pt.unlink()
    elif damage == "corrupt":
        data = bytearray(pt.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pt.write_bytes(bytes(data))
    else:
        pt.with_suffix(".json").unlink()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    expected = {"missing": "weights not found", "corrupt": "corrupt or replaced", "no record": "have no record"}[damage]
    vectors = Path(__file__).resolve().parents[1] / "conformance"
    for app, args in (
        (fcm_dec, [str(vectors / f"{vector}.bin")]),
        (fcm_inspect, [str(vectors / f"{vector}.bin")])
        if mode == "vvc_msff"
        else (fcm_dec, [str(vectors / f"{vector}.bin")]),
        (
            fcm_enc,
            [str(image_file), "-o", str(tmp_path / "o.bin"), "--mode", mode]
            + (["--codec-model", stem] if mode == "learned_e2e" else []),
        ),
    ):
        assert app.main(args) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    # the same through --codec-weights, with the shipped folder untouched
    monkeypatch.undo()
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: fake_net)
    assert fcm_dec.main([str(vectors / f"{vector}.bin"), "--codec-weights", str(pt)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_codec_weights_of_another_model_family_are_refused_in_one_line(capsys):
    from codec.models.registry import WEIGHTS_DIR

    vector = Path(__file__).resolve().parents[1] / "conformance" / "vvc_msff-qp37.bin"
    assert fcm_dec.main([str(vector), "--codec-weights", str(WEIGHTS_DIR / "fenet_nanodet_neck.pt")]) == 2
    err = capsys.readouterr().err
    assert "hold a fenet_drnet model, not msff_msfr" in err and len(err.strip().splitlines()) == 1
