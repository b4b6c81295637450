/**
 * AdamW as the RWKV trainers use it (SPEC §5): decoupled weight decay only on 2-D weights (matrices
 * and LoRA factors; never on vectors such as w0, norms or token-shift mixes), bias correction, and a
 * per-parameter learning-rate multiplier (w0 trains at 2× lr from scratch). Moments in float32.
 */
export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const RWKV_ADAMW: AdamWOptions = { beta1: 0.9, beta2: 0.99, eps: 1e-18, weightDecay: 0.001 };

export interface Param {
  name: string;
  shape: number[];
  value: Float32Array;
  /** Decay applies to tensors with ≥ 2 dimensions of size > 1. */
  decay: boolean;
  lrScale: number;
}

export function isMatrix(shape: number[]): boolean {
  return shape.filter((d) => d > 1).length >= 2;
}

export class AdamW {
  /** Steps taken (for bias correction); saved with the checkpoint. */
  t = 0;
  readonly m = new Map<string, Float32Array>();
  readonly v = new Map<string, Float32Array>();

  constructor(readonly params: Param[], readonly o: AdamWOptions) {
    for (const p of params) {
      this.m.set(p.name, new Float32Array(p.value.length));
      this.v.set(p.name, new Float32Array(p.value.length));
    }
  }

  /** One update with gradients `grads` (already clipped/scaled), at learning rate lr. */
  step(grads: Map<string, Float32Array>, lr: number): void {
    this.t++;
    const { beta1, beta2, eps, weightDecay } = this.o;
    const c1 = 1 - beta1 ** this.t, c2 = 1 - beta2 ** this.t;
    for (const p of this.params) {
      const g = grads.get(p.name);
      if (!g) continue;
      const m = this.m.get(p.name)!, v = this.v.get(p.name)!, w = p.value;
      const plr = lr * p.lrScale;
      const decay = p.decay ? 1 - plr * weightDecay : 1;
      for (let i = 0; i < w.length; i++) {
        const gi = g[i];
        m[i] = beta1 * m[i] + (1 - beta1) * gi;
        v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
        w[i] = w[i] * decay - (plr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + eps);
      }
    }
  }
}

/** Global L2 norm of the gradients; scales them in place to `maxNorm` when larger (0 = no clipping). */
export function clipGradients(grads: Map<string, Float32Array>, maxNorm: number): number {
  let ss = 0;
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) ss += g[i] * g[i];
  const norm = Math.sqrt(ss);
  if (maxNorm > 0 && norm > maxNorm) {
    const s = maxNorm / (norm + 1e-6);
    for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] *= s;
  }
  return norm;
}
