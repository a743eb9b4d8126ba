"""tools/bd_points.py: BD-rate between literal points and an fcm_ctc run's summary.csv."""

from __future__ import annotations

import csv
import json

import pytest

from tools import bd_points

BPPS = [0.02, 0.04, 0.08, 0.16, 0.32]
MAPS = [10.0, 20.0, 30.0, 35.0, 37.0]


def _literal(name, scale=1.0):
    return name + "=" + ",".join(f"{scale * b}:{m}" for b, m in zip(BPPS, MAPS))


def test_literal_curves_give_the_known_bd_rate(tmp_path, capsys):
    out = tmp_path / "bd.json"
    assert bd_points.main(["--test", _literal("t", 0.8), "--anchor", _literal("a"), "--json", str(out)]) == 0
    assert "t against a: BD-rate (map50, pchip) -20.00 %" in capsys.readouterr().out
    bd = json.loads(out.read_text())["bd"]
    assert bd == [{"test": "t", "anchor": "a", "bd_rate": -20.0, "overlap": 1.0}]


def test_a_run_summary_is_read_per_codec_and_metric(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with (run / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["codec", "point", "bpp", "map50", "map"])
        w.writeheader()
        w.writerow({"codec": "uncompressed", "point": "ref", "bpp": 51.8, "map50": 0.4, "map": 0.25})
        for i, (b, m) in enumerate(zip(BPPS, MAPS)):
            w.writerow({"codec": "c", "point": f"phi{i}", "bpp": 0.5 * b, "map50": m / 100, "map": m / 200})
    assert bd_points.read_curve(f"c@{run}", "map") == (
        "c",
        [(0.5 * b, pytest.approx(m / 2)) for b, m in zip(BPPS, MAPS)],
    )
    assert bd_points.main(["--test", f"c@{run}", "--anchor", _literal("a")]) == 0
    assert "c against a: BD-rate (map50, pchip) -50.00 %" in capsys.readouterr().out


def test_the_front_drops_points_a_cheaper_one_beats():
    assert bd_points.front([(0.1, 30.0), (0.05, 31.0), (0.2, 32.0)]) == ([0.05, 0.2], [31.0, 32.0])


@pytest.mark.parametrize("spec", ["x", "=1:2", "a=1:2:3", "a=1:b", "c@/nonexistent/run", "nocodec@{run}"])
def test_bad_curves_are_one_line_errors(spec, tmp_path, capsys):
    (tmp_path / "summary.csv").write_text("codec,bpp,map50,map\nc,0.1,0.3,0.2\n")
    with pytest.raises(SystemExit) as e:
        bd_points.main(["--test", spec.format(run=tmp_path), "--anchor", _literal("a")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_too_few_points_say_so_without_a_figure(capsys):
    assert bd_points.main(["--test", "t=0.1:1,0.2:2", "--anchor", _literal("a")]) == 0
    assert "t against a: no BD-rate" in capsys.readouterr().out
