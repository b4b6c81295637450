/**
 * The matrix product the backward pass needs that matmul.ts does not offer: the weight gradient
 *   out[m, n] (+)= Σ_t A[t, m] · B[t, n]      (out = or += Aᵀ·B; A [T, M], B [T, N], out [M, N])
 *
 * For a linear layer y = x·Wᵀ (W [N, K]) the weight gradient is dW = dyᵀ·x = matmulTN(dW, dy, x, T, N, K);
 * for a LoRA factor y = x·A (A [K, N]) it is dA = xᵀ·dy = matmulTN(dA, x, dy, T, K, N).
 * (The input gradients are plain products: dx = dy·W is matmul(dx, dy, W, T, N, K), and dx = dy·Aᵀ is
 * linear(dx, dy, A, T, N, K), both from matmul.ts.)
 *
 * matmulTN transposes A once (O(T·M), into a scratch buffer) and hands Aᵀ·B to matmul.ts's threaded
 * `matmul` (x = Aᵀ [M, T], A = B [T, N]), accumulating in float32 over the T tokens, a slab of rows of
 * `out` at a time (with accumulate, through a bounded temporary that is then added). B should be a
 * shared array (sharedF32) for the product to use the worker threads. matmulTNLoops is the plain
 * single-threaded version (float64 accumulation), used for tiny products and as the reference in tests.
 * A native Aᵀ·B kernel with β = 1 in the threaded matmul would make the transpose and the add go away.
 */
import { matmul } from './matmul.js';
import { sharedF32 } from './shared.js';

/** Below this many multiply-adds the plain loops are cheaper than transposing and dispatching. */
const SMALL = 1 << 16;
/** Rows of out per slab are chosen so a slab holds at most this many floats. */
const TMP_FLOATS = 1 << 22;

let scratchT: Float32Array = sharedF32(0), scratchO: Float32Array = sharedF32(0);
function scratch(which: 'T' | 'O', n: number): Float32Array {
  if (which === 'T') {
    if (scratchT.length < n) scratchT = sharedF32(Math.max(n, 2 * scratchT.length));
    return scratchT.subarray(0, n);
  }
  if (scratchO.length < n) scratchO = sharedF32(Math.max(n, 2 * scratchO.length));
  return scratchO.subarray(0, n);
}

export function matmulTN(out: Float32Array, A: Float32Array, B: Float32Array, T: number, M: number, N: number, accumulate = true): void {
  if (T * M * N < SMALL) { matmulTNLoops(out, A, B, T, M, N, accumulate); return; }
  const At = scratch('T', M * T);
  const TB = 64; // transpose in tiles so both sides stay in cache
  for (let t0 = 0; t0 < T; t0 += TB) {
    const t1 = Math.min(T, t0 + TB);
    for (let m0 = 0; m0 < M; m0 += TB) {
      const m1 = Math.min(M, m0 + TB);
      for (let t = t0; t < t1; t++) for (let m = m0; m < m1; m++) At[m * T + t] = A[t * M + m];
    }
  }
  // a slab of rows of out at a time: bounds the temporary (and matmul's staging of `out`)
  const rows = Math.max(1, Math.min(M, Math.floor(TMP_FLOATS / N)));
  for (let m0 = 0; m0 < M; m0 += rows) {
    const mb = Math.min(rows, M - m0), o = m0 * N;
    const x = At.subarray(m0 * T, (m0 + mb) * T);
    if (!accumulate) { matmul(out.subarray(o, o + mb * N), x, B, mb, T, N); continue; }
    const tmp = scratch('O', mb * N);
    matmul(tmp, x, B, mb, T, N);
    for (let j = 0; j < mb * N; j++) out[o + j] += tmp[j];
  }
}

/**
 * The same product in plain loops: float64 accumulation over a block of MB rows of `out`, four tokens
 * per pass so each accumulator load serves four products; zero rows of A (common after ReLU²) skipped.
 */
export function matmulTNLoops(out: Float32Array, A: Float32Array, B: Float32Array, T: number, M: number, N: number, accumulate = true): void {
  const MB = 8;
  const acc = new Float64Array(MB * N);
  for (let m0 = 0; m0 < M; m0 += MB) {
    const mb = Math.min(MB, M - m0);
    acc.fill(0, 0, mb * N);
    let t = 0;
    for (; t + 4 <= T; t += 4) {
      const a0o = t * M + m0, a1o = a0o + M, a2o = a1o + M, a3o = a2o + M;
      const b0 = t * N, b1 = b0 + N, b2 = b1 + N, b3 = b2 + N;
      for (let i = 0; i < mb; i++) {
        const a0 = A[a0o + i], a1 = A[a1o + i], a2 = A[a2o + i], a3 = A[a3o + i];
        if (a0 === 0 && a1 === 0 && a2 === 0 && a3 === 0) continue;
        const ro = i * N;
        for (let n = 0; n < N; n++) acc[ro + n] += a0 * B[b0 + n] + a1 * B[b1 + n] + a2 * B[b2 + n] + a3 * B[b3 + n];
      }
    }
    for (; t < T; t++) {
      const ao = t * M + m0, bo = t * N;
      for (let i = 0; i < mb; i++) {
        const a = A[ao + i];
        if (a === 0) continue;
        const ro = i * N;
        for (let n = 0; n < N; n++) acc[ro + n] += a * B[bo + n];
      }
    }
    const oo = m0 * N;
    if (accumulate) for (let j = 0; j < mb * N; j++) out[oo + j] += acc[j];
    else for (let j = 0; j < mb * N; j++) out[oo + j] = acc[j];
  }
}
