"""CTC configuration files (YAML): what to evaluate, on which data, against which anchors.

Schema (every key is checked; unknown keys are errors so that typos do not pass
silently)::

    name: quick                       # run name (report title)
    dataset:
      name: coco128
      images: ${assets}/coco/coco128/images          # directory of images
      annotations: ${assets}/coco/coco128/annotations/instances_train2017.json
      limit: 8                        # optional: first N images (by image id)
      image_ids: [9, 25]              # optional: an explicit subset
    network:
      name: nanodet                   # codec.vision.get_network name
      split: neck                     # optional: the network's default split point
      weights: null                   # optional weights file (relative path)
      factory: null                   # optional "module:function" building a custom SplitNetwork
    metric:
      primary: map50                  # map50 (VCM CTC) or map (mAP@[.5:.95]); per task below
      report: [map50, map]
    anchors: [image_anchor, feature_anchor]
    reference: uncompressed           # optional: the uncompressed line for near-lossless rates
    near_lossless:
      max_rel_loss: 0.01
    bd_rate:                          # optional
      curves: [front, monotone]       # how a curve becomes monotone: its front, MPEG's fit, or both
      min_overlap: 0.75               # warn when two curves overlap on less of their range
    codecs:
      - name: image_anchor
        type: image_anchor            # see ctc.codecs.available_codec_types()
        param: qp                     # the rate parameter ...
        values: [47, 42, 37, 32]      # ... and its rate points
        options: {preset: faster}     # fixed parameters of every point
        bd: true                      # optional: false for a codec that is no BD curve

Metrics (``ctc.tasks``): box AP ``map50``, ``map``, ``map75``; mask AP of a network that returns
instance masks ``segm_map50``, ``segm_map``, ``segm_map75``; keypoint (OKS) AP of one that returns
keypoints ``keypoints_map50``, ``keypoints_map``, ``keypoints_map75``. The tasks a run measures
are those its metrics name (box AP always); a metric of a task the network does not return
(``segm_map50`` on NanoDet) is an error when the file is loaded. The primary metric is the one
of the BD table ``fcm_ctc`` prints and of the CTTC files; bd_rate.csv and near_lossless.csv
have a row per reported metric.

Every value is checked when the file is loaded, before any network or job starts: the
parameters through each codec's parameter dataclass (names, kinds, ranges), and every
curve that is compared against the anchors (the anchors too) needs 4 to 8 rate points.

Paths are relative to the configuration file, or start with ``${assets}``: the
assets directory given by ``--assets``, else the ``FCM_ASSETS`` environment
variable, else ``<repo>/../shared/assets``. Absolute paths are refused so that a
configuration works on every machine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .tasks import METRICS, metric_task, tasks_of

ASSETS_VAR = "${assets}"
MAX_RATE_POINTS = 12
BD_CURVES = ("front", "monotone")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_assets_dir() -> Path:
    """FCM_ASSETS, else <repo>/../shared/assets."""
    from codec.files import assets_path

    return assets_path()


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    images: Path
    annotations: Path
    limit: int | None = None
    image_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    split: str | None = None
    weights: Path | None = None
    factory: str | None = None  # "module:function" -> SplitNetwork (custom networks, tests)


@dataclass(frozen=True)
class RatePoint:
    name: str  # e.g. "qp37"; used in file names (detections/<codec>/<point>.json)
    param: str | None  # the rate parameter's name, None for a single fixed point
    value: Any
    params: dict[str, Any]  # everything the codec receives: options + {param: value}


@dataclass(frozen=True)
class CodecConfig:
    name: str
    type: str
    points: tuple[RatePoint, ...]
    mode: str | None = None  # container mode for type "container"
    bd: bool = True  # compared against the anchors (BD-rate), unless a reference point


@dataclass(frozen=True)
class CtcConfig:
    name: str
    dataset: DatasetConfig
    network: NetworkConfig
    codecs: tuple[CodecConfig, ...]
    anchors: tuple[str, ...]
    primary_metric: str = "map50"
    report_metrics: tuple[str, ...] = ("map50", "map")
    reference: str | None = None
    near_lossless_max_rel_loss: float = 0.01
    bd_curves: tuple[str, ...] = BD_CURVES
    bd_min_overlap: float = 0.75
    source: str = ""  # the YAML text, recorded in the report
    source_path: str | None = None
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the run measures ("bbox", "segm", "keypoints"): those its metrics name."""
        return tasks_of(self.report_metrics)

    def codec(self, name: str) -> CodecConfig:
        for c in self.codecs:
            if c.name == name:
                return c
        raise ConfigError(f"no codec named {name!r} in config {self.name!r}")


# -- helpers ---------------------------------------------------------------------------


def _check_keys(section: str, data: Any, allowed: set[str], required: frozenset[str] | set[str] = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{section}: missing required key(s) {', '.join(missing)}")
    return data


def _str(section: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{section}: expected a non-empty string, got {value!r}")
    return value


def _name(section: str, value: Any) -> str:
    value = _str(section, value)
    if not _NAME_RE.match(value):
        raise ConfigError(f"{section}: {value!r} is not a valid name (letters, digits, '_', '-', '.')")
    return value


def resolve_path(section: str, value: Any, base_dir: Path, assets_dir: Path) -> Path:
    """A config path: '${assets}/...' or relative to the config file; never absolute."""
    text = _str(section, value)
    if text.startswith(ASSETS_VAR):
        rest = text[len(ASSETS_VAR) :].lstrip("/\\")
        return assets_dir / rest
    if "${" in text:
        raise ConfigError(f"{section}: only ${{assets}} may be used as a variable, got {text!r}")
    if text.startswith("~") or Path(text).is_absolute():
        raise ConfigError(
            f"{section}: absolute paths are not allowed in configs ({text!r}); "
            "use a path relative to the config file or ${assets}/..."
        )
    return base_dir / text


def point_name(param: str | None, value: Any) -> str:
    if param is None:
        return "ref"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = str(value)
    else:
        text = f"{param}{value:g}" if isinstance(value, float) else f"{param}{value}"
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
    return text


# -- parsing ---------------------------------------------------------------------------


def _parse_dataset(data: Any, base_dir: Path, assets_dir: Path) -> DatasetConfig:
    d = _check_keys("dataset", data, {"name", "images", "annotations", "limit", "image_ids"}, {"images", "annotations"})
    limit = d.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"dataset.limit: expected a positive integer, got {limit!r}")
    ids = d.get("image_ids")
    if ids is not None:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ConfigError("dataset.image_ids: expected a non-empty list of integer image ids")
        if len(set(ids)) != len(ids):
            raise ConfigError("dataset.image_ids: duplicate image ids")
        ids = tuple(ids)
    return DatasetConfig(
        name=_name("dataset.name", d.get("name", "dataset")),
        images=resolve_path("dataset.images", d["images"], base_dir, assets_dir),
        annotations=resolve_path("dataset.annotations", d["annotations"], base_dir, assets_dir),
        limit=limit,
        image_ids=ids,
    )


def _parse_network(data: Any, base_dir: Path, assets_dir: Path) -> NetworkConfig:
    d = _check_keys("network", data, {"name", "split", "weights", "factory"}, {"name"})
    factory = d.get("factory")
    if factory is not None and (not isinstance(factory, str) or factory.count(":") != 1):
        raise ConfigError(f"network.factory: expected 'module:function', got {factory!r}")
    name = _name("network.name", d["name"])
    if factory is None:
        from codec.vision import available_networks

        if name not in available_networks():
            raise ConfigError(
                f"network.name: unknown network {name!r}; choose one of {', '.join(available_networks())}"
            )
    split = d.get("split")
    weights = d.get("weights")
    return NetworkConfig(
        name=name,
        split=_name("network.split", split) if split is not None else None,
        weights=resolve_path("network.weights", weights, base_dir, assets_dir) if weights is not None else None,
        factory=factory,
    )


def _parse_codec(i: int, data: Any) -> CodecConfig:
    from .codecs import get_codec_type

    section = f"codecs[{i}]"
    d = _check_keys(section, data, {"name", "type", "mode", "param", "values", "options", "bd"}, {"name", "type"})
    name = _name(f"{section}.name", d["name"])
    section = f"codec {name!r}"
    ctype = _str(f"{section}.type", d["type"])
    plugin = get_codec_type(ctype, d.get("mode"))  # raises ConfigError for unknown types/modes
    options = d.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{section}.options: expected a mapping")
    param = d.get("param", plugin.default_param)
    values = d.get("values")
    if param is None:
        if values is not None:
            raise ConfigError(f"{section}: 'values' given but the codec has no rate parameter")
        raw_points: list[tuple[str | None, Any]] = [(None, None)]
    else:
        param = _str(f"{section}.param", param)
        if values is None:
            raise ConfigError(f"{section}: missing 'values' (the rate points of {param!r})")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{section}.values: expected a non-empty list")
        if len(values) > MAX_RATE_POINTS:
            raise ConfigError(f"{section}.values: {len(values)} rate points; at most {MAX_RATE_POINTS}")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{section}.values: duplicate rate points")
        if param in options:
            raise ConfigError(f"{section}: {param!r} is both the rate parameter and an option")
        raw_points = [(param, v) for v in values]
    points = []
    for p, v in raw_points:
        params = dict(options)
        if p is not None:
            params[p] = v
        try:
            params = plugin.validate_params(params)
        except ConfigError as e:
            raise ConfigError(f"{section}: {e}") from None
        points.append(RatePoint(point_name(p, v), p, v, params))
    if len({pt.name for pt in points}) != len(points):
        raise ConfigError(f"{section}: rate point names collide: {[pt.name for pt in points]}")
    bd = d.get("bd", True)
    if not isinstance(bd, bool):
        raise ConfigError(f"{section}.bd: expected true or false, got {bd!r}")
    return CodecConfig(name=name, type=ctype, points=tuple(points), mode=plugin.mode, bd=bd)


def _check_bd_curves(codecs: tuple[CodecConfig, ...], anchors: list[str]) -> None:
    """Every curve that meets the anchors in the BD table (the anchors too) has enough points."""
    from .bd_rate import MAX_POINTS, MIN_POINTS
    from .metrics import is_bd_curve

    if not anchors:
        return
    for c in codecs:
        if not (c.name in anchors or is_bd_curve(c)):
            continue
        n = len(c.points)
        if not MIN_POINTS <= n <= MAX_POINTS:
            role = "an anchor" if c.name in anchors else "a curve compared against the anchors"
            hint = "" if c.name in anchors else "; or set `bd: false` if it is not meant for BD-rates"
            raise ConfigError(
                f"codec {c.name!r}: {n} rate point{'s' if n != 1 else ''}; {role} needs {MIN_POINTS} to "
                f"{MAX_POINTS} for a BD-rate{hint}"
            )


def _check_network_tasks(network: NetworkConfig, metrics: list[str]) -> None:
    """Every metric's task is one the network returns (a registry network's table, read without
    building it; a factory network is checked by the runner once built, before any job)."""
    if network.factory is not None:
        return
    from codec.vision import NETWORK_TASKS

    check_tasks(network.name, NETWORK_TASKS.get(network.name, ("bbox",)), metrics, "metric")


def check_tasks(
    network_name: str, network_tasks: tuple[str, ...], metrics: list[str] | tuple[str, ...], where: str
) -> None:
    """ConfigError naming the first metric whose task `network_tasks` lacks."""
    from .tasks import TASK_OUTPUTS

    for m in metrics:
        task = metric_task(m)
        if task not in network_tasks:
            raise ConfigError(
                f"{where}: {m!r} is {task} AP, but network {network_name!r} returns no {TASK_OUTPUTS[task]} "
                f"(its tasks: {', '.join(network_tasks)})"
            )


def parse_config(
    data: Any, base_dir: Path, assets_dir: Path | None = None, source: str = "", source_path: str | None = None
) -> CtcConfig:
    """Validate a parsed YAML document and build the CtcConfig."""
    assets_dir = Path(assets_dir) if assets_dir is not None else default_assets_dir()
    d = _check_keys(
        "config",
        data,
        {"name", "dataset", "network", "metric", "anchors", "reference", "near_lossless", "bd_rate", "codecs"},
        {"dataset", "network", "codecs"},
    )
    name = _name("name", d.get("name", "ctc"))
    dataset = _parse_dataset(d["dataset"], base_dir, assets_dir)
    network = _parse_network(d["network"], base_dir, assets_dir)
    codecs_data = d["codecs"]
    if not isinstance(codecs_data, list) or not codecs_data:
        raise ConfigError("codecs: expected a non-empty list of codec entries")
    codecs = tuple(_parse_codec(i, c) for i, c in enumerate(codecs_data))
    names = [c.name for c in codecs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"codecs: duplicate codec name(s) {', '.join(dupes)}")

    metric = _check_keys("metric", d.get("metric", {}), {"primary", "report"})
    primary = metric.get("primary", "map50")
    if primary not in METRICS:
        raise ConfigError(f"metric.primary: {primary!r} is not one of {', '.join(METRICS)}")
    report = metric.get("report", ["map50", "map"])
    if not isinstance(report, list) or not report or any(m not in METRICS for m in report):
        raise ConfigError(f"metric.report: expected a list drawn from {', '.join(METRICS)}, got {report!r}")
    if primary not in report:
        report = [primary, *report]
    _check_network_tasks(network, report)

    anchors = d.get("anchors", [])
    if not isinstance(anchors, list) or not all(isinstance(a, str) for a in anchors):
        raise ConfigError("anchors: expected a list of codec names")
    for a in anchors:
        if a not in names:
            raise ConfigError(f"anchors: {a!r} is not a codec of this config ({', '.join(names)})")
        if len(next(c for c in codecs if c.name == a).points) < 2:
            raise ConfigError(f"anchors: {a!r} has fewer than 2 rate points; an anchor needs an RD curve")
    _check_bd_curves(codecs, anchors)

    reference = d.get("reference")
    if reference is None:
        reference = next((c.name for c in codecs if c.type == "uncompressed"), None)
    elif reference not in names:
        raise ConfigError(f"reference: {reference!r} is not a codec of this config")
    nl = _check_keys("near_lossless", d.get("near_lossless", {}), {"max_rel_loss"})
    max_rel = nl.get("max_rel_loss", 0.01)
    if isinstance(max_rel, bool) or not isinstance(max_rel, (int, float)) or not 0 < max_rel < 1:
        raise ConfigError(f"near_lossless.max_rel_loss: expected a number in (0, 1), got {max_rel!r}")
    bd = _check_keys("bd_rate", d.get("bd_rate") or {}, {"curves", "min_overlap"})
    bd_curves = bd.get("curves", list(BD_CURVES))
    if (
        not isinstance(bd_curves, list)
        or not bd_curves
        or any(k not in BD_CURVES for k in bd_curves)
        or len(set(bd_curves)) != len(bd_curves)
    ):
        raise ConfigError(f"bd_rate.curves: expected a list drawn from {', '.join(BD_CURVES)}, got {bd_curves!r}")
    min_overlap = bd.get("min_overlap", 0.75)
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 <= min_overlap <= 1:
        raise ConfigError(f"bd_rate.min_overlap: expected a number in [0, 1], got {min_overlap!r}")

    return CtcConfig(
        name=name,
        dataset=dataset,
        network=network,
        codecs=codecs,
        anchors=tuple(anchors),
        primary_metric=primary,
        report_metrics=tuple(dict.fromkeys(report)),
        reference=reference,
        near_lossless_max_rel_loss=float(max_rel),
        bd_curves=tuple(bd_curves),
        bd_min_overlap=float(min_overlap),
        source=source,
        source_path=source_path,
        raw=d,
    )


def bundled_configs() -> dict[str, Path]:
    """The configurations shipped with the package (ctc/configs/*.yaml, package data), by name."""
    from importlib import resources

    folder = resources.files("ctc") / "configs"
    if not folder.is_dir():
        return {}
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: Path(e.name).stem)  # coco128 before coco128-seg
        if entry.name.endswith(".yaml")
    }


def config_summary(path: str | os.PathLike, width: int = 110) -> str:
    """What a config is for: the first sentence of its leading comment (at most `width` characters)."""
    words: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line[1:] if line.startswith("#") else None
        if text is None or not text.strip() or text.startswith("   "):  # the end, or a command example
            break
        words.append(text.strip())
    summary = " ".join(words)
    m = re.search(r"\.(\s|$)", summary)
    summary = summary[: m.start() + 1] if m else summary.rstrip(":")
    return summary if len(summary) <= width else summary[: width - 3].rstrip() + "..."


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file: the path if it is a file, else the bundled config of that name
    ("quick", "quick.yaml"); ConfigError naming the bundled ones otherwise."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = bundled_configs()
    name = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and name in bundled:
        return bundled[name]
    known = ", ".join(bundled) or "none"
    raise ConfigError(f"config file not found: {p} (not a file, nor a bundled config: {known})")


def load_config(path: str | os.PathLike, assets_dir: str | os.PathLike | None = None) -> CtcConfig:
    """Read and validate a YAML CTC configuration: a file, or a bundled config by name."""
    p = find_config(path)
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from None
    if data is None:
        raise ConfigError(f"{p}: empty config")
    try:
        return parse_config(data, p.resolve().parent, Path(assets_dir) if assets_dir else None, text, str(p))
    except ConfigError as e:
        raise ConfigError(f"{p.name}: {e}") from None


def with_overrides(
    config: CtcConfig,
    images: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    limit: int | None = None,
    codecs: list[str] | None = None,
) -> CtcConfig:
    """Command-line overrides: another dataset, fewer images, a subset of the codecs."""
    from dataclasses import replace

    ds = config.dataset
    if images is not None:
        ds = replace(ds, images=Path(images))
    if annotations is not None:
        ds = replace(ds, annotations=Path(annotations))
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit: expected a positive integer, got {limit}")
        ds = replace(ds, limit=limit)
    out = replace(config, dataset=ds)
    if codecs is not None:
        names = [c.name for c in config.codecs]
        unknown = [c for c in codecs if c not in names]
        if unknown:
            raise ConfigError(f"--codecs: unknown codec(s) {', '.join(unknown)}; config has {', '.join(names)}")
        if not codecs:
            raise ConfigError("--codecs: empty list")
        keep = tuple(c for c in config.codecs if c.name in codecs)
        reference = config.reference if config.reference in codecs else None
        out = replace(out, codecs=keep, anchors=tuple(a for a in config.anchors if a in codecs), reference=reference)
    return out


def config_to_dict(config: CtcConfig) -> dict[str, Any]:
    """A JSON-able record of a validated config (kept in the run's cache for `fcm_ctc report`)."""
    from dataclasses import asdict

    d = asdict(config)
    d.pop("raw", None)

    def fix(obj: Any) -> Any:
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, dict):
            return {k: fix(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [fix(v) for v in obj]
        return obj

    return fix(d)


def config_from_dict(d: dict[str, Any]) -> CtcConfig:
    """Inverse of config_to_dict (no re-validation: the record was validated when written)."""
    ds = dict(d["dataset"])
    ds["images"], ds["annotations"] = Path(ds["images"]), Path(ds["annotations"])
    ds["image_ids"] = tuple(ds["image_ids"]) if ds.get("image_ids") is not None else None
    net = dict(d["network"])
    net["weights"] = Path(net["weights"]) if net.get("weights") else None
    codecs = tuple(
        CodecConfig(
            name=c["name"],
            type=c["type"],
            mode=c.get("mode"),
            bd=bool(c.get("bd", True)),
            points=tuple(RatePoint(p["name"], p["param"], p["value"], dict(p["params"])) for p in c["points"]),
        )
        for c in d["codecs"]
    )
    return CtcConfig(
        name=d["name"],
        dataset=DatasetConfig(**ds),
        network=NetworkConfig(**net),
        codecs=codecs,
        anchors=tuple(d["anchors"]),
        primary_metric=d["primary_metric"],
        report_metrics=tuple(d["report_metrics"]),
        reference=d.get("reference"),
        near_lossless_max_rel_loss=float(d["near_lossless_max_rel_loss"]),
        bd_curves=tuple(d.get("bd_curves", BD_CURVES)),
        bd_min_overlap=float(d.get("bd_min_overlap", 0.75)),
        source=d.get("source", ""),
        source_path=d.get("source_path"),
    )
