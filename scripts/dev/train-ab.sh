#!/bin/bash
# Development (device): the GPU training suites, then the 8 × 4K RWKV-X training step of the working tree
# against the baseline copy in .base/ (a `git archive` of an earlier commit's src and bench, git-excluded:
# carry it), interleaved, two passes, and one profiled step of the working tree. A step starts only while
# BUDGET seconds (default 420) are left.
#   source .dev1/boot.sh && BUDGET=420 bash scripts/dev/train-ab.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 420
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite train 170 test/cuda-train.test.ts
suite wkv-train 120 test/cuda-wkv-train.test.ts
suite moba-train 110 test/cuda-moba-train.test.ts
for pass in 1 2; do
  for side in new base; do
    b=bench/cuda-train.ts; [ $side = base ] && b=.base/bench/cuda-train.ts
    [ "$(left)" -lt 40 ] && { echo "train [$side]: skipped (time)"; continue; }
    timeout 60 node --import tsx "$b" --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 0 > "$out/train-$side.log" 2>&1
    echo "train [$side] rc=$? $(grep -E "^\| RWKV" "$out/train-$side.log" | head -1)"
  done
done
if [ "$(left)" -gt 45 ]; then
  timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 2 --model x --profile 1 > "$out/train-prof.log" 2>&1
  echo "profile rc=$?"; grep -iE "tr_act|f2bf|tr_tmix|wkt_|total|sync" "$out/train-prof.log" | head -20
fi
} 2>&1 | tee "$out/summary.log"
