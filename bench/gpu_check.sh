#!/usr/bin/env bash
# The GPU session's one prepared call: CUDA tests, then the throughput figures of docs/PERFORMANCE.md.
#
#   bash bench/gpu_check.sh            # on a CUDA machine; writes logs and JSON lines under $OUT
#
# Every step has its own time limit, so one that hangs cannot eat the others' time. Environment:
# OUT (results folder, default /tmp/gpu_check), DEVICE (cuda), CONFIG (configs/paper.yaml),
# SIZE (256), UPDATES (async updates, default 120), PEAK (bf16 TFLOP/s for the MFU, default 790),
# MPS=1 to repeat the 8-worker run under the CUDA Multi-Process Service where it can be started.
set -u
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-configs/paper.yaml}
SIZE=${SIZE:-256}
UPDATES=${UPDATES:-120}
PEAK=${PEAK:-790}
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

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
fi
$PY -c "import torch, h5py, yaml, skimage, tensorboard; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step tests_cuda 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py

B=($PY bench/throughput.py --config "$CONFIG" --size "$SIZE" --device "$DEVICE" --peak-tflops "$PEAK" --batch 2 --t-max 10)
# memory against t_max in one-step mode, one process of batch 2
step mem_tmax2 90 "${B[@]}" --modes batched --workers 1 --updates 6 --t-max 2
step mem_tmax10 90 "${B[@]}" --modes batched --workers 1 --updates 6
# the batched reference at the 8-worker batch (16): NCHW against channels-last
step batched16_nchw 150 "${B[@]}" --modes batched --workers 8 --updates 64 train.channels_last=false
step batched16_cl 150 "${B[@]}" --modes batched --workers 8 --updates 64
# the trainer: 8 workers of batch 2, channels-last
step async8 200 "${B[@]}" --modes async --workers 8 --updates "$UPDATES"
if [ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p /tmp/mps_pipe /tmp/mps_log
  if nvidia-cuda-mps-control -d; then
    step async8_mps 200 "${B[@]}" --modes async --workers 8 --updates "$UPDATES"
    echo quit | nvidia-cuda-mps-control
  fi
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi

# the JSON lines, one per measurement, tagged with the step that printed them
for f in "$OUT"/mem_*.log "$OUT"/batched16_*.log "$OUT"/async8*.log; do
  [ -f "$f" ] || continue
  grep '^{' "$f" | sed "s/^{/{\"step\": \"$(basename "$f" .log)\", /" >>"$J"
done
echo "== results ($J)"
cat "$J" 2>/dev/null
