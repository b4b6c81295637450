/**
 * The element-wise and per-head fused ops of the CPU backend (float32 storage, float64 accumulators).
 * Matrix products live in matmul.ts; the sequential WKV recurrence in wkv7.ts.
 */

/** out[t] = LayerNorm(x[t]) · w + b over rows of C. `out` may alias `x`. */
export function layerNorm(out: Float32Array, x: Float32Array, w: Float32Array, b: Float32Array, T: number, C: number, eps = 1e-5): void {
  for (let t = 0; t < T; t++) {
    const o = t * C;
    let mean = 0;
    for (let i = 0; i < C; i++) mean += x[o + i];
    mean /= C;
    let v = 0;
    for (let i = 0; i < C; i++) { const d = x[o + i] - mean; v += d * d; }
    const inv = 1 / Math.sqrt(v / C + eps);
    for (let i = 0; i < C; i++) out[o + i] = (x[o + i] - mean) * inv * w[i] + b[i];
  }
}

/**
 * Per-group normalisation of rows of C = G·N (GroupNorm with G groups on one token), then affine.
 * `out` may alias `x`.
 */
export function groupNorm(out: Float32Array, x: Float32Array, w: Float32Array, b: Float32Array, T: number, G: number, N: number, eps: number): void {
  const C = G * N;
  for (let t = 0; t < T; t++) {
    for (let g = 0; g < G; g++) {
      const o = t * C + g * N;
      let mean = 0;
      for (let i = 0; i < N; i++) mean += x[o + i];
      mean /= N;
      let v = 0;
      for (let i = 0; i < N; i++) { const d = x[o + i] - mean; v += d * d; }
      const inv = 1 / Math.sqrt(v / N + eps);
      for (let i = 0; i < N; i++) out[o + i] = (x[o + i] - mean) * inv * w[g * N + i] + b[g * N + i];
    }
  }
}

/**
 * Token shift: delta[t] = x[t-1] − x[t], with x[-1] = prev (the last row of the previous call).
 * Afterwards prev holds x[T-1], ready for the next call.
 */
export function tokenShift(delta: Float32Array, x: Float32Array, prev: Float32Array, T: number, C: number): void {
  for (let i = 0; i < C; i++) delta[i] = prev[i] - x[i];
  for (let t = 1; t < T; t++) {
    const o = t * C;
    for (let i = 0; i < C; i++) delta[o + i] = x[o - C + i] - x[o + i];
  }
  prev.set(x.subarray((T - 1) * C, T * C));
}

/** out[t] = x[t] + delta[t] ⊙ mu. */
export function mixShift(out: Float32Array, x: Float32Array, delta: Float32Array, mu: Float32Array, T: number, C: number): void {
  for (let t = 0; t < T; t++) {
    const o = t * C;
    for (let i = 0; i < C; i++) out[o + i] = x[o + i] + delta[o + i] * mu[i];
  }
}

export function addInPlace(acc: Float32Array, x: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) acc[i] += x[i];
}

export function tanhInPlace(x: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] = Math.tanh(x[i]);
}

export function sigmoid(z: number): number {
  return 1 / (1 + Math.exp(-z));
}

export function sigmoidInPlace(x: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] = 1 / (1 + Math.exp(-x[i]));
}

/** x[t] = σ(x[t] + bias) over rows of C. */
export function sigmoidBiasInPlace(x: Float32Array, bias: Float32Array, T: number, C: number): void {
  for (let t = 0; t < T; t++) {
    const o = t * C;
    for (let i = 0; i < C; i++) x[o + i] = 1 / (1 + Math.exp(-(x[o + i] + bias[i])));
  }
}

/** ReLU(x)² in place (the channel-mix activation). */
export function reluSquareInPlace(x: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) { const v = x[i] > 0 ? x[i] : 0; x[i] = v * v; }
}

export function mulInPlace(x: Float32Array, y: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] *= y[i];
}
