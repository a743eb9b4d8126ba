"""tools/bench_batch: one fcm_enc / fcm_dec process for a folder against per-image runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import bench_batch


@pytest.mark.needs_assets
def test_batch_against_per_image_runs(assets, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b.json"
    rc = bench_batch.main(
        ["--dataset", "val2017-103", "--limit", "2", "--mode", "bypass", "--per-image", "1", "--json", str(out)]
    )
    res = json.loads(out.read_text())
    assert rc == 0
    assert res["images"] == res["containers"] == res["image_ids_in_results"] == 2
    assert res["network_loads_reported"] == {"fcm_enc": 1, "fcm_dec": 1}
    assert 0.0 < res["map50"] <= 1.0
    pe = res["per_image"]
    assert pe["identical_containers"] == 1 and pe["map_per_image_runs"] == pe["map_batch_same_images"]


@pytest.mark.parametrize("argv", [["--limit", "0"], ["--per-image", "-1"], ["--dataset", "nope"]])
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_batch.main(argv)
    assert e.value.code == 2
