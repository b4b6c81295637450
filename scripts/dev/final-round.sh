#!/bin/bash
# Development (device): the GPU inference and wavefront suites at the defaults, then the 128K prefill /
# decode table with the PyTorch peer on the same card.
#   source .dev1/boot.sh && bash scripts/dev/final-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
timeout 150 node --import tsx --test test/cuda.test.ts test/cuda-prefill.test.ts > "$out/test.log" 2>&1
echo "tests rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/test.log" | cut -c1-200
timeout 200 node --import tsx bench/cuda.ts --lengths 131072 --decode 131072 --repeat 3 --models rwkvx,rwkv7 --peer > "$out/prefill.log" 2>&1
echo "prefill table rc=$?"; grep -E "^\|" "$out/prefill.log" | head -8
} 2>&1 | tee "$out/summary.log"
