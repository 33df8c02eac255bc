#!/usr/bin/env bash
# One prepared check for a lent accelerator machine (image: Python 3.12, JAX with CUDA, flax,
# optax, orbax; no TensorFlow, TFDS or CLU, no network). One JSON line per case, most useful
# first, each tagged with its "case" (docs/benchmarks.md, "The device check", says what each
# field means):
#
#   device          the JAX version, the device kind and count, its peak FLOP/s
#   simclr-bf16-L   ResNet-50 SimCLR step, 224 px, bfloat16, the larger per-device batch
#                   (256); views/s over 20 steps dispatched back to back, MFU, memory; and a
#                   profiler trace of 2 more steps (OUT/trace/)
#   supervised      supervised ResNet-50 step (bfloat16, 224 px, batch 256): the baseline on
#                   this chip, and its ratio to MLPerf's ~7,950 images/s per H200
#   h2d             host-to-device put of a uint8 global batch of view pairs, bytes/s
#   nt_xent         the loss alone, global batch 4096
#   demo            the digits demo's model (ResNet-18 at 1/8 width, 16 px), float32
#   vit-bf16-xla    SimCLR on ViT-S/16 (`--config.model.name=vit`), 224 px, bfloat16, batch
#                   256, attention by XLA
#   vit-bf16-cudnn  the same with cuDNN's fused attention (model.vit.attention='cudnn')
#   simclr-bf16-S   as simclr-bf16-L at per-device batch 128
#   simclr-f32-L, simclr-f32-S   float32 at 256 and 128
#   summary         each case's wall seconds, the failed and skipped cases, the output folder
#
# Time on one H200, estimated (nothing measured there yet): a process starts JAX on the GPU
# in ~8 s; a ResNet-50 step compiles in ~40-60 s (cuDNN autotuning included), its state's
# initialisation in ~10 s more; 25 bf16 steps of 512 views take ~3 s, float32 ~3-4x that.
# A ViT-S/16 step (~half a ResNet-50's FLOPs, fewer ops) is estimated at ~50 s a case. The
# estimates per case below sum to ~555 s. A case whose estimate would end past
# DEVICE_CHECK_BUDGET_S (default 480 s: 8 minutes) is skipped with a "skipped" line instead,
# so the float32 cases (last) run only when compiles are quicker than estimated. With the device
# tool: one `run` of this script with timeout_s=600 (docs/benchmarks.md).
#
#   bash benchmarks/device_check.sh            # on the accelerator machine; files under $OUT
#   bash benchmarks/device_check.sh --cpu      # every case, tiny, here on the CPU (a test
#                                              # runs it: tests/benchmarks/device_check_test.py)
#   bash benchmarks/device_check.sh --out=DIR  # where the files go (default $OUT, else a
#                                              # new temporary folder)
#
# Files: OUT/device_check.jsonl (the JSON lines), OUT/device_check.log (every case's stderr;
# a failed case's last lines also go to stderr), OUT/trace/ (the trace, gzipped: *.xplane.pb.gz
# for XProf / TensorBoard, perfetto_trace.json.gz for ui.perfetto.dev). The exit status is
# 1 when a case failed; the other cases still run.
#
# Pure-Python packages the image lacks (ml_collections) travel as wheels in .whl/ (git-ignored
# via .git/info/exclude; the device tool's README says how to fetch them); they are installed
# into /tmp/site when .whl/ exists.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mode=device
out=${OUT:-}
for arg in "$@"; do
  case $arg in
    --cpu) mode=cpu ;;
    --out=*) out=${arg#--out=} ;;
    *) echo "usage: bash benchmarks/device_check.sh [--cpu] [--out=DIR]" >&2; exit 2 ;;
  esac
done
out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")}
mkdir -p "$out/trace"
results=$out/device_check.jsonl
log=$out/device_check.log
: > "$results"
: > "$log"
budget=${DEVICE_CHECK_BUDGET_S:-480}

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

if [ "$mode" = cpu ]; then
  export JAX_PLATFORMS=cpu
  # The --cpu cases' model: ResNet-18 at 1/16 width. DEVICE_CHECK_CPU_MODEL replaces these
  # flags (tests/benchmarks/device_check_test.py swaps in its toy backbone, to take seconds).
  tiny=${DEVICE_CHECK_CPU_MODEL:---config.model.depth=18 --config.model.width_multiplier=0.0625}
  read -r -a tiny <<< "$tiny"
  resnet=(--config=configs/food101.py "${tiny[@]}" --image_size=32 --steps=2 --warmup=1)
  large=2 small=  # One batch size: the S cases are skipped.
  trace_steps=1
  supervised=("${tiny[@]}" --image_size=32 --batch_per_device=2 --classes=10 --steps=2
              --warmup=1)
  h2d=(--batch_per_device=2 --image_size=32 --repeats=2)
  ntxent=(--global_batch=64 --steps=3)
  demo=(--config=configs/demo.py "${tiny[@]}" --batch_per_device=8 --steps=2 --warmup=1)
  vit=(--config.model.name=vit --config.model.vit.variant=mu --config.model.vit.patch_size=4)
else
  resnet=(--config=configs/food101.py --image_size=224 --steps=20 --warmup=3)
  large=256 small=128
  trace_steps=2
  supervised=(--config=configs/food101.py --image_size=224 --batch_per_device=256
              --steps=20 --warmup=3)
  h2d=(--batch_per_device=256 --image_size=224 --repeats=5)
  ntxent=(--global_batch=4096 --steps=20)
  demo=(--config=configs/demo.py --batch_per_device=256 --steps=20 --warmup=3)
  vit=(--config.model.name=vit)  # ViT-S/16.
fi

case_s=()  # '"name": seconds', in the order run.
failed=()
skipped=()

emit() {  # A JSON line to stdout and the results file.
  echo "$1" | tee -a "$results"
}

run_case() {  # NAME ESTIMATE_S COMMAND...: runs it unless the budget is spent; tags its lines.
  local name=$1 estimate=$2 start=$SECONDS
  shift 2
  if [ -z "$estimate" ] || (( SECONDS + estimate > budget )); then
    skipped+=("$name")
    local why="the ${budget} s budget: ${SECONDS} s spent, about ${estimate} s more needed"
    if [ -z "$estimate" ]; then
      case $name in
        *cudnn) why="--cpu: cuDNN attention needs a GPU" ;;
        *) why="--cpu runs one batch size" ;;
      esac
    fi
    emit "{\"case\": \"$name\", \"what\": \"skipped\", \"reason\": \"$why\"}"
    return
  fi
  echo "== $name: $*" >> "$log"
  if ! "$@" 2>> "$log" | sed -u "s/^{/{\"case\": \"$name\", /" | tee -a "$results"; then
    failed+=("$name")
    emit "{\"case\": \"$name\", \"what\": \"failed\", \"log\": \"$log\"}"
    { echo "== $name failed; the end of its log:"; tail -n 20 "$log"; } >&2
  fi
  case_s+=("\"$name\": $((SECONDS - start))")
}

step=(benchmarks/train_step.py "${resnet[@]}")
# Estimates in seconds on one H200 (JAX start + compile + steps); empty: skipped (--cpu).
run_case device 10 "$PY" benchmarks/device_stats.py
run_case simclr-bf16-L 80 "$PY" "${step[@]}" --batch_per_device="$large" \
  --compute_dtypes=bfloat16 --trace_dir="$out/trace" --trace_steps="$trace_steps"
run_case supervised 60 "$PY" benchmarks/supervised_step.py "${supervised[@]}"
run_case h2d 10 "$PY" benchmarks/host_to_device.py "${h2d[@]}"
run_case nt_xent 15 "$PY" benchmarks/nt_xent.py "${ntxent[@]}"
run_case demo 30 "$PY" benchmarks/train_step.py "${demo[@]}" --compute_dtypes=float32
run_case vit-bf16-xla 50 "$PY" "${step[@]}" "${vit[@]}" --batch_per_device="$large" \
  --compute_dtypes=bfloat16
cudnn=$([ "$mode" = device ] && echo 50)
run_case vit-bf16-cudnn "$cudnn" "$PY" "${step[@]}" "${vit[@]}" --batch_per_device="$large" \
  --compute_dtypes=bfloat16 --config.model.vit.attention=cudnn
run_case simclr-bf16-S "${small:+75}" "$PY" "${step[@]}" --batch_per_device="$small" \
  --compute_dtypes=bfloat16
run_case simclr-f32-L 90 "$PY" "${step[@]}" --batch_per_device="$large" \
  --compute_dtypes=float32
run_case simclr-f32-S "${small:+85}" "$PY" "${step[@]}" --batch_per_device="$small" \
  --compute_dtypes=float32

joined() { local IFS=,; echo "$*"; }
quoted() { local names=("${@/#/\"}"); joined "${names[@]/%/\"}"; }
emit "{\"case\": \"summary\", \"what\": \"summary\", \"mode\": \"$mode\", \"total_s\": $SECONDS, \
\"budget_s\": $budget, \"case_s\": {$(joined "${case_s[@]}")}, \
\"failed\": [$(quoted "${failed[@]}")], \"skipped\": [$(quoted "${skipped[@]}")], \
\"out_dir\": \"$out\"}"
[ ${#failed[@]} -eq 0 ]
