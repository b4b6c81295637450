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

// ---------------------------------------------------------------------------------------------
// Backward passes (training), each the derivative of the forward above it of the same name.
// Gradients ACCUMULATE (+=) into their outputs unless the name says InPlace; accumulators may be
// float32 or float64 arrays. Statistics (mean, 1/σ) are recomputed from the forward's input.

export type FloatArray = Float32Array | Float64Array;

/**
 * Backward of groupNorm: with x̂ = (x − mean)/σ per group and out = x̂·w + b,
 *   dw += Σ_t dout⊙x̂;  db += Σ_t dout;  dx += (1/σ)·(g − mean(g) − x̂·mean(g⊙x̂)),  g = dout⊙w.
 * `x` is the forward's input (not its output); dx must not alias dout.
 */
export function groupNormBackward(
  dx: FloatArray, dw: FloatArray, db: FloatArray, dout: FloatArray, x: FloatArray, w: FloatArray,
  T: number, G: number, N: number, eps: number,
): void {
  const C = G * N;
  const xh = new Float64Array(N), gw = new Float64Array(N);
  for (let t = 0; t < T; t++) {
    for (let g = 0; g < G; g++) {
      const o = t * C + g * N, p = g * N;
      let mean = 0;
      for (let i = 0; i < N; i++) mean += x[o + i];
      mean /= N;
      let v = 0;
      for (let i = 0; i < N; i++) { const d = x[o + i] - mean; v += d * d; }
      const inv = 1 / Math.sqrt(v / N + eps);
      let m1 = 0, m2 = 0;
      for (let i = 0; i < N; i++) {
        const h = (x[o + i] - mean) * inv, d = dout[o + i];
        xh[i] = h;
        gw[i] = d * w[p + i];
        dw[p + i] += d * h;
        db[p + i] += d;
        m1 += gw[i];
        m2 += gw[i] * h;
      }
      m1 /= N; m2 /= N;
      for (let i = 0; i < N; i++) dx[o + i] += inv * (gw[i] - m1 - xh[i] * m2);
    }
  }
}

/** Backward of layerNorm (one group of C per row). */
export function layerNormBackward(
  dx: FloatArray, dw: FloatArray, db: FloatArray, dout: FloatArray, x: FloatArray, w: FloatArray,
  T: number, C: number, eps = 1e-5,
): void {
  groupNormBackward(dx, dw, db, dout, x, w, T, 1, C, eps);
}

/**
 * Backward of tokenShift (delta[t] = x[t−1] − x[t]): dx[t] −= ddelta[t], dx[t−1] += ddelta[t].
 * The gradient reaching x[−1] (the carried state) goes to `dprev` when given, else is dropped.
 */
export function tokenShiftBackward(dx: FloatArray, ddelta: FloatArray, T: number, C: number, dprev?: FloatArray): void {
  for (let t = 0; t < T; t++) {
    const o = t * C;
    for (let i = 0; i < C; i++) dx[o + i] -= ddelta[o + i];
    if (t > 0) for (let i = 0; i < C; i++) dx[o - C + i] += ddelta[o + i];
    else if (dprev) for (let i = 0; i < C; i++) dprev[i] += ddelta[i];
  }
}

/** Backward of mixShift (out = x + delta⊙mu): dx += dout; ddelta += dout⊙mu; dmu += Σ_t dout⊙delta. */
export function mixShiftBackward(
  dx: FloatArray, ddelta: FloatArray, dmu: FloatArray, dout: FloatArray, delta: FloatArray, mu: FloatArray, T: number, C: number,
): void {
  for (let t = 0; t < T; t++) {
    const o = t * C;
    for (let i = 0; i < C; i++) {
      const d = dout[o + i];
      dx[o + i] += d;
      ddelta[o + i] += d * mu[i];
      dmu[i] += d * delta[o + i];
    }
  }
}

/** Backward of tanhInPlace, given its output y: d ← d·(1 − y²). */
export function tanhBackwardInPlace(d: FloatArray, y: FloatArray, n: number): void {
  for (let i = 0; i < n; i++) d[i] *= 1 - y[i] * y[i];
}

/** Backward of sigmoidInPlace / sigmoidBiasInPlace, given the output y = σ(·): d ← d·y(1 − y). */
export function sigmoidBackwardInPlace(d: FloatArray, y: FloatArray, n: number): void {
  for (let i = 0; i < n; i++) d[i] *= y[i] * (1 - y[i]);
}

/** Backward of reluSquareInPlace, given its input z: d ← d·2·max(z, 0). */
export function reluSquareBackwardInPlace(d: FloatArray, z: FloatArray, n: number): void {
  for (let i = 0; i < n; i++) d[i] = z[i] > 0 ? d[i] * 2 * z[i] : 0;
}

/** Column sums: acc[i] += Σ_t x[t·C + i] (the gradient of a bias broadcast over rows). */
export function addColumnSums(acc: FloatArray, x: FloatArray, T: number, C: number): void {
  for (let t = 0; t < T; t++) {
    const o = t * C;
    for (let i = 0; i < C; i++) acc[i] += x[o + i];
  }
}
