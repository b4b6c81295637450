#!/bin/bash
# Development (device): the tensor-core WKV-7 scans — the GPU inference suites at the default (tc), the 128K
# A/B of tc, tcs (corrections in accumulators of their own), tcp (fragments split once per block, a chunk
# ahead), tc2 and tc2s (2 warps of 32 rows), the 128K table with the peer (same machine), the 128K per-launch
# profile, Nsight's warp stalls of tc and tcp; then wavefronts of 6 and 8 and 1M RWKV-X if time is left.
#   source .dev1/boot.sh && BUDGET=540 bash scripts/dev/s18-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 540
nvidia-smi --query-gpu=name --format=csv,noheader
ab() {  # ab SETTING: one 128K RWKV-X prefill (median of 3) under an environment setting
  env $1 timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx > "$out/ab.log" 2>&1
  printf 'rwkvx %-20s rc=%s %s\n' "$1" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
}
{
suite inference 220 test/cuda.test.ts test/cuda-prefill.test.ts
grep -E "official prefill 200|tensor-core scan|scan layouts" "$out/inference.log" | head -6
for pass in 1 2; do
  for lay in tc tcs tcp tc2 tc2s; do
    [ "$(left)" -lt 150 ] && { echo "A/B [$lay]: skipped (time)"; continue; }
    ab RWKVX_WKV_ROWS=$lay
  done
done
if [ "$(left)" -gt 110 ]; then
  timeout 150 node --import tsx bench/cuda.ts --lengths 131072 --decode 131072 --repeat 3 --models rwkvx,rwkv7 --peer > "$out/t128k.log" 2>&1
  echo "128K table rc=$?"; grep -E "^\|" "$out/t128k.log" | tail -6
fi
if [ "$(left)" -gt 90 ]; then
  RWKVX_PROFILE=131072 timeout 90 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkvx > "$out/prefill-prof.log" 2>&1
  echo "prefill profile rc=$?"; tail -30 "$out/prefill-prof.log"
fi
for lay in tc tcp; do
  [ "$(left)" -lt 50 ] && { echo "ncu [$lay]: skipped (time)"; continue; }
  RWKVX_WKV_ROWS=$lay timeout 60 ncu --clock-control none --target-processes all -k "regex:^wkv7_chunk_scan$lay\$" -s 4 -c 1 \
    --section SpeedOfLight --section WarpStateStats --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    node --import tsx bench/cuda.ts --lengths 16384 --decode 0 --repeat 1 --models rwkv7 > "$out/ncu-$lay.log" 2>&1
  echo "== ncu $lay rc=$?"; grep -E "Duration|Warp Cycles Per" "$out/ncu-$lay.log" | head -4
  grep -E "stalled_" "$out/ncu-$lay.log" | awk '$NF+0 > 0.05 {sub(/smsp__average_warps_issue_stalled_/, "", $1); sub(/_per_issue_active.ratio/, "", $1); print "   ", $1, $NF}' | head -14
done
for setting in RWKVX_WAVEFRONT=6 RWKVX_WAVEFRONT=8; do
  [ "$(left)" -lt 40 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
  ab $setting
done
if [ "$(left)" -gt 100 ]; then
  timeout 100 node --import tsx bench/cuda.ts --lengths 4096,1048576 --decode 4096,1048576 --repeat 3 --models rwkvx > "$out/t1m.log" 2>&1
  echo "1M rc=$?"; grep -E "^\|" "$out/t1m.log" | tail -4
fi
} 2>&1 | tee "$out/summary.log"
