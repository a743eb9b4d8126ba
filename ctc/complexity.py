"""Complexity of NN parts in multiply-accumulate operations (MACs), counted with
forward hooks on Conv2d / ConvTranspose2d / Linear, attributed to pipeline stages.

The learned modes decode through integer-exact convolutions (``FixedConv2d``), which
count like the Conv2d they replace. One process-wide forward hook
(``torch.nn.modules.module.register_module_forward_hook``) sees every module call,
also those inside the container's learned modes; it adds to the counter that is
active in the calling thread, under the stage that is innermost at that moment.
Other layers (activations, pooling, normalisation) are ignored, as in the MPEG FCM
CTC's kMAC/pixel figures, which count the multiply-accumulates of the convolutional
and fully connected layers.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_local = threading.local()
_hook_lock = threading.Lock()
_hook_handle = None


def layer_macs(module: nn.Module, inputs: tuple, output: object) -> int:
    """MACs of one call of a Conv2d / ConvTranspose2d / Linear layer, or of the integer-exact
    convolution of the learned decoders (codec.models.fixed_point.FixedConv2d: an unfold and a
    matrix product, every tap counted as a Conv2d's); 0 for other modules."""
    from codec.models.fixed_point import FixedConv2d

    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(module, FixedConv2d):
        return output.numel() * int(module.weight_int.shape[1])  # Cin * kh * kw per output value
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor):
            return 0
        kh, kw = module.kernel_size
        return x.numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _hook(module: nn.Module, inputs: tuple, output: object) -> None:
    counter = getattr(_local, "counter", None)
    if counter is None or not counter._stages:
        return
    macs = layer_macs(module, inputs, output)
    if macs:
        counter.macs[counter._stages[-1]] += macs


def _ensure_hook() -> None:
    global _hook_handle
    with _hook_lock:
        if _hook_handle is None:
            _hook_handle = torch.nn.modules.module.register_module_forward_hook(_hook)


class MacCounter:
    """Counts MACs per stage name in the current thread.

    >>> counter = MacCounter()
    >>> with counter.active(), counter.stage("nn_part1"):
    ...     net.part1(x, "neck")
    """

    def __init__(self) -> None:
        self.macs: dict[str, int] = defaultdict(int)
        self._stages: list[str] = []

    @contextmanager
    def active(self) -> Iterator[MacCounter]:
        _ensure_hook()
        previous = getattr(_local, "counter", None)
        _local.counter = self
        try:
            yield self
        finally:
            _local.counter = previous

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._stages.append(name)
        try:
            yield
        finally:
            self._stages.pop()


def current_counter() -> MacCounter | None:
    return getattr(_local, "counter", None)


@contextmanager
def count_stage(name: str) -> Iterator[None]:
    """Attribute the MACs of the enclosed calls to `name` if a counter is active."""
    counter = current_counter()
    if counter is None:
        yield
        return
    with counter.stage(name):
        yield


def count_macs(fn, *args, **kwargs) -> tuple[object, int]:
    """Run fn(*args, **kwargs) and return (its result, the MACs it performed)."""
    counter = MacCounter()
    with counter.active(), counter.stage("total"):
        out = fn(*args, **kwargs)
    return out, int(counter.macs["total"])
