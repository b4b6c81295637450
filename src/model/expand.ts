/**
 * Block expansion (SPEC §4): an RWKV-7 checkpoint becomes an RWKV-X one by inserting attention
 * blocks that start as the identity (att.output and ffn.value zero), so the new model computes
 * exactly what the old one did; training then teaches the new blocks.
 */
import type { DType, TensorSource } from '../io/types.js';
import { f32ToBf16, f32ToF16 } from '../io/dtype.js';
import { fail } from '../util/errors.js';
import { Rng } from '../generate/rng.js';
import type { ModelConfig } from './config.js';
import { attnBlockTensors, attnPrefix, expectedTensors, NATIVE_META_KEY, NATIVE_VERSION } from './weights.js';

export type ExpandInit = 'zero' | 'copy';

export interface ExpandOptions {
  nAttn: number;
  /** 'zero': Q/K/V/ffn.key small random; 'copy': copied from the RWKV block before the insertion. */
  init: ExpandInit;
  seed: number;
  chunk: number;
  topk: number;
}

/** A tensor to be written, produced only when the writer reaches it (one at a time in memory). */
export interface LazyTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: () => ArrayBufferView;
}

export function nativeMetadata(cfg: Pick<ModelConfig, 'arch' | 'chunk' | 'topk'>): Record<string, string> {
  return { [NATIVE_META_KEY]: JSON.stringify({ format: 'rwkvx', version: NATIVE_VERSION, arch: cfg.arch, chunk: cfg.chunk, topk: cfg.topk }) };
}

function encode(values: Float32Array, dtype: DType): ArrayBufferView {
  if (dtype === 'F32') return values;
  if (dtype === 'BF16') return f32ToBf16(values);
  if (dtype === 'F16') return f32ToF16(values);
  return fail(`cannot expand a checkpoint stored as ${dtype} (use float32, float16 or bfloat16)`);
}

/** The tensors of the expanded model, in our native naming (rwkv.* + moba.{j}.*). */
export function expandTensors(src: TensorSource, base: ModelConfig, o: ExpandOptions): { cfg: ModelConfig; tensors: LazyTensor[] } {
  if (base.arch !== 'rwkv7') fail(`${src.path} already has attention blocks; expand an RWKV-7 checkpoint`);
  if (!Number.isInteger(o.nAttn) || o.nAttn <= 0) fail(`--attn-layers must be a positive integer (got ${o.nAttn})`);
  if (base.nLayer % o.nAttn !== 0) {
    const divisors = [...Array(base.nLayer).keys()].map((i) => i + 1).filter((d) => base.nLayer % d === 0);
    fail(`--attn-layers ${o.nAttn} does not divide the ${base.nLayer} RWKV blocks; choose one of ${divisors.join(', ')}`);
  }
  const cfg: ModelConfig = { ...base, arch: 'rwkvx', nAttn: o.nAttn, attnFfn: 4 * base.dim, chunk: o.chunk, topk: o.topk };
  const C = cfg.dim, interval = base.nLayer / o.nAttn;
  const dtype = src.info('emb.weight')!.dtype;
  const tensors: LazyTensor[] = [];
  for (const [name, shape] of expectedTensors(base)) {
    tensors.push({ name: `rwkv.${name}`, dtype: src.info(name)!.dtype, shape: src.info(name)!.shape, data: () => src.readRaw(name) });
  }
  // each tensor draws from its own generator, so values do not depend on the order of writing
  const uniform = (name: string, n: number, bound: number) => {
    let h = o.seed >>> 0;
    for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
    const rng = new Rng(h);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * bound;
    return a;
  };
  for (let j = 0; j < o.nAttn; j++) {
    const before = `blocks.${(j + 1) * interval - 1}.`;
    const shapes = new Map(attnBlockTensors(cfg));
    const make = (suffix: string, values: () => Float32Array): void => {
      tensors.push({ name: `${attnPrefix(j)}${suffix}`, dtype, shape: shapes.get(suffix)!, data: () => encode(values(), dtype) });
    };
    const fill = (n: number, v: number) => () => new Float32Array(n).fill(v);
    // copy keeps the source's exact values (no rounding through float32 when dtypes agree)
    const copyOr = (suffix: string, srcName: string, bound: number, n: number) => {
      if (o.init === 'copy') {
        tensors.push({ name: `${attnPrefix(j)}${suffix}`, dtype: src.info(srcName)!.dtype, shape: shapes.get(suffix)!, data: () => src.readRaw(srcName) });
      } else {
        make(suffix, () => uniform(`${attnPrefix(j)}${suffix}`, n, bound / Math.sqrt(C)));
      }
    };
    make('ln1.weight', fill(C, 1)); make('ln1.bias', fill(C, 0));
    make('ln2.weight', fill(C, 1)); make('ln2.bias', fill(C, 0));
    copyOr('att.receptance.weight', `${before}att.receptance.weight`, 0.5, C * C);
    copyOr('att.key.weight', `${before}att.key.weight`, 0.05, C * C);
    copyOr('att.value.weight', `${before}att.value.weight`, 0.5, C * C);
    make('att.output.weight', fill(C * C, 0));
    // channel-mix token-shift as RWKV-7 initialises it: 1 − (i/C)^((1 − j/L)^4)
    make('ffn.x_k', () => {
      const e = (1 - j / base.nLayer) ** 4;
      const a = new Float32Array(C);
      for (let i = 0; i < C; i++) a[i] = 1 - (i / C) ** e;
      return a;
    });
    if (o.init === 'copy' && base.ffn === cfg.attnFfn) copyOr('ffn.key.weight', `${before}ffn.key.weight`, 0.5, cfg.attnFfn * C);
    else {
      make('ffn.key.weight', () => uniform(`${attnPrefix(j)}ffn.key.weight`, cfg.attnFfn * C, 0.5 / Math.sqrt(C)));
    }
    make('ffn.value.weight', fill(C * cfg.attnFfn, 0));
  }
  return { cfg, tensors };
}
