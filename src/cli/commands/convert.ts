import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { openCheckpoint } from '../../io/open.js';
import { writeSafetensors } from '../../io/safetensors.js';
import { f32ToBf16, f32ToF16 } from '../../io/dtype.js';
import type { DType, TensorSource } from '../../io/types.js';
import { inferConfig, validateTensors } from '../../model/weights.js';
import { checkAttentionParams } from '../../model/model.js';
import { expandTensors, nativeMetadata, type LazyTensor } from '../../model/expand.js';
import { fail } from '../../util/errors.js';
import { int } from '../args.js';
import { Progress } from '../progress.js';

const DTYPES: Record<string, DType> = { f32: 'F32', float32: 'F32', bf16: 'BF16', bfloat16: 'BF16', f16: 'F16', float16: 'F16' };

function parseDtype(v: string | undefined): DType | undefined {
  if (v === undefined) return undefined;
  const d = DTYPES[v.toLowerCase()];
  if (!d) fail(`--dtype must be one of f32, bf16, f16 (got '${v}')`);
  return d;
}

/** Re-encodes a tensor read from `src` into `dtype` (or keeps its bytes when the dtype already matches). */
function recast(src: TensorSource, name: string, to: DType | undefined): { dtype: DType; data: () => ArrayBufferView } {
  const from = src.info(name)!.dtype;
  if (!to || to === from) return { dtype: from, data: () => src.readRaw(name) };
  if (!['F32', 'F16', 'BF16'].includes(from)) fail(`tensor '${name}' is ${from}; only float tensors can change dtype`);
  return {
    dtype: to,
    data: () => {
      const f = src.readF32(name);
      return to === 'F32' ? f : to === 'BF16' ? f32ToBf16(f) : f32ToF16(f);
    },
  };
}

function sameFile(a: string, b: string): boolean {
  return resolve(a) === resolve(b);
}

function write(out: string, tensors: LazyTensor[], meta: Record<string, string>, label: string): void {
  const bar = new Progress(label, tensors.length);
  writeSafetensors(out, tensors.map((t) => ({ ...t, data: () => { bar.tick(); return t.data(); } })), meta);
  bar.done();
}

/** `rwkvx convert` and `rwkvx expand`: checkpoints in, our native safetensors out. */
export function register(program: Command): void {
  program
    .command('convert')
    .description('convert a checkpoint (.pth or safetensors) to the native rwkvx safetensors format')
    .argument('<in>', 'input checkpoint')
    .argument('<out>', 'output .safetensors (written atomically)')
    .option('--dtype <type>', 'store weights as f32, bf16 or f16 (default: keep)')
    .option('--chunk <n>', 'attention chunk size to record (RWKV-X)', int('--chunk'))
    .option('--topk <n>', 'attention top-k to record (RWKV-X)', int('--topk'))
    .action((inPath: string, outPath: string, o: { dtype?: string; chunk?: number; topk?: number }) => {
      if (sameFile(inPath, outPath)) fail('input and output are the same file');
      const to = parseDtype(o.dtype);
      const src = openCheckpoint(inPath);
      try {
        const cfg = inferConfig(src);
        validateTensors(src, cfg);
        if (o.chunk !== undefined) cfg.chunk = o.chunk;
        if (o.topk !== undefined) cfg.topk = o.topk;
        checkAttentionParams(cfg.chunk, cfg.topk);
        const tensors = src.names().map((name) => ({ name, shape: src.info(name)!.shape, ...recast(src, name, to) }));
        write(outPath, tensors, nativeMetadata(cfg), 'converting');
      } finally {
        src.close();
      }
    });

  program
    .command('expand')
    .description('build an RWKV-X model from an RWKV-7 one by inserting identity-initialised attention blocks')
    .requiredOption('--base <model>', 'RWKV-7 checkpoint')
    .requiredOption('--attn-layers <n>', 'number of attention blocks (must divide the RWKV block count)', int('--attn-layers'))
    .requiredOption('--out <file>', 'output .safetensors (written atomically)')
    .option('--init <mode>', "attention Q/K/V/FFN-key init: 'zero' (small random, output zero) or 'copy' (from the preceding RWKV block)", 'zero')
    .option('--seed <n>', 'seed of the random init', int('--seed'), 0)
    .option('--chunk <n>', 'attention chunk size', int('--chunk'), 2048)
    .option('--topk <n>', 'attention top-k', int('--topk'), 3)
    .action((o: { base: string; attnLayers: number; out: string; init: string; seed: number; chunk: number; topk: number }) => {
      if (o.init !== 'zero' && o.init !== 'copy') fail(`--init must be 'zero' or 'copy' (got '${o.init}')`);
      if (sameFile(o.base, o.out)) fail('input and output are the same file');
      checkAttentionParams(o.chunk, o.topk);
      if (!existsSync(o.base)) fail(`model file not found: ${o.base}`);
      const src = openCheckpoint(o.base);
      try {
        const base = inferConfig(src);
        validateTensors(src, base);
        const { cfg, tensors } = expandTensors(src, base, { nAttn: o.attnLayers, init: o.init, seed: o.seed, chunk: o.chunk, topk: o.topk });
        write(o.out, tensors, nativeMetadata(cfg), 'expanding');
      } finally {
        src.close();
      }
    });
}

