"""Reading the tensors of a pickled torch model object (a YOLOv5 or Ultralytics checkpoint)
without running any of its code.

Such a checkpoint pickles the model object itself, so loading it the usual way imports the
package that defined it and runs whatever the pickle names. Here torch's weights-only
unpickler reads it instead, every class the pickle names mapped to an inert stub that only
records its instance state (its ``__dict__``), and ``getattr`` (which the checkpoints use to
store a bound method such as ``Detect.forward``) to a function that returns None. Tensors and
storages are rebuilt by the weights-only unpickler itself; anything else a pickle asks for is
refused by it. The parameters and persistent buffers of the stubbed module tree are then
collected by their dotted names, as a ``state_dict()`` of the original would name them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch

__all__ = [
    "ConversionError",
    "PickledObject",
    "collect_tensors",
    "load_pickled_model",
    "module_attribute",
    "read_model_tensors",
]


class ConversionError(RuntimeError):
    """A file that is not the expected checkpoint, or tensors that do not fit the network."""


class PickledObject:
    """Stand-in for a class of the pickled model: keeps the state, runs nothing."""

    qualified_name = ""
    state: Any

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


def _no_getattr(obj: Any, name: str, *default: Any) -> None:
    return None


def _stub_globals(class_names: tuple[str, ...]) -> list[tuple[Any, str]]:
    stubs: list[tuple[Any, str]] = []
    for qualified in class_names:
        cls = type(qualified.rsplit(".", 1)[1], (PickledObject,), {"qualified_name": qualified})
        stubs.append((cls, qualified))
    stubs.append((_no_getattr, "builtins.getattr"))
    return stubs


def collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Parameters and persistent buffers of a stubbed nn.Module tree, by dotted name."""
    if not isinstance(obj, PickledObject) or not isinstance(obj.state, dict):
        raise ConversionError(f"{prefix or 'model'}: not a pickled torch module")
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for k, v in (state.get(group) or {}).items():
            if v is not None and k not in skip:
                if not isinstance(v, torch.Tensor):
                    raise ConversionError(f"{prefix}{k}: not a tensor ({type(v).__name__})")
                out[prefix + k] = v
    for k, child in (state.get("_modules") or {}).items():
        if child is not None:
            collect_tensors(child, f"{prefix}{k}.", out)


def module_attribute(root: Any, dotted: str) -> Any:
    """An attribute of a sub-module of the stubbed tree, e.g. ``"model.23.stride"`` or
    ``"model.0.bn.eps"`` (the last name is looked up in the module's own state)."""
    *path, attr = dotted.split(".")
    obj = root
    for name in path:
        if not isinstance(obj, PickledObject) or not isinstance(obj.state, dict):
            raise ConversionError(f"{dotted}: {name} is not inside a pickled torch module")
        modules = obj.state.get("_modules") or {}
        if name not in modules:
            raise ConversionError(f"{dotted}: no sub-module {name}")
        obj = modules[name]
    if not isinstance(obj, PickledObject) or not isinstance(obj.state, dict) or attr not in obj.state:
        raise ConversionError(f"{dotted}: no attribute {attr}")
    return obj.state[attr]


def load_pickled_model(path: str | os.PathLike, class_names: tuple[str, ...], what: str) -> tuple[dict, Any]:
    """(the checkpoint dict, its model object as a stub tree) of a checkpoint that pickles its
    model (entry "ema" or "model"), read with torch's weights-only unpickler and stubs for
    `class_names` (every class the pickle names): no code of the file runs. `what` names the
    expected checkpoint in messages."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        raise ConversionError(f"reading a {what} checkpoint needs torch >= 2.6 (torch.serialization.safe_globals)")
    try:
        with safe_globals(_stub_globals(class_names)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for a foreign file
        raise ConversionError(f"{path}: not a {what} checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if model is None:
        raise ConversionError(f"{path}: no 'model' entry")
    return ckpt, model


def read_model_tensors(path: str | os.PathLike, class_names: tuple[str, ...], what: str) -> dict[str, torch.Tensor]:
    """The tensors of a pickled-model checkpoint by their names in the original (see
    load_pickled_model)."""
    _, model = load_pickled_model(path, class_names, what)
    tensors: dict[str, torch.Tensor] = OrderedDict()
    collect_tensors(model, "", tensors)
    return tensors
