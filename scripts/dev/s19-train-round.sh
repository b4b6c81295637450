#!/bin/bash
# Development (device): the tensor-core WKV-7 training kernels (RWKVX_TRAIN_WKT=tc: wkt_scan_tc, wkt_chain_tc,
# wkt_grad_tc; tcseq: the first two only) — the WKV-7 training suite (its tc check against the default) and the
# trainer suite under tc, then the 8 × 4K RWKV-X step under wide (the default), tc and tcseq, interleaved, two
# passes, and one profiled tc step (per-op times against the wide profile in bench/RESULTS.md).
#   source .dev1/boot.sh && BUDGET=500 bash scripts/dev/s19-train-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 500
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite wkv-train 150 test/cuda-wkv-train.test.ts
grep -E "tensor-core passes" "$out/wkv-train.log" | head -3
RWKVX_TRAIN_WKT=tc suite train-tc 170 test/cuda-train.test.ts
for pass in 1 2; do
  for setting in RWKVX_TRAIN_WKT=wide RWKVX_TRAIN_WKT=tc RWKVX_TRAIN_WKT=tcseq; do
    [ "$(left)" -lt 40 ] && { echo "train [$setting]: skipped (time)"; continue; }
    env $setting timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 0 > "$out/train.log" 2>&1
    echo "train [$setting] rc=$? $(grep -E "^\| RWKV" "$out/train.log" | head -1)"
  done
done
if [ "$(left)" -gt 45 ]; then
  RWKVX_TRAIN_WKT=tc timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 2 --model x --profile 1 > "$out/train-prof.log" 2>&1
  echo "profile rc=$?"; grep -iE "wkt_|total|sync" "$out/train-prof.log" | head -12
fi
} 2>&1 | tee "$out/summary.log"
