#!/bin/bash
# Development (device): one call's worth — the GPU test suites, the training benchmark (both shapes, 4K and
# 16K, two micro-batch sizes each) and the 128K prefill beside the PyTorch peer.
#   source .dev1/boot.sh && bash scripts/dev/round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
bash scripts/dev/gpu-check.sh tests
timeout 170 node --import tsx bench/cuda-train.ts --ctx 4096,16384 --batch 4096:8,16/16384:2,4 --steps 2 --model both > "$out/train.log" 2>&1
echo "train bench rc=$?"; cat "$out/train.log"
timeout 100 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --peer > "$out/prefill.log" 2>&1
echo "prefill rc=$?"; grep -E '^\|' "$out/prefill.log"
