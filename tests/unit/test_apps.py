"""fcm_enc / fcm_dec / fcm_inspect: end to end with a small fake network (and
NanoDet when the assets are there), overwrite refusal, atomic writes, exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codec.apps import _cli, fcm_dec, fcm_enc, fcm_inspect
from codec.errors import OutputError
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
    # the mode's two units, then IMAGE_INFO: image id 139 from the file name, and the name
    assert [u["type_name"] for u in info["payload_units"]] == ["RAW_TENSOR", "RAW_TENSOR", "IMAGE_INFO"]
    image_info_size = 1 + 8 + 2 + len("000000000139.png")
    assert [u["size"] for u in info["payload_units"]] == [4 * 4 * 4 * 4, 4 * 2 * 2 * 4, image_info_size]
    assert info["payload_units"][2]["image_info"]["image_id"] == 139
    assert all(u["crc_ok"] for u in info["payload_units"])
    assert info["overhead_bytes"] == nbytes - 16 * 16 - 16 * 4 - image_info_size

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
    with pytest.raises(OutputError, match="disk full") as info:
        _cli.atomic_write(target, b"new contents")
    assert str(info.value) == f"cannot write {target}: disk full"  # the user's path, not the temp file
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
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "--no-image-info"]) == 0
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
        (fcm_dec, ["{tmp}"], "holds no container file (.bin)"),  # a folder is a batch input
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
        if default is None:  # an effective default the mode names (learned_ps: phi 4)
            default = mode.describe(mode.params()).split(",")[0].split(" ", 1)[1]
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


# -- inputs, external tools and outputs (issue 15, items 5 and 6) -----------------------------

VECTORS = Path(__file__).resolve().parents[1] / "conformance"


def _no_network(name, weights=None):
    raise AssertionError("the network was loaded before the input and outputs were checked")


def _bomb_png(path: Path, width: int, height: int) -> Path:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    ("size", "message"),
    [((20000, 20000), "20000x20000 = 400000000 pixels, more than the limit"), ((70000, 1), "longer than 65535")],
)
def test_oversized_images_exit_2_before_the_network_loads(tmp_path, monkeypatch, capsys, size, message):
    monkeypatch.setattr(_cli, "load_network", _no_network)
    image = _bomb_png(tmp_path / "big.png", *size)
    assert fcm_enc.main([str(image), "-o", str(tmp_path / "o.bin"), "--mode", "bypass"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.bin").exists()


def test_max_pixels_flag(fake_net, image_file, tmp_path, capsys):
    out = tmp_path / "o.bin"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "--max-pixels", "3071"]) == 2
    assert "64x48 = 3072 pixels, more than the limit of 3071 (--max-pixels raises it)" in capsys.readouterr().err
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "--max-pixels", "3072"]) == 0
    assert fcm_enc.main([str(image_file), "-o", str(out), "--max-pixels", "0"]) == 2
    assert "--max-pixels: expected a positive integer" in capsys.readouterr().err


def test_16_bit_greyscale_input_is_scaled(fake_net, tmp_path):
    grey16 = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    img16, img8 = tmp_path / "g16.png", tmp_path / "g8.png"
    Image.fromarray(grey16).save(img16)
    Image.fromarray(np.round(grey16 / 257).astype(np.uint8)).save(img8)
    for img in (img16, img8):
        out = img.with_suffix(".bin")
        args = [str(img), "-o", str(out), "--mode", "bypass", "--bypass-dtype", "float32", "--no-image-info"]
        assert fcm_enc.main(args) == 0
    assert (tmp_path / "g16.bin").read_bytes() == (tmp_path / "g8.bin").read_bytes()


def _fake_ffmpeg(tmp_path: Path, monkeypatch, body: str) -> None:
    from codec.inner import vvc

    script = tmp_path / "fake-ffmpeg"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    monkeypatch.setattr(vvc, "ffmpeg_exe", lambda: str(script))


def test_an_ffmpeg_writing_random_bytes_gives_exit_1_and_no_container(fake_net, image_file, tmp_path, monkeypatch):
    _fake_ffmpeg(tmp_path, monkeypatch, 'for a; do out="$a"; done\nhead -c 1000 /dev/urandom > "$out"')
    out = tmp_path / "a.bin"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "anchor"]) == 1
    assert "wrote 1000 bytes that are not a VVC intra picture" in err.getvalue()
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "000000000139.png",
        "fake-ffmpeg",
    ]


@pytest.mark.parametrize("body", ["exit 0", "kill -9 $$"], ids=["missing", "killed"])
def test_the_same_ffmpeg_failure_gives_exit_1_in_encoder_and_decoder(
    fake_net, image_file, tmp_path, monkeypatch, capsys, body
):
    from codec.inner import vvc

    if body == "exit 0":
        monkeypatch.setattr(vvc, "ffmpeg_exe", lambda: str(tmp_path / "no-such-ffmpeg"))
        message = "ffmpeg not found"
    else:
        _fake_ffmpeg(tmp_path, monkeypatch, body)
        message = "killed by signal 9"
    assert fcm_enc.main([str(image_file), "-o", str(tmp_path / "a.bin"), "--mode", "anchor"]) == 1
    assert message in capsys.readouterr().err
    for vector in ("v2-anchor-qp37", "vvc_msff-qp37"):
        assert fcm_dec.main([str(VECTORS / f"{vector}.bin"), "-o", str(tmp_path / "f.npz")]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "f.npz").exists()


@pytest.mark.needs_ffmpeg
def test_a_vvc_payload_the_decoder_rejects_is_still_exit_2(tmp_path, capsys):
    import dataclasses

    from codec.bitstream import build_container, parse_container

    parsed = parse_container((VECTORS / "v2-anchor-qp37.bin").read_bytes())
    garbage = b"\x00\x00\x01" + bytes(range(256)) * 4
    bad = build_container(parsed.header, [dataclasses.replace(parsed.units[0], data=garbage)])
    (tmp_path / "bad.bin").write_bytes(bad)
    assert fcm_dec.main([str(tmp_path / "bad.bin")]) == 2
    assert "VVC payload is not one intra picture" in capsys.readouterr().err  # refused before ffmpeg runs
    # a payload with a valid NAL structure whose slice data ffmpeg cannot decode: still exit 2
    real = parsed.units[0].data
    cut = real[: len(real) // 2]
    bad = build_container(parsed.header, [dataclasses.replace(parsed.units[0], data=cut)])
    (tmp_path / "cut.bin").write_bytes(bad)
    code = fcm_dec.main([str(tmp_path / "cut.bin")])
    err = capsys.readouterr().err
    assert code == 2 and "VVC payload" in err, err


def test_ffmpeg_timeout_flag_and_environment(fake_net, image_file, tmp_path, monkeypatch, capsys):
    import time

    _fake_ffmpeg(tmp_path, monkeypatch, "sleep 30 &\nsleep 30")
    t0 = time.monotonic()
    assert fcm_enc.main([str(image_file), "-o", str(tmp_path / "a.bin"), "--ffmpeg-timeout", "0.5"]) == 1
    assert "ffmpeg timed out after 0.5 s" in capsys.readouterr().err
    monkeypatch.setenv("FCM_FFMPEG_TIMEOUT", "0.5")
    assert fcm_dec.main([str(VECTORS / "v2-anchor-qp37.bin")]) == 1
    assert "ffmpeg timed out after 0.5 s" in capsys.readouterr().err
    assert time.monotonic() - t0 < 20  # not the 30 s of the stalled tool
    monkeypatch.setenv("FCM_FFMPEG_TIMEOUT", "soon")
    monkeypatch.setattr(_cli, "load_network", _no_network)
    assert fcm_enc.main([str(image_file), "-o", str(tmp_path / "a.bin")]) == 2
    assert "$FCM_FFMPEG_TIMEOUT must be a number of seconds, got 'soon'" in capsys.readouterr().err
    assert fcm_dec.main([str(VECTORS / "v2-anchor-qp37.bin"), "--ffmpeg-timeout", "-3"]) == 2
    assert "--ffmpeg-timeout must be a finite number of seconds > 0" in capsys.readouterr().err


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(fake_net, image_file, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out, npz = tmp_path / "o.bin", tmp_path / "f.npz"
        assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass"]) == 0
        assert fcm_dec.main([str(out), "-o", str(npz)]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == mode and npz.stat().st_mode & 0o777 == mode


def test_an_overwritten_output_keeps_its_permissions(fake_net, image_file, tmp_path):
    out = tmp_path / "o.bin"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "--force"]) == 0
    assert out.read_bytes()[:4] == b"FCMB" and out.stat().st_mode & 0o777 == 0o640


def test_write_errors_name_the_users_path(fake_net, image_file, tmp_path, monkeypatch, capsys):
    real_fsync = os.fsync

    def full(fd):
        real_fsync(fd)
        raise OSError(28, "No space left on device", os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "o.bin"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"fcm_enc: error: cannot write {out}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000000139.png"]  # no temp file left


@pytest.mark.parametrize("app", ["enc", "dec"])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing folder", "output folder does not exist"),
        ("a folder", "path is a directory"),
        ("exists", "exists: {out} (use --force to overwrite)"),
        ("parent is a file", "output folder is not a folder"),
        ("trailing slash", "ends with a path separator but names no folder"),
    ],
)
def test_output_paths_are_checked_before_any_work(image_file, tmp_path, monkeypatch, capsys, app, case, message):
    monkeypatch.setattr(_cli, "load_network", _no_network)

    def no_decode(*a, **k):
        raise AssertionError("decoded before the outputs were checked")

    monkeypatch.setattr(fcm_dec, "decode_bitstream", no_decode)
    out = {
        "missing folder": tmp_path / "nodir" / "o.out",
        "a folder": tmp_path,
        "exists": tmp_path / "o.out",
        "parent is a file": tmp_path / "000000000139.png" / "o.out",
        "trailing slash": str(tmp_path / "newdir") + "/",  # not a file named newdir
    }[case]
    if case == "exists":
        out.write_bytes(b"precious")
    if app == "enc":
        code = fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass"])
    else:
        code = fcm_dec.main([str(VECTORS / "bypass-f16.bin"), "--detections", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert message.format(out=out) in err and len(err.strip().splitlines()) == 1
    if case == "exists":
        assert out.read_bytes() == b"precious"


def test_decoder_refuses_to_overwrite_without_force(fake_net, image_file, tmp_path, capsys):
    npz, dets, png = tmp_path / "f.npz", tmp_path / "d.json", tmp_path / "d.png"
    vector = str(tmp_path / "b.bin")
    assert fcm_enc.main([str(image_file), "-o", vector, "--mode", "bypass"]) == 0
    png.write_bytes(b"precious")
    args = [vector, "-o", str(npz), "--detections", str(dets), "--draw", str(image_file), str(png)]
    assert fcm_dec.main(args) == 2
    assert f"drawing output exists: {png} (use --force to overwrite)" in capsys.readouterr().err
    assert not npz.exists() and not dets.exists() and png.read_bytes() == b"precious"
    png.unlink()
    assert fcm_dec.main(args[:-3]) == 0
    assert fcm_dec.main(args[:3]) == 2  # the features file is there now
    assert "features output exists" in capsys.readouterr().err
    assert fcm_dec.main([*args[:3], "--force"]) == 0


def test_decoder_refuses_one_file_for_two_outputs(fake_net, tmp_path, capsys):
    same = str(tmp_path / "x.out")
    assert fcm_dec.main([str(VECTORS / "bypass-f16.bin"), "-o", same, "--detections", same]) == 2
    assert "features output and detections output are the same file" in capsys.readouterr().err


# -- issue 12: image identity, batch use, fail fast, ecosystem basics ---------------------------


def test_inspect_shows_the_image_info_unit(capsys):
    assert fcm_inspect.main([str(VECTORS / "v21-bypass-f16-image-info.bin")]) == 0
    out = capsys.readouterr().out
    assert "IMAGE_INFO (6), 27 bytes" in out and "optional, scale all" in out
    assert 'image_id 1000, source_name "000000001000.jpg"' in out
    assert fcm_inspect.main([str(VECTORS / "v21-bypass-f16-image-info.bin"), "--json"]) == 0
    unit = json.loads(capsys.readouterr().out)["payload_units"][-1]
    assert unit["image_info"] == {"image_info_flags": 1, "image_id": 1000, "source_name": "000000001000.jpg"}
    # a name with an escape sequence is refused, and shown escaped, never sent to the terminal raw
    assert fcm_inspect.main([str(VECTORS / "invalid-image-info-name.bin")]) == 2
    cap = capsys.readouterr()
    assert 'source_name "000000001000\\u001b[2J"' in cap.out and "\x1b" not in cap.out
    assert "holds control characters" in cap.err


@pytest.fixture
def counted_net(monkeypatch):
    """The fake network, counting how often an application loads it."""
    net = FakeNet()
    loads = []

    def load(name, weights=None):
        loads.append(name)
        return net

    monkeypatch.setattr(_cli, "load_network", load)
    return loads


def _images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for name in names:
        p = folder / name
        Image.fromarray((rng.random((40 + len(paths), 56, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def test_batch_encode_of_a_folder_loads_the_network_once_and_goes_on_after_a_failure(counted_net, tmp_path, capsys):
    _images(tmp_path / "in", ["000000000001.png", "000000000002.jpg", "photo.png"])
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "in" / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"  # created
    assert fcm_enc.main([str(tmp_path / "in"), "-o", str(out), "--mode", "bypass"]) == 2  # one failed
    cap = capsys.readouterr()
    assert counted_net == ["nanodet"]
    assert sorted(p.name for p in out.iterdir()) == ["000000000001.bin", "000000000002.bin", "photo.bin"]
    assert f"{out / '000000000001.bin'}: " in cap.out and "image id 1)" in cap.out
    assert "fcm_enc: 3 of 4 images encoded in" in cap.out and "1 failed" in cap.out and "per image" in cap.out
    assert f"failed: not an image file: {tmp_path / 'in' / 'broken.png'}" in cap.out
    assert cap.err.count("fcm_enc: error: ") == 1 and "broken.png" in cap.err
    # each container is the one a single-input run writes
    single = tmp_path / "single.bin"
    assert fcm_enc.main([str(tmp_path / "in" / "photo.png"), "-o", str(single), "--mode", "bypass"]) == 0
    assert single.read_bytes() == (out / "photo.bin").read_bytes()


def test_batch_encode_json_lines(counted_net, tmp_path, capsys):
    paths = _images(tmp_path, ["000000000007.png", "000000000008.png"])
    assert fcm_enc.main([*map(str, paths), "-o", str(tmp_path / "out"), "--mode", "bypass", "--json"]) == 0
    cap = capsys.readouterr()
    lines = [json.loads(line) for line in cap.out.splitlines()]
    assert [r["input"] for r in lines] == [str(p) for p in paths] and all(r["ok"] for r in lines)
    for r, p in zip(lines, paths):
        out = tmp_path / "out" / (p.stem + ".bin")
        assert r["output"] == str(out) and r["bytes"] == out.stat().st_size
        assert r["bpp"] == pytest.approx(8 * r["bytes"] / (r["width"] * r["height"]))
        assert (r["mode"], r["rate_parameter"], r["rate"]) == ("bypass", "bypass_dtype", "float16")
        assert r["image_id"] == int(p.stem) and r["image_info_bytes"] == 11 + 11 + len(p.name)
        assert {"read", "nn_part1", "encode", "write"} <= set(r["times"])
    assert "2 of 2 images encoded" in cap.err  # the summary leaves stdout to the JSON lines


def test_batch_inputs_from_list_files(counted_net, tmp_path, monkeypatch, capsys):
    a, b, c = _images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("# two of them, relative to the current folder\nimgs/a.png\n\n  imgs/b.png  \n")
    assert fcm_enc.main(["@list.txt", str(c), "-o", "out", "--mode", "bypass", "-q"]) == 0
    assert capsys.readouterr().out == ""  # -q
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin", "b.bin", "c.bin"]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{a}\n"))
    assert fcm_enc.main(["@-", "-o", "out2", "--mode", "bypass"]) == 0
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["a.bin"]
    for args, message in (
        (["@missing.txt"], "list file not found: missing.txt"),
        (["@imgs"], "list file is a directory"),
        ([str(tmp_path / "empty")], "holds no image file"),
    ):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert fcm_enc.main([*args, "-o", "out3", "--mode", "bypass"]) == 2
        assert message in capsys.readouterr().err


def test_batch_outputs_are_checked_before_the_network_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_cli, "load_network", _no_network)
    _images(tmp_path / "in", ["x.png", "x.jpg"])
    assert fcm_enc.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--mode", "bypass"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in' / 'x.jpg'} and {tmp_path / 'in' / 'x.png'} would both be written to" in err
    (tmp_path / "in" / "x.jpg").unlink()
    _images(tmp_path / "in", ["y.png", "z.png"])
    (tmp_path / "out").mkdir(exist_ok=True)
    for name in ("y.bin", "z.bin"):
        (tmp_path / "out" / name).write_bytes(b"precious")
    assert fcm_enc.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--mode", "bypass"]) == 2
    err = capsys.readouterr().err
    assert f"output exists: {tmp_path / 'out' / 'y.bin'} and 1 more (use --force to overwrite)" in err
    (tmp_path / "file").write_text("x")
    assert fcm_enc.main([str(tmp_path / "in"), "-o", str(tmp_path / "file"), "--mode", "bypass"]) == 2
    assert "-o names an output folder, but" in capsys.readouterr().err
    assert fcm_enc.main([str(tmp_path / "in"), "-o", "o", "--image-id", "3"]) == 2
    assert "--image-id is for one input" in capsys.readouterr().err


def test_batch_exit_status_is_1_when_only_an_external_tool_failed(counted_net, tmp_path, monkeypatch, capsys):
    from codec.inner import vvc

    monkeypatch.setattr(vvc, "ffmpeg_exe", lambda: str(tmp_path / "no-such-ffmpeg"))
    paths = _images(tmp_path, ["a.png", "b.png"])
    assert fcm_enc.main([*map(str, paths), "-o", str(tmp_path / "out")]) == 1
    cap = capsys.readouterr()
    assert cap.err.count("ffmpeg not found") == 2 and "0 of 2 images encoded" in cap.out


def test_batch_progress_bar_on_a_terminal(counted_net, tmp_path, monkeypatch, capsys):
    paths = _images(tmp_path, ["a.png", "b.png"])
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert fcm_enc.main([*map(str, paths), "-o", str(tmp_path / "out"), "--mode", "bypass"]) == 0
    err = capsys.readouterr().err
    assert "fcm_enc:   0%" in err and "0/2" in err and "image/s" in err  # tqdm's bar, on stderr


def test_image_id_flags_and_the_decoder_s_rule(fake_net, image_file, tmp_path, capsys):
    """--image-id is recorded and used; a container without one takes the file-name rule,
    which no longer reads "qp37_000000001000.bin" as image 37."""
    from codec.bitstream import parse_container

    named = tmp_path / "qp37_000000001000.bin"
    assert fcm_enc.main([str(image_file), "-o", str(named), "--mode", "bypass", "--image-id", "1000"]) == 0
    assert parse_container(named.read_bytes()).image_info.image_id == 1000
    dets = tmp_path / "d.json"
    assert fcm_dec.main([str(named), "--detections", str(dets)]) == 0
    assert "image id 1000, from the container" in capsys.readouterr().out
    assert {r["image_id"] for r in json.loads(dets.read_text())} == {1000}
    # no IMAGE_INFO: the container's name by the rule, else 0 with a warning (not 37)
    bare = tmp_path / "qp37_000000001000_bare.bin"
    assert fcm_enc.main([str(image_file), "-o", str(bare), "--mode", "bypass", "--no-image-info"]) == 0
    assert parse_container(bare.read_bytes()).image_info is None
    assert fcm_dec.main([str(bare), "--detections", str(dets), "--force"]) == 0
    cap = capsys.readouterr()
    assert "records no image id and its name gives none: image id 0" in cap.err
    assert "image id 0, none recorded" in cap.out
    assert {r["image_id"] for r in json.loads(dets.read_text())} == {0}
    renamed = tmp_path / "000000000042_qp37.bin"
    renamed.write_bytes(bare.read_bytes())
    assert fcm_dec.main([str(renamed), "--detections", str(dets), "--force"]) == 0
    assert "image id 42, from the file name" in capsys.readouterr().out
    assert fcm_dec.main([str(named), "--detections", str(dets), "--force", "--image-id", "5"]) == 0
    assert "image id 5, from --image-id" in capsys.readouterr().out
    for bad in ("-1", "18446744073709551616", "x"):
        assert fcm_enc.main([str(image_file), "-o", str(tmp_path / "o.bin"), "--image-id", bad]) == 2
        assert "--image-id" in capsys.readouterr().err


def test_batch_decode_writes_one_coco_results_file(counted_net, tmp_path, capsys):
    paths = _images(tmp_path / "in", ["000000000011.png", "000000000012.png", "000000000013.png"])
    assert fcm_enc.main([str(tmp_path / "in"), "-o", str(tmp_path / "bins"), "--mode", "bypass"]) == 0
    (tmp_path / "bins" / "garbage.bin").write_bytes(b"FCMB but not really")
    dets, feats = tmp_path / "dets.json", tmp_path / "feats"
    capsys.readouterr()
    code = fcm_dec.main([str(tmp_path / "bins"), "--detections", str(dets), "-o", str(feats), "--json"])
    assert code == 2
    cap = capsys.readouterr()
    lines = [json.loads(line) for line in cap.out.splitlines()]
    assert [r["ok"] for r in lines] == [True, True, True, False] and lines[3]["exit_status"] == 2
    assert [r["image_id"] for r in lines[:3]] == [11, 12, 13] and all(r["detections"] == 1 for r in lines[:3])
    results = json.loads(dets.read_text())
    assert [r["image_id"] for r in results] == [11, 12, 13]
    assert sorted(p.name for p in feats.iterdir()) == [p.stem + ".npz" for p in paths]
    assert "3 of 4 containers decoded" in cap.err and "3 detections of 3 images" in cap.err
    assert counted_net == ["nanodet", "centernet_mbv3"]  # once each: the encoder's --network, the container's id
    # the same image twice in one results file is refused (each image once), the rest goes on
    dup = tmp_path / "dup"
    dup.mkdir()
    for name in ("000000000011.bin", "000000000012.bin"):
        (dup / name).write_bytes((tmp_path / "bins" / name).read_bytes())
    (dup / "again.bin").write_bytes((tmp_path / "bins" / "000000000011.bin").read_bytes())
    assert fcm_dec.main([str(dup), "--detections", str(tmp_path / "d2.json")]) == 2
    err = capsys.readouterr().err
    assert "image id 11 (from the container) is also that of" in err
    assert [r["image_id"] for r in json.loads((tmp_path / "d2.json").read_text())] == [11, 12]
    for flags, message in (
        (["--draw", "a.png", "b.png"], "--draw is for one input"),
        (["--image-id", "3"], "--image-id"),
    ):
        assert fcm_dec.main([str(dup), *flags]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--qp", "70"],
        ["--preset", "turbo"],
        ["--mode", "learned_e2e", "--phi", "9"],
        ["--split", "nowhere"],
        ["--threads", "0"],
    ],
    ids=["qp", "preset", "phi", "split", "threads"],
)
def test_bad_arguments_fail_before_torch_loads(tmp_path, args):
    """In a fresh process: exit 2 in well under a second, without importing torch (whose import
    alone took 4 s here); the image need not exist, the arguments are checked first."""
    import subprocess
    import sys
    import time

    code = (
        "import sys; from codec.apps import fcm_enc; "
        f"rc = fcm_enc.main({[str(tmp_path / 'none.jpg'), '-o', str(tmp_path / 'o.bin'), *args]!r}); "
        "print(rc, 'torch' in sys.modules)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fcm_enc: error: ")  # argparse's usage may precede it
    assert took < 5, took  # about 0.4 s on a loaded 2-core machine; generous for CI


@pytest.mark.parametrize("app", [fcm_enc, fcm_dec, fcm_inspect])
def test_version(app, capsys):
    from codec import __version__

    assert app.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{app.__name__.rsplit('.', 1)[1]} {__version__} (") and "container 2.1" in out


def test_version_agrees_with_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from codec import __version__

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__


def test_verbose_quiet_and_threads(fake_net, image_file, tmp_path, capsys):
    out = tmp_path / "o.bin"
    threads = torch.get_num_threads()
    try:
        assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "-v", "--threads", "1"]) == 0
        cap = capsys.readouterr()
        assert "fcm_enc: network nanodet loaded in" in cap.err and "fcm_enc: torch threads: 1" in cap.err
        assert torch.get_num_threads() == 1
        assert "load_network" in cap.out  # the model load is timed apart from the coding
    finally:
        torch.set_num_threads(threads)
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass", "--force", "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert fcm_dec.main([str(out), "-q"]) == 0 and capsys.readouterr() == ("", "")
    assert fcm_enc.main([str(image_file), "-o", str(out), "-q", "-v"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("module", [["-m", "codec", "enc"], ["-m", "codec.apps.fcm_dec"], ["-m", "codec", "inspect"]])
def test_python_m_entry_points(module):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *module, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and " 0.1.0 (fcm-codec; writes FCM container 2.1)" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "codec", "zip"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown application 'zip'" in proc.stderr


def test_no_torch_jit_deprecation_noise_from_the_learned_codec():
    """compressai imports torch_geometric, which calls torch.jit.script at import time; that
    FutureWarning is filtered exactly, around that import only (codec/models/fenet.py)."""
    import subprocess
    import sys

    code = "import warnings; import codec.models.fenet; warnings.warn('still on', FutureWarning)"
    proc = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert "torch.jit.script" not in proc.stderr
    assert "FutureWarning: still on" in proc.stderr  # other FutureWarnings are not hidden


def test_draw_counts_its_boxes_and_keeps_labels_inside(tmp_path):
    from PIL import ImageDraw

    from codec.apps._draw import draw_detections, label_origin

    image = np.zeros((60, 80, 3), dtype=np.uint8)
    dets = Detections(
        np.array([[70.0, 0.0, 80.0, 10.0], [0.0, 50.0, 10.0, 60.0], [10, 10, 20, 20]]),
        np.array([0.9, 0.8, 0.1]),
        np.array([1, 3, 1]),
    )
    drawing = draw_detections(image, dets, 0.3)
    assert (drawing.boxes, drawing.below, drawing.best_score) == (2, 1, pytest.approx(0.9))
    with Image.open(io.BytesIO(drawing.png)) as im:
        assert im.size == (80, 60)
    draw = ImageDraw.Draw(Image.new("RGB", (80, 60)))
    for box in ([70, 0, 80, 10], [0, 50, 10, 60], [-5, -5, 100, 100], [30, 30, 40, 40]):
        w, h = draw.textbbox((0, 0), "person 0.90")[2:]
        x, y = label_origin(tuple(box), (w, h), (80, 60))
        assert 1 <= x and x + w + 1 <= 79 and 1 <= y and y + h + 1 <= 59, box
    none = draw_detections(image, Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)), 0.3)
    assert (none.boxes, none.best_score) == (0, None)


def test_fcm_dec_draw_reports_the_boxes_drawn(fake_net, image_file, tmp_path, capsys):
    out = tmp_path / "o.bin"
    assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "bypass"]) == 0
    capsys.readouterr()
    png = tmp_path / "d.png"
    assert fcm_dec.main([str(out), "--draw", str(image_file), str(png)]) == 0
    assert f"drawing: 1 box (score >= 0.3) -> {png}" in capsys.readouterr().out
    assert fcm_dec.main([str(out), "--draw", str(image_file), str(png), "--score-thr", "0.95", "--force"]) == 0
    assert "drawing: 0 boxes (score >= 0.95)" in (o := capsys.readouterr().out) and "best of 1 scores 0.90" in o
    # the image is checked before decoding
    assert fcm_dec.main([str(out), "--draw", str(tmp_path / "none.png"), str(png), "--force"]) == 2
    assert "image not found" in capsys.readouterr().err


@pytest.mark.needs_assets
def test_a_folder_of_real_images_decodes_to_the_map_of_the_per_image_runs(nanodet, assets, tmp_path, monkeypatch):
    """The done-when of issue 12 on a few val2017 images with the real NanoDet: one process and
    one network load per app, the same containers as single-input runs, and one COCO results
    file whose mAP equals that of the per-image runs' results."""
    from ctc.coco_eval import evaluate_detections

    loads = []

    def load(name, weights=None):
        loads.append(name)
        return nanodet

    monkeypatch.setattr(_cli, "load_network", load)
    src = assets / "coco/val2017-103/images"
    names = sorted(p.name for p in src.iterdir())[:4]
    folder = tmp_path / "in"
    folder.mkdir()
    for n in names:
        (folder / n).symlink_to(src / n)
    mode = ["--mode", "learned_e2e", "--phi", "2"]
    assert fcm_enc.main([str(folder), "-o", str(tmp_path / "bins"), *mode]) == 0
    assert fcm_dec.main([str(tmp_path / "bins"), "--detections", str(tmp_path / "batch.json")]) == 0
    assert loads == ["nanodet", "nanodet"]
    per_image = []
    for n in names:
        single = tmp_path / f"{Path(n).stem}.bin"
        assert fcm_enc.main([str(src / n), "-o", str(single), *mode]) == 0
        assert single.read_bytes() == (tmp_path / "bins" / single.name).read_bytes()
        assert fcm_dec.main([str(single), "--detections", str(tmp_path / "one.json"), "--force"]) == 0
        per_image += json.loads((tmp_path / "one.json").read_text())
    batch = json.loads((tmp_path / "batch.json").read_text())
    assert batch == per_image and {r["image_id"] for r in batch} == {int(Path(n).stem) for n in names}
    annotations = assets / "coco/val2017-103/annotations/instances_val2017_103.json"
    ids = [int(Path(n).stem) for n in names]
    batch_map = evaluate_detections(batch, annotations, ids)
    assert batch_map == evaluate_detections(per_image, annotations, ids) and batch_map["map"] > 0.1
