"""The encoder's image input (codec/pipeline.py load_image, to_rgb8): size limits checked
from the header before decoding, and every pixel mode read as RGB uint8 without silent
clipping (or refused with one line)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from codec.errors import EncodeError, InputError
from codec.pipeline import DEFAULT_MAX_PIXELS, MAX_IMAGE_SIDE, encode_image, load_image, to_rgb8


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, rows: bytes = b"", bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG with the given IHDR and `rows` (already filtered) as its compressed data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG of (H, W) or (H, W, C) uint16 samples (Pillow does not write 16-bit RGB)."""
    h, w = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))
    return png_bytes(w, h, rows, 16, colour_type)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    """65 bytes declaring 20000 x 20000 pixels: refused before a pixel is decoded."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000))
    assert path.stat().st_size < 100
    t0 = time.perf_counter()
    with pytest.raises(InputError) as info:
        load_image(path)
    assert time.perf_counter() - t0 < 1.0
    assert str(info.value) == (
        f"image {path} is 20000x20000 = 400000000 pixels, more than the limit of {DEFAULT_MAX_PIXELS} "
        "(--max-pixels raises it)"
    )
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # Pillow's own guard is restored


def test_pixel_limit_is_settable_and_exact(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path)
    assert load_image(path, max_pixels=64 * 48).shape == (48, 64, 3)
    with pytest.raises(InputError, match="64x48 = 3072 pixels, more than the limit of 3071"):
        load_image(path, max_pixels=64 * 48 - 1)
    with pytest.raises(InputError, match="positive integer"):
        load_image(path, max_pixels=0)


def test_a_limit_above_pillows_guard_lets_a_large_image_through(tmp_path, monkeypatch):
    """The limit replaces Pillow's guard rather than stacking on it (here with a small guard)."""
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would refuse 2000 pixels
    assert load_image(path, max_pixels=2000).shape == (40, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.parametrize(("width", "height"), [(70000, 1), (1, 65536)])
def test_a_side_longer_than_the_container_records_is_refused(tmp_path, width, height):
    path = tmp_path / "long.png"
    path.write_bytes(png_bytes(width, height))
    with pytest.raises(InputError, match=f"is {width}x{height} pixels: a side is longer than {MAX_IMAGE_SIDE}"):
        load_image(path)


def test_encode_image_refuses_an_array_the_container_cannot_describe():
    class NoNet:
        name = "none"
        split_points = {"neck": object()}
        default_split = "neck"

        def weights_sha256(self):
            raise AssertionError("reached the network")

    with pytest.raises(EncodeError, match="70000x1 pixels; the container records 1..65535 a side"):
        encode_image(np.zeros((1, 70000, 3), np.uint8), NoNet(), None, "bypass")


def test_truncated_image_is_an_input_error(tmp_path):
    path = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match=f"image {path}"):
        load_image(path)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 65536, (48, 64)).astype(np.uint16)
    grey[0, :4] = [0, 128, 65535, 65407]
    path = tmp_path / "g16.png"
    Image.fromarray(grey).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    rgb = load_image(path)
    expected = np.round(grey / 257.0).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert list(rgb[0, :4, 0]) == [0, 0, 255, 255]
    assert (rgb == 255).mean() < 0.01  # was 99.8 % with im.convert("RGB")


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I"])
def test_other_16_bit_modes_are_scaled(mode):
    grey = np.array([[0, 257, 32896, 65535]], np.uint16)
    if mode == "I":
        im = Image.fromarray(grey.astype(np.int32))
    else:
        im = Image.frombytes(mode, (4, 1), grey.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert im.mode == mode
    assert list(to_rgb8(im)[0, :, 1]) == [0, 1, 128, 255]


def test_mode_i_outside_16_bit_is_refused():
    im = Image.fromarray(np.array([[-1, 0, 70000]], np.int32))
    with pytest.raises(InputError, match="I samples in -1..70000, outside 0..65535"):
        to_rgb8(im)


def test_16_bit_pgm_is_read_as_16_bit(tmp_path):
    path = tmp_path / "g.pgm"
    path.write_bytes(b"P5\n3 1\n4095\n" + np.array([0, 2048, 4095], ">u2").tobytes())
    assert list(load_image(path)[0, :, 0]) == [0, 128, 255]


def test_16_bit_rgb_and_grey_alpha_pngs_keep_their_range(tmp_path):
    rgb16 = np.array([[[65535, 32896, 0], [257, 514, 771]]], np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png16(rgb16, 2))
    out = load_image(path)
    assert np.abs(out.astype(int) - np.round(rgb16 / 257.0)).max() <= 1
    la16 = np.array([[[65535, 65535], [0, 65535]]], np.uint16)  # opaque white, opaque black
    path.write_bytes(png16(la16, 4))
    assert load_image(path)[0].tolist() == [[255, 255, 255], [0, 0, 0]]


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.array([[0.0, 0.5, 1.0]], np.float32), "32-bit float samples"),
        (np.array([[-1, 0, 70000]], np.int32), r"32-bit or signed integer samples \(mode I, TIFF\)"),
        (np.array([[0, 100, 255]], np.int32), r"32-bit or signed integer samples \(mode I, TIFF\)"),
    ],
)
def test_modes_without_an_8_bit_meaning_are_refused(tmp_path, samples, message):
    path = tmp_path / "deep.tiff"
    Image.fromarray(samples).save(path)
    with pytest.raises(InputError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_alpha_is_composited_over_white():
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [0, 0, 0, 128]]], np.uint8)
    assert to_rgb8(Image.fromarray(rgba, "RGBA")).tolist() == [[[200, 100, 0], [255, 255, 255], [127, 127, 127]]]
    la = Image.fromarray(np.array([[[10, 255], [10, 0]]], np.uint8), "LA")
    assert to_rgb8(la).tolist() == [[[10, 10, 10], [255, 255, 255]]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    assert to_rgb8(pal).tolist() == [[[255, 255, 255], [250, 0, 0]]]
    assert to_rgb8(Image.new("La", (1, 1), (100, 255))).tolist() == [[[100, 100, 100]]]
    assert to_rgb8(Image.new("PA", (1, 1), (0, 255))).shape == (1, 1, 3)


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"])
def test_8_bit_modes_convert_as_pillow_does(mode):
    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "RGB")
    im = base.convert(mode) if mode not in ("LAB", "HSV") else base.convert("RGB").convert(mode)
    out = to_rgb8(im)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert np.array_equal(out, np.asarray(im.convert("RGB")))


def test_cmyk_white_and_black():
    assert to_rgb8(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).tolist() == [[[255, 255, 255]]]
    assert to_rgb8(Image.new("CMYK", (1, 1), (0, 0, 0, 255))).tolist() == [[[0, 0, 0]]]
