#!/bin/bash
# Development (device): the WKV-7 prefill scans confined to a green context of N SMs (RWKVX_SCAN_SMS=N,
# src/backend/cuda/green.ts) against the default — same bits (32K prefill), then the 128K RWKV-X prefill,
# two interleaved passes, median of 3 each.
#   source .dev1/boot.sh && BUDGET=400 bash scripts/dev/green-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 400
nvidia-smi --query-gpu=name --format=csv,noheader
{
for setting in "" RWKVX_SCAN_SMS=48; do
  echo "[${setting:-default}] $(env $setting timeout 60 node --import tsx scripts/dev/bits-hash.ts 32768 2>&1 | tail -2 | tr '\n' ' ')"
done
for pass in 1 2; do
  for setting in "" RWKVX_SCAN_SMS=32 RWKVX_SCAN_SMS=48 RWKVX_SCAN_SMS=64; do
    [ "$(left)" -lt 35 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
    env $setting timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx > "$out/ab.log" 2>&1
    printf '%-28s rc=%s %s %s\n' "${setting:-default}" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')" "$(grep -iE 'green|error' "$out/ab.log" | head -2 | tr '\n' ' ')"
  done
done
} 2>&1 | tee "$out/summary.log"
