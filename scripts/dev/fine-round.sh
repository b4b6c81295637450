#!/bin/bash
# Development (device): the wavefront's finer hand-over between segments (RWKVX_WAVEFRONT_FINE=1: an RWKV-7
# layer waits for the previous segment's same layer only at its token-shift rows and WKV state). The
# wavefront test (it covers the fine mode), then 128K prefill A/Bs.
#   source .dev1/boot.sh && bash scripts/dev/fine-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
timeout 150 node --import tsx --test test/cuda-prefill.test.ts > "$out/test.log" 2>&1
echo "wavefront test rc=$?"; grep -E "^# (pass|fail)|^not ok|message|error:" "$out/test.log" | cut -c1-200
RWKVX_WAVEFRONT_FINE=1 timeout 60 node --import tsx scripts/dev/wave-check.ts 131072 4 2>&1 | tail -1
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WAVEFRONT_FINE=1 "RWKVX_WAVEFRONT_FINE=1 RWKVX_WAVEFRONT=8"
bash scripts/dev/env-ab.sh rwkv7 131072 "" RWKVX_WAVEFRONT_FINE=1
} 2>&1 | tee "$out/summary.log"
