#!/bin/bash
# Development (device): part 0 runs the GPU training tests at the defaults (warp-per-row LayerNorm and
# row-wise token-shift mixes, whose bits a kernel test compares with the block kernels'), A/Bs the 8 × 4K
# step against the block kernels (RWKVX_TRAIN_LN=block RWKVX_TRAIN_MIX=grid), prints the per-op profile,
# then the 128K prefill / decode table with the PyTorch peer on the same card. Part 4: the training check alone.
#   source .dev1/boot.sh && bash scripts/dev/scan-round.sh 0|4
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
train_check() {
  timeout 180 node --import tsx --test test/cuda-train.test.ts > "$out/train-test.log" 2>&1
  echo "train test rc=$?"; grep -E "^# (pass|fail)|^not ok|error:|bits differing" "$out/train-test.log" | cut -c1-220
  for pass in 1 2; do
    for setting in "" "RWKVX_TRAIN_LN=block RWKVX_TRAIN_MIX=grid"; do
      env $setting timeout 60 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 0 > "$out/train-ab.log" 2>&1
      echo "train bench [${setting:-default}] rc=$? $(grep -E "^\| RWKV" "$out/train-ab.log" | head -1)"
    done
  done
}
{
train_check
if [ "${1:-0}" = 0 ]; then
  timeout 90 node --import tsx bench/cuda-train.ts --ctx 4096 --batch 4096:8 --steps 3 --model x --profile 1 > "$out/train.log" 2>&1
  echo "train bench profile rc=$?"; grep -vE "^\s*$" "$out/train.log" | tail -40
  timeout 240 node --import tsx bench/cuda.ts --lengths 131072 --decode 131072 --repeat 3 --models rwkvx,rwkv7 --peer > "$out/prefill.log" 2>&1
  echo "prefill table rc=$?"; grep -E "^\||^device|peer" "$out/prefill.log" | head -20
fi
} 2>&1 | tee "$out/summary.log"
