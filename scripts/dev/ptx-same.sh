#!/bin/bash
# Development (no GPU): do the kernel sources of the working tree compile to the same PTX as those of a
# commit (default HEAD)? Same PTX, same SASS (this machine's CUDA has no cuobjdump). For refactors of
# kernel code that should not change what runs on the GPU.
#   bash scripts/dev/ptx-same.sh [commit] [arch]
set -euo pipefail
cd "$(dirname "$0")/../.."
rev=${1:-HEAD} arch=${2:-sm_90a}
command -v nvcc >/dev/null || { echo "ptx-same: nvcc not found" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/old" "$tmp/new"
git archive "$rev" src/backend/cuda/kernels | tar -x -C "$tmp/old"
cp -r src/backend/cuda/kernels "$tmp/new/"
status=0
for f in src/backend/cuda/kernels/*.cu; do
  b=$(basename "$f" .cu)
  for side in old new; do
    dir=$tmp/$side; [ "$side" = old ] && dir=$tmp/old/src/backend/cuda/kernels || dir=$tmp/new/kernels
    if [ -f "$dir/$b.cu" ]; then
      nvcc -std=c++17 -arch="$arch" -ptx -o "$tmp/$side-$b.ptx" "$dir/$b.cu" 2> "$tmp/$side-$b.err" || { echo "$b ($side): compile failed"; cat "$tmp/$side-$b.err"; status=1; continue; }
      grep -v '^\s*//' "$tmp/$side-$b.ptx" > "$tmp/$side-$b.sass"
    fi
  done
  if [ -f "$tmp/old-$b.sass" ] && [ -f "$tmp/new-$b.sass" ]; then
    if cmp -s "$tmp/old-$b.sass" "$tmp/new-$b.sass"; then echo "$b: same PTX ($(grep -c ';' "$tmp/new-$b.sass") lines)"; else echo "$b: PTX DIFFERS"; status=1; fi
  else echo "$b: only on one side"; fi
done
exit $status
