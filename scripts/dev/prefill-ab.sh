#!/bin/bash
# Development (device): prefill of the working tree vs the baseline copy in .base/ (a `git archive` of
# an earlier commit, git-excluded) on the same GPU (median of 3 prefills each), then a synchronised
# per-op profile of the working tree and, where nsys exists, its GPU time per kernel without synchronisation.
#   source .dev1/boot.sh && bash scripts/dev/prefill-ab.sh [lengths] [profile tokens]
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
lengths=${1:-131072,1048576}; prof=${2:-131072}
for side in new base; do
  b=bench/cuda.ts; [ $side = base ] && b=.base/bench/cuda.ts
  [ -f "$b" ] || continue
  timeout 240 node --import tsx "$b" --lengths "$lengths" --decode 0 --repeat 3 > "$out/prefill-$side.log" 2>&1
  echo "$side rc=$?"; grep -E '^\{' "$out/prefill-$side.log" | sed "s/^/$side /"
done
RWKVX_PROFILE=$prof timeout 120 node --import tsx bench/cuda.ts --lengths 4096 --decode 0 --models rwkvx > "$out/profile.log" 2>&1
echo "profile rc=$?"; grep -E '^profile' "$out/profile.log"
nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$nsys" ]; then
  timeout 180 "$nsys" profile -t cuda -o "$out/prefill" --force-overwrite true node --import tsx bench/cuda.ts --lengths "$prof" --decode 0 --models rwkvx > "$out/nsys.log" 2>&1
  echo "nsys rc=$?"
  "$nsys" stats -q --report cuda_gpu_kern_sum --format csv "$out/prefill.nsys-rep" > "$out/kern.csv" 2>>"$out/nsys.log"
  rm -f "$out/prefill.nsys-rep" "$out/prefill.sqlite"
  head -40 "$out/kern.csv" | cut -c1-200
else echo "no nsys"; fi
