"""Reading the weights of a TensorFlow.js graph model (model.json + .bin shards).

Used only to convert weights into PyTorch state dicts; nothing here runs a graph.
Written by hand because no maintained Python package reads the TF.js weights
format without pulling in TensorFlow itself (tensorflowjs depends on TF).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16}


class TfjsFormatError(ValueError):
    """The model.json / .bin pair is not a TF.js graph model this reader understands."""


@dataclass
class GraphModel:
    nodes: list[dict]  # graph nodes in file order: {"name", "op", "input", "attr"}
    weights: dict[str, np.ndarray]  # constant name -> array (dequantised to float32)

    def node(self, name: str) -> dict:
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise KeyError(name)

    def consumers(self, name: str) -> list[dict]:
        return [n for n in self.nodes if any(i.split(":")[0] == name for i in n.get("input", []))]


def read_graph_model(graph_json: str | Path, weights_dir: str | Path | None = None) -> GraphModel:
    graph_json = Path(graph_json)
    weights_dir = Path(weights_dir) if weights_dir else graph_json.parent
    try:
        spec = json.loads(graph_json.read_text())
        nodes = spec["modelTopology"]["node"]
        manifest = spec["weightsManifest"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TfjsFormatError(f"{graph_json}: not a TF.js graph model ({e})") from None
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        buf = b"".join((weights_dir / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quant = w.get("quantization")
            if quant is None:
                dtype = _DTYPES.get(w["dtype"])
            elif quant.get("dtype") == "float16":
                dtype = np.float16
            elif quant.get("dtype") in ("uint8", "uint16"):
                dtype = np.uint8 if quant["dtype"] == "uint8" else np.uint16
            else:
                dtype = None
            if dtype is None:
                raise TfjsFormatError(f"{w['name']}: unsupported dtype {w['dtype']} / {quant}")
            nbytes = count * np.dtype(dtype).itemsize
            if offset + nbytes > len(buf):
                raise TfjsFormatError(f"{w['name']}: weights file too short")
            arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += nbytes
            if quant is not None and quant.get("dtype") in ("uint8", "uint16"):
                arr = arr.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            elif dtype == np.float16:
                arr = arr.astype(np.float32)
            weights[w["name"]] = arr
        if offset != len(buf):
            raise TfjsFormatError(f"weights group {group['paths']}: {len(buf) - offset} unread bytes")
    return GraphModel(nodes=nodes, weights=weights)


def conv_layers(model: GraphModel) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Every Conv2D node -> (kernel as PyTorch OIHW float32, bias or None).

    The bias is the constant of the Add/BiasAdd that directly consumes the conv."""
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for n in model.nodes:
        if n["op"] not in ("Conv2D", "_FusedConv2D"):
            continue
        kernel_name = n["input"][1]
        kernel = model.weights[kernel_name]  # HWIO
        bias = None
        if n["op"] == "_FusedConv2D" and len(n["input"]) > 2:
            bias = model.weights[n["input"][2]]
        else:
            for c in model.consumers(n["name"]):
                if c["op"] in ("Add", "AddV2", "BiasAdd"):
                    other = [i for i in c["input"] if i.split(":")[0] != n["name"]]
                    if other and other[0] in model.weights:
                        bias = model.weights[other[0]]
        out[n["name"]] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)
    return out
