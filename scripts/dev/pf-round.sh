#!/bin/bash
# Development (device): the WKV-7 scan's L2 prefetch of records ahead (RWKVX_WKV_PF, default 2; 0 = off).
# The GPU inference and wavefront suites at the default, the scan's per-launch time, 128K prefill A/Bs.
#   source .dev1/boot.sh && bash scripts/dev/pf-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
timeout 200 node --import tsx --test test/cuda.test.ts test/cuda-prefill.test.ts > "$out/test.log" 2>&1
echo "tests rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/test.log" | cut -c1-200
for pf in 0 2; do
  RWKVX_WKV_PF=$pf RWKVX_PROFILE=131072 timeout 120 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkv7 > "$out/prof-$pf.log" 2>&1
  echo "profile PF=$pf rc=$? $(grep -oE "prefill 131072 tokens: [0-9.]+ ms|wkv7_chunk_(scan8|prep) [0-9.]+" "$out/prof-$pf.log" | tr '\n' ';')"
done
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WKV_PF=0 RWKVX_WKV_PF=1 RWKVX_WKV_PF=4 RWKVX_WAVEFRONT=8
bash scripts/dev/env-ab.sh rwkv7 131072 "" RWKVX_WKV_PF=0
} 2>&1 | tee "$out/summary.log"
