"""Decoder robustness (tools/fuzz.py): mutations of every golden vector through the full
decode path and fcm_inspect, each in a worker process under an address-space limit and a
timeout. No mutation may crash the decoder, hang it, raise an exception that the apps do
not map to an exit code, or exhaust its memory."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from codec.bitstream import parse_container
from codec.bitstream import syntax as sx
from codec.errors import MalformedError
from tools import fuzz

SEED = 15  # issue 15: decoder hardening
DEFAULT_CASES = 3000  # 42 s with two workers on two cores shared with two training runs
SLOW_CASES = 30000


@pytest.fixture(scope="module")
def corpus() -> fuzz.Corpus:
    return fuzz.Corpus(fuzz.load_seeds())


def test_every_golden_vector_seeds_the_fuzzer(corpus):
    golden = {p.stem for p in fuzz.CONFORMANCE_DIR.glob("*.bin") if not p.name.startswith("invalid-")}
    assert {s.name for s in corpus.seeds} == golden
    assert len(golden) >= 10


def test_a_tree_builds_back_to_the_same_bytes(corpus):
    """The mutators parse and build with the container's own construct definitions: an
    unedited tree gives the vector back, byte for byte (CRCs recomputed)."""
    for s in corpus.seeds:
        assert fuzz.build_tree(fuzz.parse_tree(s.data)) == s.data, s.name


def test_the_fields_of_a_tree_come_from_the_syntax(corpus):
    tree = corpus.tree(next(s for s in corpus.seeds if s.name == "v2-learned_e2e-p4-phi3").data)
    fields = {fuzz.path_text(lf.path): (lf.kind, lf.size) for lf in fuzz.tree_leaves(tree)}
    assert fields["header.scales[0].scale_height"] == ("uint", 2)
    assert fields["header.scale_x"] == ("float", 8)
    assert fields["header.network_weights_hash"] == ("bytes", 32)
    assert fields["header.mode_header.codec_model_hash"] == ("bytes", 32)  # the mode's own syntax
    assert fields["header.mode_header.phi_index"] == ("uint", 1)
    assert fields["header.split_point_name"] == ("name", 0)
    assert fields["units[0].unit_data"] == ("data", 0)
    assert not any("crc" in name for name in fields)  # derived when building


def test_cases_are_deterministic_and_varied(corpus):
    a = [fuzz.make_case(corpus, SEED, i) for i in range(300)]
    b = [fuzz.make_case(fuzz.Corpus(fuzz.load_seeds()), SEED, i) for i in range(300)]
    assert [c.data for c in a] == [c.data for c in b]
    assert [c.mutation for c in a] == [c.mutation for c in b]
    assert {c.mutator.split("+")[0] for c in a} == set(fuzz.MUTATORS)
    assert {c.seed for c in a} == {s.name for s in corpus.seeds}
    assert len({c.data for c in a}) > 270  # a few coincide (e.g. the one unit deleted)
    assert all(c.data != next(s.data for s in corpus.seeds if s.name == c.seed) for c in a)


def test_structure_aware_mutations_get_past_the_crcs(corpus):
    """Edited and rebuilt, a case has a correct header CRC (the raw mutations mostly do not)."""
    head_ok: dict[str, list[bool]] = {}
    for c in fuzz.generate_cases(corpus, SEED, 1500):
        try:
            sx.fcm_container_head.parse(c.data)
            ok = True
        except Exception:
            ok = False
        head_ok.setdefault(c.mutator, []).append(ok)
    for name in ("scale_sizes", "unit_data", "units", "latent_strings", "splice_header"):
        assert sum(head_ok[name]) / len(head_ok[name]) > 0.95, name


def test_scale_size_mutations_stay_within_the_limits_and_parse(corpus):
    """Consistently scaled scale sizes, the input size with them: the container is conforming
    as far as the container layer can tell (CRCs, limits, the split-point table), so the
    mutation reaches the mode decoder. Without the input size, the table refuses it."""
    cases = [c for c in fuzz.generate_cases(corpus, SEED, 300, mutators=["scale_sizes"]) if c.mutator == "scale_sizes"]
    followed = [c for c in cases if ", input " in c.mutation and "channels" not in c.mutation]
    assert len(followed) > 100
    for c in followed:
        for s in parse_container(c.data).header.scales:
            assert s.channels * s.height * s.width <= sx.MAX_SCALE_SAMPLES
    for c in cases:
        if c not in followed:
            with pytest.raises(MalformedError):
                parse_container(c.data)
    assert any("halving" in c.mutation for c in followed) and any("max" in c.mutation for c in followed)


def misbehaving_target(data: bytes, path: Path) -> dict:
    """A target for checking the harness itself (run in the worker)."""
    if data == b"segv":
        # to this thread: a signal sent to the process (os.kill) may be taken by any of its
        # threads (torch's), and faulthandler then shows a stack without this function
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    if data == b"hang":
        time.sleep(600)
    if data == b"raise":
        raise KeyError("a bug")
    if data == b"oom":
        bytearray(64 << 30)
    if data == b"refuse":
        raise MalformedError("a bad bitstream")
    return {"status": "ok"}


def test_the_harness_tells_crashes_hangs_bugs_and_blowups_apart(tmp_path: Path):
    names = ["ok", "segv", "ok", "hang", "raise", "oom", "refuse", "ok"]
    cases = [fuzz.Case(i, "selftest", "selftest", n, n.encode()) for i, n in enumerate(names)]
    report = fuzz.run_cases(
        cases,
        targets=["tests.unit.test_fuzz:misbehaving_target"],
        timeout_s=3.0,
        rlimit_as_gib=4.0,
        out_dir=tmp_path,
        warmup=False,
    )
    assert report.cases == len(names)
    assert dict(report.status) == {"ok": 3, "crash": 1, "hang": 1, "uncaught": 1, "oom": 1, "refused": 1}
    assert report.refused_by_class == {}  # the class tally is the decode target's
    found = {f.status: f for f in report.findings}
    assert "SIGSEGV" in found["crash"].detail and "misbehaving_target" in found["crash"].detail
    assert "KeyError" in found["uncaught"].detail and "a bug" in found["uncaught"].detail
    assert "time.sleep" in found["hang"].detail or "misbehaving_target" in found["hang"].detail
    for f in report.findings:
        assert f.saved is not None and f.saved.read_bytes() == f.case.data
        assert f.saved.with_suffix(".txt").read_text().startswith(f"status: {f.status}")
    assert report.worker_starts == 4  # the first, and after the crash, the hang and the blow-up


def _assert_clean(report: fuzz.FuzzReport, cases: int) -> None:
    summary = report.summary()
    assert report.cases == cases, summary
    assert report.failures == 0, summary
    assert report.disagreements == 0, summary  # fcm_inspect never refuses what decodes
    assert report.peak_rss_kib < 3 << 20, summary  # a decode stays well inside the 6 GiB limit
    # the mutations reach every layer: container refusals, mode refusals and decoded streams
    assert report.status["ok"] > 0.02 * cases, summary
    classes = set(report.refused_by_class)
    assert {"PayloadCrcError", "MalformedError", "TruncatedError", "SizeLimitError"} <= classes, summary
    assert len(classes) >= 8, summary


def test_fuzz_the_decoder(tmp_path: Path):
    report = fuzz.run_campaign(cases=DEFAULT_CASES, seed=SEED, workers=2, timeout_s=10.0, out_dir=tmp_path)
    _assert_clean(report, DEFAULT_CASES)


@pytest.mark.slow
def test_fuzz_the_decoder_long(tmp_path: Path):
    report = fuzz.run_campaign(cases=SLOW_CASES, seed=SEED + 1, workers=2, timeout_s=10.0, out_dir=tmp_path)
    _assert_clean(report, SLOW_CASES)


def test_the_cli_reports_and_replays(tmp_path: Path):
    vector = fuzz.CONFORMANCE_DIR / "v2-bypass-f16.bin"
    bad = tmp_path / "bad.bin"
    bad.write_bytes(vector.read_bytes()[:-3])
    out = tmp_path / "report.json"
    assert fuzz.main(["--replay", str(vector), str(bad), "--json", str(out), "--out", str(tmp_path / "f")]) == 0
    import json

    d = json.loads(out.read_text())
    assert d["cases"] == 2 and d["status"] == {"ok": 1, "refused": 1} and d["crashes"] == 0
    assert d["refused_by_class"] == {"TruncatedError": 1}


def test_coverage_guided_fuzzing_says_when_atheris_is_missing(tmp_path: Path, capsys):
    try:
        import atheris  # noqa: F401
    except ImportError:
        assert fuzz.main(["--atheris", "--out", str(tmp_path)]) == 2
        assert "atheris is not installed" in capsys.readouterr().err
    else:
        pytest.skip("atheris is installed (python -m tools.fuzz --atheris runs it)")


def test_ffmpeg_timing_out_or_dying_on_a_case_is_a_hang_or_a_crash():
    """The apps report these as an external tool failing on its own (exit 1); on a fuzzed
    input the input did it."""
    from codec.inner import vvc

    assert fuzz._inner_failure(vvc.FfmpegTimeoutError("timed out", cmd=["ffmpeg"])) == "hang"
    assert fuzz._inner_failure(vvc.FfmpegToolError("killed", cmd=["ffmpeg"], returncode=-11)) == "crash"
    assert fuzz._inner_failure(vvc.FfmpegError("rejected", cmd=["ffmpeg"], returncode=1)) is None
    assert fuzz._inner_failure(MalformedError("bad")) is None
