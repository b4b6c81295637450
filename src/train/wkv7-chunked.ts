/**
 * Chunked WKV-7, forward and backward: a float64 CPU reference for GPU training kernels. Exact (to float64
 * rounding) against the sequential `wkv7` / `wkv7Backward` in src/backend/cpu/wkv7.ts. The derivation, the
 * order a GPU kernel follows and the numerics are in docs/wkv7-chunked.md; names follow it:
 *
 * Per head, rows i of the state S evolve independently: S_t = S_{t−1}(diag(w_t) + α_t β_tᵀ) + v_t k_tᵀ,
 * y_t = S_t r_t, with α = −κ̂ (kk), β = κ̂⊙a, k = k̃ (kt). Over a chunk of n ≤ L tokens, with Γ_t = w_1⊙…⊙w_t,
 * X = S_0ᵀ (chunk-start state, N × rows) and U the per-row values u_t = S_{t−1}α_t:
 *   U = (I − A)⁻¹ (A_k V + Ã X),  Y = B_m U + B_k V + R̃ X,  S_nᵀ = diag(Γ_n) X + Pᵀ U + Qᵀ V
 * with Ã_t = α_t⊙Γ_{t−1}, R̃_t = r_t⊙Γ_t, B̂_t = β_t/Γ_t, K̂_t = k_t/Γ_t, P_t = β_t⊙Γ_n/Γ_t, Q_t = k_t⊙Γ_n/Γ_t,
 * A = strictly-lower(Ã B̂ᵀ), A_k = strictly-lower(Ã K̂ᵀ), B_m = lower(R̃ B̂ᵀ), B_k = lower(R̃ K̂ᵀ).
 *
 * Layouts: inputs and outputs [T, C] (C = H·N) as in wkv7; states [H, N, N] with S[i·N + j], row i = value
 * index; inside a chunk everything is token-major ([t·N + j] or [t·N + i]) and L×L matrices are [t·L + s].
 */

type FloatArray = Float32Array | Float64Array;
type Input = ArrayLike<number>;

/** Default chunk length, as in the inference kernels (docs/cuda.md "Chunked WKV-7"). */
export const WKV7_CHUNK = 16;

/** One chunk of one head: its inputs and the state-independent factors (float64). */
function newChunk(L: number, N: number) {
  const vec = () => new Float64Array(L * N), mat = () => new Float64Array(L * L);
  return {
    L, N, n: 0,
    alpha: vec(), beta: vec(), k: vec(), r: vec(), w: vec(), v: vec(),
    /** [(L + 1)·N]: gam[t·N + j] = Γ before token t (Γ_0 = 1), gam[(t + 1)·N + j] after it. */
    gam: new Float64Array((L + 1) * N),
    /** Γ_n/Γ_t = w_{t+1}⊙…⊙w_n. */
    tail: vec(),
    At: vec(), Rt: vec(), Bh: vec(), Kh: vec(), P: vec(), Q: vec(),
    A: mat(), Ak: mat(), Bm: mat(), Bk: mat(),
  };
}
type Chunk = ReturnType<typeof newChunk>;

/** Loads tokens t0 … t0+n−1 of head h and builds Γ, the factors and the four L×L matrices. */
function loadChunk(
  ch: Chunk, r: Input, w: Input, kt: Input, v: Input, kk: Input, a: Input, t0: number, n: number, h: number, C: number,
): void {
  const { N, L, gam, tail, At, Rt, Bh, Kh, P, Q } = ch;
  ch.n = n;
  gam.fill(1, 0, N);
  for (let t = 0; t < n; t++) {
    const o = (t0 + t) * C + h * N, p = t * N;
    for (let j = 0; j < N; j++) {
      ch.alpha[p + j] = -kk[o + j]; ch.beta[p + j] = kk[o + j] * a[o + j];
      ch.k[p + j] = kt[o + j]; ch.r[p + j] = r[o + j]; ch.w[p + j] = w[o + j]; ch.v[p + j] = v[o + j];
      gam[p + N + j] = gam[p + j] * w[o + j];
    }
  }
  // Γ_n/Γ_t as a product of the later decays (never a quotient: no cancellation, ≤ 1)
  for (let j = 0; j < N; j++) {
    tail[(n - 1) * N + j] = 1;
    for (let t = n - 2; t >= 0; t--) tail[t * N + j] = tail[(t + 1) * N + j] * ch.w[(t + 1) * N + j];
  }
  for (let t = 0; t < n; t++) {
    const p = t * N;
    for (let j = 0; j < N; j++) {
      const before = gam[p + j], after = gam[p + N + j];
      At[p + j] = ch.alpha[p + j] * before;
      Rt[p + j] = ch.r[p + j] * after;
      Bh[p + j] = ch.beta[p + j] / after;
      Kh[p + j] = ch.k[p + j] / after;
      P[p + j] = ch.beta[p + j] * tail[p + j];
      Q[p + j] = ch.k[p + j] * tail[p + j];
    }
  }
  const dot = (x: Float64Array, t: number, y: Float64Array, s: number) => {
    let acc = 0;
    for (let j = 0; j < N; j++) acc += x[t * N + j] * y[s * N + j];
    return acc;
  };
  for (let t = 0; t < n; t++) {
    for (let s = 0; s < n; s++) {
      const e = t * L + s;
      ch.A[e] = s < t ? dot(At, t, Bh, s) : 0;
      ch.Ak[e] = s < t ? dot(At, t, Kh, s) : 0;
      ch.Bm[e] = s <= t ? dot(Rt, t, Bh, s) : 0;
      ch.Bk[e] = s <= t ? dot(Rt, t, Kh, s) : 0;
    }
  }
}

/** U = (I − A)⁻¹ (A_k V + Ã S0ᵀ) by forward substitution (A is strictly lower). */
function solveU(ch: Chunk, S0: Float64Array, so: number, U: Float64Array): void {
  const { N, L, n, At, A, Ak, v } = ch;
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < N; i++) {
      let u = 0;
      for (let j = 0; j < N; j++) u += At[t * N + j] * S0[so + i * N + j];
      for (let s = 0; s < t; s++) u += A[t * L + s] * U[s * N + i] + Ak[t * L + s] * v[s * N + i];
      U[t * N + i] = u;
    }
  }
}

/**
 * The chunked forward: same inputs and results as `wkv7` (y written, S updated in place from the initial
 * to the final state), computed chunk by chunk in float64. Returns the chunk-start states, float64
 * [⌈T/L⌉, H, N, N], which `wkv7ChunkedBackward` needs.
 */
export function wkv7ChunkedForward(
  y: FloatArray, S: FloatArray,
  r: Input, w: Input, kt: Input, v: Input, kk: Input, a: Input,
  T: number, H: number, N: number, L = WKV7_CHUNK,
): Float64Array {
  const C = H * N, NN = N * N, nChunks = Math.ceil(T / L);
  const states = new Float64Array(nChunks * H * NN);
  const cur = Float64Array.from(S);
  const ch = newChunk(L, N), U = new Float64Array(L * N);
  for (let c = 0; c < nChunks; c++) {
    const t0 = c * L, n = Math.min(L, T - t0);
    states.set(cur, c * H * NN);
    for (let h = 0; h < H; h++) {
      const so = (c * H + h) * NN;
      loadChunk(ch, r, w, kt, v, kk, a, t0, n, h, C);
      solveU(ch, states, so, U);
      const { Rt, Bm, Bk, P, Q, gam } = ch;
      for (let t = 0; t < n; t++) {
        for (let i = 0; i < N; i++) {
          let yi = 0;
          for (let j = 0; j < N; j++) yi += Rt[t * N + j] * states[so + i * N + j];
          for (let s = 0; s <= t; s++) yi += Bm[t * L + s] * U[s * N + i] + Bk[t * L + s] * ch.v[s * N + i];
          y[(t0 + t) * C + h * N + i] = yi;
        }
      }
      for (let i = 0; i < N; i++) {
        for (let j = 0; j < N; j++) {
          let sij = gam[n * N + j] * states[so + i * N + j];
          for (let s = 0; s < n; s++) sij += P[s * N + j] * U[s * N + i] + Q[s * N + j] * ch.v[s * N + i];
          cur[h * NN + i * N + j] = sij;
        }
      }
    }
  }
  S.set(cur);
  return states;
}

/** Gradient outputs, accumulated with += (as in wkv7Backward). */
interface Grads { dr: FloatArray; dw: FloatArray; dkt: FloatArray; dv: FloatArray; dkk: FloatArray; da: FloatArray }

function newGradScratch(L: number, N: number) {
  const vec = () => new Float64Array(L * N), mat = () => new Float64Array(L * L);
  return {
    U: vec(), dY: vec(), dU: vec(), dZ: vec(),
    dA: mat(), dAk: mat(), dBm: mat(), dBk: mat(),
    dAt: vec(), dRt: vec(), dBh: vec(), dKh: vec(), dP: vec(), dQ: vec(), dg: vec(),
    dGamN: new Float64Array(N),
  };
}
type GradScratch = ReturnType<typeof newGradScratch>;

function loadDy(ch: Chunk, dY: Float64Array, dy: Input, t0: number, h: number, C: number): void {
  const { N, n } = ch;
  for (let t = 0; t < n; t++) for (let i = 0; i < N; i++) dY[t * N + i] = dy[(t0 + t) * C + h * N + i];
}

/** dU = B_mᵀ dY + P G, where G[i·N + j] (at go) is the gradient of the chunk-end state. */
function gradU(ch: Chunk, g: GradScratch, G: Float64Array, go: number): void {
  const { N, L, n, Bm, P } = ch;
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < N; i++) {
      let d = 0;
      for (let s = t; s < n; s++) d += Bm[s * L + t] * g.dY[s * N + i];
      for (let j = 0; j < N; j++) d += P[t * N + j] * G[go + i * N + j];
      g.dU[t * N + i] = d;
    }
  }
}

/**
 * Everything after dZ (the gradient of Z = A_k V + Ã S0ᵀ, i.e. (I − A)⁻ᵀ dU): the gradients of the L×L
 * matrices, of the factors, and finally of the inputs of tokens t0 … t0+n−1 of head h. Needs U, dY, dZ in
 * the scratch, the chunk-start state S0 and the chunk-end state's gradient G. Leaves S0's gradient alone.
 */
function chunkInputGrads(
  ch: Chunk, g: GradScratch, S0: Float64Array, so: number, G: Float64Array, go: number,
  out: Grads, kk: Input, a: Input, t0: number, h: number, C: number,
): void {
  const { N, L, n, At, Rt, Bh, Kh, P, Q, Ak, Bk, gam, tail } = ch;
  const { U, dY, dZ, dA, dAk, dBm, dBk, dAt, dRt, dBh, dKh, dP, dQ, dg, dGamN } = g;
  const v = ch.v;
  // L×L matrices: outer products summed over the rows i, restricted to their triangles
  for (let t = 0; t < n; t++) {
    for (let s = 0; s <= t; s++) {
      let zu = 0, zv = 0, yu = 0, yv = 0;
      for (let i = 0; i < N; i++) {
        zu += dZ[t * N + i] * U[s * N + i]; zv += dZ[t * N + i] * v[s * N + i];
        yu += dY[t * N + i] * U[s * N + i]; yv += dY[t * N + i] * v[s * N + i];
      }
      const e = t * L + s;
      dA[e] = s < t ? zu : 0; dAk[e] = s < t ? zv : 0;
      dBm[e] = yu; dBk[e] = yv;
    }
  }
  // values: through A_k V, B_k V and Qᵀ V
  for (let s = 0; s < n; s++) {
    for (let i = 0; i < N; i++) {
      let d = 0;
      for (let t = s + 1; t < n; t++) d += Ak[t * L + s] * dZ[t * N + i];
      for (let t = s; t < n; t++) d += Bk[t * L + s] * dY[t * N + i];
      for (let j = 0; j < N; j++) d += Q[s * N + j] * G[go + i * N + j];
      out.dv[(t0 + s) * C + h * N + i] += d;
    }
  }
  // factors (token-major, channel j)
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < N; j++) {
      const p = t * N + j;
      let at = 0, rt = 0, bh = 0, kh = 0, pp = 0, qq = 0;
      for (let i = 0; i < N; i++) {
        const s0 = S0[so + i * N + j], gij = G[go + i * N + j];
        at += dZ[t * N + i] * s0; rt += dY[t * N + i] * s0;
        pp += U[t * N + i] * gij; qq += v[t * N + i] * gij;
      }
      for (let s = 0; s < t; s++) at += dA[t * L + s] * Bh[s * N + j] + dAk[t * L + s] * Kh[s * N + j];
      for (let s = 0; s <= t; s++) rt += dBm[t * L + s] * Bh[s * N + j] + dBk[t * L + s] * Kh[s * N + j];
      for (let u = t + 1; u < n; u++) { bh += dA[u * L + t] * At[u * N + j]; kh += dAk[u * L + t] * At[u * N + j]; }
      for (let u = t; u < n; u++) { bh += dBm[u * L + t] * Rt[u * N + j]; kh += dBk[u * L + t] * Rt[u * N + j]; }
      dAt[p] = at; dRt[p] = rt; dBh[p] = bh; dKh[p] = kh; dP[p] = pp; dQ[p] = qq;
    }
  }
  for (let j = 0; j < N; j++) {
    let d = 0;
    for (let i = 0; i < N; i++) d += G[go + i * N + j] * S0[so + i * N + j];
    dGamN[j] = d;
  }
  // Γ enters as e^{log Γ}: dg_t = ∂/∂log Γ_t (Γ after token t) is a sum of products factor × its gradient,
  // each bounded (the 1/Γ and Γ cancel); w_t then sees the suffix sum of dg (Γ_t' contains w_t for t' ≥ t)
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < N; j++) {
      const p = t * N + j;
      let d = dRt[p] * Rt[p] - dBh[p] * Bh[p] - dKh[p] * Kh[p] - dP[p] * P[p] - dQ[p] * Q[p];
      if (t + 1 < n) d += dAt[p + N] * At[p + N];
      dg[p] = d;
    }
  }
  for (let j = 0; j < N; j++) {
    let d = dGamN[j] * gam[n * N + j];
    for (let s = 0; s < n; s++) d += dP[s * N + j] * P[s * N + j] + dQ[s * N + j] * Q[s * N + j];
    dg[(n - 1) * N + j] += d;
  }
  for (let j = 0; j < N; j++) {
    let dlogw = 0;
    for (let t = n - 1; t >= 0; t--) {
      const p = t * N + j, o = (t0 + t) * C + h * N + j;
      dlogw += dg[p];
      const dalpha = dAt[p] * gam[p];
      const dbeta = dBh[p] / gam[p + N] + dP[p] * tail[p];
      out.dw[o] += dlogw / ch.w[p];
      out.dr[o] += dRt[p] * gam[p + N];
      out.dkt[o] += dKh[p] / gam[p + N] + dQ[p] * tail[p];
      out.dkk[o] += -dalpha + dbeta * a[o];
      out.da[o] += dbeta * kk[o];
    }
  }
}

/**
 * Backward of `wkv7ChunkedForward` (and so of `wkv7`): the same gradients as `wkv7Backward`, accumulated
 * (+=) into dr, dw, dkt, dv, dkk, da, from dy and the chunk-start `states` the forward returned (same L).
 * Chunks go last to first; inside a chunk U is recomputed from its start state, then
 *   dU = B_mᵀ dY + P G,  dZ = (I − A)⁻ᵀ dU (back substitution),  dS_0ᵀ = Ãᵀ dZ + R̃ᵀ dY + diag(Γ_n) G
 * and dS_0 becomes the previous chunk's G. `dState` [H, N, N], when given, holds on entry the gradient of
 * the final state (taken as zero otherwise) and on return the gradient of the initial state.
 */
export function wkv7ChunkedBackward(
  dr: FloatArray, dw: FloatArray, dkt: FloatArray, dv: FloatArray, dkk: FloatArray, da: FloatArray, dy: Input,
  r: Input, w: Input, kt: Input, v: Input, kk: Input, a: Input,
  T: number, H: number, N: number, L: number, states: Float64Array, dState?: FloatArray,
): void {
  const C = H * N, NN = N * N, nChunks = Math.ceil(T / L);
  checkStates(states, nChunks, H, N);
  const out: Grads = { dr, dw, dkt, dv, dkk, da };
  const G = dState ? Float64Array.from(dState) : new Float64Array(H * NN);
  const ch = newChunk(L, N), g = newGradScratch(L, N);
  for (let c = nChunks - 1; c >= 0; c--) {
    const t0 = c * L, n = Math.min(L, T - t0);
    for (let h = 0; h < H; h++) {
      const so = (c * H + h) * NN, go = h * NN;
      loadChunk(ch, r, w, kt, v, kk, a, t0, n, h, C);
      solveU(ch, states, so, g.U);
      loadDy(ch, g.dY, dy, t0, h, C);
      gradU(ch, g, G, go);
      // (I − A)ᵀ is unit upper triangular
      for (let t = n - 1; t >= 0; t--) {
        for (let i = 0; i < N; i++) {
          let d = g.dU[t * N + i];
          for (let s = t + 1; s < n; s++) d += ch.A[s * L + t] * g.dZ[s * N + i];
          g.dZ[t * N + i] = d;
        }
      }
      chunkInputGrads(ch, g, states, so, G, go, out, kk, a, t0, h, C);
      // G becomes the gradient of this chunk's start state (last use of the chunk-end G above)
      for (let i = 0; i < N; i++) {
        for (let j = 0; j < N; j++) {
          let d = ch.gam[n * N + j] * G[go + i * N + j];
          for (let t = 0; t < n; t++) d += g.dZ[t * N + i] * ch.At[t * N + j] + g.dY[t * N + i] * ch.Rt[t * N + j];
          G[go + i * N + j] = d;
        }
      }
    }
  }
  dState?.set(G);
}

function checkStates(states: Float64Array, nChunks: number, H: number, N: number): void {
  if (states.length !== nChunks * H * N * N) {
    throw new Error(`wkv7 chunked backward: ${states.length} saved state values, expected ${nChunks}·${H}·${N}·${N} (same T and L as the forward?)`);
  }
}

// ---------------------------------------------------------------------------------------------
// The same backward, organised as the GPU kernels would run it: (1) prep, all chunks in parallel;
// (2) the only sequential chain, over chunks, carrying dS alone; (3) input gradients, all chunks in parallel.

/** Pass 1's record for one (chunk, head): the factors plus (I − A)⁻¹ and the products that fold it in. */
interface PrepRecord {
  ch: Chunk;
  /** (I − A)⁻¹, unit lower triangular [t·L + s]. */
  Tinv: Float64Array;
  /** W = (I − A)⁻¹ Ã [L, N]: U = W S0ᵀ + U0. */
  W: Float64Array;
  /** U0 = (I − A)⁻¹ A_k V [L, N] (token-major, rows i). */
  U0: Float64Array;
  /** Qf = R̃ + B_m W [L, N]: Y = Qf S0ᵀ + (B_m U0 + B_k V), and dS_0ᵀ = Qfᵀ dY + (diag(Γ_n) + Wᵀ P) G. */
  Qf: Float64Array;
}

function prepChunk(
  r: Input, w: Input, kt: Input, v: Input, kk: Input, a: Input, t0: number, n: number, h: number, C: number, L: number, N: number,
): PrepRecord {
  const ch = newChunk(L, N);
  loadChunk(ch, r, w, kt, v, kk, a, t0, n, h, C);
  const { A, Ak, At, Rt, Bm } = ch;
  const Tinv = new Float64Array(L * L);
  // column s of (I − A)⁻¹ by forward substitution
  for (let s = 0; s < n; s++) {
    Tinv[s * L + s] = 1;
    for (let t = s + 1; t < n; t++) {
      let x = 0;
      for (let m = s; m < t; m++) x += A[t * L + m] * Tinv[m * L + s];
      Tinv[t * L + s] = x;
    }
  }
  const W = new Float64Array(L * N), U0 = new Float64Array(L * N), Qf = new Float64Array(L * N);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < N; j++) {
      let x = 0;
      for (let s = 0; s <= t; s++) x += Tinv[t * L + s] * At[s * N + j];
      W[t * N + j] = x;
    }
    for (let i = 0; i < N; i++) {
      let x = 0;
      for (let s = 0; s <= t; s++) for (let m = 0; m < s; m++) x += Tinv[t * L + s] * Ak[s * L + m] * ch.v[m * N + i];
      U0[t * N + i] = x;
    }
  }
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < N; j++) {
      let x = Rt[t * N + j];
      for (let s = 0; s <= t; s++) x += Bm[t * L + s] * W[s * N + j];
      Qf[t * N + j] = x;
    }
  }
  return { ch, Tinv, W, U0, Qf };
}

/**
 * Same contract as `wkv7ChunkedBackward`, computed in the three passes a GPU implementation would use
 * (docs/wkv7-chunked.md): the sequential pass needs neither the forward states nor U, only the prep
 * records and dy, and saves the gradient of every chunk-end state for pass 3.
 */
export function wkv7ChunkedBackwardStaged(
  dr: FloatArray, dw: FloatArray, dkt: FloatArray, dv: FloatArray, dkk: FloatArray, da: FloatArray, dy: Input,
  r: Input, w: Input, kt: Input, v: Input, kk: Input, a: Input,
  T: number, H: number, N: number, L: number, states: Float64Array, dState?: FloatArray,
): void {
  const C = H * N, NN = N * N, nChunks = Math.ceil(T / L);
  checkStates(states, nChunks, H, N);
  const out: Grads = { dr, dw, dkt, dv, dkk, da };
  const chunkLen = (c: number) => Math.min(L, T - c * L);

  // pass 1, parallel over (chunk, head)
  const recs: PrepRecord[] = [];
  for (let c = 0; c < nChunks; c++) {
    for (let h = 0; h < H; h++) recs.push(prepChunk(r, w, kt, v, kk, a, c * L, chunkLen(c), h, C, L, N));
  }

  // pass 2, sequential over chunks (parallel over heads and state rows i): carry G = dS,
  //   G ← G diag(Γ_n) + (G Pᵀ) W + dYᵀ Qf   (row i: g ← Γ_n⊙g + Σ_t (P_t·g) W_t + dY_{t,i} Qf_t)
  // saving, per chunk, the gradient of its end state
  const Gend = new Float64Array(nChunks * H * NN);
  const G = dState ? Float64Array.from(dState) : new Float64Array(H * NN);
  const pg = new Float64Array(L);
  for (let c = nChunks - 1; c >= 0; c--) {
    Gend.set(G, c * H * NN);
    const t0 = c * L, n = chunkLen(c);
    for (let h = 0; h < H; h++) {
      const { ch, W, Qf } = recs[c * H + h], go = h * NN;
      for (let i = 0; i < N; i++) {
        const row = go + i * N;
        for (let t = 0; t < n; t++) {
          let x = 0;
          for (let j = 0; j < N; j++) x += ch.P[t * N + j] * G[row + j];
          pg[t] = x;
        }
        for (let j = 0; j < N; j++) {
          let x = ch.gam[n * N + j] * G[row + j];
          for (let t = 0; t < n; t++) x += pg[t] * W[t * N + j] + dy[(t0 + t) * C + h * N + i] * Qf[t * N + j];
          G[row + j] = x;
        }
      }
    }
  }
  dState?.set(G);

  // pass 3, parallel over (chunk, head): U from the saved start state, dZ by the explicit inverse
  const g = newGradScratch(L, N);
  for (let c = 0; c < nChunks; c++) {
    const t0 = c * L, n = chunkLen(c);
    for (let h = 0; h < H; h++) {
      const { ch, Tinv, W, U0 } = recs[c * H + h];
      const so = (c * H + h) * NN;
      for (let t = 0; t < n; t++) {
        for (let i = 0; i < N; i++) {
          let u = U0[t * N + i];
          for (let j = 0; j < N; j++) u += W[t * N + j] * states[so + i * N + j];
          g.U[t * N + i] = u;
        }
      }
      loadDy(ch, g.dY, dy, t0, h, C);
      gradU(ch, g, Gend, so);
      for (let t = 0; t < n; t++) {
        for (let i = 0; i < N; i++) {
          let d = 0;
          for (let s = t; s < n; s++) d += Tinv[s * L + t] * g.dU[s * N + i];
          g.dZ[t * N + i] = d;
        }
      }
      chunkInputGrads(ch, g, states, so, Gend, so, out, kk, a, t0, h, C);
    }
  }
}
