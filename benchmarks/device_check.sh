#!/usr/bin/env bash
# One prepared check for a lent accelerator machine (image: Python 3.12, JAX with CUDA, flax,
# optax, orbax; no TensorFlow, TFDS or CLU, no network). Prints the device, then one JSON line
# per case: ResNet-50 SimCLR step at 224 px in float32 and bfloat16 at per-device batches 128
# and 256, NT-Xent at global batch 4096, and the demo model. Within 6 minutes on one H200.
#
#   bash benchmarks/device_check.sh          # on the accelerator machine
#   bash benchmarks/device_check.sh --cpu    # a tiny version of every case, here on the CPU
#
# Pure-Python packages the image lacks (ml_collections) travel as wheels in .whl/ (git-ignored
# via .git/info/exclude; the device tool's README says how to fetch them); they are installed
# into /tmp/site when .whl/ exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

if [ "${1:-}" = "--cpu" ]; then
  export JAX_PLATFORMS=cpu
  resnet=(--config=configs/food101.py --config.model.depth=18
          --config.model.width_multiplier=0.0625 --image_size=32 --steps=2 --warmup=1)
  batches=(2)
  ntxent=(--global_batch=64 --steps=3)
  demo=(--config=configs/demo.py --config.model.width_multiplier=0.0625
        --batch_per_device=8 --steps=2 --warmup=1)
else
  resnet=(--config=configs/food101.py --image_size=224 --steps=10 --warmup=3)
  batches=(128 256)
  ntxent=(--global_batch=4096 --steps=20)
  demo=(--config=configs/demo.py --batch_per_device=256 --steps=20 --warmup=3)
fi

"$PY" -c 'import jax, json; d = jax.devices(); print(json.dumps({"what": "device",
  "jax": jax.__version__, "platform": d[0].platform, "kind": d[0].device_kind,
  "count": len(d)}))'
for batch in "${batches[@]}"; do
  "$PY" benchmarks/train_step.py "${resnet[@]}" --batch_per_device="$batch" \
    --compute_dtypes=float32,bfloat16
done
"$PY" benchmarks/nt_xent.py "${ntxent[@]}"
"$PY" benchmarks/train_step.py "${demo[@]}" --compute_dtypes=float32
