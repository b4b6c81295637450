/**
 * One RWKV-7 block (SPEC §2) over T tokens of one sequence, carrying its state:
 *   h += TimeMix(LN1(h)); h += ChannelMix(LN2(h))
 */
import type { ModelConfig } from './config.js';
import type { RwkvBlockWeights } from './weights.js';
import type { RwkvLayerState } from './state.js';
import type { Workspace } from '../backend/cpu/workspace.js';
import { linear, matmul } from '../backend/cpu/matmul.js';
import { addInPlace, groupNorm, layerNorm, mixShift, reluSquareInPlace, tanhInPlace, tokenShift } from '../backend/cpu/ops.js';
import { wkv7 } from '../backend/cpu/wkv7.js';

/** ω = exp(−e^{−1/2}·σ(d)), so ω ∈ (0.545, 1). */
const DECAY_SCALE = Math.exp(-0.5);
const GROUPNORM_EPS = 64e-5;

export function rwkvBlock(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, st: RwkvLayerState, layer: number,
  h: Float32Array, vFirst: Float32Array, T: number,
): void {
  const C = cfg.dim;
  const n = T * C;
  const x = ws.get('x', n);
  const dx = ws.get('dx', n);
  const out = ws.get('out', n);
  layerNorm(x, h, w.ln1w, w.ln1b, T, C);
  timeMix(ws, cfg, w, st, layer, x, dx, out, vFirst, T);
  addInPlace(h, out, n);
  layerNorm(x, h, w.ln2w, w.ln2b, T, C);
  channelMix(ws, C, cfg.ffn, w.ffnXk, w.ffnK, w.ffnV, st.ffnXPrev, x, dx, out, T);
  addInPlace(h, out, n);
}

function timeMix(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, st: RwkvLayerState, layer: number,
  x: Float32Array, dx: Float32Array, out: Float32Array, vFirst: Float32Array, T: number,
): void {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize;
  const n = T * C;
  tokenShift(dx, x, st.attXPrev, T, C);
  const xm = ws.get('xm', n);
  const r = ws.get('r', n), k = ws.get('k', n), v = ws.get('v', n);
  const dec = ws.get('w', n), a = ws.get('a', n), g = ws.get('g', n);
  const lo = ws.get('lora', T * Math.max(cfg.lora.w, cfg.lora.a, cfg.lora.v, cfg.lora.g));

  mixShift(xm, x, dx, w.xr, T, C); linear(r, xm, w.Wr, T, C, C);
  mixShift(xm, x, dx, w.xk, T, C); linear(k, xm, w.Wk, T, C, C);

  // decay: d = w0 + tanh(x_w·w1)·w2, in float32 or better throughout
  mixShift(xm, x, dx, w.xw, T, C);
  matmul(lo, xm, w.w1, T, C, cfg.lora.w); tanhInPlace(lo, T * cfg.lora.w);
  matmul(dec, lo, w.w2, T, cfg.lora.w, C);
  for (let t = 0; t < T; t++) for (let i = 0; i < C; i++) {
    const d = dec[t * C + i] + w.w0[i];
    dec[t * C + i] = Math.exp(-DECAY_SCALE / (1 + Math.exp(-d)));
  }

  // in-context learning rate a = σ(a0 + (x_a·a1)·a2)
  mixShift(xm, x, dx, w.xa, T, C);
  matmul(lo, xm, w.a1, T, C, cfg.lora.a); matmul(a, lo, w.a2, T, cfg.lora.a, C);
  for (let t = 0; t < T; t++) for (let i = 0; i < C; i++) a[t * C + i] = 1 / (1 + Math.exp(-(a[t * C + i] + w.a0[i])));

  // value, with the value residual to block 0's value
  mixShift(xm, x, dx, w.xv, T, C); linear(v, xm, w.Wv, T, C, C);
  if (layer === 0) {
    vFirst.set(v);
  } else {
    const vg = ws.get('vg', n);
    matmul(lo, xm, w.v1, T, C, cfg.lora.v); matmul(vg, lo, w.v2, T, cfg.lora.v, C);
    for (let t = 0; t < T; t++) for (let i = 0; i < C; i++) {
      const j = t * C + i;
      const s = 1 / (1 + Math.exp(-(vg[j] + w.v0[i])));
      v[j] += (vFirst[j] - v[j]) * s;
    }
  }

  // gate g = σ(x_g·g1)·g2
  mixShift(xm, x, dx, w.xg, T, C);
  matmul(lo, xm, w.g1, T, C, cfg.lora.g);
  for (let j = 0; j < T * cfg.lora.g; j++) lo[j] = 1 / (1 + Math.exp(-lo[j]));
  matmul(g, lo, w.g2, T, cfg.lora.g, C);

  // κ̂ = normalise(k ⊙ k_k) per head; written key k̃ = k ⊙ (1 + (a − 1) ⊙ k_a)
  const kk = ws.get('kk', n);
  for (let t = 0; t < T; t++) for (let hh = 0; hh < H; hh++) {
    const o = t * C + hh * N;
    let ss = 0;
    for (let j = 0; j < N; j++) { const q = k[o + j] * w.kk[hh * N + j]; kk[o + j] = q; ss += q * q; }
    const inv = 1 / Math.max(Math.sqrt(ss), 1e-12);
    for (let j = 0; j < N; j++) kk[o + j] *= inv;
    for (let j = 0; j < N; j++) k[o + j] *= 1 + (a[o + j] - 1) * w.ka[hh * N + j];
  }

  const y = ws.get('y', n);
  wkv7(y, st.wkv, r, dec, k, v, kk, a, T, H, N);
  groupNorm(y, y, w.lnxw, w.lnxb, T, H, N, GROUPNORM_EPS);

  // bonus (Σ_j r_j k̃_j ρ_j)·v per head, then the gate
  for (let t = 0; t < T; t++) for (let hh = 0; hh < H; hh++) {
    const o = t * C + hh * N;
    let s = 0;
    for (let j = 0; j < N; j++) s += r[o + j] * k[o + j] * w.rk[hh * N + j];
    for (let i = 0; i < N; i++) y[o + i] = (y[o + i] + s * v[o + i]) * g[o + i];
  }
  linear(out, y, w.Wo, T, C, C);
}

/** ChannelMix: out = W_value·ReLU(W_key·(x + (x_prev − x)⊙μ_k))². Shared by both block kinds. */
export function channelMix(
  ws: Workspace, C: number, F: number, mu: Float32Array, Wk: Float32Array, Wv: Float32Array, xPrev: Float32Array,
  x: Float32Array, dx: Float32Array, out: Float32Array, T: number,
): void {
  tokenShift(dx, x, xPrev, T, C);
  const xm = ws.get('xm', T * C);
  mixShift(xm, x, dx, mu, T, C);
  const hid = ws.get('ffn', T * F);
  linear(hid, xm, Wk, T, C, F);
  reluSquareInPlace(hid, T * F);
  linear(out, hid, Wv, T, F, C);
}
