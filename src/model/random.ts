/**
 * Random weights (in the matmul heap, where the SIMD kernels read them in place) of a given shape, for benchmarks and tests that need a model of the real size
 * without a checkpoint. Scales follow RWKV-7's initialisation loosely so activations stay in range
 * (no overflow, no subnormals that would slow the CPU down).
 */
import { heapF32 } from '../backend/cpu/shared.js';
import { Rng } from '../generate/rng.js';
import { layerNorm } from '../backend/cpu/ops.js';
import type { ModelConfig } from './config.js';
import type { AttnBlockWeights, ModelWeights, RwkvBlockWeights } from './weights.js';

export function shapeConfig(p: { vocab: number; dim: number; nLayer: number; nAttn?: number; chunk?: number; topk?: number }): ModelConfig {
  const C = p.dim;
  const r32 = (x: number) => Math.max(32, Math.round(x / 32) * 32);
  return {
    arch: (p.nAttn ?? 0) > 0 ? 'rwkvx' : 'rwkv7', vocab: p.vocab, dim: C, heads: C / 64, headSize: 64, nLayer: p.nLayer,
    ffn: 4 * C, lora: { w: r32(1.8 * Math.sqrt(C)), a: r32(1.8 * Math.sqrt(C)), v: r32(1.3 * Math.sqrt(C)), g: r32(0.6 * C ** 0.8) },
    nAttn: p.nAttn ?? 0, attnFfn: 4 * C, chunk: p.chunk ?? 2048, topk: p.topk ?? 3,
  };
}

export function randomWeights(cfg: ModelConfig, seed = 1): ModelWeights {
  const rng = new Rng(seed);
  const C = cfg.dim;
  const u = (n: number, scale: number, offset = 0) => {
    const a = heapF32(n);
    for (let i = 0; i < n; i++) a[i] = offset + (rng.next() * 2 - 1) * scale;
    return a;
  };
  const ones = (n: number) => heapF32(n).fill(1);
  const m = (rows: number, cols: number) => u(rows * cols, 0.5 / Math.sqrt(cols));
  const emb = u(cfg.vocab * C, 1);
  layerNorm(emb, emb, ones(C), heapF32(C), cfg.vocab, C);
  const blocks: RwkvBlockWeights[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const { w, a, v, g } = cfg.lora;
    blocks.push({
      ln1w: ones(C), ln1b: heapF32(C), ln2w: ones(C), ln2b: heapF32(C),
      xr: u(C, 0.5, 0.5), xw: u(C, 0.5, 0.5), xk: u(C, 0.5, 0.5), xv: u(C, 0.5, 0.5), xa: u(C, 0.5, 0.5), xg: u(C, 0.5, 0.5),
      w0: u(C, 2, -3), w1: m(C, w), w2: m(w, C),
      a0: u(C, 0.5), a1: m(C, a), a2: m(a, C),
      v0: u(C, 0.5, 1), v1: m(C, v), v2: m(v, C),
      g1: m(C, g), g2: m(g, C),
      kk: u(C, 0.1, 0.85), ka: u(C, 0.1, 1), rk: u(C, 0.1),
      Wr: m(C, C), Wk: m(C, C), Wv: m(C, C), Wo: m(C, C),
      lnxw: ones(C), lnxb: heapF32(C),
      ffnXk: u(C, 0.5, 0.5), ffnK: m(cfg.ffn, C), ffnV: m(C, cfg.ffn),
    });
  }
  const attn: AttnBlockWeights[] = [];
  for (let j = 0; j < cfg.nAttn; j++) {
    attn.push({
      ln1w: ones(C), ln1b: heapF32(C), ln2w: ones(C), ln2b: heapF32(C),
      Wq: m(C, C), Wk: m(C, C), Wv: m(C, C), Wo: m(C, C),
      ffnXk: u(C, 0.5, 0.5), ffnK: m(cfg.attnFfn, C), ffnV: m(C, cfg.attnFfn),
    });
  }
  return { emb, lnOutW: ones(C), lnOutB: heapF32(C), head: m(cfg.vocab, C), blocks, attn };
}
