#!/bin/bash
# Development (device): the prefill scan's shared-memory footprint — the split-phase scan (RWKVX_WKV_SCAN=split)
# against the default, checked by the prefill suite, timed at 128K, and what each op costs by ablation.
#   source .dev1/boot.sh && bash scripts/dev/scan-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
RWKVX_WKV_SCAN=split timeout 120 node --import tsx --test --test-concurrency=1 test/cuda-prefill.test.ts test/cuda.test.ts > "$out/split-tests.log" 2>&1
echo "split suites rc=$?"; grep -E '^# (tests|pass|fail)' "$out/split-tests.log"; grep -E '^not ok' "$out/split-tests.log" | head
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WKV_SCAN=split
bash scripts/dev/ablate.sh rwkvx 131072 wkv7_chunk_scan8
# training: relu²/tanh/sigmoid backward without the float32 write-back
timeout 60 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
echo "train test rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/train-test.log"
timeout 100 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 1 > "$out/train.log" 2>&1
echo "train bench rc=$?"; grep -E '^\| RWKV|tr_act_bwd|total' "$out/train.log"
