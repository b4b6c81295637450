#!/bin/bash
# Development (device): one short call's worth — the training GPU suite, the training benchmark at 4K (both
# shapes, micro-batches of 8 and 16 sequences), then the inference GPU suites.
#   source .dev1/boot.sh && bash scripts/dev/round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
echo "train test rc=$?"; grep -E "^# (pass|fail|skip)|^not ok|kept vs|separate passes" "$out/train-test.log"
timeout 100 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8,16 --steps 2 --model both --profile 0 > "$out/train.log" 2>&1
echo "train bench rc=$?"; grep -E '^\| RWKV|kept for' "$out/train.log"
timeout 110 node --import tsx --test --test-concurrency=1 test/cuda.test.ts test/cuda-prefill.test.ts test/cuda-kv.test.ts test/cuda-wkv-train.test.ts test/cuda-moba-train.test.ts > "$out/tests.log" 2>&1
echo "gpu suites rc=$?"; grep -E '^# (tests|pass|fail|skipped)' "$out/tests.log"; grep -E '^not ok' "$out/tests.log" | head
