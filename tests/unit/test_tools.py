"""tools/ is a package of importable modules: each tool runs as `python -m tools.NAME`
from the repository root without editing sys.path (the training scripts, being moved
into codec/training/, are not covered here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from codec.files import REPO_ROOT

OWNED_ELSEWHERE = {"train_fenet", "train_msff", "pca_probe"}
TOOLS = sorted(p.stem for p in (REPO_ROOT / "tools").glob("*.py") if p.stem not in OWNED_ELSEWHERE | {"__init__"})


def test_the_tool_list_is_what_it_should_be():
    assert {"make_conformance", "tune_truncation", "bench_fenet", "bench_split", "eval_network"} <= set(TOOLS)


@pytest.mark.parametrize("name", TOOLS)
def test_tool_is_an_importable_module_without_sys_path_edits(name):
    source = (REPO_ROOT / "tools" / f"{name}.py").read_text(encoding="utf-8")
    assert "sys.path" not in source
    code = f"import tools.{name} as m; assert callable(m.main), 'no main'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)


def test_make_conformance_runs_as_a_module_and_refuses_to_overwrite(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "tools.make_conformance", "--out", str(REPO_ROOT / "tests" / "conformance")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "pass --regenerate" in out.stderr


def _summary(run: Path, rows: list[tuple[str, float, float]]) -> None:
    run.mkdir()
    lines = ["codec,bpp,map50,n_images"] + [f"{c},{b},{m},3" for c, b, m in rows]
    (run / "summary.csv").write_text("\n".join(lines) + "\n")


def test_bench_fenet_bd_takes_one_run_as_anchors_and_tests(tmp_path: Path, capsys):
    from tools import bench_fenet

    a = [("anchor_x", b, m) for b, m in ((0.1, 0.2), (0.2, 0.3), (0.4, 0.35), (0.8, 0.38))]
    t = [("test_y", b / 2, m) for _, b, m in a]
    run = tmp_path / "run"
    _summary(run, [*a, *t, ("uncompressed", 50.0, 0.39)])
    assert bench_fenet.main(["bd", "--anchors", str(run), "--tests", str(run), "--anchor-codecs", "anchor_x"]) == 0
    out = capsys.readouterr().out
    # the test curve is the anchor's at half the rate: -50 % at every accuracy
    line = next(x for x in out.splitlines() if x.startswith("test_y") and "anchor_x" in x)
    assert float(line.split()[2]) == pytest.approx(-50.0, abs=1e-6)
    # a second run holding the same codec: its curve is left out, said on stderr
    other = tmp_path / "other"
    _summary(other, [*t, ("uncompressed", 50.0, 0.39)])
    assert bench_fenet.main(["bd", "--anchors", str(run), "--tests", str(run), str(other)]) == 0
    assert "test_y of" in capsys.readouterr().err


def _tune_file(path: Path, weights: str, rows: list[tuple[int, int, float, float]], table: dict[int, int]) -> str:
    import json

    data = dict(images=["train-images/a.jpg"], weights=weights, table={str(q): k for q, k in table.items()},
                rows=[dict(qp=q, kept=k, bpp=b, map50=m, map=m / 2) for q, k, b, m in rows])  # fmt: skip
    path.write_text(json.dumps(data))
    return str(path)


def test_tune_truncation_compare_measures_the_second_tune_against_the_first(tmp_path: Path, capsys):
    from tools import tune_truncation

    qps = (27, 32, 37, 42)
    base = [(q, k, 0.4 / 2 ** (i + (k == 64)), 0.95 - 0.15 * i - 0.05 * (k == 64)) for i, q in enumerate(qps)
            for k in (64, 128)]  # fmt: skip
    half = [(q, k, b / 2, m) for q, k, b, m in base]  # same accuracy at half the bits: -50 %
    a = _tune_file(tmp_path / "a.json", "ref", base, {q: 128 for q in qps})
    b = _tune_file(tmp_path / "b.json", "test", half, {q: 128 for q in qps})
    out = tmp_path / "cmp.json"
    assert tune_truncation.main(["compare", a, b, "--out", str(out)]) == 0
    import json

    bd = json.loads(out.read_text())["bd_rate"]
    assert bd["table"]["bd_rate"] == pytest.approx(-50.0, abs=0.01)
    assert bd["best_per_qp"]["bd_rate"] == pytest.approx(-50.0, abs=0.01)
    assert "of test against ref: -50.0 %" in capsys.readouterr().out
    other = _tune_file(tmp_path / "c.json", "x", base, {q: 128 for q in qps})
    json_c = json.loads(Path(other).read_text())
    json_c["images"] = ["train-images/b.jpg"]
    Path(other).write_text(json.dumps(json_c))
    assert tune_truncation.main(["compare", a, other]) == 2
