"""End to end: the quick CTC config (real NanoDet, real VVC, real container, the learned
mode) on 1 COCO128 image with 4 rate points per BD curve, through `fcm_ctc run`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from codec.files import assets_path
from ctc.cli import main
from ctc.config import default_assets_dir

REPO = Path(__file__).resolve().parents[2]
ASSETS = assets_path()

pytestmark = [pytest.mark.needs_ffmpeg, pytest.mark.needs_assets]


def _vvc_available() -> bool:
    try:
        from codec.inner.vvc import ffmpeg_supports_vvc

        return ffmpeg_supports_vvc()
    except Exception:
        return False


@pytest.mark.skipif(not (ASSETS / "coco" / "coco128").is_dir(), reason=f"assets not found at {ASSETS}")
@pytest.mark.skipif(not _vvc_available(), reason="ffmpeg with libvvenc and the vvc decoder not available")
def test_quick_config_end_to_end(tmp_path: Path, capsys) -> None:
    assert default_assets_dir() == ASSETS
    data = yaml.safe_load((REPO / "ctc" / "configs" / "quick.yaml").read_text())
    data["dataset"]["limit"] = 1
    # 4 points per BD curve (the config check's minimum), the cheapest ones; vvc_msff has a test below
    data["codecs"] = [c for c in data["codecs"] if c["name"] != "vvc_msff"]
    for c in data["codecs"]:
        if c["name"] in ("image_anchor", "feature_anchor", "learned_e2e"):
            c["values"] = c["values"][:4]
    cfg = tmp_path / "quick1.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "1 images, 14 jobs: 0 cached, 14 computed" in printed
    assert "BD-rate vs anchors, mAP@0.5" in printed and "(monotone, pchip)" in printed

    rows = {(r["codec"], r["point"]): r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {
        *(("image_anchor", f"qp{q}") for q in (47, 42, 37, 32)),
        *(("feature_anchor", f"qp{q}") for q in (44, 39, 34, 29)),
        *(("learned_e2e", f"phi{p}") for p in (1, 2, 3, 4)),
        ("bypass", "float16"),
        ("uncompressed", "ref"),
    }
    for r in rows.values():
        assert 0.0 <= float(r["map"]) <= float(r["map50"]) <= 1.0
        assert int(r["n_images"]) == 1 and float(r["bpp"]) > 0
        assert float(r["kmac_px_nn_part1"]) > 0 and float(r["kmac_px_nn_part2"]) > 0
    # lower QP, more bits; higher phi, more bits
    assert float(rows[("image_anchor", "qp32")]["bpp"]) > float(rows[("image_anchor", "qp47")]["bpp"])
    assert float(rows[("feature_anchor", "qp29")]["bpp"]) > float(rows[("feature_anchor", "qp44")]["bpp"])
    assert float(rows[("learned_e2e", "phi4")]["bpp"]) > float(rows[("learned_e2e", "phi1")]["bpp"])
    # the learned decoder's fixed-point convolutions are counted
    assert float(rows[("learned_e2e", "phi3")]["kmac_px_decode"]) > 1.0
    # NanoDet neck features, float32: 128 * (52^2 + 26^2 + 13^2) values per image
    raw_bits = 128 * (52 * 52 + 26 * 26 + 13 * 13) * 32
    assert int(rows[("uncompressed", "ref")]["total_bits"]) == raw_bits
    # bypass float16: half the raw size plus the container header
    bypass_bits = int(rows[("bypass", "float16")]["total_bits"])
    assert raw_bits < 2 * bypass_bits < raw_bits * 1.01
    assert abs(float(rows[("bypass", "float16")]["map50"]) - float(rows[("uncompressed", "ref")]["map50"])) < 0.02
    # the whole network's MACs are the same whatever codes it; NanoDet at 416x416 is 2.09 GMAC
    # (cross-checked: torch.utils.flop_counter.FlopCounterMode gives 4.18 GFLOP = 2 x 2.09 GMAC)
    kmac = [float(r["kmac_px_nn_part1"]) + float(r["kmac_px_nn_part2"]) for r in rows.values()]
    assert max(kmac) == pytest.approx(min(kmac), rel=1e-9)
    total_px = int(rows[("uncompressed", "ref")]["total_pixels"])
    assert kmac[0] * 1000 * total_px == pytest.approx(2.09008384e9, rel=1e-4)

    for name in (
        "bd_rate.csv",
        "per_class.csv",
        "near_lossless.csv",
        "report.html",
        "cttc/image_anchor.csv",
        "cttc/feature_anchor_complexity.csv",
    ):
        assert (out / name).is_file(), name
    dets = json.loads((out / "detections" / "feature_anchor" / "qp29.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} <= set(dets[0])
    bd = list(csv.DictReader((out / "bd_rate.csv").open()))
    assert {(r["codec"], r["anchor"], r["curve"]) for r in bd} >= {
        (c, a, k)
        for c, a in (("feature_anchor", "image_anchor"), ("learned_e2e", "feature_anchor"))
        for k in ("front", "monotone")
    }
    for r in bd:  # a figure, or the reason there is none
        assert r["bd_rate_pchip"] not in ("", "nan") or r["note"]

    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "14 jobs: 14 cached, 0 computed" in capsys.readouterr().out


SHIPPED_MSFF = "codec/models/weights/msff_nanodet_neck.pt"


@pytest.mark.skipif(not (ASSETS / "coco" / "coco128").is_dir(), reason=f"assets not found at {ASSETS}")
@pytest.mark.skipif(not _vvc_available(), reason="ffmpeg with libvvenc and the vvc decoder not available")
def test_msff_ablation_codec_reproduces_the_mode_and_varies_what_it_says(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "ctc" / "configs" / "quick.yaml").read_text())
    data["dataset"]["limit"] = 1
    qps = [47, 22]
    data["codecs"] = [
        {"name": "vvc_msff", "type": "vvc_msff", "param": "qp", "values": qps},
        {"name": "same", "type": "vvc_msff", "values": qps, "options": {"codec_weights": SHIPPED_MSFF}},
        {"name": "all", "type": "vvc_msff", "param": "qp", "values": qps, "options": {"kept_channels": 192}},
        {"name": "k8", "type": "vvc_msff", "param": "qp", "values": qps, "options": {"kept_channels": 8}},
    ]
    data["anchors"] = []  # 2 points per codec: no BD curves (the config check wants 4)
    data.pop("reference", None)
    cfg = tmp_path / "abl.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    bits = {(r["codec"], r["point"]): int(r["total_bits"]) for r in csv.DictReader((out / "summary.csv").open())}
    # the shipped weights with the shipped table: the very same container as the mode
    assert bits[("same", "qp47")] == bits[("vvc_msff", "qp47")]
    assert bits[("same", "qp22")] == bits[("vvc_msff", "qp22")]
    from codec.modes import vvc_msff

    table = vvc_msff.TRUNCATION_TABLE
    # where the table truncates, keeping every channel costs more; where it keeps all, nothing changes
    assert (bits[("all", "qp47")] > bits[("same", "qp47")]) == (table[47] < 192)
    assert (bits[("all", "qp22")] == bits[("same", "qp22")]) == (table[22] == 192)
    assert bits[("k8", "qp22")] < bits[("same", "qp22")]
    # weights that do not exist are a configuration error (exit 2, one line)
    data["codecs"][1]["options"] = {"codec_weights": "nowhere.pt"}
    cfg.write_text(yaml.safe_dump(data))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r2")]) == 2
