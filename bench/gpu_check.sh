#!/usr/bin/env bash
# One GPU session's prepared call: the figures of docs/PERFORMANCE.md ("CUDA", "The 8-worker trainer on the
# GPU") and the CUDA tests.
#
#   BUDGET_S=540 bash bench/gpu_check.sh
#
# Steps, most wanted first, each with its own time limit, cut short so that the whole script ends
# within BUDGET_S seconds (a step that would get less than its minimum is skipped and says so):
#   1. async8        the 8-worker trainer (batch 2 each, the paper network at SIZE), channels-last
#   2. batched16     the single-process batched reference at the same total batch (16)
#   3. tests         tests/test_cuda.py and the real-MPS test of tests/test_mps.py
#   4. async8_mps    the 8-worker trainer under a private MPS daemon (a3c.launch --mps)
#   5. batched16_compile   the batched reference with train.compile=true
# (STEPS picks and orders them; batched2, one process of batch 2, is there too.)
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
STEPS=${STEPS:-async8 batched16 tests async8_mps batched16_compile}
TESTS=${TESTS:-tests/test_cuda.py tests/test_mps.py::test_real_mps_serves_a_short_cuda_run}
EXTRA=${EXTRA:-}  # config overrides for every measurement, e.g. train.cudnn_benchmark=true
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
  grep -h -E "first gradient|update (1|10|100) applied|MPS" "$run"/logs/*.log 2>/dev/null | sort | cut -c12- | head -24
  [ -n "$smi" ] && { echo "-- GPU utilisation %, every 5 s:"; cut -d, -f2 "$WORK/$name.smi.csv" | tr -d ' %' | tr '\n' ' '; echo; }
  for f in "$run"/logs/*.log; do
    grep -q "most recent call first" "$f" 2>/dev/null && { echo "-- stacks of $(basename "$f" .log):"; grep -A14 "most recent call first" "$f" | grep -v site-packages/torch/nn | head -16; }
  done
  pack
}

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$WORK/gpu.txt"
  echo "nvidia-cuda-mps-control: $(command -v nvidia-cuda-mps-control || echo 'not on PATH')"
fi
$PY -c "import torch, h5py, yaml, skimage, tensorboard; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

B=($PY bench/throughput.py --config "$CONFIG" --size "$SIZE" --device "$DEVICE" --peak-tflops "$PEAK" --batch 2 --t-max 10)
for s in $STEPS; do
  case $s in
    async8) async8 async8 $EXTRA ;;
    batched16) step batched16 120 40 "${B[@]}" --modes batched --workers 8 --updates 64 $EXTRA ;;
    batched2) step batched2 90 30 "${B[@]}" --modes batched --workers 1 --updates 12 $EXTRA ;;
    tests) step tests 150 40 $PY -m pytest -q -p no:cacheprovider $TESTS ;;
    async8_mps) async8 async8_mps --mps $EXTRA ;;
    batched16_compile) step batched16_compile 200 90 "${B[@]}" --modes batched --workers 8 --updates 64 train.compile=true $EXTRA ;;
    *) echo "== $s: no such step" ;;
  esac
done

echo "== results ($J), $((SECONDS - T0)) s in all"
cat "$J"
pack
