#!/bin/bash
# Development (device): the prefill knobs around their defaults (wavefront depth, scan rows per block,
# segment length), RWKV-X 0.22B at 128K and 1M, median of 3 each. Logs to $OUT (or ./gpu-logs).
#   source .dev1/boot.sh && bash scripts/dev/exp-prefill.sh
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
run() { local tag="$1"; shift; env "$@" timeout 100 node --import tsx bench/cuda.ts --models rwkvx --lengths 131072,1048576 --decode 0 --repeat 3 $EXTRA > $OUT/exp-$tag.log 2>&1; echo "$tag: $(grep -E '^\{' $OUT/exp-$tag.log | sed -E 's/.*"tokens":([0-9]+),"prefill_ms":([0-9.]+).*"peak_gib":([0-9.]+).*/\1 \2 ms \3 GiB/' | tr '\n' ' ')"; }
EXTRA="" run base X=1
EXTRA="" run wf2 RWKVX_WAVEFRONT=2
EXTRA="" run wf6 RWKVX_WAVEFRONT=6
EXTRA="" run rows4 RWKVX_WKV_ROWS=4
EXTRA="" run rows16 RWKVX_WKV_ROWS=16
EXTRA="--segment 32768" run seg32k X=1
EXTRA="--segment 8192" run seg8k X=1
EXTRA="--segment 32768" run seg32k-wf2 RWKVX_WAVEFRONT=2
