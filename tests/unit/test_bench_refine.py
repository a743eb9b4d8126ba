"""tools/bench_refine.py: its argument checks, its report of an earlier run, and one real
point pair through the container path."""

from __future__ import annotations

import json

import pytest

from tools import bench_refine


def _results(bpps, maps):
    return {str(phi): {"bpp": b, "map50": m / 100, "map": m / 200, "encode_s_per_image": 0.1}
            for phi, (b, m) in enumerate(zip(bpps, maps))}  # fmt: skip


def test_bad_arguments_are_one_line_errors(capsys):
    for argv in (["--steps", "0"], ["--steps", "0,x"], ["--limit", "0"], ["--versus", "a=1:2:3"], ["--versus", "=1:2"],
                 ["--lr", "0"], ["--lr", "5"], ["--lr", "nan"], ["--rate-weight", "0.5"],
                 ["--mode", "vvc_msff", "--lr", "2"], ["--mode", "vvc_msff", "--qps", "a"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            bench_refine.parse_args(argv)
        assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_report_of_an_earlier_run_gives_the_bd_rates(tmp_path, capsys):
    bpps = [0.02, 0.04, 0.08, 0.16]
    maps = [10.0, 20.0, 30.0, 35.0]
    earlier = {
        "dataset": "heldout",
        "images": 4,
        "uncompressed": {"map50": 1.0},
        # the refined curve: the same accuracy at 10 % fewer bits everywhere
        "results": {"0": _results(bpps, maps), "20": _results([0.9 * b for b in bpps], maps)},
    }
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    out = tmp_path / "again.json"
    anchor = ",".join(f"{2 * b}:{m}" for b, m in zip(bpps, maps))  # twice the bits of refine 0
    rc = bench_refine.main(["--steps", "0,20", "--results", str(path), "--versus", f"anchor={anchor}",
                            "--json", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["bd_rate_map50_vs_refine_0"]["20"] == pytest.approx(-10.0, abs=0.01)
    assert report["refine_lr"] == bench_refine.learned_e2e.REFINE_LR  # the earlier file has none: the default
    assert report["mode"] == "learned_e2e"  # files before --mode were all learned_e2e's
    assert report["versus"]["anchor"]["bd_rate_map50"]["0"] == pytest.approx(-50.0, abs=0.01)
    assert report["versus"]["anchor"]["bd_rate_map50"]["20"] == pytest.approx(-55.0, abs=0.01)
    assert "-10.00 %" in capsys.readouterr().out
    assert bench_refine.main(["--steps", "0,5", "--results", str(path)]) == 2  # no such setting in the file
    assert bench_refine.main(["--steps", "0,20", "--results", str(path), "--mode", "vvc_msff"]) == 2  # another mode's


@pytest.mark.needs_ffmpeg
@pytest.mark.needs_assets
def test_one_refined_vvc_msff_point_through_the_container_path(tmp_path):
    out = tmp_path / "r.json"
    argv = "--mode vvc_msff --steps 0,2 --qps 42 --limit 1 --rate-weight 0 --json".split() + [str(out)]
    assert bench_refine.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["mode"] == "vvc_msff" and r["refine_lr"] == bench_refine.vvc_msff.REFINE_LR
    assert r["refine_rate_weight"] == 0
    plain, refined = r["results"]["0"]["42"], r["results"]["2"]["42"]
    assert 0 < plain["bpp"] < 0.2 and 0 < refined["bpp"] < 0.2
    assert refined["bpp"] != plain["bpp"] or refined["map50"] != plain["map50"]


@pytest.mark.needs_assets
def test_one_refined_point_through_the_container_path(tmp_path):
    out = tmp_path / "r.json"
    assert bench_refine.main(["--steps", "0,2", "--phis", "1", "--limit", "1", "--lr", "0.02", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    plain, refined = r["results"]["0"]["1"], r["results"]["2"]["1"]
    assert r["refine_lr"] == 0.02
    assert r["images"] == 1 and 0 < plain["bpp"] < 0.2 and 0 < refined["bpp"] < 0.2
    assert refined["bpp"] != plain["bpp"] or refined["map50"] != plain["map50"]
    assert r["bd_rate_map50_vs_refine_0"] == {"2": None}  # one point: no BD-rate
