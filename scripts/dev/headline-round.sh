#!/bin/bash
# Development (device): the kept-block training test, the 128K prefill / decode table with the PyTorch peer,
# the 8 × 4K training step with the default (wide) and the narrow wkt_scan / wkt_chain layouts, then the GPU
# inference suites — each step only while BUDGET seconds (default 280) are left.
#   source .dev1/boot.sh && BUDGET=280 bash scripts/dev/headline-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 280
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite moba-train 100 test/cuda-moba-train.test.ts
timeout 150 node --import tsx bench/cuda.ts --lengths 131072 --decode 131072 --repeat 3 --models rwkvx,rwkv7 --peer > "$out/prefill.log" 2>&1
echo "prefill table rc=$? ($((SECONDS - t0)) s)"; grep -E "^\||^device|peer" "$out/prefill.log" | head -12
for pass in 1 2; do
  for setting in "" RWKVX_TRAIN_WKT=narrow; do
    [ "$(left)" -lt 40 ] && { echo "train A/B [$setting]: skipped (time)"; continue; }
    env $setting timeout 50 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 0 > "$out/train-ab.log" 2>&1
    echo "train [${setting:-default}] rc=$? $(grep -E "^\| RWKV" "$out/train-ab.log" | head -1)"
  done
done
if [ "$(left)" -gt 45 ]; then
  timeout "$(left)" node --import tsx --test test/cuda.test.ts test/cuda-prefill.test.ts > "$out/inference.log" 2>&1
  echo "inference rc=$? ($((SECONDS - t0)) s)"; grep -E "^# (pass|fail)|^not ok|scan layouts" "$out/inference.log" | cut -c1-200
fi
} 2>&1 | tee "$out/summary.log"
