#!/bin/bash
# Development (device): the WKV-7 scan with 3 record buffers in flight (the default since 2026-12-07)
# against 2 (RWKVX_WKV_STAGES=2) — the GPU inference and wavefront suites with 2 buffers, the scan's
# per-launch time, 128K prefill A/Bs.
#   source .dev1/boot.sh && bash scripts/dev/stages-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
RWKVX_WKV_STAGES=2 timeout 200 node --import tsx --test test/cuda.test.ts test/cuda-prefill.test.ts > "$out/test.log" 2>&1
echo "tests with 2 buffers rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/test.log" | cut -c1-200
for setting in "" RWKVX_WKV_STAGES=2; do
  env $setting RWKVX_PROFILE=131072 timeout 120 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkv7 > "$out/prof.log" 2>&1
  echo "profile [${setting:-default}] rc=$? $(grep -oE "prefill 131072 tokens: [0-9.]+ ms|wkv7_chunk_scan8 [0-9.]+" "$out/prof.log" | tr '\n' ';')"
done
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WKV_STAGES=2
bash scripts/dev/env-ab.sh rwkv7 131072 "" RWKVX_WKV_STAGES=2
} 2>&1 | tee "$out/summary.log"
