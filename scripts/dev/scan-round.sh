#!/bin/bash
# Development (device): part 0 checks and times training's LayerNorm backward with a warp per row
# and forward (RWKVX_TRAIN_LN=warp; sums in tr_ln_bwd_f's / tr_ln's order) and the row-wise token-shift mixes
# (RWKVX_TRAIN_MIX=rows) against the defaults, then the per-op profile.
# Part 1: the fused time-mix LoRA (RWKVX_LORA=fused) and the split-phase scan (RWKVX_WKV_SCAN=split)
# through the GPU inference suites and timed at 128K; part 2: the per-launch prefill profile and the
# split scan's prefill suite.
#   source .dev1/boot.sh && bash scripts/dev/scan-round.sh 0|1|2|4   (4: part 0's training check alone)
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
# the GPU training tests with the opt-in kernels, then the 8 × 4K step under each setting
train_check() {
  RWKVX_TRAIN_LN=warp RWKVX_TRAIN_MIX=rows timeout 150 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
  echo "train test (warp LN, row mixes) rc=$?"; grep -E "^# (pass|fail)|^not ok|error:|relative error" "$out/train-test.log" | cut -c1-220
  for setting in "RWKVX_TRAIN_LN=warp RWKVX_TRAIN_MIX=rows" "RWKVX_TRAIN_LN=warp" "RWKVX_TRAIN_LN=block"; do
    env $setting timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 0 > "$out/train-ab.log" 2>&1
    echo "train bench [$setting] rc=$? $(grep -E "^\| RWKV" "$out/train-ab.log" | head -1)"
  done
}
if [ "${1:-1}" = 0 ]; then
  {
  train_check
  # the split-phase scan, never run yet: the prefill suite with it, then 128K against the default
  RWKVX_WKV_SCAN=split timeout 100 node --import tsx --test --test-concurrency=1 test/cuda-prefill.test.ts > "$out/split-tests.log" 2>&1
  echo "prefill suite (split scan) rc=$?"; grep -E '^# (tests|pass|fail)' "$out/split-tests.log"; grep -E '^not ok' "$out/split-tests.log" | head
  bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WKV_SCAN=split
  RWKVX_TRAIN_LN=warp RWKVX_TRAIN_MIX=rows timeout 90 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 1 > "$out/train.log" 2>&1
  echo "train bench profile rc=$?"; grep -vE "^\s*$" "$out/train.log" | tail -45
  } 2>&1 | tee "$out/summary.log"
elif [ "${1:-1}" = 4 ]; then
  train_check  # part 0's first step alone (little device time left)
elif [ "${1:-1}" = 1 ]; then
  export RWKVX_LORA=fused
  timeout 200 node --import tsx --test --test-concurrency=1 test/cuda-prefill.test.ts test/cuda.test.ts > "$out/tests.log" 2>&1
  echo "inference suites (fused LoRA) rc=$?"; grep -E '^# (tests|pass|fail)' "$out/tests.log"; grep -E '^not ok' "$out/tests.log" | head
  grep -iE 'max.*err' "$out/tests.log" | head -12
  bash scripts/dev/env-ab.sh rwkvx 131072 RWKVX_LORA=fused RWKVX_LORA=cublas RWKVX_WKV_SCAN=split
else
  export RWKVX_LORA=fused RWKVX_TRAIN_LN=warp
  RWKVX_PROFILE=131072 timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 1 --models rwkvx > "$out/profile.log" 2>&1
  echo "profile rc=$?"; grep -E '^profile' "$out/profile.log" | cut -c1-1200
  RWKVX_WKV_SCAN=split timeout 100 node --import tsx --test --test-concurrency=1 test/cuda-prefill.test.ts > "$out/split-tests.log" 2>&1
  echo "prefill suite (split scan) rc=$?"; grep -E '^# (tests|pass|fail)' "$out/split-tests.log"; grep -E '^not ok' "$out/split-tests.log" | head
  timeout 120 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
  echo "train test rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/train-test.log"
  timeout 100 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 1 > "$out/train.log" 2>&1
  echo "train bench rc=$?"; grep -E "^\| RWKV|tr_act_bwd|tr_ln_bwd|total" "$out/train.log"
fi
