#!/bin/bash
# Development (device): the WKV-7 scan with more state rows per block (RWKVX_WKV_ROWS=32|64: fewer SMs for
# the same chain). The GPU inference and wavefront suites with 64 rows, then 128K prefill A/Bs.
#   source .dev1/boot.sh && bash scripts/dev/scan-rows-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
RWKVX_WKV_ROWS=64 timeout 200 node --import tsx --test test/cuda.test.ts test/cuda-prefill.test.ts > "$out/rows64-test.log" 2>&1
echo "tests with 64 rows rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/rows64-test.log" | cut -c1-200
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WKV_ROWS=32 RWKVX_WKV_ROWS=64 "RWKVX_WKV_ROWS=64 RWKVX_WAVEFRONT=6" "RWKVX_WKV_ROWS=64 RWKVX_WAVEFRONT=8"
bash scripts/dev/env-ab.sh rwkv7 131072 "" RWKVX_WKV_ROWS=64
} 2>&1 | tee "$out/summary.log"
