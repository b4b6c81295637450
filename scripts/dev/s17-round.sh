#!/bin/bash
# Development (device): the tensor-core WKV-7 scan (RWKVX_WKV_ROWS=tc) — the GPU inference suites with it
# and against the default layout, the 128K prefill A/B (RWKV-X and RWKV-7, interleaved), Nsight on one
# launch of each scan; then the training suites (the last session's review commits).
#   source .dev1/boot.sh && BUDGET=540 bash scripts/dev/s17-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 540
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite inference 150 test/cuda.test.ts
RWKVX_WKV_ROWS=tc suite inference-tc 170 test/cuda.test.ts test/cuda-prefill.test.ts
grep -E "tensor-core|scan rows tc|logits.*max|max err" "$out/inference.log" | head -12
for pass in 1 2; do
  for m in rwkvx rwkv7; do
    for setting in RWKVX_WKV_ROWS=16w RWKVX_WKV_ROWS=tc; do
      [ "$(left)" -lt 60 ] && { echo "A/B [$m $setting]: skipped (time)"; continue; }
      env $setting timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models $m > "$out/ab.log" 2>&1
      printf '%-7s %-20s rc=%s %s\n' "$m" "$setting" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
    done
  done
done
if [ "$(left)" -gt 80 ]; then
  for k in wkv7_chunk_scan16w wkv7_chunk_scantc; do
    lay=${k#wkv7_chunk_scan}
    RWKVX_WKV_ROWS=$lay timeout 60 ncu --clock-control none --target-processes all -k "regex:^$k\$" -s 4 -c 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      node --import tsx bench/cuda.ts --lengths 16384 --decode 0 --repeat 1 --models rwkv7 > "$out/ncu-$lay.log" 2>&1
    echo "== ncu $k rc=$?"; grep -E "Duration|Registers Per|Throughput|Achieved Occupancy|Shared Memory Config" "$out/ncu-$lay.log" | head -12
  done
fi
suite train 200 test/cuda-train.test.ts
suite moba-train 120 test/cuda-moba-train.test.ts
} 2>&1 | tee "$out/summary.log"
