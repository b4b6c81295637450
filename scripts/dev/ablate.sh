#!/bin/bash
# Development (device): what each op costs inside the overlapped prefill — the prefill time (median of
# 3) with one op left out at a time (RWKVX_DEV_SKIP; the outputs are then wrong, only the time counts).
#   source .dev1/boot.sh && bash scripts/dev/ablate.sh MODEL LENGTHS "op1" "op2,op3" …   (MODEL rwkv7|rwkvx)
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
model=$1 lengths=$2; shift 2
for skip in "" "$@"; do
  RWKVX_DEV_SKIP="$skip" timeout 120 node --import tsx bench/cuda.ts --lengths "$lengths" --decode 0 --repeat 3 --models "$model" > "$out/ablate.log" 2>&1
  rc=$?
  printf '%-40s rc=%s ' "skip=${skip:-none}" "$rc"
  grep -E '^\{' "$out/ablate.log" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(s.trim().split("\n").map(l=>{const r=JSON.parse(l);return r.tokens+": "+r.prefill_ms.toFixed(1)+" ms"}).join(", ")))'
done
