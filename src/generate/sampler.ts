/** Picking the next token from logits: greedy, or temperature with top-k and top-p (nucleus). */
import { fail } from '../util/errors.js';
import type { Rng } from './rng.js';

export interface SamplingOptions {
  /** 0 means greedy (arg-max). */
  temperature: number;
  /** Keep the smallest set of tokens whose probability reaches top-p (1 = off). */
  topP: number;
  /** Keep the k most likely tokens (0 = off). */
  topK: number;
}

export const DEFAULT_SAMPLING: SamplingOptions = { temperature: 1.0, topP: 0.85, topK: 0 };

export function checkSampling(o: SamplingOptions): void {
  if (!(o.temperature >= 0) || !Number.isFinite(o.temperature)) fail(`temperature must be ≥ 0 (got ${o.temperature})`);
  if (!(o.topP > 0 && o.topP <= 1)) fail(`top-p must be in (0, 1] (got ${o.topP})`);
  if (!Number.isInteger(o.topK) || o.topK < 0) fail(`top-k must be a non-negative integer (got ${o.topK})`);
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export function sample(logits: Float32Array, o: SamplingOptions, rng: Rng): number {
  if (o.temperature === 0 || o.topK === 1) return argmax(logits);
  const V = logits.length;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i] > max) max = logits[i];
  // candidates sorted by probability; only the head of the list matters, so prune tiny ones first
  const probs = new Float64Array(V);
  let sum = 0;
  for (let i = 0; i < V; i++) { const p = Math.exp((logits[i] - max) / o.temperature); probs[i] = p; sum += p; }
  const floor = sum * 1e-9;
  let idx: number[] = [];
  for (let i = 0; i < V; i++) if (probs[i] > floor) idx.push(i);
  idx.sort((a, b) => probs[b] - probs[a]);
  if (o.topK > 0 && idx.length > o.topK) idx = idx.slice(0, o.topK);
  let kept = 0;
  for (const i of idx) kept += probs[i];
  if (o.topP < 1) {
    let cum = 0, cut = idx.length;
    for (let n = 0; n < idx.length; n++) {
      cum += probs[idx[n]];
      if (cum >= o.topP * kept) { cut = n + 1; break; }
    }
    idx = idx.slice(0, cut);
    kept = 0;
    for (const i of idx) kept += probs[i];
  }
  let u = rng.next() * kept;
  for (const i of idx) {
    u -= probs[i];
    if (u <= 0) return i;
  }
  return idx[idx.length - 1];
}
