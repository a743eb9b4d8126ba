#!/usr/bin/env bash
# Installs everything into .venv and runs the main job on the sample image:
# NanoDet part 1 -> feature anchor (VVC) -> container -> decode -> part 2 -> detections.
# Usage: tools/quickstart.sh [IMAGE]    (run from anywhere; outputs go to ./quickstart-out)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
image="${1:-$repo/samples/baseball.jpg}"
out="${QUICKSTART_OUT:-$PWD/quickstart-out}"
py="${PYTHON:-python3}"

if [ ! -x "$repo/.venv/bin/python" ]; then
  "$py" -m venv "$repo/.venv"
fi
# torch/torchvision pinned to the builds that pip finds on this kind of machine;
# elsewhere pip downloads them.
"$repo/.venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$repo/.venv/bin/pip" install -q -e "$repo[test]"

mkdir -p "$out"
bin="$repo/.venv/bin"
"$bin/fcm_enc" "$image" -o "$out/features.bin" --mode anchor --qp 32 --force
"$bin/fcm_inspect" "$out/features.bin"
"$bin/fcm_dec" "$out/features.bin" -o "$out/features.npz" --detections "$out/detections.json" --force \
  --draw "$image" "$out/detections.png"
echo "quick start done: $out/detections.png, $out/detections.json, $out/features.npz"
