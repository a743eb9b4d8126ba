"""CTC configuration parsing and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ctc.config import config_from_dict, config_to_dict, load_config, parse_config, with_overrides
from ctc.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "ctc" / "configs"

BASE = {
    "name": "t",
    "dataset": {"images": "${assets}/coco/coco128/images", "annotations": "ann/instances.json", "limit": 3},
    "network": {"name": "nanodet", "split": "neck"},
    "anchors": ["image_anchor"],
    "codecs": [
        {"name": "image_anchor", "type": "image_anchor", "values": [47, 42, 37, 32]},
        {
            "name": "feature_anchor",
            "type": "feature_anchor",
            "param": "qp",
            "values": [40, 35, 30, 25],
            "options": {"preset": "fast"},
        },
        {"name": "bypass", "type": "bypass", "values": ["float16", "float32"]},
        {"name": "uncompressed", "type": "uncompressed"},
    ],
}


def _parse(data: dict, tmp_path: Path):
    return parse_config(data, tmp_path, tmp_path / "assets")


def _modified(path: list, value) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


def test_valid_config_resolves_paths_points_and_defaults(tmp_path: Path) -> None:
    cfg = _parse(BASE, tmp_path)
    assert cfg.dataset.images == tmp_path / "assets" / "coco/coco128/images"
    assert cfg.dataset.annotations == tmp_path / "ann" / "instances.json"
    assert cfg.dataset.limit == 3
    ia = cfg.codec("image_anchor")
    assert [p.name for p in ia.points] == ["qp47", "qp42", "qp37", "qp32"]
    assert ia.points[0].params == {"qp": 47, "preset": "faster", "conversion": "mpeg"}
    fa = cfg.codec("feature_anchor")
    assert fa.mode == "mpeg_anchor"
    # every field of the anchor's parameter dataclass, with its default unless the config sets it
    from codec.modes import mpeg_anchor

    fields = {f.name for f in dataclasses.fields(mpeg_anchor.Params)}
    assert set(fa.points[1].params) == {"qp", "preset", "range_min", "range_max"} == fields
    assert fa.points[1].params["qp"] == 35 and fa.points[1].params["preset"] == "fast"
    bp = cfg.codec("bypass")
    assert [p.name for p in bp.points] == ["float16", "float32"]
    assert bp.points[1].params["bypass_dtype"] == "float32"
    un = cfg.codec("uncompressed")
    assert len(un.points) == 1 and un.points[0].params == {} and un.points[0].name == "ref"
    assert cfg.reference == "uncompressed"  # default: the uncompressed codec
    assert cfg.primary_metric == "map50" and cfg.report_metrics == ("map50", "map")
    assert cfg.near_lossless_max_rel_loss == 0.01
    again = config_from_dict(config_to_dict(cfg))
    assert again.codecs == cfg.codecs and again.dataset == cfg.dataset and again.anchors == cfg.anchors


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["dataset", "images"], "/abs/images", "absolute paths are not allowed"),
        (["dataset", "images"], "~/images", "absolute paths are not allowed"),
        (["dataset", "images"], "${HOME}/x", "only ${assets}"),
        (["dataset", "limit"], 0, "dataset.limit: expected a positive integer"),
        (["dataset", "colour"], "red", "dataset: unknown key(s) colour"),
        (["dataset", "annotations"], _DELETE, "dataset: missing required key(s) annotations"),
        (["network", "name"], "resnet9000", "unknown network 'resnet9000'"),
        (["network", "factory"], "no_colon", "expected 'module:function'"),
        (["anchors"], ["nope"], "anchors: 'nope' is not a codec"),
        (["anchors"], ["uncompressed"], "fewer than 2 rate points"),
        (["metric"], {"primary": "psnr"}, "metric.primary: 'psnr'"),
        (["reference"], "nope", "reference: 'nope'"),
        (["near_lossless"], {"max_rel_loss": 2}, "near_lossless.max_rel_loss"),
        (["codecs"], [], "codecs: expected a non-empty list"),
        (["codecs", 0, "values"], [47, 47], "duplicate rate points"),
        (["codecs", 0, "values"], [64, 30], "qp must be an integer in 0..63"),
        (["codecs", 0, "values"], _DELETE, "missing 'values'"),
        (["codecs", 0, "values"], list(range(13)), "at most 12"),
        (["codecs", 0, "options"], {"preset": "ludicrous"}, "preset 'ludicrous' is not one of"),
        (["codecs", 0, "options"], {"crf": 3}, "unknown parameter(s) crf"),
        (["codecs", 0, "type"], "jpeg2000", "unknown codec type 'jpeg2000'"),
        (["codecs", 1, "name"], "image_anchor", "duplicate codec name(s) image_anchor"),
        (["codecs", 1, "name"], "bad name!", "is not a valid name"),
        (["codecs", 2, "values"], [16, 32], "bypass parameter bypass_dtype must be a string"),
        (["codecs", 3, "values"], [1, 2], "'values' given but the codec has no rate parameter"),
        (["codecs", 0, "mode"], "anchor", "'mode' is only allowed with type 'container'"),
        (["codecs", 0, "values"], [47, 42, 37], "codec 'image_anchor': 3 rate points; an anchor needs 4 to 8"),
        (["codecs", 1, "values"], [40, 35], "codec 'feature_anchor': 2 rate points; a curve compared against"),
        (["codecs", 1, "values"], list(range(20, 29)), "9 rate points; a curve compared against the anchors needs"),
        (["codecs", 1, "bd"], "no", "bd: expected true or false"),
        (["bd_rate"], {"curves": ["hull"]}, "bd_rate.curves: expected a list drawn from front, monotone"),
        (["bd_rate"], {"curves": []}, "bd_rate.curves"),
        (["bd_rate"], {"min_overlap": 1.5}, "bd_rate.min_overlap: expected a number in [0, 1]"),
        (["bd_rate"], {"fit": "x"}, "bd_rate: unknown key(s) fit"),
    ],
)
def test_invalid_configs_are_refused_with_a_clear_message(tmp_path: Path, path, value, message) -> None:
    with pytest.raises(ConfigError) as e:
        _parse(_modified(path, value), tmp_path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bd_options_and_curves_not_meant_for_bd(tmp_path: Path) -> None:
    cfg = _parse(BASE, tmp_path)
    assert cfg.bd_curves == ("front", "monotone") and cfg.bd_min_overlap == 0.75  # the defaults
    data = _modified(["bd_rate"], {"curves": ["monotone"], "min_overlap": 0.5})
    cfg = _parse(data, tmp_path)
    assert cfg.bd_curves == ("monotone",) and cfg.bd_min_overlap == 0.5
    again = config_from_dict(config_to_dict(cfg))
    assert again.bd_curves == ("monotone",) and again.bd_min_overlap == 0.5
    # a single operating point is allowed beside the anchors when it says it is not a BD curve
    data = _modified(["codecs", 1], {"name": "op", "type": "feature_anchor", "values": [32], "bd": False})
    assert _parse(data, tmp_path).codec("op").bd is False
    # without anchors there is no BD table, and no point count to check
    data = _modified(["codecs", 1, "values"], [32])
    data["anchors"] = []
    assert len(_parse(data, tmp_path).codec("feature_anchor").points) == 1


def test_container_type_needs_a_known_mode(tmp_path: Path) -> None:
    data = _modified(["codecs", 1], {"name": "x", "type": "container", "mode": "warp", "values": [30, 35, 40, 45]})
    with pytest.raises(ConfigError, match="unknown container mode 'warp'"):
        _parse(data, tmp_path)
    data = _modified(["codecs", 1], {"name": "x", "type": "container", "mode": "anchor", "values": [30, 35, 40, 45]})
    assert _parse(data, tmp_path).codec("x").mode == "anchor"
    data = _modified(["codecs", 1], {"name": "x", "type": "anchor", "values": [30, 35, 40, 45]})  # a mode name as type
    assert _parse(data, tmp_path).codec("x").points[0].params["qp"] == 30


def test_other_container_modes_take_their_rate_parameter(tmp_path: Path) -> None:
    from codec.pipeline import available_modes

    if "learned_e2e" not in available_modes():
        pytest.skip("no learned_e2e mode in this checkout")
    data = _modified(["codecs", 1], {"name": "l", "type": "learned_e2e", "values": [0, 1, 2, 3]})
    codec = _parse(data, tmp_path).codec("l")
    assert codec.mode == "learned_e2e" and [p.name for p in codec.points] == ["phi0", "phi1", "phi2", "phi3"]
    assert codec.points[2].params["phi"] == 2
    data = _modified(["codecs", 1], {"name": "l", "type": "learned_e2e", "values": ["high", "low"]})
    with pytest.raises(ConfigError, match="learned_e2e parameter phi must be an integer in 0..5, got .high."):
        _parse(data, tmp_path)


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty config"):
        load_config(empty)
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**BASE, "codec": []}))
    with pytest.raises(ConfigError, match=r"typo.yaml: config: unknown key\(s\) codec"):
        load_config(typo)


def test_assets_dir_from_argument_and_environment(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert load_config(path, tmp_path / "A").dataset.images == tmp_path / "A" / "coco/coco128/images"
    monkeypatch.setenv("FCM_ASSETS", str(tmp_path / "E"))
    assert load_config(path).dataset.images == tmp_path / "E" / "coco/coco128/images"


def test_overrides(tmp_path: Path) -> None:
    cfg = _parse(BASE, tmp_path)
    o = with_overrides(
        cfg, images=tmp_path / "i", annotations=tmp_path / "a.json", limit=2, codecs=["feature_anchor", "uncompressed"]
    )
    assert o.dataset.images == tmp_path / "i" and o.dataset.limit == 2
    assert [c.name for c in o.codecs] == ["feature_anchor", "uncompressed"]
    assert o.anchors == () and o.reference == "uncompressed"
    with pytest.raises(ConfigError, match="unknown codec"):
        with_overrides(cfg, codecs=["jpeg"])
    with pytest.raises(ConfigError, match="--limit"):
        with_overrides(cfg, limit=0)


# the task configs: network, primary metric, tasks
TASK_CONFIGS = {
    "coco128-seg": ("yolov5s_seg", "segm_map50", ("bbox", "segm")),
    "kp130-pose": ("yolo11n_pose", "keypoints_map", ("bbox", "keypoints")),
}


@pytest.mark.parametrize(
    "name",
    ["quick", "coco128", "val2017-103", "mpeg_openimages_det", "mpeg_openimages_seg", "mpeg_sfu_hw", *TASK_CONFIGS],
)
def test_shipped_configs_are_valid(name: str, tmp_path: Path) -> None:
    from ctc.bd_rate import MAX_POINTS, MIN_POINTS

    cfg = load_config(CONFIGS / f"{name}.yaml", tmp_path)
    # the MPEG anchors first; the full NanoDet sets add the VVC-based mode as a third anchor,
    # val2017-103 also the previous learned_e2e generation
    extra = {"coco128": ("vvc_msff",), "val2017-103": ("vvc_msff", "learned_e2e_g3")}.get(name, ())
    assert cfg.anchors == ("image_anchor", "feature_anchor", *extra)
    assert cfg.reference == "uncompressed"
    network, primary, tasks = TASK_CONFIGS.get(name, (cfg.network.name, "map50", ("bbox",)))
    assert (cfg.network.name, cfg.primary_metric, cfg.tasks) == (network, primary, tasks)
    for c in cfg.codecs:
        if c.name in cfg.anchors:
            assert MIN_POINTS <= len(c.points) <= MAX_POINTS, c.name
    if name in TASK_CONFIGS:
        # box AP beside the task's; the anchors at vvenc medium, as the full NanoDet configs
        assert {"map50", "map"} <= set(cfg.report_metrics) and len(cfg.report_metrics) == 4
        assert all(cfg.codec(a).points[0].params["preset"] == "medium" for a in cfg.anchors)
        # the segmentation neck has its own shipped learned_e2e model (codec_model_id 7), the pose neck none
        own = {"coco128-seg": {"learned_e2e"}}.get(name, set())
        assert {c.type for c in cfg.codecs} == {"image_anchor", "feature_anchor", "bypass", "uncompressed", *own}
        for c in cfg.codecs:
            if c.type == "learned_e2e":
                assert len(c.points) >= 4 and {p.params.get("codec_model") for p in c.points} == {
                    "fenet_yolov5s_seg_neck"
                }
    assert str(cfg.dataset.annotations).startswith(str(tmp_path))  # every path through ${assets}
    assert "/" not in (cfg.source.split("images:")[1].split("${assets}")[0])  # no absolute paths
    if name == "quick":
        assert cfg.dataset.limit is not None and cfg.dataset.limit <= 8
        assert all(4 <= len(c.points) <= 5 for c in cfg.codecs if c.name in cfg.anchors)
        assert cfg.network.name == "nanodet" and cfg.network.split == "neck"
        # the project's own codecs, with enough points for BD figures against both anchors
        learned = {c.mode: len(c.points) for c in cfg.codecs if c.mode in ("learned_e2e", "vvc_msff")}
        assert set(learned) == {"learned_e2e", "vvc_msff"} and min(learned.values()) >= 4
        assert cfg.bd_curves == ("front", "monotone")


def test_bundled_configs_run_by_name(tmp_path: Path, monkeypatch) -> None:
    from ctc.config import bundled_configs, config_summary, find_config

    bundled = bundled_configs()
    assert set(bundled) == {p.stem for p in CONFIGS.glob("*.yaml")} and "quick" in bundled
    assert all(p.is_file() for p in bundled.values())
    monkeypatch.chdir(tmp_path)  # by name from anywhere, not only from the repository
    assert find_config("quick") == find_config("quick.yaml") == bundled["quick"]
    assert load_config("quick", tmp_path).name == "quick"
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(BASE))  # a file of that name comes first
    assert find_config("quick") == bundled["quick"] and find_config("quick.yaml") == Path("quick.yaml")
    with pytest.raises(ConfigError, match=r"config file not found: nope \(not a file, nor a bundled config: .*quick"):
        find_config("nope")
    with pytest.raises(ConfigError, match="config file not found: sub/quick.yaml"):
        find_config("sub/quick.yaml")  # a path is a path
    assert config_summary(bundled["quick"]).startswith("CI-sized CTC run: NanoDet split at the neck")
    assert config_summary(bundled["val2017-103"]).endswith("...") and len(config_summary(bundled["val2017-103"])) == 110


def test_a_mode_without_param_uses_its_own_rate_parameter(tmp_path: Path) -> None:
    data = _modified(["codecs"], [
        {"name": "msff", "type": "vvc_msff", "values": [42, 37]},
        {"name": "e2e", "type": "learned_e2e", "values": [0, 5]},
        {"name": "ablation", "type": "vvc_msff", "values": [42], "options": {"kept_channels": 96}},
    ])  # fmt: skip
    data["anchors"] = []
    data.pop("reference", None)
    cfg = _parse(data, tmp_path)
    msff = cfg.codec("msff")
    assert [p.name for p in msff.points] == ["qp42", "qp37"] and msff.points[1].params["qp"] == 37
    assert msff.points[0].params == {
        "qp": 42,
        "preset": "faster",
        "kept_channels": None,
        "codec_model": "msff_nanodet_neck_g2",
        "codec_weights": None,
        "refine": None,
        "refine_lr": None,
        "refine_rate_weight": None,
    }
    assert [p.params["phi"] for p in cfg.codec("e2e").points] == [0, 5]
    assert cfg.codec("ablation").points[0].params["kept_channels"] == 96
    for bad, message in (
        ({"name": "m", "type": "vvc_msff", "values": [64]}, "vvc_msff parameter qp must be an integer in 0..63"),
        ({"name": "m", "type": "learned_e2e", "values": [32]}, "learned_e2e parameter phi must be an integer in 0..5"),
        (
            {"name": "m", "type": "vvc_msff", "values": [32], "options": {"phi": 1}},
            "mode vvc_msff has no parameter phi",
        ),
        ({"name": "m", "type": "vvc_msff", "values": [32], "options": {"codec_weights": "no.pt"}}, "not found"),
        (
            {"name": "m", "type": "vvc_msff", "values": [32], "options": {"codec_weights": 5}},
            "codec_weights must be a weights file .* or none, got 5",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            _parse(_modified(["codecs"], [bad]) | {"anchors": [], "reference": None}, tmp_path)


@pytest.mark.slow
def test_bundled_configs_ship_in_the_wheel(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    src, wheel_dir, target = tmp_path / "src", tmp_path / "wheel", tmp_path / "site"
    for name in ("codec", "ctc"):  # a copy: the build writes build/ and *.egg-info beside the sources
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheel_dir)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    (wheel,) = wheel_dir.glob("fcm_codec-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import ctc, sys; assert ctc.__file__.startswith(sys.argv[1]), ctc.__file__; from ctc.cli import main; "
    code += "raise SystemExit(main(['configs']))"
    out = subprocess.run([sys.executable, "-c", code, str(target)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert {p.stem for p in CONFIGS.glob("*.yaml")} <= {line.split()[0] for line in out.splitlines() if line.strip()}
