"""tools/bench_mfiba: MFIBA against uniform phi on a labelled set, every point checked
against the real encoder and decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codec.files import assets_path

pytestmark = pytest.mark.needs_assets


def test_one_image_every_point_checked_against_the_real_path(tmp_path: Path, capsys) -> None:
    if not (assets_path() / "coco" / "val2017-103").is_dir():
        pytest.skip(f"val2017-103 not found under {assets_path()} (set FCM_ASSETS)")
    from tools import bench_mfiba

    out = tmp_path / "m.json"
    argv = ["--limit", "1", "--targets", "0.04,0.08,0.16,0.32", "--allocations", "mfiba", "--check", "1",
            "--json", str(out)]  # fmt: skip
    assert bench_mfiba.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 1 and res["checked_configurations"] == 8 + 4  # uniform phi 0..7 + the targets
    uniform = res["points"]["uniform-phi"]
    assert [p["phi"] for p in uniform] == list(range(8))
    bpp = [p["bpp"] for p in uniform]
    assert bpp == sorted(bpp) and bpp[0] < bpp[-1]  # a higher phi spends more bits
    for p in res["points"]["mfiba"]:
        assert abs(p["bpp"] / p["target_bpp"] - 1) == pytest.approx(p["mean_abs_error"], abs=1e-4)
        assert len(p["phis_mean"]) == 3
    bd = res["bd_rate_vs_uniform_phi"]["mfiba"]["map50"]
    assert set(bd) == {"front", "monotone"}
    assert "rate control of mfiba" in capsys.readouterr().out


def test_lambda_driven_points_are_checked_and_spend_fewer_bits_at_a_higher_lambda(tmp_path: Path) -> None:
    if not (assets_path() / "coco" / "val2017-103").is_dir():
        pytest.skip(f"val2017-103 not found under {assets_path()} (set FCM_ASSETS)")
    from tools import bench_mfiba

    out = tmp_path / "l.json"
    argv = ["--limit", "1", "--allocations", "", "--lambdas", "0.0003,0.003,0.03,0.3",
            "--lambda-allocations", "exhaustive", "--check", "1", "--times", "1", "--json", str(out)]  # fmt: skip
    assert bench_mfiba.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["checked_configurations"] == 8 + 4  # every lambda' point through the real encoder and decoder
    pts = res["points"]["exhaustive-lambda"]
    assert [p["lambda_"] for p in pts] == [0.0003, 0.003, 0.03, 0.3]
    bpp = [p["bpp"] for p in pts]
    assert bpp == sorted(bpp, reverse=True) and bpp[0] > bpp[-1]
    assert set(res["bd_rate_vs_uniform_phi"]) == {"exhaustive-lambda"} and res["rate_control"] == {}
    med = res["times"]["median_seconds"]
    assert res["times"]["images"] == 1 and med["nn_part1"] > 0 and med["nn_part2"] > 0
    for a in ("uniform", "mfiba", "mfiba_ft", "exhaustive"):
        assert med[f"{a}:precoding"] > 0 and med[f"{a}:final_coding"] > 0 and med[f"{a}:decoding"] > 0
        assert med[f"{a}:allocation"] >= 0
    assert med["exhaustive:precoding"] > med["mfiba:precoding"]  # 24 codings and losses against 9


def test_another_fit_is_used_unchecked_and_refused_with_a_check(tmp_path: Path) -> None:
    """--fitted: the allocation with another file of fitted models (the encoder uses the weights'
    own, so there is nothing to check against: --check must be 0); a file for other weights or
    not a fit is refused."""
    if not (assets_path() / "coco" / "val2017-103").is_dir():
        pytest.skip(f"val2017-103 not found under {assets_path()} (set FCM_ASSETS)")
    from codec import models
    from codec.allocation import mfiba
    from tools import bench_mfiba

    own = json.loads((Path(models.__file__).parent / "weights" / "fenet_ps_nanodet_neck.mfiba.json").read_text())
    log = {**own, "rate_model": "log_linear", "rate_phi": [{"scale": r["scale"], "a": 0.6, "b": -0.5}
                                                           for r in own["rate_phi"]]}  # fmt: skip
    f = tmp_path / "log.json"
    f.write_text(json.dumps(log))
    assert mfiba.FittedModels.from_json(log).rate_model == "log_linear"
    out = tmp_path / "o.json"
    argv = ["--limit", "1", "--targets", "0.05,0.1", "--allocations", "mfiba", "--fitted", str(f), "--json", str(out)]
    assert bench_mfiba.main([*argv, "--check", "1"]) == 2
    assert bench_mfiba.main([*argv, "--check", "0"]) == 0
    res = json.loads(out.read_text())
    assert res["rate_model"] == "log_linear" and res["checked_configurations"] == 0
    f.write_text(json.dumps({**own, "codec_weights_sha256": "0" * 64}))
    assert bench_mfiba.main([*argv, "--check", "0"]) == 2
    f.write_text("{}")
    assert bench_mfiba.main([*argv, "--check", "0"]) == 2


@pytest.mark.parametrize(
    "argv",
    [["--targets", "0,0.1"], ["--targets", "a"], ["--allocations", "greedy"],
     ["--lambdas", "0.01", "--lambda-allocations", "uniform"], ["--lambdas", "-1"]],
)  # fmt: skip
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    from tools import bench_mfiba

    with pytest.raises(SystemExit) as e:
        rc = bench_mfiba.main(argv)
        raise SystemExit(rc)
    assert e.value.code not in (0, None)
