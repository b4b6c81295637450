#!/bin/bash
# Development (device): where the time goes — Nsight Compute over the prefill kernels (scripts/dev/ncu-prefill.sh),
# the per-op profile of one RWKV-X 0.22B training step at 8 × 4K, and the per-launch prefill profile at 128K.
#   source .dev1/boot.sh && bash scripts/dev/profile-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
bash scripts/dev/ncu-prefill.sh > "$out/ncu-summary.log" 2>&1; tail -3 "$out/ncu-summary.log"
timeout 120 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 2 --model x --profile 1 > "$out/train-prof.log" 2>&1
echo "train profile rc=$?"; tail -45 "$out/train-prof.log"
RWKVX_PROFILE=131072 timeout 120 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkvx > "$out/prefill-prof.log" 2>&1
echo "prefill profile rc=$?"; tail -40 "$out/prefill-prof.log"
# the prefill's knobs again at this code (scan rows per block, segment length, segments in flight)
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WKV_ROWS=16 "--segment 8192" "--segment 32768" RWKVX_WAVEFRONT=6
