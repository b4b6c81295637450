#!/bin/bash
# Development (device): one call that runs every GPU suite (inference, wavefront, training), the finer
# wavefront hand-over's real-shape check and the 128K A/Bs of it and of the wide scan layout (RWKVX_WKV_ROWS=16w, 32w).
#   source .dev1/boot.sh && bash scripts/dev/verify-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
for t in cuda-moba-train cuda-train cuda-wkv-train; do
  timeout 150 node --import tsx --test test/$t.test.ts > "$out/$t.log" 2>&1
  echo "$t rc=$?"; grep -E "^# (pass|fail)|^not ok|error:|worst" "$out/$t.log" | cut -c1-220
done
timeout 150 node --import tsx --test test/cuda.test.ts test/cuda-prefill.test.ts > "$out/infer-test.log" 2>&1
echo "inference tests rc=$?"; grep -E "^# (pass|fail)|^not ok|error:|scan rows" "$out/infer-test.log" | cut -c1-200
RWKVX_WAVEFRONT_FINE=1 timeout 60 node --import tsx scripts/dev/wave-check.ts 131072 4 2>&1 | tail -1
bash scripts/dev/env-ab.sh rwkvx 131072 "" RWKVX_WAVEFRONT_FINE=1 RWKVX_WKV_ROWS=16w RWKVX_WKV_ROWS=32w "RWKVX_WAVEFRONT_FINE=1 RWKVX_WKV_ROWS=16w"
} 2>&1 | tee "$out/summary.log"
