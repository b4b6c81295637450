#!/bin/bash
# Development (device): the attention kernels' round — the sparse-attention core per kernel variant
# (mma.sync, wgmma with 128 / 64 keys per tile), RWKV-X prefill with the wgmma kernels and without
# (interleaved, median of 3), a per-launch profile at a long length, and which tensor-core instructions
# the compiled wgmma module holds.
#   source .dev1/boot.sh && bash scripts/dev/attn-round.sh [attn lengths] [prefill lengths] [profile tokens]
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
attn=${1:-65536,131072}; lengths=${2:-131072,1048576}; prof=${3:-1048576}
timeout 150 node --import tsx bench/cuda.ts --models none --attn "$attn" --wg 0,128,64 > "$out/attn.log" 2>&1
echo "attn rc=$?"; grep -E '^attention core' "$out/attn.log" || tail -5 "$out/attn.log"
for wg in 128 0 128 0; do
  RWKVX_ATTN_WG=$wg timeout 150 node --import tsx bench/cuda.ts --lengths "$lengths" --decode 0 --repeat 3 --models rwkvx > "$out/prefill-wg$wg.log" 2>&1
  echo "wg=$wg rc=$?"; grep -E '^\{' "$out/prefill-wg$wg.log" | sed "s/^/wg$wg /"
done
if [ "$prof" != 0 ]; then
  RWKVX_PROFILE=$prof timeout 150 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkvx > "$out/profile.log" 2>&1
  echo "profile rc=$?"; grep -E '^profile' "$out/profile.log"
fi
for f in "${RWKVX_CACHE_DIR:-$HOME/.cache/rwkvx}"/cuda/*.cubin; do
  n=$(cuobjdump -sass "$f" 2>/dev/null | grep -c HGMMA); [ "$n" -gt 0 ] && echo "$(basename "$f"): $n HGMMA instructions"
done
