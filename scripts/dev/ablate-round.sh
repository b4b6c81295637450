#!/bin/bash
# Development (device): what each op costs inside the overlapped 128K RWKV-X prefill (one op left out at a
# time), then Nsight Compute's warp stall reasons of the WKV-7 scan.
#   source .dev1/boot.sh && bash scripts/dev/ablate-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
bash scripts/dev/ablate.sh rwkvx 131072 wkv7_chunk_scan16w "gemm linear" "gemm matmul" wkv7_chunk_prep ln_mix8 \
  relu_sq_bf16 gn_bonus_gate "moba_attn_wg128,own_attn_wg128,select_chunks_tiled,moba_merge,moba_count,moba_scatter,chunk_means" \
  "gemm linear,gemm matmul,wkv7_chunk_prep,ln_mix8,relu_sq_bf16,gn_bonus_gate,act_bf16"
timeout 200 ncu --clock-control none --target-processes all -k "regex:^wkv7_chunk_scan16w\$" -c 2 \
  --section WarpStateStats --section SchedulerStats --section SourceCounters --section MemoryWorkloadAnalysis \
  node --import tsx bench/cuda.ts --lengths 16384 --decode 0 --repeat 1 --models rwkv7 > "$out/ncu-scan.log" 2>&1
echo "ncu rc=$?"
grep -iE "stall|cycles per|warp cycles|issued|eligible|active warps|duration|L1|shared|L2 hit|Mem.*Busy" "$out/ncu-scan.log" | head -60
} 2>&1 | tee "$out/summary.log"
