"""The training loop shared by the learned codecs: resumable checkpoints, a log line
a minute, periodic dev evaluation and keep-the-best.

A checkpoint holds everything a run needs to go on as if it had not stopped: the
model, the optimisers and LR schedules, the step, the training seconds so far, the
numpy and torch RNG states (the data position: batches are drawn from the RNG),
the best dev figure and the dev history. It is written to a temporary file and
renamed, so an interrupted write never destroys the previous one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class RunState:
    step: int = 0
    train_seconds: float = 0.0
    best_figure: float = float("-inf")
    best_step: int = -1
    dev_history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class Checkpoint:
    """`<out>.ckpt`: modules (anything with state_dict/load_state_dict) + RunState + RNGs.
    `loaders` name a module's own state loader where load_state_dict cannot restore it
    (a model whose entropy models hold variable-size CDF buffers: fenet.load_fenet_state)."""

    def __init__(
        self,
        path: Path,
        modules: dict[str, Any],
        rng: np.random.Generator,
        loaders: dict[str, Callable[[dict], None]] | None = None,
    ) -> None:
        self.path, self.modules, self.rng = Path(path), modules, rng
        self.loaders = dict(loaders or {})
        unknown = set(self.loaders) - set(self.modules)
        if unknown:
            raise ValueError(f"loaders for modules the checkpoint does not hold: {sorted(unknown)}")

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: RunState) -> None:
        blob = {name: m.state_dict() for name, m in self.modules.items()}
        blob["run_state"] = state.__dict__
        blob["rng"] = self.rng.bit_generator.state
        blob["torch_rng"] = torch.get_rng_state()
        tmp = self.path.with_suffix(".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, self.path)

    def load(self, map_location: str | torch.device = "cpu") -> RunState:
        blob = torch.load(self.path, map_location=map_location, weights_only=False)
        for name, m in self.modules.items():
            self.loaders.get(name, m.load_state_dict)(blob[name])
        self.rng.bit_generator.state = blob["rng"]
        torch.set_rng_state(blob["torch_rng"])
        return RunState(**blob["run_state"])


class MinuteLog:
    """Averages the metrics of the steps since the last line and prints one line a
    minute (and appends it to a log file, if given)."""

    def __init__(self, path: Path | None = None, every_s: float = 60.0) -> None:
        self.path, self.every_s = path, every_s
        self.rows: list[dict[str, float]] = []
        self.last = time.time()

    def write(self, line: str) -> None:
        print(line, flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def add(self, state: RunState, metrics: dict[str, float], lr: float) -> None:
        self.rows.append(metrics)
        if time.time() - self.last >= self.every_s:
            keys = dict.fromkeys(k for r in self.rows for k in r)  # a metric some steps lack: over the others
            avg = {k: float(np.mean([r[k] for r in self.rows if k in r])) for k in keys}
            parts = " ".join(f"{k} {v:.4g}" for k, v in avg.items())
            self.write(f"step {state.step} {parts} lr {lr:.2e} train {state.train_seconds / 60:.1f} min")
            self.rows, self.last = [], time.time()


def train(
    *,
    state: RunState,
    steps: int,
    step_fn: Callable[[int], dict[str, float]],
    lr_fn: Callable[[], float],
    checkpoint: Checkpoint,
    log: MinuteLog,
    time_limit_min: float = 0.0,
    ckpt_every_min: float = 5.0,
    dev_every_min: float = 0.0,
    dev_fn: Callable[[RunState], tuple[float, dict]] | None = None,
    on_best: Callable[[RunState, dict], None] | None = None,
) -> RunState:
    """Run `step_fn` until `steps` or the time limit (minutes of this call); checkpoint
    every `ckpt_every_min`; every `dev_every_min` of training call `dev_fn` -> (figure,
    details) and `on_best` when the figure is the best so far. Returns the final state
    (checkpointed)."""
    t_start = time.time()
    last_ckpt = time.time()
    last_dev = state.train_seconds

    def dev() -> None:
        nonlocal last_dev
        if dev_fn is None:
            return
        figure, details = dev_fn(state)
        entry = {"step": state.step, "train_minutes": round(state.train_seconds / 60, 2), "figure": figure, **details}
        state.dev_history.append(entry)
        best = figure > state.best_figure
        if best:
            state.best_figure, state.best_step = figure, state.step
            if on_best is not None:
                on_best(state, entry)
        log.write(f"dev step {state.step}: {json.dumps(entry)}{'  (best)' if best else ''}")
        last_dev = state.train_seconds

    while state.step < steps:
        if time_limit_min and time.time() - t_start > time_limit_min * 60:
            log.write(f"time limit reached at step {state.step}")
            break
        t0 = time.time()
        metrics = step_fn(state.step)
        state.step += 1
        state.train_seconds += time.time() - t0
        log.add(state, metrics, lr_fn())
        if dev_every_min and state.train_seconds - last_dev >= dev_every_min * 60:
            dev()
            checkpoint.save(state)
            last_ckpt = time.time()
        elif time.time() - last_ckpt >= ckpt_every_min * 60:
            checkpoint.save(state)
            last_ckpt = time.time()
    last_eval = next((h for h in reversed(state.dev_history) if "figure" in h), None)
    if dev_fn is not None and (last_eval is None or last_eval["step"] != state.step or state.best_step < 0):
        dev()  # the final state is always evaluated (and is a candidate for the best)
    checkpoint.save(state)
    return state
