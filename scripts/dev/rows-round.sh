#!/bin/bash
# Development (device): the GPU inference suites (they compare every scan layout with the default, bit for
# bit) with the default record and with the p-major one (RWKVX_WKV_REC=t), then 128K RWKV-X A/Bs of the
# scan layouts with 4 rows per warp and more warps (32w4, 64w4) and of the p-major record, two interleaved
# passes, median of 3. Each step only while BUDGET seconds (default 420) are left.
#   source .dev1/boot.sh && BUDGET=420 bash scripts/dev/rows-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 420
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite inference 100 test/cuda.test.ts test/cuda-prefill.test.ts
RWKVX_WKV_REC=t suite inference-rect 100 test/cuda.test.ts test/cuda-prefill.test.ts
for pass in 1 2; do
  for setting in "" RWKVX_WKV_ROWS=32w4 RWKVX_WKV_ROWS=64w4 RWKVX_WKV_REC=t "RWKVX_WKV_REC=t RWKVX_WKV_ROWS=32w4"; do
    [ "$(left)" -lt 30 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
    env $setting timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx > "$out/ab.log" 2>&1
    printf '%-40s rc=%s %s\n' "${setting:-default}" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
  done
done
} 2>&1 | tee "$out/summary.log"
