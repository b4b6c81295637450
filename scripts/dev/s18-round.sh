#!/bin/bash
# Development (device): the tensor-core WKV-7 scan as the default — the GPU inference suites at the new
# default, the 128K A/B of tc against tcs (its corrections in accumulators of their own), then the 128K table
# with the peer (same machine) and 1M RWKV-X prefill and decode.
#   source .dev1/boot.sh && BUDGET=460 bash scripts/dev/s18-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 420
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite inference 200 test/cuda.test.ts test/cuda-prefill.test.ts
grep -E "official prefill 200|tensor-core scan|scan layouts" "$out/inference.log" | head -6
for pass in 1 2; do
  for setting in RWKVX_WKV_ROWS=tc RWKVX_WKV_ROWS=tcs; do
    [ "$(left)" -lt 200 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
    env $setting timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx > "$out/ab.log" 2>&1
    printf 'rwkvx %-20s rc=%s %s\n' "$setting" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
  done
done
if [ "$(left)" -gt 90 ]; then
  timeout 150 node --import tsx bench/cuda.ts --lengths 131072 --decode 131072 --repeat 3 --models rwkvx,rwkv7 --peer > "$out/t128k.log" 2>&1
  echo "128K table rc=$?"; grep -E "^\|" "$out/t128k.log" | tail -6
fi
if [ "$(left)" -gt 60 ]; then
  timeout 100 node --import tsx bench/cuda.ts --lengths 4096,1048576 --decode 4096,1048576 --repeat 3 --models rwkvx > "$out/t1m.log" 2>&1
  echo "1M rc=$?"; grep -E "^\|" "$out/t1m.log" | tail -4
fi
} 2>&1 | tee "$out/summary.log"
