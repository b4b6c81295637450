#!/bin/bash
# Development (device): one call that runs the GPU suites (training's kept-block test first, then inference
# and wavefront, then the other training suites), the finer wavefront hand-over's real-shape check and the
# 128K A/Bs of it and of the wide scan layouts (RWKVX_WKV_ROWS=16w, 32w), the 8 × 4K training step with and without
# RWKVX_TRAIN_WKT=wide. A step starts only while the
# call has BUDGET seconds (default 420) left of its own, so a short device budget still returns logs.
#   source .dev1/boot.sh && BUDGET=420 bash scripts/dev/verify-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 420
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite moba-train 150 test/cuda-moba-train.test.ts
suite inference 150 test/cuda.test.ts test/cuda-prefill.test.ts
[ "$(left)" -gt 90 ] && RWKVX_WAVEFRONT_FINE=1 timeout 60 node --import tsx scripts/dev/wave-check.ts 131072 4 2>&1 | tail -1
for pass in 1 2; do
  for setting in "" RWKVX_WAVEFRONT_FINE=1 RWKVX_WKV_ROWS=16w RWKVX_WKV_ROWS=32w; do
    [ "$(left)" -lt 40 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
    env $setting timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx > "$out/ab.log" 2>&1
    printf '%-28s rc=%s %s\n' "${setting:-default}" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
  done
done
suite wkv-train 120 test/cuda-wkv-train.test.ts
for setting in "" RWKVX_TRAIN_WKT=wide; do
  [ "$(left)" -lt 45 ] && { echo "train A/B [$setting]: skipped (time)"; continue; }
  env $setting timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 0 > "$out/train-ab.log" 2>&1
  echo "train [${setting:-default}] rc=$? $(grep -E "^\| RWKV" "$out/train-ab.log" | head -1)"
done
suite train 150 test/cuda-train.test.ts
} 2>&1 | tee "$out/summary.log"
