#!/usr/bin/env bash
# The GPU session's prepared calls: CUDA tests, then the throughput figures of docs/PERFORMANCE.md.
#
#   PART=1 bash bench/gpu_check.sh     # CUDA tests, the 8-worker trainer, the batched reference (at most ~8 min)
#   PART=2 bash bench/gpu_check.sh     # the 8-worker trainer under MPS, torch.compile, memory against t_max (~9 min)
#
# Every step has its own time limit, so one that hangs cannot eat the others' time; part 1 holds
# what is still unknown first (the 8-worker trainer), part 2 the rest. An 8-worker run still going
# after STACKS_AFTER seconds gets SIGUSR1, so each child's Python stacks land in its log and are
# printed. Environment: OUT (results folder, default /tmp/gpu_check), DEVICE (cuda), CONFIG
# (configs/paper.yaml), SIZE (256), UPDATES (async updates, default 120), PEAK (bf16 TFLOP/s for
# the MFU, default 790), STACKS_AFTER (150), PART (1, 2 or all, default all).
set -u
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-configs/paper.yaml}
SIZE=${SIZE:-256}
UPDATES=${UPDATES:-120}
PEAK=${PEAK:-790}
STACKS_AFTER=${STACKS_AFTER:-150}  # seconds into an 8-worker run before its children dump their stacks
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
J="$OUT/bench.jsonl"

step() {  # step NAME LIMIT_S COMMAND...: run with a limit, log to $OUT/NAME.log, report the exit code
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  tail -n 3 "$OUT/$name.log"
}

async8() {  # async8 NAME [ARGS]: the 8-worker trainer (logs kept in $OUT/runs/async-w8); if it still runs after
  # STACKS_AFTER s, its spawned children get SIGUSR1 and write their Python stacks into their logs
  # (workers.common); then its warm-up lines and the head of any stack dump are printed
  (sleep "$STACKS_AFTER"; pkill -USR1 -f "multiprocessing.spawn import spawn_main") &
  local stacks=$!
  local name=$1
  shift
  step "$name" 200 "${B[@]}" --keep-runs "$OUT/runs" --modes async --workers 8 --updates "$UPDATES" "$@"
  kill "$stacks" 2>/dev/null
  local run="$OUT/runs/async-w8"
  grep -h -E "first gradient|update (1|10|100) applied" "$run"/logs/*.log 2>/dev/null | sort | cut -c12-
  for f in "$run"/logs/*.log; do
    grep -q "most recent call first" "$f" 2>/dev/null && { echo "-- stacks of $(basename "$f" .log):"; grep -A14 "most recent call first" "$f" | grep -v site-packages/torch/nn | head -16; }
  done
}

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
fi
$PY -c "import torch, h5py, yaml, skimage, tensorboard; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

PART=${PART:-all}
B=($PY bench/throughput.py --config "$CONFIG" --size "$SIZE" --device "$DEVICE" --peak-tflops "$PEAK" --batch 2 --t-max 10)
if [ "$PART" = 1 ] || [ "$PART" = all ]; then
  step tests_cuda 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
  # the trainer: 8 workers of batch 2, channels-last; its logs show each worker's time to its first gradient
  async8 async8
  # the batched reference at the 8-worker batch (16), channels-last
  step batched16_cl 120 "${B[@]}" --modes batched --workers 8 --updates 64
fi
if [ "$PART" = 2 ] || [ "$PART" = all ]; then
  # the same under a private MPS daemon (a3c.launch --mps); its logs land in the run's logs/mps
  mv "$OUT/runs/async-w8" "$OUT/runs/async-w8-nomps" 2>/dev/null
  async8 async8_mps --mps
  grep -h "MPS" "$OUT/async8_mps.log" "$OUT"/runs/async-w8/logs/mps/*.log 2>/dev/null | tail -n 5
  step batched16_compile 200 "${B[@]}" --modes batched --workers 8 --updates 64 train.compile=true
  # memory against t_max in one-step mode, one process of batch 2
  step mem_tmax2 60 "${B[@]}" --modes batched --workers 1 --updates 6 --t-max 2
  step mem_tmax10 60 "${B[@]}" --modes batched --workers 1 --updates 6
fi

# the JSON lines, one per measurement, tagged with the step that printed them
for f in "$OUT"/async8*.log "$OUT"/batched16_*.log "$OUT"/mem_*.log; do
  [ -f "$f" ] || continue
  grep '^{' "$f" | sed "s/^{/{\"step\": \"$(basename "$f" .log)\", /" >>"$J"
done
echo "== results ($J)"
cat "$J" 2>/dev/null
