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
