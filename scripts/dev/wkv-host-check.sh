#!/bin/bash
# Runs the kernel bodies of src/backend/cuda/kernels/wkv7-train.cu on the CPU (block by block, thread by
# thread; no GPU needed, nvcc needed) against the float64 chunked reference of src/train/wkv7-chunked.ts.
# A development check of the device math before (or without) a GPU run; not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v nvcc >/dev/null || { echo "wkv-host-check: nvcc not found (it builds the host harness)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nvcc -std=c++17 -O2 -arch=sm_90 -x cu -o "$tmp/harness" scripts/dev/wkv-host-check/harness.cu
status=0
for shape in "1 1 1" "2 17 2" "3 37 2" "2 100 2" "1 333 12"; do  # sequences, tokens, heads
  node --import tsx scripts/dev/wkv-host-check/dump.ts $shape "$tmp/dump.bin"
  "$tmp/harness" "$tmp/dump.bin" || status=1
done
exit $status
