"""The CTC runner: plan (codec, rate point, image) jobs, skip those already in the
cache, run the rest in local worker processes or on a Dask cluster, and commit
each result as it arrives.

A job is a picklable :class:`Job`; :func:`execute_job` is the one job function for
every backend (in-process, ``ProcessPoolExecutor`` workers, Dask workers). Each
worker process builds the network once (:func:`worker_network`). Every job runs
torch with the run's thread count (default one, so N workers use N cores without
oversubscription), whatever the backend: NN part 1 differs in its last bits between
thread counts, and so can a bitstream, so the count is part of the job key.

A job's key holds its inputs and the versions that change results (:func:`job_key`);
the project's files its run depended on are recorded with each result
(``ctc.dependencies``), and a result counts as cached only while they are unchanged.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from codec.files import file_sha256 as sha256_file

from .cache import ResultCache
from .config import CtcConfig, NetworkConfig, config_to_dict
from .dependencies import package_versions
from .errors import DatasetError, JobError, RunDirError

HARNESS_VERSION = "2"  # bump when the format of a job's result changes (2: keys with packages and threads)


# -- dataset ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageItem:
    image_id: int
    file_name: str
    path: str
    sha256: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def select_images(
    images_dir: str | os.PathLike,
    annotation_file: str | os.PathLike,
    limit: int | None = None,
    image_ids: Iterable[int] | None = None,
) -> list[ImageItem]:
    """The images of a COCO annotation file that exist in `images_dir`, by image id;
    an explicit `image_ids` subset must all exist; then the first `limit`."""
    images_dir, annotation_file = Path(images_dir), Path(annotation_file)
    if not images_dir.is_dir():
        raise DatasetError(f"image directory not found: {images_dir}")
    if not annotation_file.is_file():
        raise DatasetError(f"annotation file not found: {annotation_file}")
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
        entries = sorted(data["images"], key=lambda e: int(e["id"]))
        by_id = {int(e["id"]): e for e in entries}
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{annotation_file}: not a COCO instances file ({type(e).__name__}: {e})") from None
    if image_ids is not None:
        wanted = list(image_ids)
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise DatasetError(f"image ids not in {annotation_file.name}: {missing[:5]}")
        chosen = [by_id[i] for i in wanted]
        absent = [e["file_name"] for e in chosen if not (images_dir / e["file_name"]).is_file()]
        if absent:
            raise DatasetError(f"images missing from {images_dir}: {absent[:5]}")
    else:
        chosen = [e for e in entries if (images_dir / e["file_name"]).is_file()]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise DatasetError(f"no image of {annotation_file.name} found in {images_dir}")
    return [
        ImageItem(
            int(e["id"]),
            e["file_name"],
            str(images_dir / e["file_name"]),
            sha256_file(images_dir / e["file_name"]),
            int(e["width"]),
            int(e["height"]),
        )
        for e in chosen
    ]


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3), pixels as stored (no EXIF rotation, as COCO annotates),
    read as fcm_enc reads it (codec.pipeline.load_image: size limits, 16-bit and alpha handling)."""
    from codec.errors import InputError
    from codec.pipeline import load_image

    try:
        return load_image(path)
    except InputError as e:
        raise DatasetError(f"cannot read image: {e}") from None


# -- network ---------------------------------------------------------------------------

_NETWORKS: dict[NetworkConfig, Any] = {}  # per-process: each worker builds its network once


def load_network(cfg: NetworkConfig):
    """Build the SplitNetwork a config names (registry name, or a "module:function" factory)."""
    weights = str(cfg.weights) if cfg.weights is not None else None
    if cfg.factory:
        module_name, attr = cfg.factory.split(":", 1)
        factory = getattr(importlib.import_module(module_name), attr)
        return factory(name=cfg.name, weights=weights)
    from codec.vision import get_network

    return get_network(cfg.name, weights)


def worker_network(cfg: NetworkConfig):
    net = _NETWORKS.get(cfg)
    if net is None:
        net = _NETWORKS[cfg] = load_network(cfg)
    return net


def _init_worker(cfg: NetworkConfig, torch_threads: int) -> None:
    import torch

    torch.set_num_threads(torch_threads)
    worker_network(cfg)


# -- jobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    key: str
    codec: str  # codec name in the config
    codec_type: str
    mode: str | None
    point: str
    params: dict[str, Any] = field(hash=False)
    image: ImageItem = field(hash=False)
    network: NetworkConfig = field(hash=False)
    split: str = ""
    torch_threads: int = 1


def code_version() -> dict[str, str]:
    """Versions of this repository's code that change job results, besides the files each
    result records (ctc.dependencies): package and container versions, the harness version."""
    import codec
    from codec import bitstream

    return {
        "codec": codec.__version__,
        "container": f"{bitstream.VERSION_MAJOR}.{bitstream.VERSION_MINOR}",
        "ctc": HARNESS_VERSION,
    }


def job_key(
    codec_type: str,
    mode: str | None,
    params: dict[str, Any],
    codec_version: str,
    network: NetworkConfig,
    weights_sha256: str,
    split: str,
    image_sha256: str,
    versions: dict[str, str],
    packages: dict[str, str] | None = None,
    torch_threads: int = 1,
) -> str:
    """sha256 of the inputs of a job and of what runs it (not the codec's display name, not
    the image id or path: renaming or moving files keeps the cache valid): the codec and its
    parameters, the external tool's version (`codec_version`), the network and its weights,
    the image, this code's versions, the packages that change results (default: those of
    this interpreter) and the torch thread count (NN part 1 differs in the last bits between
    thread counts, and so can a bitstream). The project's source files are not in the key:
    each result records the ones its run depended on (ctc.dependencies)."""
    from .dependencies import package_versions

    record = {
        "codec_type": codec_type,
        "mode": mode,
        "params": params,
        "codec_version": codec_version,
        "network": network.name,
        "network_factory": network.factory,
        "weights_sha256": weights_sha256,
        "split": split,
        "image_sha256": image_sha256,
        "code_version": versions,
        "packages": package_versions() if packages is None else packages,
        "torch_threads": int(torch_threads),
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_jobs(
    config: CtcConfig, images: list[ImageItem], weights_sha256: str, split: str, torch_threads: int = 1
) -> list[Job]:
    from .codecs import get_codec_type
    from .dependencies import package_versions

    if isinstance(torch_threads, bool) or not isinstance(torch_threads, int) or torch_threads < 1:
        raise ValueError(f"torch_threads must be an integer >= 1, got {torch_threads!r}")
    jobs = []
    versions, packages = code_version(), package_versions()
    for c in config.codecs:
        plugin = get_codec_type(c.type, c.mode if c.type == "container" else None)
        cversion = plugin.version()
        for p in c.points:
            for im in images:
                key = job_key(
                    c.type,
                    c.mode,
                    p.params,
                    cversion,
                    config.network,
                    weights_sha256,
                    split,
                    im.sha256,
                    versions,
                    packages,
                    torch_threads,
                )
                jobs.append(
                    Job(key, c.name, c.type, c.mode, p.name, p.params, im, config.network, split, torch_threads)
                )
    return jobs


def execute_job(job: Job) -> dict[str, Any]:
    """Run one job; the result is JSON-able (stored in the cache as is), with under "deps" the
    record of the files its run depended on (ctc.dependencies), which the cache keeps apart."""
    from .codecs import STAGES, get_codec_type
    from .complexity import MacCounter
    from .dependencies import trace_job

    try:
        import torch

        if torch.get_num_threads() != job.torch_threads:
            torch.set_num_threads(job.torch_threads)
        network = worker_network(job.network)
        plugin = get_codec_type(job.codec_type, job.mode if job.codec_type == "container" else None)
        counter = MacCounter()
        with trace_job(also=[__file__]) as trace:  # the image's reading shapes the result too
            image = load_rgb(job.image.path)
            h, w = image.shape[:2]
            if (w, h) != (job.image.width, job.image.height):
                raise DatasetError(
                    f"{job.image.file_name} is {w}x{h}, the annotations say {job.image.width}x{job.image.height}"
                )
            t0 = time.perf_counter()
            with counter.active():
                out = plugin.run(image, network, job.split, dict(job.params))
            wall = time.perf_counter() - t0
        deps = trace.dependencies()
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise JobError(
            f"{job.codec}/{job.point}/image {job.image.image_id}: {type(e).__name__}: {first} "
            f"({Path(where.filename).name}:{where.lineno})"
        ) from None
    return {
        "bits": int(out.bits),
        "pixels": int(w * h),
        "raw_feature_bits": int(out.raw_feature_bits),
        **stored_detections(out.detections, (h, w)),
        "timings": {s: float(out.timings.get(s, 0.0)) for s in STAGES},
        "macs": {s: int(counter.macs.get(s, 0)) for s in STAGES},
        "wall": wall,
        "deps": deps,
    }


def stored_detections(det: Any, image_size: tuple[int, int]) -> dict[str, Any]:
    """What a job result keeps of NN part 2's output: "detections", one [x, y, w, h, score,
    category_id] per detection (the image id is attached when results are gathered); for a
    network that returns instance masks also "masks", the COCO RLE counts of each detection's
    mask, and "mask_size" [h, w] (the original image's); for one that returns keypoints also
    "keypoints", [x1, y1, v1, x2, ...] per detection. A boxes-only network's result has the
    first key only, as before masks and keypoints were kept. Everything a network returns is
    kept, whatever the config measures: a result is a function of its job key alone."""
    coco = det.to_coco(0)
    out: dict[str, Any] = {"detections": [[*d["bbox"], d["score"], d["category_id"]] for d in coco]}
    if det.masks is not None:
        sizes = {tuple(d["segmentation"]["size"]) for d in coco}
        if sizes - {tuple(image_size)}:
            raise JobError(f"masks of size {sorted(sizes)} for an image of {list(image_size)}")
        out["masks"] = [d["segmentation"]["counts"] for d in coco]
        out["mask_size"] = [int(v) for v in image_size]
    if det.keypoints is not None:
        out["keypoints"] = [d["keypoints"] for d in coco]
    return out


def detections_to_coco(
    result: dict[str, Any], image_id: int, tasks: tuple[str, ...] = ("bbox",)
) -> list[dict[str, Any]]:
    """A job result's detections in the COCO results format, with "segmentation" (RLE) when
    `tasks` has "segm" and "keypoints" when it has "keypoints"; JobError when the result holds
    no such output (a network without it, or a result stored before they were kept)."""
    dets = [
        {"image_id": int(image_id), "category_id": int(d[5]), "bbox": [float(v) for v in d[:4]], "score": float(d[4])}
        for d in result["detections"]
    ]
    if "segm" in tasks:
        masks, size = result.get("masks"), result.get("mask_size")
        if masks is None or size is None or len(masks) != len(dets):
            raise JobError(f"image {image_id}: the result holds no masks (rerun `fcm_ctc run` to recompute it)")
        for d, counts in zip(dets, masks):
            d["segmentation"] = {"size": [int(size[0]), int(size[1])], "counts": counts}
    if "keypoints" in tasks:
        kpts = result.get("keypoints")
        if kpts is None or len(kpts) != len(dets):
            raise JobError(f"image {image_id}: the result holds no keypoints (rerun `fcm_ctc run` to recompute it)")
        for d, k in zip(dets, kpts):
            d["keypoints"] = [float(v) for v in k]
    return dets


# -- execution -------------------------------------------------------------------------


@dataclass
class RunStats:
    planned: int = 0
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0


PROGRESS_MODES = ("bar", "lines", "none")


class ProgressLines:
    """Progress as plain lines on a stream (a log file, a pipe: where a bar would not show):
    the first result, then at most one line every `interval` seconds, and the last."""

    def __init__(self, total: int, stream: Any = None, interval: float = 30.0) -> None:
        self.total, self.done, self.interval = total, 0, interval
        self.stream = stream
        self._t0 = self._last = time.perf_counter()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1, what: str = "") -> None:
        import sys

        self.done += n
        now = time.perf_counter()
        if self.done not in (1, self.total) and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._t0
        left = elapsed / self.done * (self.total - self.done)
        pct = 100 * self.done / self.total if self.total else 100.0
        text = (
            f"fcm_ctc: {self.done}/{self.total} jobs ({pct:.0f} %), {_duration(elapsed)} elapsed, "
            f"about {_duration(left)} left" + (f" (last: {what})" if what else "")
        )
        print(text, file=self.stream if self.stream is not None else sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Bar:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, disable=total == 0, desc="ctc jobs", unit="job", dynamic_ncols=True)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def update(self, n: int = 1, what: str = "") -> None:
        self._bar.update(n)


class _Silent:
    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1, what: str = "") -> None:
        pass


def _progress(total: int, mode: bool | str, interval: float = 30.0) -> Any:
    mode = {True: "bar", False: "none"}.get(mode, mode) if isinstance(mode, bool) else mode
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
    if mode == "bar":
        return _Bar(total)
    if mode == "lines" and total:
        return ProgressLines(total, interval=interval)
    return _Silent()


def run_jobs(
    jobs: list[Job],
    cache: ResultCache,
    workers: int = 1,
    dask_address: str | None = None,
    progress: bool | str = False,
    on_result: Callable[[Job, dict], None] | None = None,
    progress_interval: float = 30.0,
) -> RunStats:
    """Run the jobs that are not in the cache; store each result as it completes.

    workers == 1 and no dask_address: in this process (the network is built once here).
    workers > 1: that many spawned worker processes, each with the jobs' torch thread count.
    dask_address: the same job function submitted to a Dask distributed scheduler.
    progress: "bar" (tqdm, for a terminal; also True), "lines" (a line on stdout at most every
    `progress_interval` seconds, for a log), "none" (also False).
    `on_result(job, result)` is called after each result is committed (progress hooks, tests)."""
    t0 = time.perf_counter()
    done = cache.done_keys([j.key for j in jobs])
    todo, seen = [], set()
    for j in jobs:
        if j.key not in done and j.key not in seen:  # identical jobs (same key) run once
            seen.add(j.key)
            todo.append(j)
    stats = RunStats(planned=len(jobs), cached=len(jobs) - len(todo))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def store(job: Job, result: dict) -> None:
        deps = result.pop("deps", None)
        cache.put(job.key, job.codec, job.point, job.image.image_id, result, deps)
        stats.computed += 1
        bar.update(1, f"{job.codec}/{job.point}/image {job.image.image_id}")
        if on_result is not None:
            on_result(job, result)

    with _progress(len(todo), progress, progress_interval) as bar:
        if not todo:
            pass
        elif dask_address is not None:
            _run_dask(todo, dask_address, store)
        elif workers == 1:
            for job in todo:
                store(job, execute_job(job))
        else:
            _run_pool(todo, workers, store)
    stats.seconds = time.perf_counter() - t0
    return stats


def _run_pool(todo: list[Job], workers: int, store: Callable[[Job, dict], None]) -> None:
    # spawn, not fork: forking a process that has started torch's thread pools can deadlock
    ctx = get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(todo[0].network, todo[0].torch_threads),
    )
    try:
        pending = {pool.submit(execute_job, j): j for j in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = pending.pop(fut)
                store(job, fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(todo: list[Job], address: str, store: Callable[[Job, dict], None]) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise JobError("--dask needs the 'distributed' package (pip install 'fcm-codec[dask]')") from None
    with Client(address, timeout=30) as client:
        futures = client.map(execute_job, todo, pure=False)
        by_key = {f.key: j for f, j in zip(futures, todo)}
        try:
            for fut in as_completed(futures):
                store(by_key[fut.key], fut.result())
        finally:
            client.cancel(futures)


# -- the whole run ---------------------------------------------------------------------


@dataclass
class RunInfo:
    config: CtcConfig
    images: list[ImageItem]
    jobs: list[Job]
    split: str
    weights_sha256: str
    stats: RunStats


def prepare_run(config: CtcConfig, torch_threads: int = 1) -> tuple[list[ImageItem], list[Job], str, str]:
    """Select the images, build the network once (weights hash, split) and plan the jobs."""
    images = select_images(
        config.dataset.images, config.dataset.annotations, config.dataset.limit, config.dataset.image_ids
    )
    network = worker_network(config.network)
    split = config.network.split or network.default_split
    if split not in network.split_points:
        raise JobError(
            f"network {config.network.name!r} has no split point {split!r} ({', '.join(network.split_points)})"
        )
    from .config import check_tasks

    # a factory network's tasks are known only now (a registry network's were checked at load)
    check_tasks(config.network.name, tuple(getattr(network, "tasks", ("bbox",))), config.report_metrics, "metric")
    check_annotations(config.dataset.annotations, config.tasks, [im.image_id for im in images])
    weights = network.weights_sha256()
    return images, plan_jobs(config, images, weights, split, torch_threads), split, weights


def check_annotations(annotation_file: str | os.PathLike, tasks: tuple[str, ...], image_ids: list[int]) -> None:
    """The annotations can score every task of the run on these images (masks on every object
    for mask AP, keypoints on some for keypoint AP), checked before any job runs."""
    if set(tasks) <= {"bbox"}:
        return
    data = json.loads(Path(annotation_file).read_text(encoding="utf-8"))
    wanted = set(image_ids)
    anns = [a for a in data.get("annotations", []) if int(a.get("image_id", -1)) in wanted]
    name = Path(annotation_file).name
    if "segm" in tasks and any(not a.get("segmentation") for a in anns):
        raise DatasetError(f"{name}: annotations without a mask (segmentation): no mask AP on these images")
    if "keypoints" in tasks and not any(a.get("num_keypoints", 0) > 0 for a in anns):
        raise DatasetError(f"{name}: no keypoint annotations on these images: no keypoint AP")


def check_run_dir(out: Path, config_name: str, force: bool = False) -> None:
    """A run directory may be new, empty, or hold a run of the same config (resumed, or run
    again with other images or codecs: the cache is keyed by content); anything else only
    with `force` (the run record and outputs are replaced; cached results stay, unused)."""
    if force or not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a run directory")
    cache_file = out / "cache.sqlite"
    if cache_file.is_file():
        with ResultCache(cache_file) as cache:
            run = cache.get_meta("run")
        other = (run or {}).get("config", {}).get("name")
        if other is not None and other != config_name:
            raise RunDirError(
                f"--out {out} holds a run of config {other!r}, not {config_name!r}; use another --out, "
                "or --force to reuse it (the other run's outputs are replaced)"
            )
    elif any(out.iterdir()):
        raise RunDirError(f"--out {out} is not empty and holds no CTC run; use another --out, or --force")


def run_ctc(
    config: CtcConfig,
    out_dir: str | os.PathLike,
    workers: int = 1,
    dask_address: str | None = None,
    progress: bool | str = False,
    on_result: Callable[[Job, dict], None] | None = None,
    torch_threads: int = 1,
    force: bool = False,
    progress_interval: float = 30.0,
) -> RunInfo:
    """Run (or resume) every job of a config into out_dir/cache.sqlite and record the run.
    Every job runs torch with `torch_threads` threads, whatever the backend, so that results
    do not depend on the number of workers. An out_dir that holds another config's run, or
    files that are no run at all, is refused (RunDirError) unless `force`."""
    out = Path(out_dir)
    check_run_dir(out, config.name, force)
    out.mkdir(parents=True, exist_ok=True)
    images, jobs, split, weights = prepare_run(config, torch_threads)
    with ResultCache(out / "cache.sqlite") as cache:
        cache.set_meta(
            "run",
            {
                "config": config_to_dict(config),
                "images": [asdict(im) for im in images],
                "split": split,
                "weights_sha256": weights,
                "jobs": [
                    {"key": j.key, "codec": j.codec, "point": j.point, "image_id": j.image.image_id} for j in jobs
                ],
                "code_version": code_version(),
                "packages": package_versions(),
                "torch_threads": torch_threads,
            },
        )
        stats = run_jobs(
            jobs,
            cache,
            workers=workers,
            dask_address=dask_address,
            progress=progress,
            on_result=on_result,
            progress_interval=progress_interval,
        )
        cache.set_meta(
            "last_stats", asdict(stats) | {"workers": workers, "dask": dask_address, "torch_threads": torch_threads}
        )
    return RunInfo(config, images, jobs, split, weights, stats)
