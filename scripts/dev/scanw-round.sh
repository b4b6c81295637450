#!/bin/bash
# Development (device): the one-warp-per-row WKV-7 scan (RWKVX_WKV_SCAN=w8|w4) against wkv7_chunk_scan8 —
# the GPU inference and wavefront suites with it, the scan's per-launch time, 128K prefill A/Bs.
#   source .dev1/boot.sh && bash scripts/dev/scanw-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
RWKVX_WKV_SCAN=w8 timeout 200 node --import tsx --test test/cuda.test.ts test/cuda-prefill.test.ts > "$out/test.log" 2>&1
echo "tests with w8 rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/test.log" | cut -c1-200
for sc in "" w8 w4; do
  RWKVX_WKV_SCAN=$sc RWKVX_PROFILE=131072 timeout 120 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkv7 > "$out/prof.log" 2>&1
  echo "profile scan=${sc:-8} rc=$? $(grep -oE "prefill 131072 tokens: [0-9.]+ ms|wkv7_chunk_scanw?[0-9]+ [0-9.]+" "$out/prof.log" | tr '\n' ';')"
done
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WKV_SCAN=w8 RWKVX_WKV_SCAN=w4
bash scripts/dev/env-ab.sh rwkv7 131072 "" RWKVX_WKV_SCAN=w8
} 2>&1 | tee "$out/summary.log"
