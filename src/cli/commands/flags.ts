import type { Command } from 'commander';
import { int } from '../args.js';

/** The flags every model-running command shares. */
export function addModelFlags(cmd: Command): Command {
  return cmd
    .requiredOption('--model <path>', 'checkpoint: official RWKV-7 / RWKV-X .pth, or rwkvx safetensors')
    .option('--chunk <n>', 'attention chunk size B (default: from the model, else 2048)', int('--chunk'))
    .option('--topk <n>', 'chunks attended per query, own chunk included (default: from the model, else 3)', int('--topk'))
    .option('--attention <mode>', "attention semantics: 'moba' (as trained) or 'official' (the authors' inference package)", 'moba')
    .option('--backend <name>', 'compute backend: cpu, cuda, or auto (CUDA when an NVIDIA GPU is present); default $RWKVX_BACKEND or auto', process.env.RWKVX_BACKEND ?? 'auto');
}
