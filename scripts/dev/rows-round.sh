#!/bin/bash
# Development (device): the GPU inference suites (every scan layout against the default, bit for bit), then
# 128K RWKV-X A/Bs of the 2-warp scan layouts (8w: 8 rows, 4 per warp; 16w8: 16 rows, 8 per warp) against the
# default 16w, two interleaved passes, median of 3. Each step only while BUDGET seconds (default 300) are left.
#   source .dev1/boot.sh && BUDGET=300 bash scripts/dev/rows-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 300
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite inference 100 test/cuda.test.ts test/cuda-prefill.test.ts
for pass in 1 2; do
  for setting in "" RWKVX_WKV_ROWS=8w RWKVX_WKV_ROWS=16w8; do
    [ "$(left)" -lt 30 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
    env $setting timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx > "$out/ab.log" 2>&1
    printf '%-28s rc=%s %s\n' "${setting:-default}" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
  done
done
} 2>&1 | tee "$out/summary.log"
