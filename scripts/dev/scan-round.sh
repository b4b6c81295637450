#!/bin/bash
# Development (device): part 0 checks and times the opt-in kernels (fused LoRA, bf16 prefill projections,
# warp LayerNorm backward, shared-memory cross-entropy) against the defaults. Earlier parts: the fused time-mix LoRA and the split-phase scan (RWKVX_WKV_SCAN=split)
# checked by the GPU inference suites and timed at 128K against the cuBLAS LoRA pair (part 1); the
# per-launch profile, and training's LayerNorm backward with a warp per row and relu²/tanh/sigmoid
# backward without the float32 write-back, tested and timed (part 2).
#   source .dev1/boot.sh && bash scripts/dev/scan-round.sh 1|2|0   (0: the checks of both defaults and their timings, one call)
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${1:-1}" = 0 ]; then
  export RWKVX_LORA=fused RWKVX_PREFILL_ACT=bf16 RWKVX_TRAIN_LNBWD=warp RWKVX_TRAIN_CE=smem
  timeout 200 node --import tsx --test --test-concurrency=1 test/cuda-prefill.test.ts test/cuda.test.ts > "$out/tests.log" 2>&1
  echo "inference suites (fused LoRA, bf16 projections) rc=$?"; grep -E '^# (tests|pass|fail)' "$out/tests.log"; grep -E '^not ok' "$out/tests.log" | head
  grep -iE 'max.*err' "$out/tests.log" | head -12
  timeout 120 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
  echo "train test (warp LN backward, smem CE) rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/train-test.log"
  bash scripts/dev/env-ab.sh rwkvx 131072 "RWKVX_LORA=fused RWKVX_PREFILL_ACT=bf16" "RWKVX_LORA=fused RWKVX_PREFILL_ACT=f32" "RWKVX_LORA=cublas RWKVX_PREFILL_ACT=f32"
  for setting in "RWKVX_TRAIN_LNBWD=warp RWKVX_TRAIN_CE=smem" "RWKVX_TRAIN_LNBWD=block RWKVX_TRAIN_CE=twice"; do
    env $setting timeout 80 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 0 > "$out/train-ab.log" 2>&1
    echo "train bench [$setting] rc=$?"; grep -E "^\| RWKV" "$out/train-ab.log"
  done
elif [ "${1:-1}" = 1 ]; then
  export RWKVX_LORA=fused
  timeout 200 node --import tsx --test --test-concurrency=1 test/cuda-prefill.test.ts test/cuda.test.ts > "$out/tests.log" 2>&1
  echo "inference suites (fused LoRA) rc=$?"; grep -E '^# (tests|pass|fail)' "$out/tests.log"; grep -E '^not ok' "$out/tests.log" | head
  grep -iE 'max.*err' "$out/tests.log" | head -12
  bash scripts/dev/env-ab.sh rwkvx 131072 RWKVX_LORA=fused RWKVX_LORA=cublas RWKVX_WKV_SCAN=split
else
  export RWKVX_LORA=fused RWKVX_TRAIN_LNBWD=warp
  RWKVX_PROFILE=131072 timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 1 --models rwkvx > "$out/profile.log" 2>&1
  echo "profile rc=$?"; grep -E '^profile' "$out/profile.log" | cut -c1-1200
  RWKVX_WKV_SCAN=split timeout 100 node --import tsx --test --test-concurrency=1 test/cuda-prefill.test.ts > "$out/split-tests.log" 2>&1
  echo "prefill suite (split scan) rc=$?"; grep -E '^# (tests|pass|fail)' "$out/split-tests.log"; grep -E '^not ok' "$out/split-tests.log" | head
  timeout 120 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
  echo "train test rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/train-test.log"
  timeout 100 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 1 > "$out/train.log" 2>&1
  echo "train bench rc=$?"; grep -E "^\| RWKV|tr_act_bwd|tr_ln_bwd|total" "$out/train.log"
fi
