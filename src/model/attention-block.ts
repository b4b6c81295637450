/**
 * The sparse-attention block (SPEC §3): x += Attn(LN1(x)); x += ChannelMix(LN2(x)).
 * No positional encoding; H heads of N = 64; softmax scale 1/√N.
 *
 * Which keys a query sees:
 * - "moba" (default, the trained semantics): its own chunk causally, plus the top-(k−1) complete
 *   past chunks per head ranked by q·mean(K_chunk). Independent of how the sequence is split into
 *   calls, so prefill and token-by-token decoding agree.
 * - "official" (the authors' inference package): depends on the call. See officialKeys().
 */
import type { AttentionSemantics, ModelConfig } from './config.js';
import type { AttnBlockWeights } from './weights.js';
import { reserveKv, type AttnLayerState } from './state.js';
import type { Workspace } from '../backend/cpu/workspace.js';
import { linear } from '../backend/cpu/matmul.js';
import { addInPlace, layerNorm } from '../backend/cpu/ops.js';
import { channelMix } from './rwkv7-block.js';

export function attentionBlock(
  ws: Workspace, cfg: ModelConfig, w: AttnBlockWeights, st: AttnLayerState, semantics: AttentionSemantics,
  h: Float32Array, T: number,
): void {
  const C = cfg.dim;
  const n = T * C;
  const x = ws.get('x', n), dx = ws.get('dx', n), out = ws.get('out', n);
  layerNorm(x, h, w.ln1w, w.ln1b, T, C);
  const q = ws.get('q', n), y = ws.get('y', n);
  const P = st.len;
  reserveKv(st, P + T, C);
  linear(q, x, w.Wq, T, C, C);
  linear(st.k.subarray(P * C, (P + T) * C), x, w.Wk, T, C, C);
  linear(st.v.subarray(P * C, (P + T) * C), x, w.Wv, T, C, C);
  st.len = P + T;
  updateChunkMeans(st, cfg);
  if (semantics === 'moba') attendMoba(y, q, st, cfg, P, T);
  else attendOfficial(y, q, st, cfg, P, T);
  linear(out, y, w.Wo, T, C, C);
  addInPlace(h, out, n);
  layerNorm(x, h, w.ln2w, w.ln2b, T, C);
  channelMix(ws, C, cfg.attnFfn, w.ffnXk, w.ffnK, w.ffnV, st.ffnXPrev, x, dx, out, T);
  addInPlace(h, out, n);
}

/** Computes the mean key of every chunk completed since the last call (each chunk's mean once). */
export function updateChunkMeans(st: AttnLayerState, cfg: ModelConfig): void {
  const C = cfg.dim, B = cfg.chunk;
  const complete = Math.floor(st.len / B);
  const have = st.nMeans;
  if (complete <= have) return;
  if (st.means.length < complete * C) {
    const grown = new Float32Array(Math.max(complete, 2 * have, 8) * C);
    grown.set(st.means.subarray(0, have * C));
    st.means = grown;
  }
  const means = st.means;
  const acc = new Float64Array(C);
  for (let c = have; c < complete; c++) {
    acc.fill(0);
    for (let p = c * B; p < (c + 1) * B; p++) for (let i = 0; i < C; i++) acc[i] += st.k[p * C + i];
    for (let i = 0; i < C; i++) means[c * C + i] = acc[i] / B;
  }
  st.nMeans = complete;
}

/**
 * Softmax attention of one query head over a set of key ranges [start, end) of the cache,
 * accumulated online (running max) so the keys need no gathering.
 */
function attendRanges(
  y: Float32Array, yo: number, q: Float32Array, qo: number, st: AttnLayerState, C: number, ho: number, N: number,
  ranges: number[], scale: number, acc: Float64Array,
): void {
  let m = -Infinity, denom = 0;
  acc.fill(0, 0, N);
  const K = st.k, V = st.v;
  for (let r = 0; r < ranges.length; r += 2) {
    for (let p = ranges[r]; p < ranges[r + 1]; p++) {
      const ko = p * C + ho;
      let s = 0;
      for (let j = 0; j < N; j++) s += q[qo + j] * K[ko + j];
      s *= scale;
      if (s > m) {
        const f = Math.exp(m - s);
        denom *= f;
        for (let j = 0; j < N; j++) acc[j] *= f;
        m = s;
      }
      const e = Math.exp(s - m);
      denom += e;
      for (let j = 0; j < N; j++) acc[j] += e * V[ko + j];
    }
  }
  for (let j = 0; j < N; j++) y[yo + j] = acc[j] / denom;
}

/** Indices of the `k` largest scores (all of them when there are fewer), best first. */
export function topIndices(scores: Float64Array, count: number, k: number): number[] {
  const chosen: number[] = [];
  const taken = new Uint8Array(count);
  for (let s = 0; s < Math.min(k, count); s++) {
    let best = -1;
    for (let j = 0; j < count; j++) if (!taken[j] && (best < 0 || scores[j] > scores[best])) best = j;
    taken[best] = 1;
    chosen.push(best);
  }
  return chosen;
}

function attendMoba(y: Float32Array, q: Float32Array, st: AttnLayerState, cfg: ModelConfig, P: number, T: number): void {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, B = cfg.chunk;
  const scale = 1 / Math.sqrt(N);
  const acc = new Float64Array(N);
  const scores = new Float64Array(Math.max(1, Math.ceil((P + T) / B)));
  for (let t = 0; t < T; t++) {
    const p = P + t, c = Math.floor(p / B);
    for (let h = 0; h < H; h++) {
      const qo = t * C + h * N, ho = h * N;
      for (let j = 0; j < c; j++) {
        let s = 0;
        for (let i = 0; i < N; i++) s += q[qo + i] * st.means[j * C + ho + i];
        scores[j] = s;
      }
      const ranges: number[] = [];
      for (const j of topIndices(scores, c, cfg.topk - 1)) ranges.push(j * B, (j + 1) * B);
      ranges.push(c * B, p + 1);
      attendRanges(y, qo, q, qo, st, C, ho, N, ranges, scale, acc);
    }
  }
}

/**
 * The authors' inference package (rwkv-x 0.1.3), reproduced for comparison:
 * - a call of T > 1 tokens over a cache of P: if P + T ≤ B·k, dense causal over cache and new tokens;
 *   otherwise each new token sees only its own B-chunk of this call (chunks counted from the call's
 *   start), causally, and nothing of the cache;
 * - a call of one token: if P ≤ B·k, dense over cache and itself; otherwise the top-k complete chunks
 *   by q·mean(K) summed over all heads (one choice shared by every head), the incomplete tail, itself.
 */
function attendOfficial(y: Float32Array, q: Float32Array, st: AttnLayerState, cfg: ModelConfig, P: number, T: number): void {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, B = cfg.chunk, dense = B * cfg.topk;
  const scale = 1 / Math.sqrt(N);
  const acc = new Float64Array(N);
  if (T > 1) {
    for (let t = 0; t < T; t++) {
      const p = P + t;
      const ranges = P + T <= dense ? [0, p + 1] : [P + Math.floor(t / B) * B, p + 1];
      for (let h = 0; h < H; h++) attendRanges(y, t * C + h * N, q, t * C + h * N, st, C, h * N, N, ranges, scale, acc);
    }
    return;
  }
  let ranges: number[];
  if (P <= dense) {
    ranges = [0, P + 1];
  } else {
    const complete = Math.floor(P / B);
    const scores = new Float64Array(complete);
    for (let j = 0; j < complete; j++) {
      let s = 0;
      for (let i = 0; i < C; i++) s += q[i] * st.means[j * C + i];
      scores[j] = s;
    }
    ranges = [];
    for (const j of topIndices(scores, complete, cfg.topk)) ranges.push(j * B, (j + 1) * B);
    ranges.push(complete * B, P + 1);
  }
  for (let h = 0; h < H; h++) attendRanges(y, h * N, q, h * N, st, C, h * N, N, ranges, scale, acc);
}
