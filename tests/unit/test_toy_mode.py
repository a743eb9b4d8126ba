"""Adding a coding mode is one object: a toy mode defined here, and nowhere else,
round-trips through fcm_enc, fcm_dec, fcm_inspect and fcm_ctc once registered.

The toy mode quantises each scale to `bits` bits (its rate parameter) with the
scale's own min-max range, and codes the codes as one uint8 RAW_TENSOR unit per
scale. It uses a private-use mode_id (bitstream_spec.md, table "mode_id")."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import numpy as np
import pytest
from construct import Array, Float32b, Int8ub, Struct, this
from test_apps import FakeNet
from test_ctc_fakes import write_fake_config

from codec.apps import _cli, fcm_dec, fcm_enc, fcm_inspect
from codec.bitstream import InnerCodecParams, ModeHeader, PayloadUnit, SampleFormat, ScaleHeader, UnitType
from codec.bitstream.container import ModeHeaderSyntax
from codec.errors import EncodeError, MalformedError
from codec.modes import CodingMode, option, register_mode, unregister_mode
from codec.modes.base import (
    ANY,
    EQUALS_SCALE_CHANNELS,
    NO_CODEC_MODEL,
    NO_ENTROPY_CODER,
    NO_INNER_CODEC,
    enum_rule,
    in_range,
    scale_arrays,
    shaped_scales,
    to_features,
    units_of_type,
)

TOY_ID = 200


@dataclass(frozen=True)
class ToyParams:
    bits: int = option(6, "bits per sample", range=(1, 8), rate=True)
    flip: str = option("no", "store the codes inverted", choices=("no", "yes"))


def toy_encode(features, split_point, params: ToyParams):
    scales, units = [], []
    top = (1 << params.bits) - 1
    for i, (name, a) in enumerate(scale_arrays(features, split_point)):
        lo, hi = float(a.min()), float(a.max())
        if not np.isfinite([lo, hi]).all():
            raise EncodeError("toy: non-finite features")
        q = np.round((a - lo) / ((hi - lo) or 1.0) * top).astype(np.uint8)
        if params.flip == "yes":
            q = (top - q).astype(np.uint8)
        c, h, w = a.shape
        scales.append(ScaleHeader(name, c, h, w, phi_index=params.bits, kept_channels=c, quant_min=lo, quant_max=hi))
        units.append(PayloadUnit(UnitType.RAW_TENSOR, q.tobytes(), scale_index=i))
    return ModeHeader(tuple(scales), SampleFormat.NONE, InnerCodecParams()), units


def toy_validate(header, units, weights=None):
    raw = units_of_type(units, UnitType.RAW_TENSOR)
    if len(raw) != len(header.scales) or len(units) != len(raw):
        raise MalformedError(f"toy mode needs one RAW_TENSOR unit per scale, got {len(units)} units")
    for i, s in enumerate(header.scales):
        if not 1 <= s.phi_index <= 8 or len(raw[i].data) != s.channels * s.height * s.width:
            raise MalformedError(f"toy mode: scale {i} has phi_index {s.phi_index}, {len(raw[i].data)} bytes")


def toy_decode_symbols(header, units, weights=None):
    toy_validate(header, units)
    raw = units_of_type(units, UnitType.RAW_TENSOR)
    return {s.name: np.frombuffer(u.data, np.uint8).reshape(s.shape) for s, u in zip(header.scales, raw)}


def toy_reconstruct(header, symbols, weights=None):
    arrays = []
    for s in header.scales:
        top = (1 << s.phi_index) - 1
        arrays.append(symbols[s.name].astype(np.float32) / top * (s.quant_max - s.quant_min) + s.quant_min)
    return to_features(header, arrays)


# its part of the container 2.0 header: the bits once and each scale's range
toy_header = Struct(
    "bits" / Int8ub,
    "ranges" / Array(this._.num_scales, Struct("lo" / Float32b, "hi" / Float32b)),
)


def toy_header_value(mh: ModeHeader) -> dict:
    return {"bits": mh.scales[0].phi_index, "ranges": [{"lo": s.quant_min, "hi": s.quant_max} for s in mh.scales]}


def toy_header_from_value(value, shapes) -> ModeHeader:
    lo, hi = [r.lo for r in value.ranges], [r.hi for r in value.ranges]
    return ModeHeader(shaped_scales(shapes, phi_index=value.bits, quant_min=lo, quant_max=hi))


TOY = CodingMode(
    mode_id=TOY_ID,
    name="toy",
    params=ToyParams,
    encode=toy_encode,
    decode_symbols=toy_decode_symbols,
    reconstruct=toy_reconstruct,
    validate=toy_validate,
    # its constraint tables: what the one validator of codec.modes checks before decoding
    header_rules={
        "sample_format": enum_rule(SampleFormat.NONE),
        **NO_INNER_CODEC,
        **NO_CODEC_MODEL,
        **NO_ENTROPY_CODER,
    },
    scale_rules={
        "phi_index": in_range(1, 8),
        "kept_channels": EQUALS_SCALE_CHANNELS,
        "quant_min": ANY,
        "quant_max": ANY,
    },
    header_syntax=ModeHeaderSyntax(toy_header, toy_header_value, toy_header_from_value),
    description="test-only toy quantiser",
)


@pytest.fixture
def toy():
    register_mode(TOY)
    yield TOY
    unregister_mode(TOY)


@pytest.fixture
def image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "000000000042.png"
    Image.fromarray((np.random.default_rng(3).random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_toy_mode_through_fcm_enc_dec_inspect(toy, image_file, tmp_path, monkeypatch, capsys):
    net = FakeNet()
    monkeypatch.setattr(_cli, "load_network", lambda name, weights=None: net)
    # its flags are generated from its parameter dataclass
    assert fcm_enc.main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--bits BITS" in help_text and "toy rate parameter: 1..8, default 6" in help_text
    assert "--flip FLIP" in help_text and "toy: test-only toy quantiser" in help_text

    decoded = {}
    for bits in (2, 6, 8):
        out = tmp_path / f"toy{bits}.bin"
        assert fcm_enc.main([str(image_file), "-o", str(out), "--mode", "toy", "--bits", str(bits)]) == 0
        assert f"mode toy, bits {bits}, flip no" in capsys.readouterr().out
        assert fcm_inspect.main([str(out), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["valid"] and info["header"]["mode_id"] == TOY_ID and info["header_names"]["mode_id"] == "TOY"
        assert info["version"] == "2.1" and info["header"]["mode_header"]["bits"] == bits  # its own syntax
        assert [set(s) for s in info["header"]["scales"]] == [
            {"scale_name", "scale_channels", "scale_height", "scale_width"}
        ] * 2
        npz = tmp_path / f"toy{bits}.npz"
        assert fcm_dec.main([str(out), "-o", str(npz), "--detections", str(tmp_path / f"d{bits}.json")]) == 0
        assert "mode toy, network nanodet" in capsys.readouterr().out
        with np.load(npz) as z:
            decoded[bits] = {k: z[k] for k in z.files}
    # more bits, closer to the uncoded features: the rate parameter does what it says
    from PIL import Image

    x, _ = net.preprocess(np.asarray(Image.open(image_file)))
    ref = net.part1(x, "neck")
    err = {b: max(float(np.abs(d[k] - ref[k].numpy()).max()) for k in d) for b, d in decoded.items()}
    assert err[8] < err[6] < err[2]
    # its checks, before anything loads: exit 2, one line
    assert fcm_enc.main([str(image_file), "-o", str(tmp_path / "x.bin"), "--mode", "toy", "--bits", "9"]) == 2
    err_text = capsys.readouterr().err
    assert "toy parameter bits must be an integer in 1..8, got 9" in err_text and len(err_text.splitlines()) == 1
    # a decoder without the mode refuses the stream with one line
    unregister_mode(TOY)
    assert fcm_dec.main([str(tmp_path / "toy6.bin")]) == 2
    assert "coding mode id 200 is not implemented" in capsys.readouterr().err
    register_mode(TOY)


def test_toy_mode_through_fcm_ctc(toy, tmp_path, capsys):
    from ctc.cache import ResultCache
    from ctc.cli import main

    config = """
name: toy
dataset:
  name: fakeset
  images: images
  annotations: instances.json
network:
  name: fake
  factory: "test_ctc_fakes:make_fake_network"
anchors: [toy]
codecs:
  - name: toy
    type: toy
    values: [2, 4, 6, 8]
    options: {flip: "yes"}
  - name: uncompressed
    type: uncompressed
"""
    cfg = write_fake_config(tmp_path, config, n_images=2)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    rows = {r["point"]: r for r in csv.DictReader((out / "summary.csv").open()) if r["codec"] == "toy"}
    assert set(rows) == {"bits2", "bits4", "bits6", "bits8"}  # the default param is the mode's rate parameter
    bits = {p: int(r["total_bits"]) for p, r in rows.items()}
    assert bits["bits2"] == bits["bits4"] == bits["bits8"]  # one byte per sample whatever the bits: the toy's rate
    # the CTC's cached results depend on the file that defines the mode (it ran in their jobs)
    with ResultCache(out / "cache.sqlite") as cache:
        keys = [j["key"] for j in cache.get_meta("run")["jobs"] if j["codec"] == "toy"]
        deps = cache.dependencies_of(keys)
    assert len(deps) == 8 and all("tests/unit/test_toy_mode.py" in {n for n, _ in d} for d in deps.values())
    capsys.readouterr()
    bad = cfg.read_text().replace("values: [2, 4, 6, 8]", "values: [2, 4, 6, 9]")
    cfg.write_text(bad)
    assert main(["run", str(cfg), "--out", str(tmp_path / "r2")]) == 2
    assert "toy parameter bits must be an integer in 1..8, got 9" in capsys.readouterr().err
