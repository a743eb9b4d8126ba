"""The tasks a CTC run measures and the names of their metrics (no torch, no pycocotools).

A task is a pycocotools evaluation type (``ctc.coco_eval.IOU_TYPES``): ``bbox`` (box AP),
``segm`` (mask AP of the instance masks NN part 2 returns) and ``keypoints`` (keypoint AP,
object keypoint similarity). Each task has the same three summary figures, named as the
box figures always were, with the task as a prefix for the others:

=============  ============  ==============  ====================
figure         bbox          segm            keypoints
=============  ============  ==============  ====================
AP@0.5         ``map50``     ``segm_map50``  ``keypoints_map50``
AP@[.5:.95]    ``map``       ``segm_map``    ``keypoints_map``
AP@0.75        ``map75``     ``segm_map75``  ``keypoints_map75``
=============  ============  ==============  ====================

AP by object size follows the same rule (``map_small``, ``segm_map_small``, ...). A config's
``metric.primary`` and ``metric.report`` name these; the tasks of a run are those its metrics
name, and every per-metric output (summary.csv's columns, bd_rate.csv's and
near_lossless.csv's ``metric`` column, the report's plots) uses the same names.
"""

from __future__ import annotations

from collections.abc import Iterable

TASKS: tuple[str, ...] = ("bbox", "segm", "keypoints")
# what each task needs from NN part 2 (the job result's field that holds it)
TASK_OUTPUTS = {"bbox": "boxes", "segm": "masks", "keypoints": "keypoints"}
AP_KEYS: tuple[str, ...] = ("map50", "map", "map75")  # the figures a config may name
SIZE_KEYS: tuple[str, ...] = ("map_small", "map_medium", "map_large")  # AP by object size (reported only)

_TASK_WORDS = {"bbox": "", "segm": "mask ", "keypoints": "keypoint "}
_AP_WORDS = {"map50": "mAP@0.5", "map": "mAP@[.5:.95]", "map75": "mAP@0.75"}


def metric_name(task: str, key: str) -> str:
    """The name of figure `key` (an AP_KEYS or SIZE_KEYS entry) of `task`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return key if task == "bbox" else f"{task}_{key}"


METRICS: tuple[str, ...] = tuple(metric_name(t, k) for t in TASKS for k in AP_KEYS)
METRIC_LABELS: dict[str, str] = {metric_name(t, k): f"{_TASK_WORDS[t]}{_AP_WORDS[k]}" for t in TASKS for k in AP_KEYS}


def metric_task(metric: str) -> str:
    """The task a metric belongs to ("segm_map50" -> "segm", "map" -> "bbox")."""
    for t in TASKS[1:]:
        if metric.startswith(t + "_"):
            return t
    return "bbox"


def metric_label(metric: str) -> str:
    """How a reader sees a metric's name ("mask mAP@0.5"); an unknown name as it is."""
    return METRIC_LABELS.get(metric, metric)


def tasks_of(metrics: Iterable[str]) -> tuple[str, ...]:
    """The tasks `metrics` name, in TASKS order; box AP always (every network gives boxes)."""
    named = {metric_task(m) for m in metrics} | {"bbox"}
    return tuple(t for t in TASKS if t in named)


__all__ = [
    "AP_KEYS",
    "METRICS",
    "METRIC_LABELS",
    "SIZE_KEYS",
    "TASKS",
    "TASK_OUTPUTS",
    "metric_label",
    "metric_name",
    "metric_task",
    "tasks_of",
]
