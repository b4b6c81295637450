#!/bin/bash
# One device call of the development workplace: the GPU test suites, then the training benchmark.
# Logs go to $OUT (the device tool's output folder) or ./gpu-logs.
#   source .dev1/boot.sh && bash scripts/dev/gpu-check.sh [tests|bench|all] [bench arguments…]
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
what=${1:-all}; shift || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if [ "$what" != bench ]; then
  timeout 280 node --import tsx --test --test-concurrency=1 test/cuda.test.ts test/cuda-kv.test.ts test/cuda-prefill.test.ts \
    test/cuda-train.test.ts test/cuda-wkv-train.test.ts test/cuda-moba-train.test.ts test/cli.test.ts > "$out/tests.log" 2>&1
  echo "tests rc=$?"; grep -E '^# (tests|pass|fail|skipped)' "$out/tests.log"; grep -E '^not ok' -A30 "$out/tests.log" | head -150
fi
if [ "$what" != tests ]; then
  args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--ctx 4096,16384 --batch 4096:16/16384:4 --steps 2)
  timeout 280 node --import tsx bench/cuda-train.ts "${args[@]}" > "$out/train.log" 2>&1
  echo "bench rc=$?"; cat "$out/train.log"
fi
