#!/usr/bin/env bash
# Train the learned_e2e codec model on a GPU machine for a fixed budget, from what
# tools/gpu_pack.py packed into .gpu/ (training images, NanoDet's model files, wheels):
# install the wheels into /tmp/site, extract the features there (NN part 1, the cache of
# codec/training/data.py), train with tools/train_fenet.py --device cuda from the encoder's
# default model, evaluate on the pack's held-out images through the container, and write
# the weights, record and log to $OUT (the folder that comes back).
#
#   MINUTES=9 INIT=codec/models/weights/fenet_nanodet_neck_p4.pt bash tools/gpu_train.sh
#
# Everything can be tried on a CPU first: DEVICE=cpu MINUTES=0.2 OUT=/tmp/gpu-out bash tools/gpu_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PACK="${PACK:-.gpu}"
OUT="${OUT:?set OUT to the folder the results go to}"
DEVICE="${DEVICE:-cuda}"
MINUTES="${MINUTES:-9}"
INIT="${INIT:-codec/models/weights/fenet_nanodet_neck_p4.pt}"
LAMBDAS="${LAMBDAS:-0.1,0.25,0.6,1.5,4,12}"
STEPS="${STEPS:-200000}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if ls "$PACK"/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$PACK"/wheels/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export FCM_MODELS_DIR="$PWD/$PACK/models" FCM_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# first the bit-exactness check: learned_e2e decodes to the same integers and features on CUDA
# as on the CPU (tests/unit/test_fenet.py, marker gpu); its result comes back in $OUT
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_fenet.py 2>&1 | tee "$OUT/gpu_check.log" || \
  echo "gpu check FAILED (see gpu_check.log)"
"$PY" -m tools.train_fenet --device "$DEVICE" --images "$PACK/images" --holdout 32 --views 8 \
  --cache-dir /tmp/fcm-gpu-cache --init "$INIT" --lambdas "$LAMBDAS" --task-weight 1 --feature-weight 0.1 \
  --steps "$STEPS" --lr 3e-4 --batch 16 --threads 8 --time-limit "$MINUTES" --dev-every 3 \
  --out "$OUT/f.pt" 2>&1 | tee "$OUT/train.log"
mv -f "$OUT/f.ckpt" /tmp/ 2>/dev/null || true  # the checkpoint (21 MB) stays behind: only weights and records travel back
ls -la "$OUT"
