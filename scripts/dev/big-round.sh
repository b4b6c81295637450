#!/bin/bash
# Development (device): the 3.6B shape after the wavefront fix — wavefront vs serial bits at 128K (2 slots,
# 8 segments), then npm run bench:cuda-big (128K prefill and decode, growth to 1M with K/V paging, decode).
#   source .dev1/boot.sh && bash scripts/dev/big-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
timeout 120 node --import tsx scripts/dev/wave-check.ts 131072 4 big 2>&1 | tail -2
timeout 400 node --import tsx bench/cuda-big.ts > "$out/big.log" 2>&1
echo "bench:cuda-big rc=$?"; cat "$out/big.log" | tail -25
} 2>&1 | tee "$out/summary.log"
