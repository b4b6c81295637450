/**
 * The RWKV-7 state recurrence (SPEC §2 step 8–9), token by token, per head:
 *   S ← S·diag(ω) + (S·(−κ̂))·(κ̂⊙a)ᵀ + v·k̃ᵀ ;  y = S·r
 * S is [H, N, N] with rows = value index i and columns = key index j, kept in float32 between
 * tokens; each row's dot products accumulate in float64.
 *
 * All inputs are [T, C] (C = H·N). kk is the normalised κ̂, kt the written key k̃, w the decay ω.
 */
export function wkv7(
  y: Float32Array, S: Float32Array,
  r: Float32Array, w: Float32Array, kt: Float32Array, v: Float32Array, kk: Float32Array, a: Float32Array,
  T: number, H: number, N: number,
): void {
  const C = H * N;
  const ka = new Float64Array(N);
  for (let t = 0; t < T; t++) {
    const to = t * C;
    for (let h = 0; h < H; h++) {
      const ho = to + h * N;
      const so = h * N * N;
      for (let j = 0; j < N; j++) ka[j] = kk[ho + j] * a[ho + j];
      for (let i = 0; i < N; i++) {
        const row = so + i * N;
        let sa = 0;
        for (let j = 0; j < N; j++) sa -= S[row + j] * kk[ho + j];
        const vi = v[ho + i];
        let yi = 0;
        for (let j = 0; j < N; j++) {
          const s = Math.fround(S[row + j] * w[ho + j] + sa * ka[j] + vi * kt[ho + j]);
          S[row + j] = s;
          yi += s * r[ho + j];
        }
        y[ho + i] = yi;
      }
    }
  }
}
