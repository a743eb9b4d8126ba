"""CTC runner: job keys, cache and resume, local workers and Dask, MAC counting,
metrics and outputs, CLI exit codes. Uses the fake network / codec of
test_ctc_fakes on a generated dataset (no assets, no ffmpeg)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_ctc_fakes import FakeNet, write_fake_config

from ctc.cache import ResultCache
from ctc.cli import main
from ctc.complexity import MacCounter, count_macs
from ctc.config import NetworkConfig, load_config
from ctc.report import build_report
from ctc.runner import job_key, prepare_run, run_ctc, run_jobs


def _results(out: Path) -> dict[str, dict]:
    with ResultCache(out / "cache.sqlite") as cache:
        run = cache.get_meta("run")
        return {(j["codec"], j["point"], j["image_id"]): cache.get(j["key"]) for j in run["jobs"]}


def _strip_timing(results: dict) -> dict:
    return {k: {n: v for n, v in r.items() if n not in ("timings", "wall")} for k, r in results.items()}


def test_job_key_covers_everything_that_changes_a_result() -> None:
    net = NetworkConfig("nanodet", "neck")
    base = dict(
        codec_type="image_anchor",
        mode=None,
        params={"qp": 32, "preset": "faster"},
        codec_version="ff 7",
        network=net,
        weights_sha256="ab" * 32,
        split="neck",
        image_sha256="cd" * 32,
        versions={"codec": "0.1.0", "container": "1.0", "ctc": "1"},
        packages={"torch": "2.4.1", "numpy": "1.26.4"},
        torch_threads=1,
    )
    key = job_key(**base)
    assert len(key) == 64 and key == job_key(**base)
    changes = [
        {"params": {"qp": 37, "preset": "faster"}},
        {"params": {"qp": 32, "preset": "slow"}},
        {"codec_type": "feature_anchor"},
        {"mode": "anchor"},
        {"codec_version": "ff 8"},
        {"network": NetworkConfig("fasterrcnn_resnet50_fpn")},
        {"weights_sha256": "ef" * 32},
        {"split": "backbone"},
        {"image_sha256": "00" * 32},
        {"versions": {"codec": "0.2.0", "container": "1.0", "ctc": "1"}},
        {"versions": {"codec": "0.1.0", "container": "1.1", "ctc": "1"}},
        {"packages": {"torch": "2.5.0", "numpy": "1.26.4"}},
        {"packages": {"torch": "2.4.1", "numpy": "2.0.0"}},
        {"torch_threads": 2},
    ]
    keys = {job_key(**{**base, **c}) for c in changes}
    assert key not in keys and len(keys) == len(changes)
    from ctc.dependencies import RESULT_PACKAGES, package_versions
    from ctc.runner import code_version

    assert set(code_version()) == {"codec", "container", "ctc"}  # sources: each result's own record
    assert set(package_versions()) == {"python", *RESULT_PACKAGES}
    assert {"torch", "numpy", "compressai", "pillow"} <= set(RESULT_PACKAGES)
    # without packages given, the key uses this interpreter's
    assert job_key(**{**base, "packages": None}) == job_key(**{**base, "packages": package_versions()})
    # the network's weights file path is not part of the key (its content hash is)
    assert job_key(**{**base, "network": NetworkConfig("nanodet", "neck", Path("/x/w.pt"))}) == key


def test_mac_counter_counts_conv_and_linear_exactly() -> None:
    net = FakeNet()
    x = torch.rand(1, 3, 32, 32)
    feats, macs1 = count_macs(net.part1, x, "s")
    assert macs1 == 16 * 16 * 4 * 3 * 3 * 3  # output elements * (Cin * kh * kw)
    counter = MacCounter()
    with counter.active():
        with counter.stage("nn_part1"):
            net.part1(x, "s")
        with counter.stage("nn_part2"):
            net.part2(feats, "s", net.preprocess(torch.zeros(40, 50, 3, dtype=torch.uint8).numpy())[1])
        net.part1(x, "s")  # outside any stage: not counted
    assert counter.macs["nn_part1"] == macs1
    assert counter.macs["nn_part2"] == 256 * 4 * 4  # Linear(4 -> 4) over 256 cells
    tconv = torch.nn.ConvTranspose2d(4, 2, 4, 2, 1)
    _, m = count_macs(tconv, torch.rand(1, 4, 5, 5))
    assert m == 4 * 5 * 5 * 2 * 4 * 4


def test_run_then_rerun_computes_nothing_and_outputs_are_complete(tmp_path: Path) -> None:
    cfg = load_config(write_fake_config(tmp_path / "data"))
    out = tmp_path / "run"
    info = run_ctc(cfg, out)
    n_jobs = 4 * (4 + 4 + 1)
    assert (info.stats.planned, info.stats.cached, info.stats.computed) == (n_jobs, 0, n_jobs)
    first = _results(out)
    again = run_ctc(cfg, out)
    assert (again.stats.cached, again.stats.computed) == (n_jobs, 0)
    assert _results(out) == first

    report = build_report(out, {"git_commit": "test"})
    for name in (
        "summary.csv",
        "bd_rate.csv",
        "per_class.csv",
        "near_lossless.csv",
        "report.html",
        "cttc/coarse.csv",
        "cttc/coarse_complexity.csv",
        "detections/coarse/step0.8.json",
        "detections/uncompressed/ref.json",
    ):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 9
    by = {(r["codec"], r["point"]): r for r in rows}
    coarse = [float(by[("coarse", f"step{s}")]["bpp"]) for s in ("0.8", "0.4", "0.2", "0.1")]
    assert coarse == sorted(coarse) and coarse[0] < coarse[-1]  # finer step, more bits
    total_bits = sum(r["bits"] for (c, p, _), r in first.items() if (c, p) == ("coarse", "step0.8"))
    total_px = sum(r["pixels"] for (c, p, _), r in first.items() if (c, p) == ("coarse", "step0.8"))
    assert float(by[("coarse", "step0.8")]["bpp"]) == pytest.approx(total_bits / total_px, rel=1e-5)
    for r in rows:
        assert 0.0 <= float(r["map50"]) <= 1.0 and 0.0 <= float(r["map"]) <= float(r["map50"]) + 1e-9
        assert float(r["kmac_px_nn_part1"]) > 0 and float(r["kmac_px_nn_part2"]) > 0
    per_class = list(csv.DictReader((out / "per_class.csv").open()))
    # the fake images hold objects of 3 of the 4 categories: a class without ground truth has no AP
    assert len(per_class) == 9 * 3 and {r["name"] for r in per_class} == {"c1", "c3", "c62"}
    for (codec, point), row in by.items():  # COCO's mAP is the mean over the classes
        classes = [float(r["map"]) for r in per_class if (r["codec"], r["point"]) == (codec, point)]
        assert float(row["map"]) == pytest.approx(sum(classes) / len(classes), abs=1e-5)
        assert {"map_small", "map_medium", "map_large"} <= set(row)
    raw = float(by[("uncompressed", "ref")]["bpp"])
    assert raw == pytest.approx(4 * 16 * 16 * 32 * 4 / total_px, rel=1e-6)
    # the finest fake step is near-lossless: its detections match the uncompressed network's
    ref = json.loads((out / "detections/uncompressed/ref.json").read_text())
    fine = json.loads((out / "detections/fine/step0.01.json").read_text())
    assert len(ref) == len(fine) == 40
    assert float(by[("fine", "step0.01")]["map50"]) == pytest.approx(
        float(by[("uncompressed", "ref")]["map50"]), abs=0.02
    )

    bd = list(csv.DictReader((out / "bd_rate.csv").open()))
    assert {(r["codec"], r["anchor"], r["metric"], r["curve"]) for r in bd} == {
        ("fine", "coarse", m, k) for m in ("map50", "map") for k in ("front", "monotone")
    }
    assert list(bd[0]) == [
        "codec", "anchor", "metric", "curve", "bd_rate_pchip", "bd_rate_cubic", "bd_metric_pchip",
        "bd_metric_cubic", "overlap_metric", "overlap_rate", "warning", "unreliable", "note",
    ]  # fmt: skip
    for r in bd:  # a value, or NaN with the reason (fake curves may be non-monotonic)
        for col in ("bd_rate_pchip", "bd_rate_cubic", "bd_metric_pchip", "bd_metric_cubic"):
            assert math.isfinite(float(r[col])) or r["note"]
    nl = {(r["codec"], r["metric"]): r for r in csv.DictReader((out / "near_lossless.csv").open())}
    assert set(nl) == {(c, m) for c in ("coarse", "fine") for m in ("map50", "map")}
    r = nl[("fine", "map50")]
    if math.isfinite(float(r["near_lossless_bpp"])):
        assert float(r["compression_ratio"]) == pytest.approx(raw / float(r["near_lossless_bpp"]), rel=1e-4)
    else:
        assert r["note"]
    cttc = list(csv.DictReader((out / "cttc/coarse.csv").open()))
    assert list(cttc[0]) == [
        "Dataset",
        "qp",
        "avg_bpp",
        "end_accuracy",
        "y_psnr",
        "nn_part_1",
        "encode",
        "decode",
        "nn_part_2",
    ]
    assert float(cttc[0]["end_accuracy"]) == pytest.approx(100 * float(by[("coarse", "step0.8")]["map50"]), rel=1e-4)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<title>FCM CTC report: fake</title>" in html
    assert report.missing_jobs == 0 and len(report.points) == 9


def test_interrupted_run_resumes_with_the_missing_jobs_only(tmp_path: Path) -> None:
    cfg = load_config(write_fake_config(tmp_path / "data"))
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    seen = []

    def stop_after_5(job, result):
        seen.append(job.key)
        if len(seen) == 5:
            raise Stop

    with pytest.raises(Stop):
        run_ctc(cfg, out, on_result=stop_after_5)
    with ResultCache(out / "cache.sqlite") as cache:
        assert len(cache) == 5 and all(k in cache for k in seen)
    partial = build_report(out)  # a report of a partial run leaves incomplete points out
    assert partial.missing_jobs == 36 - 5
    info = run_ctc(cfg, out)
    assert (info.stats.cached, info.stats.computed) == (5, 31)
    fresh = tmp_path / "fresh"
    run_ctc(cfg, fresh)
    assert _strip_timing(_results(out)) == _strip_timing(_results(fresh))


def test_local_workers_and_dask_give_the_local_results(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    text = (write_fake_config(tmp_path / "data", n_images=2)).read_text()
    cfg = load_config(tmp_path / "data" / "fake.yaml")
    cfg = replace(cfg, codecs=cfg.codecs[:1] + cfg.codecs[2:])  # coarse + uncompressed: 10 jobs
    assert "factory" in text
    run_ctc(cfg, tmp_path / "local")
    local = _strip_timing(_results(tmp_path / "local"))
    assert len(local) == 10

    run_ctc(cfg, tmp_path / "pool", workers=2)
    assert _strip_timing(_results(tmp_path / "pool")) == local

    threads = torch.get_num_threads()
    try:
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster:
            info = run_ctc(cfg, tmp_path / "dask", dask_address=cluster.scheduler_address)
    finally:
        torch.set_num_threads(threads)
    assert info.stats.computed == 10
    assert _strip_timing(_results(tmp_path / "dask")) == local


def test_run_jobs_runs_identical_jobs_once(tmp_path: Path) -> None:
    cfg = load_config(write_fake_config(tmp_path / "data", n_images=1))
    _, jobs, _, _ = prepare_run(cfg)
    with ResultCache(tmp_path / "c.sqlite") as cache:
        stats = run_jobs(jobs + jobs[:3], cache)
        assert stats.planned == len(jobs) + 3 and stats.computed == len(jobs) == len(cache)


def test_cli_run_report_and_errors(tmp_path: Path, capsys) -> None:
    path = write_fake_config(tmp_path / "data", n_images=2)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--codecs", "coarse,uncompressed", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "10 jobs: 0 cached, 10 computed" in text and "coarse" in text and "step0.8" in text
    assert main(["report", str(out)]) == 0
    assert "uncompressed" in capsys.readouterr().out
    assert main(["tables", str(out)]) == 0
    md = capsys.readouterr().out
    summary = {(r["codec"], r["point"]): r for r in csv.DictReader((out / "summary.csv").open())}
    step = summary[("coarse", "step0.8")]
    cell = f"step0.8: {float(step['bpp']):.4g} / {100 * float(step['map50']):.2f} / {100 * float(step['map']):.2f}"
    assert cell in md and "| coarse | uncompressed |" not in md  # the reference line is not an anchor
    assert sum(line.startswith("|---|") for line in md.splitlines()) == 3  # points, BD-rate, near-lossless
    assert main(["tables", str(tmp_path / "empty")]) == 2
    assert "summary.csv: missing" in capsys.readouterr().err

    assert main(["run", str(tmp_path / "nope.yaml"), "--out", str(out)]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(out), "--codecs", "jpeg"]) == 2
    err = capsys.readouterr().err
    assert "unknown codec(s) jpeg" in err and err.count("\n") == 1
    assert main(["run", str(path), "--out", str(out), "--images", str(tmp_path)]) == 2
    assert "--images and --annotations go together" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(out), "--workers", "0"]) == 2
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bad = tmp_path / "data" / "bad_images.yaml"
    bad.write_text(path.read_text().replace("images: images", "images: nowhere"))
    assert main(["run", str(bad), "--out", str(tmp_path / "r2")]) == 2
    assert "image directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2


def test_job_failure_names_the_job(tmp_path: Path, capsys) -> None:
    path = write_fake_config(tmp_path / "data", n_images=1)
    (tmp_path / "data" / "images" / "000000000100.png").write_bytes(b"not a png")
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "coarse/step0.8/image 100" in err and "cannot read image" in err


def failing_network(name: str = "fake", weights: str | None = None):
    raise AssertionError("the network must not be built before the config is checked")


def test_a_bad_parameter_fails_at_load_before_anything_runs(tmp_path: Path, capsys) -> None:
    from test_ctc_fakes import FAKE_CONFIG

    text = FAKE_CONFIG.replace("test_ctc_fakes:make_fake_network", "test_ctc_runner:failing_network")
    text += "  - name: e2e\n    type: learned_e2e\n    values: [1, 2, 3, 9]\n"
    path = write_fake_config(tmp_path / "data", text, n_images=1)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "learned_e2e parameter phi must be an integer in 0..5, got 9" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    short = path.read_text().replace("values: [1, 2, 3, 9]", "values: [1, 2, 3]")
    path.write_text(short)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "codec 'e2e': 3 rate points; a curve compared against the anchors needs 4 to 8" in capsys.readouterr().err


def test_out_of_another_config_is_refused_unless_forced(tmp_path: Path, capsys) -> None:
    path = write_fake_config(tmp_path / "data", n_images=1)
    out = tmp_path / "run"
    args = ["run", str(path), "--out", str(out), "--codecs", "coarse,uncompressed", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0  # the same config again: resumed
    other = tmp_path / "data" / "other.yaml"
    other.write_text(path.read_text().replace("name: fake\n", "name: other\n", 1))
    capsys.readouterr()
    args_other = ["run", str(other), "--out", str(out), "--codecs", "fine,uncompressed", "--no-progress"]
    assert main(args_other) == 2
    err = capsys.readouterr().err
    assert f"--out {out} holds a run of config 'fake', not 'other'; use another --out, or --force" in err
    assert (out / "detections" / "coarse").is_dir()
    assert main([*args_other, "--force"]) == 0
    assert not (out / "detections" / "coarse").exists() and (out / "detections" / "fine").is_dir()  # replaced
    assert main([*args_other]) == 0  # now it is other's run
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["run", str(path), "--out", str(busy), "--no-progress"]) == 2
    assert "is not empty and holds no CTC run" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine" and not (busy / "cache.sqlite").exists()


def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path: Path, capsys) -> None:
    path = write_fake_config(tmp_path / "data", n_images=2)
    args = ["run", str(path), "--out", str(tmp_path / "run"), "--codecs", "coarse,uncompressed"]
    assert main([*args, "--progress-every", "0"]) == 0  # captured: not a terminal
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fcm_ctc: ")]
    assert len(lines) == 10 and lines[0].startswith("fcm_ctc: 1/10 jobs (10 %), 0m0")
    assert lines[-1].startswith("fcm_ctc: 10/10 jobs (100 %)") and "about 0m00s left" in lines[-1]
    assert "(last: uncompressed/ref/image 101)" in lines[-1] or "(last: coarse/" in lines[-1]
    assert main([*args[:3], str(tmp_path / "run2"), *args[4:]]) == 0  # default: at most one line per 30 s
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fcm_ctc: ")]
    assert [line.split(" jobs")[0] for line in lines] == ["fcm_ctc: 1/10", "fcm_ctc: 10/10"]
    assert main([*args[:3], str(tmp_path / "run3"), *args[4:], "--no-progress"]) == 0
    assert "fcm_ctc: 1/10" not in capsys.readouterr().out


def test_cli_lists_and_runs_bundled_configs_by_name(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["configs"]) == 0
    text = capsys.readouterr().out
    assert "quick  " in text and "CI-sized CTC run" in text and "val2017-103" in text
    assert "\ncoco128-seg  " in text and "\nkp130-pose  " in text  # the task configs
    assert "fcm_ctc run NAME --out DIR" in text
    # by name: the bundled quick config is loaded (and checked) from any directory
    assert main(["run", "quick", "--out", str(tmp_path / "q"), "--codecs", "nope", "--assets", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown codec(s) nope; config has image_anchor, feature_anchor, bypass, uncompressed" in err
    assert main(["run", "quik", "--out", str(tmp_path / "q")]) == 2
    assert "nor a bundled config: coco128, " in capsys.readouterr().err


def test_fixed_point_convolutions_count_like_the_conv_they_replace() -> None:
    from codec.models.fixed_point import FixedConv2d

    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.rand(1, 3, 9, 11)
    _, float_macs = count_macs(conv, x)
    fixed = FixedConv2d(conv)
    out, fixed_macs = count_macs(fixed, torch.round(x * 256).double())
    assert out.shape == (1, 5, 5, 6) and fixed_macs == float_macs == 5 * 5 * 6 * 3 * 3 * 3
