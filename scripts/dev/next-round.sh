#!/bin/bash
# Development (device): the revised kept-block training test (its error against the floor of two unkept calls),
# then 128K RWKV-X A/Bs of knobs that the wide scan (16w, half the scan's blocks) may have moved: two record
# buffers (a fourth block per SM fits), more segments in flight, shorter segments, the finer hand-over; then
# the 1M row. Each step only while BUDGET seconds (default 400) are left.
#   source .dev1/boot.sh && BUDGET=400 bash scripts/dev/next-round.sh
set -uo pipefail
source "$(dirname "$0")/round-lib.sh" 400
nvidia-smi --query-gpu=name --format=csv,noheader
{
suite moba-train 100 test/cuda-moba-train.test.ts
for pass in 1 2; do
  for setting in "" RWKVX_WKV_STAGES=2 RWKVX_WAVEFRONT=6 "--segment 8192" RWKVX_WAVEFRONT_FINE=1; do
    [ "$(left)" -lt 40 ] && { echo "A/B [$setting]: skipped (time)"; continue; }
    vars=() args=()
    for w in $setting; do case $w in --*|[0-9]*) args+=("$w") ;; *) vars+=("$w") ;; esac; done
    env "${vars[@]}" timeout 60 node --import tsx bench/cuda.ts --lengths 131072 --decode 0 --repeat 3 --models rwkvx "${args[@]}" > "$out/ab.log" 2>&1
    printf '%-28s rc=%s %s\n' "${setting:-default}" "$?" "$(grep -E '^\{' "$out/ab.log" | head -1 | grep -oE '"prefill_ms":[0-9.]+')"
  done
done
if [ "$(left)" -gt 60 ]; then
  timeout "$(left)" node --import tsx bench/cuda.ts --lengths 1048576 --decode 1048576 --repeat 1 --models rwkvx > "$out/1m.log" 2>&1
  echo "1M rc=$?"; grep -E "^\|" "$out/1m.log" | head -4
fi
} 2>&1 | tee "$out/summary.log"
