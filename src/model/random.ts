/**
 * Random weights (in the matmul heap, where the SIMD kernels read them in place) of a given shape, for benchmarks and tests that need a model of the real size
 * without a checkpoint. Scales follow RWKV-7's initialisation loosely so activations stay in range
 * (no overflow, no subnormals that would slow the CPU down).
 */
import { heapF32 } from '../backend/cpu/shared.js';
import { Rng } from '../generate/rng.js';
import { layerNorm } from '../backend/cpu/ops.js';
import type { ModelConfig } from './config.js';
import type { AttnBlockWeights, Leaves, ModelWeights, RwkvBlockWeights } from './weights.js';
export type { Leaves } from './weights.js';

export function shapeConfig(p: { vocab: number; dim: number; nLayer: number; nAttn?: number; chunk?: number; topk?: number }): ModelConfig {
  const C = p.dim;
  const r32 = (x: number) => Math.max(32, Math.round(x / 32) * 32);
  return {
    arch: (p.nAttn ?? 0) > 0 ? 'rwkvx' : 'rwkv7', vocab: p.vocab, dim: C, heads: C / 64, headSize: 64, nLayer: p.nLayer,
    ffn: 4 * C, lora: { w: r32(1.8 * Math.sqrt(C)), a: r32(1.8 * Math.sqrt(C)), v: r32(1.3 * Math.sqrt(C)), g: r32(0.6 * C ** 0.8) },
    nAttn: p.nAttn ?? 0, attnFfn: 4 * C, chunk: p.chunk ?? 2048, topk: p.topk ?? 3,
  };
}

/** One tensor of a random model: n values uniform in offset ± scale (scale 0: the constant offset). */
export interface RandomInit { n: number; scale: number; offset: number }
/** A random model described tensor by tensor (the embedding's rows are layer-normalised afterwards). */
export type RandomSpec = Leaves<ModelWeights, RandomInit>;

export function randomSpec(cfg: ModelConfig): RandomSpec {
  const C = cfg.dim;
  const u = (n: number, scale: number, offset = 0): RandomInit => ({ n, scale, offset });
  const ones = (n: number) => u(n, 0, 1), zeros = (n: number) => u(n, 0, 0);
  const m = (rows: number, cols: number) => u(rows * cols, 0.5 / Math.sqrt(cols));
  const blocks: Leaves<RwkvBlockWeights, RandomInit>[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const { w, a, v, g } = cfg.lora;
    blocks.push({
      ln1w: ones(C), ln1b: zeros(C), ln2w: ones(C), ln2b: zeros(C),
      xr: u(C, 0.5, 0.5), xw: u(C, 0.5, 0.5), xk: u(C, 0.5, 0.5), xv: u(C, 0.5, 0.5), xa: u(C, 0.5, 0.5), xg: u(C, 0.5, 0.5),
      w0: u(C, 2, -3), w1: m(C, w), w2: m(w, C),
      a0: u(C, 0.5), a1: m(C, a), a2: m(a, C),
      v0: u(C, 0.5, 1), v1: m(C, v), v2: m(v, C),
      g1: m(C, g), g2: m(g, C),
      kk: u(C, 0.1, 0.85), ka: u(C, 0.1, 1), rk: u(C, 0.1),
      Wr: m(C, C), Wk: m(C, C), Wv: m(C, C), Wo: m(C, C),
      lnxw: ones(C), lnxb: zeros(C),
      ffnXk: u(C, 0.5, 0.5), ffnK: m(cfg.ffn, C), ffnV: m(C, cfg.ffn),
    });
  }
  const attn: Leaves<AttnBlockWeights, RandomInit>[] = [];
  for (let j = 0; j < cfg.nAttn; j++) {
    attn.push({
      ln1w: ones(C), ln1b: zeros(C), ln2w: ones(C), ln2b: zeros(C),
      Wq: m(C, C), Wk: m(C, C), Wv: m(C, C), Wo: m(C, C),
      ffnXk: u(C, 0.5, 0.5), ffnK: m(cfg.attnFfn, C), ffnV: m(C, cfg.attnFfn),
    });
  }
  return { emb: u(cfg.vocab * C, 1), lnOutW: ones(C), lnOutB: zeros(C), head: m(cfg.vocab, C), blocks, attn };
}

/** The spec's tensors in this order: embedding, RWKV blocks, attention blocks, ln_out, head. */
export function specOrder<T>(w: Leaves<ModelWeights, T>): T[] {
  const out: T[] = [w.emb];
  for (const b of w.blocks) out.push(...(Object.values(b) as T[]));
  for (const a of w.attn) out.push(...(Object.values(a) as T[]));
  out.push(w.lnOutW, w.lnOutB, w.head);
  return out;
}

export function randomWeights(cfg: ModelConfig, seed = 1): ModelWeights {
  const rng = new Rng(seed);
  const spec = randomSpec(cfg);
  const made = new Map<RandomInit, Float32Array>();
  for (const t of specOrder(spec)) {
    const a = heapF32(t.n);
    if (t.scale === 0) a.fill(t.offset);
    else for (let i = 0; i < t.n; i++) a[i] = t.offset + (rng.next() * 2 - 1) * t.scale;
    made.set(t, a);
  }
  const get = (t: RandomInit) => made.get(t)!;
  const tree = <W extends object>(o: W) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, get(v as RandomInit)]));
  const C = cfg.dim;
  const emb = get(spec.emb);
  layerNorm(emb, emb, heapF32(C).fill(1), heapF32(C), cfg.vocab, C);
  return {
    emb, lnOutW: get(spec.lnOutW), lnOutB: get(spec.lnOutB), head: get(spec.head),
    blocks: spec.blocks.map((b) => tree(b) as unknown as RwkvBlockWeights),
    attn: spec.attn.map((a) => tree(a) as unknown as AttnBlockWeights),
  };
}
