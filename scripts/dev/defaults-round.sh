#!/bin/bash
# Development (device): the GPU suites and numbers not yet run at the current defaults — the training suites
# with the wide wkt_scan / wkt_chain layout, the 8 × 4K training step and its per-op profile, then the 3.6B
# shape with the wide inference scan (16w): wavefront vs serial bits at 128K and npm run bench:cuda-big.
# Each step only while BUDGET seconds (default 540) are left.
#   source .dev1/boot.sh && BUDGET=540 bash scripts/dev/defaults-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 540
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite train 170 test/cuda-train.test.ts
suite wkv-train 130 test/cuda-wkv-train.test.ts
if [ "$(left)" -gt 330 ]; then
  timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model both --profile 0 > "$out/train-step.log" 2>&1
  echo "train step rc=$?"; grep -E "^\|" "$out/train-step.log" | head -5
  timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 2 --model x --profile 1 > "$out/train-profile.log" 2>&1
  echo "train profile rc=$?"; grep -A26 "per-op breakdown" "$out/train-profile.log" | cut -c1-110
fi
if [ "$(left)" -gt 200 ]; then
  timeout 100 node --import tsx scripts/dev/wave-check.ts 131072 4 big 2>&1 | tail -1
  timeout "$(left)" node --import tsx bench/cuda-big.ts > "$out/big.log" 2>&1
  echo "bench:cuda-big rc=$?"; tail -14 "$out/big.log"
else echo "big: skipped (time)"; fi
} 2>&1 | tee "$out/summary.log"
