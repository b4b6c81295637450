/**
 * Training forward and backward of one sparse-attention block (SPEC §3, "moba" semantics) over T tokens
 * from an empty cache:  h1 = h + W_o·Attn(LN1(h));  out = h1 + ChannelMix(LN2(h1)).
 *
 * Each query at position t (chunk c = ⌊t/B⌋) attends, per head, to its own chunk causally and to the
 * top-(k−1) complete past chunks ranked by q·mean(K_chunk). The selection is a discrete choice: it is
 * stored in the forward and treated as a constant in the backward (mean(K) only selects, so no gradient
 * flows through it); the gradient flows through the selected keys, values and the softmax.
 * The forward keeps the log-sum-exp of every (token, head) softmax, so the backward recomputes the
 * probabilities without storing them (as flash attention does).
 */
import type { ModelConfig } from '../model/config.js';
import type { AttnBlockWeights } from '../model/weights.js';
import type { Workspace } from '../backend/cpu/workspace.js';
import { linear } from '../backend/cpu/matmul.js';
import { addInPlace, layerNorm, layerNormBackward } from '../backend/cpu/ops.js';
import { topIndices } from '../model/attention-block.js';
import { channelMixBackward, channelMixForward, linearBackward, store, type ChannelMixActs } from './rwkv7-grad.js';

export type AttnBlockGrads = { [K in keyof AttnBlockWeights]: Float32Array };

export function zeroAttnGrads(w: AttnBlockWeights): AttnBlockGrads {
  const g = {} as AttnBlockGrads;
  for (const k of Object.keys(w) as (keyof AttnBlockWeights)[]) g[k] = new Float32Array(w[k].length);
  return g;
}

export interface AttnActs {
  x1: Float32Array; q: Float32Array; k: Float32Array; v: Float32Array; y: Float32Array;
  /** log Σ exp(score) per (token, head). */
  lse: Float64Array;
  /** Selected past chunks per (token, head), k − 1 slots, −1 when unused. */
  sel: Int32Array;
  out: Float32Array; h1: Float32Array; x2: Float32Array; cm: ChannelMixActs;
}

/** The key ranges [start, end) query t of head h attends to: selected past chunks, then its own chunk. */
function rangesOf(sel: Int32Array, slot: number, nSel: number, t: number, B: number): number[] {
  const ranges: number[] = [];
  for (let s = 0; s < nSel; s++) {
    const j = sel[slot + s];
    if (j >= 0) ranges.push(j * B, (j + 1) * B);
  }
  const c = Math.floor(t / B);
  ranges.push(c * B, t + 1);
  return ranges;
}

/** Attention core: y = softmax(q·Kᵀ/√N over the selected keys)·V, per head; fills lse and sel. */
export function mobaForward(
  y: Float32Array, lse: Float64Array, sel: Int32Array, q: Float32Array, k: Float32Array, v: Float32Array,
  T: number, H: number, N: number, B: number, topk: number,
): void {
  const C = H * N, nSel = topk - 1, scale = 1 / Math.sqrt(N);
  // mean key of each complete chunk, as the inference path computes it (float64 sum, float32 mean)
  const nc = Math.floor(T / B);
  const means = new Float32Array(nc * C), acc = new Float64Array(C);
  for (let c = 0; c < nc; c++) {
    acc.fill(0);
    for (let p = c * B; p < (c + 1) * B; p++) for (let i = 0; i < C; i++) acc[i] += k[p * C + i];
    for (let i = 0; i < C; i++) means[c * C + i] = acc[i] / B;
  }
  const scores = new Float64Array(Math.max(1, nc));
  const s = new Float64Array(Math.max(1, topk) * B);
  const yo = new Float64Array(N);
  sel.fill(-1);
  for (let t = 0; t < T; t++) {
    const c = Math.floor(t / B);
    for (let h = 0; h < H; h++) {
      const qo = t * C + h * N, ho = h * N, slot = (t * H + h) * nSel;
      for (let j = 0; j < c; j++) {
        let sc = 0;
        for (let i = 0; i < N; i++) sc += q[qo + i] * means[j * C + ho + i];
        scores[j] = sc;
      }
      topIndices(scores, c, nSel).forEach((j, idx) => { sel[slot + idx] = j; });
      const ranges = rangesOf(sel, slot, nSel, t, B);
      let m = -Infinity, cnt = 0;
      for (let r = 0; r < ranges.length; r += 2) for (let p = ranges[r]; p < ranges[r + 1]; p++) {
        let sc = 0;
        const ko = p * C + ho;
        for (let i = 0; i < N; i++) sc += q[qo + i] * k[ko + i];
        sc *= scale;
        s[cnt++] = sc;
        if (sc > m) m = sc;
      }
      let denom = 0;
      for (let u = 0; u < cnt; u++) { s[u] = Math.exp(s[u] - m); denom += s[u]; }
      yo.fill(0);
      cnt = 0;
      for (let r = 0; r < ranges.length; r += 2) for (let p = ranges[r]; p < ranges[r + 1]; p++) {
        const e = s[cnt++], vo = p * C + ho;
        for (let i = 0; i < N; i++) yo[i] += e * v[vo + i];
      }
      for (let i = 0; i < N; i++) y[qo + i] = yo[i] / denom;
      lse[t * H + h] = m + Math.log(denom);
    }
  }
}

/**
 * Backward of mobaForward: with P = exp(score − lse), dP = dy·v, D = dy·y:
 *   dv_p += P·dy;  dscore = P·(dP − D);  dq += dscore·k_p/√N;  dk_p += dscore·q/√N.
 * dq, dk, dv are overwritten (float64 accumulation, float32 result).
 */
export function mobaBackward(
  dq: Float32Array, dk: Float32Array, dv: Float32Array, dy: Float32Array,
  q: Float32Array, k: Float32Array, v: Float32Array, y: Float32Array, lse: Float64Array, sel: Int32Array,
  T: number, H: number, N: number, B: number, topk: number,
): void {
  const C = H * N, nSel = topk - 1, scale = 1 / Math.sqrt(N);
  const dk64 = new Float64Array(T * C), dv64 = new Float64Array(T * C), dqo = new Float64Array(N);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const qo = t * C + h * N, ho = h * N;
      const ranges = rangesOf(sel, (t * H + h) * nSel, nSel, t, B);
      const L = lse[t * H + h];
      let D = 0;
      for (let i = 0; i < N; i++) D += dy[qo + i] * y[qo + i];
      dqo.fill(0);
      for (let r = 0; r < ranges.length; r += 2) for (let p = ranges[r]; p < ranges[r + 1]; p++) {
        const ko = p * C + ho;
        let sc = 0, dp = 0;
        for (let i = 0; i < N; i++) { sc += q[qo + i] * k[ko + i]; dp += dy[qo + i] * v[ko + i]; }
        const P = Math.exp(sc * scale - L);
        const ds = P * (dp - D) * scale;
        for (let i = 0; i < N; i++) {
          dv64[ko + i] += P * dy[qo + i];
          dqo[i] += ds * k[ko + i];
          dk64[ko + i] += ds * q[qo + i];
        }
      }
      for (let i = 0; i < N; i++) dq[qo + i] = dqo[i];
    }
  }
  dk.set(dk64);
  dv.set(dv64);
}

/** h ← block(h) in place, keeping the activations in `ws`. */
export function attnBlockForward(
  ws: Workspace, cfg: ModelConfig, w: AttnBlockWeights, h: Float32Array, T: number, B: number, topk: number,
): AttnActs {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, n = T * C;
  const x1 = ws.get('ab.x1', n);
  layerNorm(x1, h, w.ln1w, w.ln1b, T, C);
  const q = ws.get('ab.q', n), k = ws.get('ab.k', n), v = ws.get('ab.v', n), y = ws.get('ab.y', n);
  linear(q, x1, w.Wq, T, C, C);
  linear(k, x1, w.Wk, T, C, C);
  linear(v, x1, w.Wv, T, C, C);
  const lse = new Float64Array(T * H), sel = new Int32Array(Math.max(1, T * H * (topk - 1)));
  mobaForward(y, lse, sel, q, k, v, T, H, N, B, topk);
  const out = ws.get('ab.out', n);
  linear(out, y, w.Wo, T, C, C);
  addInPlace(h, out, n);
  const h1 = ws.get('ab.h1', n);
  h1.set(h);
  const x2 = ws.get('ab.x2', n);
  layerNorm(x2, h, w.ln2w, w.ln2b, T, C);
  const cm = channelMixForward(ws, 'acm.', C, cfg.attnFfn, w.ffnXk, w.ffnK, w.ffnV, x2, T);
  addInPlace(h, cm.out, n);
  return { x1, q, k, v, y, lse, sel, out, h1, x2, cm };
}

/** Recomputes the block from its input hIn, then turns dh (w.r.t. its output) into dh w.r.t. its input. */
export function attnBlockBackward(
  ws: Workspace, cfg: ModelConfig, w: AttnBlockWeights, g: AttnBlockGrads, hIn: Float32Array, dh: Float32Array,
  T: number, B: number, topk: number,
): void {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, n = T * C;
  const h = ws.get('ab.h', n);
  h.set(hIn);
  const A = attnBlockForward(ws, cfg, w, h, T, B, topk);
  const dx2 = channelMixBackward(ws, 'acm.', C, cfg.attnFfn, A.cm, w.ffnXk, w.ffnK, w.ffnV, g.ffnXk, g.ffnK, g.ffnV, dh, T);
  const d2w = new Float64Array(C), d2b = new Float64Array(C);
  layerNormBackward(dh, d2w, d2b, dx2, A.h1, w.ln2w, T, C);
  store(g.ln2w, d2w); store(g.ln2b, d2b);
  const dy = ws.get('abb.dy', n);
  linearBackward(ws, dy, g.Wo, dh, A.y, w.Wo, T, C, C, false);
  const dq = ws.get('abb.dq', n), dk = ws.get('abb.dk', n), dv = ws.get('abb.dv', n);
  mobaBackward(dq, dk, dv, dy, A.q, A.k, A.v, A.y, A.lse, A.sel, T, H, N, B, topk);
  const dx1 = ws.get('abb.dx1', n);
  linearBackward(ws, dx1, g.Wq, dq, A.x1, w.Wq, T, C, C, false);
  linearBackward(ws, dx1, g.Wk, dk, A.x1, w.Wk, T, C, C, true);
  linearBackward(ws, dx1, g.Wv, dv, A.x1, w.Wv, T, C, C, true);
  const d1w = new Float64Array(C), d1b = new Float64Array(C);
  layerNormBackward(dh, d1w, d1b, dx1, hIn, w.ln1w, T, C);
  store(g.ln1w, d1w); store(g.ln1b, d1b);
}
