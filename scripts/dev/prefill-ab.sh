#!/bin/bash
# Development (device): prefill of the working tree vs the baseline copy in .base/ (a `git archive` of
# an earlier commit, git-excluded) on the same GPU (median of 3 prefills each, new/base twice, interleaved), then a synchronised
# per-op profile of the working tree (each launch alone, timed by events).
#   source .dev1/boot.sh && bash scripts/dev/prefill-ab.sh [lengths] [profile tokens]
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
lengths=${1:-131072,1048576}; prof=${2:-131072}
for side in new base new2 base2; do
  b=bench/cuda.ts; [[ $side == base* ]] && b=.base/bench/cuda.ts
  [ -f "$b" ] || continue
  timeout 240 node --import tsx "$b" --lengths "$lengths" --decode 0 --repeat 3 > "$out/prefill-$side.log" 2>&1
  echo "$side rc=$?"; grep -E '^\{' "$out/prefill-$side.log" | sed "s/^/$side /"
done
[ "$prof" = 0 ] && exit 0  # profile tokens 0: no profile
RWKVX_PROFILE=$prof timeout 120 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkvx > "$out/profile.log" 2>&1
echo "profile rc=$?"; grep -E '^profile' "$out/profile.log"
