"""tools/bench_presets: the anchors' frames coded with several vvenc presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tools import bench_presets

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "baseball.jpg"


def test_presets_on_both_anchor_inputs(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLE, images / "a.jpg")
    out = tmp_path / "p.json"
    rc = bench_presets.main(["--images", str(images), "--presets", "faster,fast", "--qps", "32,42", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert len(rows) == 2 * 2 * 2  # kinds x presets x QPs
    for r in rows:
        assert 15.0 < r["psnr"] < 60.0 and r["bytes"] > 0 and r["encode_s"] > 0
    for kind in ("feature", "image"):
        for p in ("faster", "fast"):
            b = {r["qp"]: r["bytes"] for r in rows if r["kind"] == kind and r["preset"] == p}
            assert b[32] > b[42]  # a lower QP spends more bits
        s = res["summary"][kind]
        assert set(s["curves"]) == {"faster", "fast"}
        assert set(s["bd_rate_psnr"]) == {"fast vs faster", "faster vs fast"}
    assert "BD-rate" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--presets", "fastest"], ["--qps", "a,b"], ["--qps", "70"], ["--what", "audio"], ["--limit", "0"]],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_presets.main(argv)
    assert e.value.code == 2


def test_missing_folder(tmp_path: Path, capsys) -> None:
    assert bench_presets.main(["--images", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
