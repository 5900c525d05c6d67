#!/usr/bin/env bash
# One GPU session's prepared call: the figures of docs/PERFORMANCE.md ("Fast by default on the GPU") and the
# CUDA tests, in at most BUDGET_S seconds (default 540; BUDGET_S=420 leaves a 15-minute lease time to rerun).
#
#   BUDGET_S=420 bash bench/gpu_check.sh
#
# What it measures, in one call on one machine: the default command (python -m a3c.launch --workers 8
# --config configs/paper.yaml, no flags: the launcher chooses MPS, cuDNN autotuning and the rollout mode) in
# img-steps/s against the batched reference (one process, batch 16, cuDNN autotuning on, the same rollout
# rule), the useful-work MFU (full-rollout FLOPs per image-step, mfu_useful), and every worker's peak memory.
# Steps, most wanted first, each with its own time limit, cut short so that the whole script ends
# within BUDGET_S seconds (a step that would get less than its minimum is skipped and says so):
#   1. async8            the default command: 8 workers, batch 2 each, the paper network at SIZE
#   2. batched16         the single-process batched reference at the same total batch (16)
#   3. tests             tests/test_cuda.py, the real-MPS test of tests/test_mps.py (the launcher's own daemon, no
#                        flag) and the Ray CUDA test of tests/test_ray.py (skipped where Ray is not installed)
#   4. async8_compile    the default command with train.compile=true (the compiled trainer on CUDA, never measured)
#   5. async8_nomps      the default command with --no-mps (today's safe settings: no MPS, no autotuning)
# (STEPS picks and orders them; batched2, one process of batch 2, is there too.) The summary at the end
# gives each async step's ratio to batched16, its MFU by both counts, its rollout mode, MPS and peaks.
# An 8-worker run still going after STACKS_AFTER seconds gets SIGUSR1, so each child's Python
# stacks land in its log and are printed. During each 8-worker run nvidia-smi samples the GPU's
# utilisation every 5 s. Logs go to WORK; what comes back from a lent machine goes to OUT (at most
# a few files): bench.jsonl (one JSON line per measurement, tagged with its step) and logs.tgz
# (every log, the runs' TensorBoard files and logs, no checkpoints).
# Environment: OUT (default /tmp/gpu_check_out), WORK (/tmp/gpu_check), DEVICE (cuda), CONFIG
# (configs/paper.yaml), SIZE (256), UPDATES (async updates, 160), PEAK (bf16 TFLOP/s for the
# MFU, 790), STACKS_AFTER (150), BUDGET_S (540), STEPS, TESTS (the pytest arguments), EXTRA
# (overrides added to every measurement).
set -u
T0=$SECONDS
BUDGET_S=${BUDGET_S:-540}
OUT=${OUT:-/tmp/gpu_check_out}
WORK=${WORK:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-configs/paper.yaml}
SIZE=${SIZE:-256}
UPDATES=${UPDATES:-160}
PEAK=${PEAK:-790}
STACKS_AFTER=${STACKS_AFTER:-150}
STEPS=${STEPS:-async8 batched16 tests async8_compile async8_nomps}
TESTS=${TESTS:-tests/test_cuda.py tests/test_mps.py::test_real_mps_serves_a_short_cuda_run \
  tests/test_ray.py::test_ray_cuda_trains_until_the_first_validation}
EXTRA=${EXTRA:-}  # config overrides for every measurement, e.g. train.rollout=onestep
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
J="$OUT/bench.jsonl"
: >"$J"

pack() {  # the logs so far, into OUT (after every step: a call cut short still returns them)
  tar czf "$OUT/logs.tgz" --exclude='*.pt' -C "$(dirname "$WORK")" "$(basename "$WORK")" 2>/dev/null
}

step() {  # step NAME CAP MIN COMMAND...: run with min(CAP, time left) as limit, log to WORK/NAME.log
  local name=$1 cap=$2 min=$3
  shift 3
  local left=$((BUDGET_S - (SECONDS - T0) - 5))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt "$min" ]; then
    echo "== $name: skipped, ${left} s left of the budget (needs ${min})"
    return
  fi
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s (limit ${limit} s; ${SECONDS} s into the script)"
  tail -n 4 "$WORK/$name.log"
  grep '^{' "$WORK/$name.log" | sed "s/^{/{\"step\": \"$name\", /" >>"$J"
  pack
}

async8() {  # async8 NAME [ARGS]: the 8-worker trainer, its run kept in WORK/runs/NAME
  local name=$1
  shift
  (sleep "$STACKS_AFTER"; pkill -USR1 -f "multiprocessing.spawn import spawn_main") &
  local stacks=$!
  local smi=""
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm --format=csv,noheader -l 5 \
      >"$WORK/$name.smi.csv" 2>&1 &
    smi=$!
  fi
  step "$name" 200 60 "${B[@]}" --keep-runs "$WORK/runs/$name" --modes async --workers 8 --updates "$UPDATES" "$@"
  pkill -P "$stacks" sleep 2>/dev/null  # the timer's sleep, so that it cannot signal a later step's children
  kill "$stacks" $smi 2>/dev/null
  local run="$WORK/runs/$name/async-w8"
  grep -h -E "first gradient|update (1|10|100) applied|MPS|rollout auto|peak_" "$run"/logs/*.log 2>/dev/null \
    | sort | cut -c12- | head -40
  [ -n "$smi" ] && { echo "-- GPU utilisation %, every 5 s:"; cut -d, -f2 "$WORK/$name.smi.csv" | tr -d ' %' | tr '\n' ' '; echo; }
  for f in "$run"/logs/*.log; do
    grep -q "most recent call first" "$f" 2>/dev/null && { echo "-- stacks of $(basename "$f" .log):"; grep -A14 "most recent call first" "$f" | grep -v site-packages/torch/nn | head -16; }
  done
  pack
}

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$WORK/gpu.txt"
  echo "nvidia-cuda-mps-control: $(command -v nvidia-cuda-mps-control || echo 'not on PATH');" \
    "CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-unset}; /tmp/nvidia-mps: $(ls /tmp/nvidia-mps 2>&1 | head -3)"
fi
$PY -c "import torch, h5py, yaml, skimage, tensorboard; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
$PY -c "import ray; print('ray', ray.__version__)" 2>/dev/null || echo "ray: not installed (its CUDA test skips)"

B=($PY bench/throughput.py --config "$CONFIG" --size "$SIZE" --device "$DEVICE" --peak-tflops "$PEAK" --batch 2 --t-max 10)
for s in $STEPS; do
  case $s in
    async8) async8 async8 $EXTRA ;;  # the default command: no flag, the launcher decides
    batched16) step batched16 120 40 "${B[@]}" --modes batched --workers 8 --updates 64 train.cudnn_benchmark=true $EXTRA ;;
    batched2) step batched2 90 30 "${B[@]}" --modes batched --workers 1 --updates 12 train.cudnn_benchmark=true $EXTRA ;;
    tests) step tests 180 40 $PY -m pytest -q -p no:cacheprovider $TESTS ;;
    async8_compile) async8 async8_compile train.compile=true $EXTRA ;;
    async8_nomps) async8 async8_nomps --no-mps $EXTRA ;;
    async8_mps) async8 async8_mps --mps $EXTRA ;;
    batched16_compile) step batched16_compile 200 90 "${B[@]}" --modes batched --workers 8 --updates 64 train.cudnn_benchmark=true train.compile=true $EXTRA ;;
    *) echo "== $s: no such step" ;;
  esac
done

echo "== results ($J), $((SECONDS - T0)) s in all"
cat "$J"
echo "== summary: each async step against batched16 (targets: ratio >= 0.9, mfu_useful >= 0.40)"
$PY - "$J" <<'PYEOF' || echo "(no summary: $J unreadable)"
import json, sys
lines = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
ref = next((x for x in lines if x["step"] == "batched16"), None)
for x in lines:
    ratio = round(x["img_steps_per_s"] / ref["img_steps_per_s"], 3) if ref and ref["img_steps_per_s"] else None
    print(f"{x['step']:>16}: {x['img_steps_per_s']:8.2f} img-steps/s, ratio to batched16 {ratio}, "
          f"mfu {x.get('mfu')} (useful {x.get('mfu_useful')}), rollout {x.get('rollout')}, mps {x.get('mps')}, "
          f"peak MiB {x.get('peak_mem_mib_workers', x.get('peak_mem_mib'))}")
PYEOF
pack
