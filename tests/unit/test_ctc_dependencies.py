"""What a CTC result depends on (ctc.dependencies): the import closure, the trace of a job,
and the cache key that cannot go stale. The central test runs the harness on a temporary copy
of the package, edits each file on a mode's path in that copy and checks that the cached
results of that mode, and only those, stop counting as done."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_ctc_fakes import FAKE_CONFIG, write_fake_config

from codec.files import REPO_ROOT, note_input
from ctc.cache import ResultCache
from ctc.config import load_config
from ctc.dependencies import (
    dependencies_current,
    dependencies_digest,
    import_closure,
    is_first_party,
    trace_job,
)
from ctc.runner import execute_job, prepare_run, run_ctc


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_import_closure_follows_every_import_statement(tmp_path: Path, monkeypatch) -> None:
    _write(
        tmp_path,
        {
            "depfix/__init__.py": "from .ids import ModeId\n",
            "depfix/ids.py": "ModeId = 1  # data only: no function of it ever runs\n",
            "depfix/a.py": """
                import json
                from typing import TYPE_CHECKING

                from depfix.ids import ModeId

                if TYPE_CHECKING:
                    from depfix import typed

                REGISTRY = {"x": "depfix.by_name"}  # a registry's string: not an import

                def f():
                    from . import lazy

                    return lazy.g()
            """,
            "depfix/lazy.py": "from .sub.deep import h\n\ndef g():\n    return h()\n",
            "depfix/sub/__init__.py": "",
            "depfix/sub/deep.py": "def h():\n    return 1\n",
            "depfix/typed.py": "",
            "depfix/by_name.py": "",
            "depfix/unrelated.py": "",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    got = {p.relative_to(tmp_path).as_posix() for p in import_closure([tmp_path / "depfix/a.py"])}
    assert got == {
        "depfix/a.py",
        "depfix/__init__.py",
        "depfix/ids.py",
        "depfix/typed.py",
        "depfix/lazy.py",
        "depfix/sub/__init__.py",
        "depfix/sub/deep.py",
    }
    assert not is_first_party(json.__file__) and not is_first_party(pytest.__file__)
    assert is_first_party(str(tmp_path / "depfix/a.py")) and not is_first_party("<frozen importlib._bootstrap>")


def test_trace_records_the_code_that_ran_and_the_data_it_read(tmp_path: Path, monkeypatch) -> None:
    _write(
        tmp_path,
        {
            "tracefix/__init__.py": "",
            "tracefix/ran.py": "from . import consts\n\ndef work(path):\n    from codec.files import note_input\n"
            "    note_input(path)\n    return consts.K\n",
            "tracefix/consts.py": "K = 3\n",
            "tracefix/idle.py": "def never():\n    return 0\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tracefix.idle  # noqa: F401  (imported, but nothing of it runs in the job)
    import tracefix.ran

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    note_input(weights)  # outside a trace: recorded nowhere
    with trace_job() as trace:
        assert tracefix.ran.work(weights) == 3
    names = {n for n, _ in trace.dependencies()}
    assert {str(tmp_path / f"tracefix/{f}") for f in ("__init__.py", "ran.py", "consts.py")} <= names
    assert str(weights) in names and str(tmp_path / "tracefix/idle.py") not in names
    assert "codec/files.py" in names and not any(n.endswith("ctc/dependencies.py") for n in names)
    deps = trace.dependencies()
    assert dependencies_current(deps)
    weights.write_bytes(b"retrained")
    assert not dependencies_current(deps)  # retrained weights: the result is stale
    assert dependencies_digest(deps) == dependencies_digest(list(reversed(deps)))


@pytest.mark.needs_ffmpeg
def test_a_job_records_every_first_party_file_it_runs(tmp_path: Path) -> None:
    # an independent account of what ran (sys.setprofile sees every call) must be covered
    cfg = load_config(write_fake_config(tmp_path, FAKE_CONFIG + _MODES, n_images=1))
    _, jobs, _, _ = prepare_run(cfg)
    for job in [j for j in jobs if j.point in ("qp32", "float16", "step0.8")]:
        seen: set[str] = set()

        def profile(frame, event, arg, seen=seen):
            if event == "call":
                seen.add(frame.f_code.co_filename)

        sys.setprofile(profile)
        try:
            result = execute_job(job)
        finally:
            sys.setprofile(None)
        names = {n for n, _ in result["deps"]}
        ran = {Path(f).resolve() for f in seen if is_first_party(f)} - {Path(__file__).resolve()}
        ran = {p for p in ran if p.name != "dependencies.py"}
        expected = {p.relative_to(REPO_ROOT).as_posix() if p.is_relative_to(REPO_ROOT) else str(p) for p in ran}
        assert expected <= names, (job.codec, expected - names)


_MODES = """  - name: bp
    type: bypass
    values: [float16]
  - name: fa
    type: feature_anchor
    values: [42, 37, 32, 27]
    options: {range_min: -2.0, range_max: 6.0}
"""


def _copy_package(root: Path) -> Path:
    repo = root / "repo"
    for name in ("codec", "ctc"):
        shutil.copytree(REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (repo / "tests/unit").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests/unit/test_ctc_fakes.py", repo / "tests/unit/test_ctc_fakes.py")
    return repo


def _run_copy(repo: Path, config: Path, out: Path) -> tuple[int, int]:
    """fcm_ctc run with the copy's code; (cached, computed)."""
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{repo / 'tests/unit'}", "OMP_NUM_THREADS": "1"}
    code = "import ctc, sys; assert ctc.__file__.startswith(sys.argv[1]), ctc.__file__; from ctc.cli import main; "
    code += "raise SystemExit(main(sys.argv[2:]))"
    cmd = [sys.executable, "-c", code, str(repo), "run", str(config), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=config.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"(\d+) jobs: (\d+) cached, (\d+) computed", proc.stdout)
    assert m, proc.stdout
    return int(m.group(2)), int(m.group(3))


@pytest.mark.needs_ffmpeg
def test_editing_any_file_on_a_mode_s_path_invalidates_its_results(tmp_path: Path) -> None:
    repo = _copy_package(tmp_path)
    config = write_fake_config(tmp_path / "data", FAKE_CONFIG + _MODES, n_images=1)
    out = tmp_path / "run"
    assert _run_copy(repo, config, out) == (0, 14)  # 4 coarse + 4 fine + uncompressed + 1 bypass + 4 anchor
    with ResultCache(out / "cache.sqlite") as cache:
        jobs = cache.get_meta("run")["jobs"]
        keys = {c: [j["key"] for j in jobs if j["codec"] == c] for c in ("coarse", "bp", "fa", "uncompressed")}
        deps = {c: cache.dependencies_of(k) for c, k in keys.items()}
        assert all(len(d) == len(keys[c]) and None not in d.values() for c, d in deps.items())
        record = {c: {n for n, _ in next(iter(d.values()))} for c, d in deps.items()}

        # each mode's path: its module, the pipeline, the harness's job code, complexity counting
        for c in ("bp", "fa"):
            assert {"codec/pipeline.py", "ctc/codecs.py", "ctc/runner.py", "ctc/complexity.py"} <= record[c]
        assert "codec/modes/bypass.py" in record["bp"] and "codec/modes/bypass.py" not in record["fa"]
        assert "codec/modes/mpeg_anchor.py" in record["fa"] and "codec/modes/mpeg_anchor.py" not in record["bp"]
        assert "codec/modes/anchor.py" in record["fa"]  # the anchor modes share the VVC unit checks
        assert "codec/bitstream/ids.py" in record["fa"]  # data only: reached through the imports
        for c, files in record.items():  # no other mode, no learned model, no report code
            assert not files & {"codec/modes/learned_e2e.py", "codec/models/fenet.py", "codec/models/linear_path.py"}
            assert not files & {"ctc/bd_rate.py", "ctc/report.py", "ctc/metrics.py", "ctc/cache.py"}, c
        assert "tests/unit/test_ctc_fakes.py" in record["coarse"]  # the fake codec and network
        for c in ("coarse", "uncompressed"):  # every job reads its image as fcm_enc does (codec.pipeline)
            assert {"codec/pipeline.py", "ctc/runner.py"} <= record[c]

        all_keys = [k for ks in keys.values() for k in ks]
        assert cache.done_keys(all_keys, root=repo) == set(all_keys)
        for codec in ("bp", "fa"):
            for name in sorted(record[codec]):
                path = repo / name
                text = path.read_bytes()
                path.write_bytes(text + b"\n# an edit\n")
                try:
                    done = cache.done_keys(all_keys, root=repo)
                    assert not done & set(keys[codec]), name  # every file on the path counts
                    for other, files in record.items():
                        if name not in files:  # and only the results whose path holds it go stale
                            assert set(keys[other]) <= done, (name, other)
                finally:
                    path.write_bytes(text)
        assert cache.done_keys(all_keys, root=repo) == set(all_keys)

    # end to end: an edit of the bypass mode recomputes the bypass job only; one of the report's
    # BD code recomputes nothing
    mode = repo / "codec/modes/bypass.py"
    mode.write_text(mode.read_text() + "\n# an edit\n")
    assert _run_copy(repo, config, out) == (13, 1)
    bd = repo / "ctc/bd_rate.py"
    bd.write_text(bd.read_text() + "\n# an edit\n")
    assert _run_copy(repo, config, out) == (14, 0)


def test_thread_count_and_a_result_without_record_are_not_reused(tmp_path: Path) -> None:
    cfg = load_config(write_fake_config(tmp_path / "data", n_images=1))
    one = run_ctc(cfg, tmp_path / "run")
    two = run_ctc(cfg, tmp_path / "run", torch_threads=2)
    assert two.stats.cached == 0 and two.stats.computed == one.stats.computed  # another key per job
    assert {j.key for j in one.jobs}.isdisjoint({j.key for j in two.jobs})
    assert run_ctc(cfg, tmp_path / "run", torch_threads=2).stats.computed == 0
    assert run_ctc(cfg, tmp_path / "run").stats.computed == 0  # both kept side by side
    # a result stored without a dependency record (a version-1 cache) counts as not done
    with ResultCache(tmp_path / "run" / "cache.sqlite") as cache:
        job = one.jobs[0]
        cache.put(job.key, job.codec, job.point, job.image.image_id, cache.get(job.key) or {}, None)
        assert job.key not in cache.done_keys([j.key for j in one.jobs])
    from ctc.report import build_report

    assert build_report(tmp_path / "run").stale_results == 1  # the report says so
    assert run_ctc(cfg, tmp_path / "run").stats.computed == 1
    assert build_report(tmp_path / "run").stale_results == 0


def test_a_version_1_cache_is_upgraded_and_its_results_recomputed(tmp_path: Path) -> None:
    import sqlite3

    cfg = load_config(write_fake_config(tmp_path / "data", n_images=1))
    info = run_ctc(cfg, tmp_path / "run")
    db = sqlite3.connect(tmp_path / "run" / "cache.sqlite")
    with db:  # the version-1 layout: no deps column
        db.execute("ALTER TABLE jobs DROP COLUMN deps")
        db.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    db.close()
    with ResultCache(tmp_path / "run" / "cache.sqlite") as cache:
        assert len(cache) == info.stats.computed and cache.done_keys([j.key for j in info.jobs]) == set()
    assert run_ctc(cfg, tmp_path / "run").stats.computed == info.stats.computed


@pytest.mark.needs_assets
def test_learned_modes_record_their_models_and_weights(nanodet, tmp_path: Path) -> None:
    from PIL import Image

    from ctc.config import NetworkConfig
    from ctc.runner import _NETWORKS, Job, select_images

    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 160, "height": 120}]}))
    (tmp_path / "images").mkdir()
    Image.new("RGB", (160, 120), (90, 120, 150)).save(tmp_path / "images" / "a.png")
    (image,) = select_images(tmp_path / "images", ann)
    net = NetworkConfig("nanodet", "neck")
    _NETWORKS[net] = nanodet
    records = {}
    for codec, mode, params in (
        ("e2e", "learned_e2e", {"phi": 3, "codec_model": "fenet_nanodet_neck_p4", "codec_weights": None}),
        (
            "msff",
            "vvc_msff",
            {
                "qp": 37,
                "preset": "faster",
                "kept_channels": None,
                "codec_model": "msff_nanodet_neck_g2",
                "codec_weights": None,
            },
        ),
    ):
        job = Job("k", codec, "container", mode, "p", params, image, net, "neck")
        records[codec] = {n for n, _ in execute_job(job)["deps"]}
    e2e, msff = records["e2e"], records["msff"]
    shared = {"codec/models/linear_path.py", "codec/vision/nanodet.py", "ctc/complexity.py", "codec/pipeline.py"}
    assert shared <= e2e and shared <= msff  # the files the issue found missing from the old key
    assert {"codec/modes/learned_e2e.py", "codec/models/fenet.py", "codec/models/fixed_point.py"} <= e2e
    assert {"codec/models/weights/fenet_nanodet_neck_p4.pt", "codec/models/weights/fenet_nanodet_neck_p4.json"} <= e2e
    assert "codec/models/weights/fenet_nanodet_neck.pt" not in e2e  # the other generation's weights
    assert {"codec/modes/vvc_msff.py", "codec/models/msff.py", "codec/models/weights/msff_nanodet_neck_g2.pt"} <= msff
    assert "codec/models/weights/msff_nanodet_neck.pt" not in msff  # the first generation's weights
    assert "codec/models/msff.py" not in e2e and "codec/models/fenet.py" not in msff
    assert "codec/modes/vvc_msff.py" not in e2e and "codec/modes/learned_e2e.py" not in msff
