#!/bin/bash
# Development (device): the GPU inference and WKV training suites, the 128K RWKV-X prefill (default and
# without the wavefront), then Nsight Compute's stall reasons for the prefill scan and the training wkt_grad, and the DRAM
# throughput of the prefill's element-wise kernels at 16K-token segments.
#   source .dev1/boot.sh && BUDGET=420 bash scripts/dev/s16-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 420
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite inference 170 test/cuda.test.ts test/cuda-prefill.test.ts
suite wkv-train 120 test/cuda-wkv-train.test.ts
for pass in 1 2; do
  for setting in "" RWKVX_WAVEFRONT=1; do
    [ "$(left)" -lt 40 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
    env $setting timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx > "$out/ab.log" 2>&1
    printf '%-28s rc=%s %s\n' "${setting:-default}" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
  done
done
sect="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --print-details all"
if [ "$(left)" -gt 70 ]; then
  timeout 100 ncu --clock-control none --target-processes all -k "regex:^wkv7_chunk_scan16w\$" -s 4 -c 1 $sect \
    node --import tsx bench/cuda.ts --lengths 16384 --decode 0 --repeat 1 --models rwkv7 > "$out/ncu-scan.log" 2>&1
  echo "ncu scan rc=$?"
fi
if [ "$(left)" -gt 50 ]; then
  timeout 90 ncu --clock-control none --target-processes all -k "regex:^(ln_mix8|relu_sq_bf16|wkv7_chunk_prep|gn_bonus_gate)\$" -s 8 -c 4 \
    --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis \
    node --import tsx bench/cuda.ts --lengths 65536 --decode 0 --repeat 1 --models rwkv7 > "$out/ncu-bw.log" 2>&1
  echo "ncu bw rc=$?"
fi
if [ "$(left)" -gt 50 ]; then
  timeout 110 ncu --clock-control none --target-processes all -k "regex:^(tr_|mt_|wkt_|adamw|f2bf)" -s 120 -c 100 --print-summary per-kernel \
    --section SpeedOfLight node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 1 --model x --profile 0 > "$out/ncu-train.log" 2>&1
  echo "ncu train rc=$?"
  grep -E "^  [a-zA-Z_0-9]+|Duration|DRAM Throughput|Compute \(SM\) Throughput" "$out/ncu-train.log" | head -120
fi
if [ "$(left)" -gt 70 ]; then
  timeout 120 ncu --clock-control none --target-processes all -k "regex:^wkt_grad" -s 2 -c 1 $sect \
    node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 1 --model x --profile 0 > "$out/ncu-grad.log" 2>&1
  echo "ncu grad rc=$?"
fi
for f in "$out"/ncu-*.log; do echo "== $f"; grep -E "^  [a-zA-Z_0-9]+.*\(|Duration|Throughput|Occupancy|Registers|Stall|stall|Issued|Eligible|Active Warps|No Eligible|Warp Cycles|Bank" "$f" | head -90; done
} 2>&1 | tee "$out/summary.log"
