#!/usr/bin/env bash
# The whole small training run of docs/training-run.md, on the CPU:
# corpus → RWKV-7 from scratch → expand to RWKV-X → stage 1 (attention only) → stage 2 (all, longer
# context) → loss curves and samples. Resumable: each stage continues from its own training state.
#   bash scripts/kjv-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
r=./rwkvx
[ -f data/kjv/kjv.idx ] || bash scripts/corpus-kjv.sh data/kjv
stage() { # config, output dir
  if [ -f "$2/train-state.safetensors" ]; then $r train --config "$1" --resume; else $r train --config "$1"; fi
}
stage configs/kjv-rwkv7-scratch.json runs/kjv-rwkv7
[ -f runs/kjv-rwkvx-expanded.safetensors ] || \
  $r expand --base runs/kjv-rwkv7/model.safetensors --attn-layers 2 --init copy --chunk 64 --topk 3 --out runs/kjv-rwkvx-expanded.safetensors
stage configs/stage1.json runs/kjv-rwkvx-stage1
stage configs/stage2.json runs/kjv-rwkvx-stage2
for s in kjv-rwkv7 kjv-rwkvx-stage1 kjv-rwkvx-stage2; do
  $r plot-loss "runs/$s/log.jsonl" --out "docs/img/$s-loss.svg" --title "$s"
done
for m in runs/kjv-rwkv7/model.safetensors runs/kjv-rwkvx-stage2/model.safetensors; do
  echo "== $m"; $r generate --model "$m" --prompt "And the LORD said unto Moses," --max-tokens 60 --temperature 0.7 --top-p 0.9 --seed 1
done
