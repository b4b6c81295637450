#!/bin/bash
# Development (device): Nsight Compute over the first launches of the named prefill kernels (RWKV-7
# 0.19B, one 16K prefill), so a kernel's DRAM throughput, occupancy and stall reasons can be read against
# its byte count (docs/cuda.md "Floors"). Clocks are left alone (--clock-control none).
#   source .dev1/boot.sh && bash scripts/dev/ncu-prefill.sh ["kernel|regex"] [launches] [model]
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
kern=${1:-ln_mix8|wkv7_chunk_prep|wkv7_chunk_scan8|gn_bonus_gate|relu_sq_bf16}; count=${2:-12}; model=${3:-rwkv7}
timeout 300 ncu --clock-control none --target-processes all -k "regex:^($kern)\$" -c "$count" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
  node --import tsx bench/cuda.ts --lengths 16384 --decode 0 --repeat 1 --models "$model" > "$out/ncu.log" 2>&1
echo "ncu rc=$?"
# the headline lines of each report
grep -E '^\s+[a-z_0-9]+.*\(\d*|^  [a-zA-Z_0-9]+\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Block Limit|Theoretical Occupancy' "$out/ncu.log" | head -150
