#!/bin/bash
# Development (device): one call's worth of checks and A/B timings for the current work — the training
# GPU suite, training tokens/s under settings, the inference scan/prep tests and prefill A/B.
#   source .dev1/boot.sh && bash scripts/dev/round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
echo "train test rc=$?"; grep -E "^# (pass|fail|skip)|^not ok|kept vs|separate passes" "$out/train-test.log"
for v in "" "RWKVX_TRAIN_FUSED=0 RWKVX_TRAIN_KEEP_ACT=0" "RWKVX_TRAIN_KEEP_ACT=0"; do
  env $v timeout 70 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8,16 --steps 3 --model x --profile 0 > "$out/tb.log" 2>&1
  echo "[${v:-default}] rc=$?"; grep -E "^\| RWKV|fit|kept for" "$out/tb.log" | head -6
done
timeout 90 node --import tsx --test --test-name-pattern="chunked WKV-7|ln_mix8" test/cuda.test.ts > "$out/t.log" 2>&1
echo "inference test rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/t.log"
bash scripts/dev/prefill-ab.sh 131072 0
bash scripts/dev/env-ab.sh rwkvx 131072 "" "RWKVX_WKV_SCAN=3" "RWKVX_WKV_PREP=late" "RWKVX_LNMIX=warp"
