/**
 * The two ends of the model for training: the embedding with block 0's ln0 (h = LN_ln0(emb[token]),
 * unfolded, so gradients reach emb.weight and ln0) and the output head with the mean next-token
 * cross-entropy. The head is done in segments of tokens, so the [T, V] logits never exist at once.
 */
import { linear, matmul } from '../backend/cpu/matmul.js';
import { matmulTN } from '../backend/cpu/matmul-grad.js';
import { layerNorm, layerNormBackward } from '../backend/cpu/ops.js';
import type { Workspace } from '../backend/cpu/workspace.js';
import { store } from './rwkv7-grad.js';

/** h[t] = LayerNorm(emb[ids[t]])·w + b. */
export function embedForward(h: Float32Array, emb: Float32Array, lnw: Float32Array, lnb: Float32Array, ids: ArrayLike<number>, T: number, C: number): void {
  for (let t = 0; t < T; t++) h.set(emb.subarray(ids[t] * C, (ids[t] + 1) * C), t * C);
  layerNorm(h, h, lnw, lnb, T, C);
}

/**
 * Backward of embedForward: ln0's weight and bias gradients are set; each token's row of dEmb
 * accumulates (dEmb must start zeroed: rows of tokens not seen stay zero).
 */
export function embedBackward(
  ws: Workspace, dEmb: Float32Array, dlnw: Float32Array, dlnb: Float32Array, dh: Float32Array,
  emb: Float32Array, lnw: Float32Array, ids: ArrayLike<number>, T: number, C: number,
): void {
  const e = ws.get('emb.rows', T * C), de = ws.get('emb.drows', T * C).fill(0);
  for (let t = 0; t < T; t++) e.set(emb.subarray(ids[t] * C, (ids[t] + 1) * C), t * C);
  const dw = new Float64Array(C), db = new Float64Array(C);
  layerNormBackward(de, dw, db, dh, e, lnw, T, C);
  store(dlnw, dw); store(dlnb, db);
  for (let t = 0; t < T; t++) {
    const o = ids[t] * C;
    for (let i = 0; i < C; i++) dEmb[o + i] += de[t * C + i];
  }
}

/**
 * loss = mean over t of −log softmax(W_head·LN_out(h[t]))[targets[t]]; sets dh (the gradient w.r.t.
 * the final hidden rows) and the head and ln_out gradients. Softmax in float64.
 * Works `segment` tokens at a time (logits [segment, V] at most).
 *
 * `weights` (LongCE) scales each token's term of the mean.
 * With `l2wrap` (RWKV-LM's L2Wrap, SPEC §5), each token's arg-max logit also gets 1e-4/T·(its value)
 * added to its gradient, pulling large logits towards 0; the loss value is unchanged.
 */
export function headLossBackward(
  ws: Workspace, dh: Float32Array, dHead: Float32Array, dlnw: Float32Array, dlnb: Float32Array,
  h: Float32Array, lnw: Float32Array, lnb: Float32Array, head: Float32Array, targets: ArrayLike<number>,
  T: number, C: number, V: number, segment = 256, l2wrap = false, weights?: ArrayLike<number>,
): number {
  let loss = 0;
  const dw = new Float64Array(C), db = new Float64Array(C);
  for (let s = 0; s < T; s += segment) {
    const n = Math.min(segment, T - s);
    const hs = h.subarray(s * C, (s + n) * C);
    const x = ws.get('head.x', n * C), logits = ws.get('head.logits', n * V), dx = ws.get('head.dx', n * C);
    layerNorm(x, hs, lnw, lnb, n, C);
    linear(logits, x, head, n, C, V);
    for (let t = 0; t < n; t++) {
      const o = t * V, tgt = targets[s + t];
      let m = -Infinity, arg = 0;
      for (let i = 0; i < V; i++) if (logits[o + i] > m) { m = logits[o + i]; arg = i; }
      let sum = 0;
      for (let i = 0; i < V; i++) sum += Math.exp(logits[o + i] - m);
      const lse = m + Math.log(sum);
      // LongCE: a per-token weight (a constant: no gradient flows through it)
      const wt = weights ? weights[s + t] : 1;
      loss += wt * (lse - logits[o + tgt]);
      for (let i = 0; i < V; i++) logits[o + i] = (wt * Math.exp(logits[o + i] - lse)) / T;
      logits[o + tgt] -= wt / T;
      if (l2wrap) logits[o + arg] += (1e-4 / T) * m;
    }
    matmulTN(dHead, logits, x, n, V, C, s > 0);
    matmul(dx, logits, head, n, V, C);
    const dhs = dh.subarray(s * C, (s + n) * C).fill(0);
    layerNormBackward(dhs, dw, db, dx, hs, lnw, n, C);
  }
  store(dlnw, dw); store(dlnb, db);
  return loss / T;
}
