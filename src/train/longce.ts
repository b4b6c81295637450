/**
 * LongCE (SPEC §5, used for the 3.6B model): tokens whose prediction improves with long context are
 * up-weighted. Each token t with at least `window` tokens of context gets the weight
 * min(exp(CE_short(t) − CE_full(t)), cap), where CE_short comes from the same model run on a window of
 * `window` tokens ending at t; other tokens keep weight 1. As in the authors' trainer, the short
 * windows are evaluated `stride` targets at a time (window + stride tokens per forward), and the
 * weights are constants (no gradient).
 */
import { Model } from '../model/model.js';
import type { ModelWeights } from '../model/weights.js';
import { layerNorm } from '../backend/cpu/ops.js';
import { sharedF32 } from '../backend/cpu/shared.js';
import type { TrainModel } from './model-grad.js';

export interface LongCeOptions {
  window: number;
  stride: number;
  cap: number;
}

export const LONGCE_DEFAULTS: LongCeOptions = { window: 8000, stride: 4000, cap: 10 };

/** An inference view of the training weights (ln0 folded into a copy of the embedding). */
export function inferenceModel(m: TrainModel): Model {
  const C = m.cfg.dim;
  const emb = sharedF32(m.weights.emb.length);
  layerNorm(emb, m.weights.emb, m.ln0w, m.ln0b, m.cfg.vocab, C);
  const w: ModelWeights = { ...m.weights, emb };
  return new Model(m.cfg, w);
}

/** Cross-entropy of each target tokens[s + 1 + i] given logits rows [n, V]. */
function tokenCE(logits: Float32Array, targets: ArrayLike<number>, V: number): Float64Array {
  const n = targets.length, out = new Float64Array(n);
  for (let t = 0; t < n; t++) {
    const o = t * V;
    let m = -Infinity;
    for (let i = 0; i < V; i++) if (logits[o + i] > m) m = logits[o + i];
    let sum = 0;
    for (let i = 0; i < V; i++) sum += Math.exp(logits[o + i] - m);
    out[t] = m + Math.log(sum) - logits[o + targets[t]];
  }
  return out;
}

/** Weights for the T = tokens.length − 1 targets of one training window. */
export function longCeWeights(model: Model, tokens: ArrayLike<number>, o: LongCeOptions): Float64Array {
  const T = tokens.length - 1, V = model.cfg.vocab;
  const w = new Float64Array(T).fill(1);
  if (T <= o.window) return w;
  const inputs = Array.from({ length: T }, (_, t) => tokens[t]);
  const targets = Array.from({ length: T }, (_, t) => tokens[t + 1]);
  const full = tokenCE(model.forward(inputs, model.newState()), targets, V);
  for (let start = o.window; start < T; start += o.stride) {
    const end = Math.min(start + o.stride, T);
    // window of `window` tokens of context before `start`, then the targets [start, end)
    const ctx = inputs.slice(start - o.window, end);
    const logits = model.forward(ctx, model.newState());
    const short = tokenCE(logits.subarray(o.window * V), targets.slice(start, end), V);
    for (let t = start; t < end; t++) w[t] = Math.min(Math.exp(short[t - start] - full[t]), o.cap);
  }
  return w;
}
