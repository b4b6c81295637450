#!/bin/bash
# Development (device): the wavefront's per-segment residual streams. The prefill test and the real-shape
# check with this code, then (when .dev1/model.old.ts is there) with the code before the fix (expected
# to fail), the GPU inference suite, and the 128K table with the peer plus RWKV-X at 1M.
#   source .dev1/boot.sh && bash scripts/dev/wave-round.sh
set -uo pipefail
out=${OUT:-gpu-logs}; mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
{
timeout 120 node --import tsx --test test/cuda-prefill.test.ts > "$out/prefill-test.log" 2>&1
echo "prefill test rc=$?"; grep -E "^# (pass|fail)|^not ok|message:" "$out/prefill-test.log" | cut -c1-200
timeout 60 node --import tsx scripts/dev/wave-check.ts 131072 4 2>&1 | tail -2
if [ -f .dev1/model.old.ts ]; then
  cp src/backend/cuda/model.ts /tmp/model.new.ts; cp .dev1/model.old.ts src/backend/cuda/model.ts
  sed -i 's/      m.wavefrontLive = live;//' test/cuda-prefill.test.ts
  timeout 120 node --import tsx --test test/cuda-prefill.test.ts > "$out/prefill-test-old.log" 2>&1
  echo "OLD prefill test rc=$?"; grep -E "^# (pass|fail)|^not ok|message:" "$out/prefill-test-old.log" | cut -c1-200
  timeout 60 node --import tsx scripts/dev/wave-check.ts 131072 4 2>&1 | tail -2 | sed 's/^/OLD /'
  cp /tmp/model.new.ts src/backend/cuda/model.ts
fi
timeout 200 node --import tsx --test test/cuda.test.ts > "$out/cuda-test.log" 2>&1
echo "cuda test rc=$?"; grep -E "^# (pass|fail)|^not ok" "$out/cuda-test.log" | cut -c1-200
timeout 240 node --import tsx bench/cuda.ts --lengths 131072 --decode 131072 --repeat 3 --models rwkvx,rwkv7 --peer > "$out/prefill.log" 2>&1
echo "prefill table rc=$?"; grep -E "^\||^device|peer" "$out/prefill.log" | head -20
timeout 90 node --import tsx bench/cuda.ts --lengths 1048576 --decode 0 --repeat 3 --models rwkvx > "$out/prefill-1m.log" 2>&1
echo "1M rc=$?"; grep -E "^\|" "$out/prefill-1m.log" | head -6
} 2>&1 | tee "$out/summary.log"
