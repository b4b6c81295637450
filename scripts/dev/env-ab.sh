#!/bin/bash
# Development (device): prefill time (median of 3) of the working tree under several environment
# settings (environment variables, and bench/cuda.ts flags such as "--segment 8192"), each run twice, interleaved (A B C A B C), so that drift of the card shows.
#   source .dev1/boot.sh && bash scripts/dev/env-ab.sh MODEL LENGTHS "" "RWKVX_SELECT=scores" "RWKVX_LNMIX=warp" …
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
model=$1 lengths=$2; shift 2
for pass in 1 2; do
  for setting in "$@"; do
    vars=() args=()
    for w in $setting; do case $w in --*|[0-9]*) args+=("$w") ;; *) vars+=("$w") ;; esac; done
    env "${vars[@]}" timeout 120 node --import tsx bench/cuda.ts --lengths "$lengths" --decode 0 --repeat 3 --models "$model" "${args[@]}" > "$out/env-ab.log" 2>&1
    rc=$?
    printf '%-32s rc=%s ' "${setting:-default}" "$rc"
    grep -E '^\{' "$out/env-ab.log" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(s.trim().split("\n").map(l=>{const r=JSON.parse(l);return r.tokens+": "+r.prefill_ms.toFixed(1)+" ms"}).join(", ")))'
  done
done
