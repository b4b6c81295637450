/**
 * The RWKV-7 state recurrence (SPEC §2 step 8–9), token by token, per head:
 *   S ← S·diag(ω) + (S·(−κ̂))·(κ̂⊙a)ᵀ + v·k̃ᵀ ;  y = S·r
 * S is [H, N, N] with rows = value index i and columns = key index j, kept in float32 between
 * tokens; each row's dot products accumulate in float64.
 *
 * All inputs are [T, C] (C = H·N). kk is the normalised κ̂, kt the written key k̃, w the decay ω.
 *
 * Heads are independent, so with worker threads (pool.ts) and enough work the heads are split
 * between the threads, each running the whole sequence for its heads: the same arithmetic per head,
 * so the same bits as one thread.
 */
import { availableShares, bufferId, getThreads, jobArgs, runJob } from './pool.js';
import { inHeap, isShared } from './shared.js';

export function wkv7(
  y: Float32Array, S: Float32Array,
  r: Float32Array, w: Float32Array, kt: Float32Array, v: Float32Array, kk: Float32Array, a: Float32Array,
  T: number, H: number, N: number,
): void {
  if (N % 4 !== 0) throw new Error(`wkv7 needs a head size divisible by 4 (got ${N})`);
  if (T * H * N * N >= WKV_PAR_MIN && H >= 2 && getThreads() > 1 && [y, r, w, kt, v, kk, a].every(isShared)) {
    const shares = Math.min(availableShares(), H);
    if (shares > 1) {
      // a state the workers cannot see (a plain Float32Array) is staged in shared memory
      const SS = H * N * N, staged = !isShared(S);
      if (staged && (!stateStage || stateStage.length < SS)) stateStage = new Float32Array(new SharedArrayBuffer(SS * 4));
      const Sw = staged ? stateStage!.subarray(0, SS) : S;
      if (staged) Sw.set(S.subarray(0, SS));
      wkv7Parallel([y, Sw, r, w, kt, v, kk, a], T, H, N, shares);
      if (staged) S.set(Sw);
      return;
    }
  }
  wkv7Heads(y, S, r, w, kt, v, kk, a, T, H, N, 0, H);
}
let stateStage: Float32Array | undefined;

/** Multiply-adds (T·H·N²) from which wkv7 splits its heads over threads (a wake-up costs ~20–50 µs). */
const WKV_PAR_MIN = 1 << 18;

/** wkv7 for heads [h0, h1). */
function wkv7Heads(
  y: Float32Array, S: Float32Array,
  r: Float32Array, w: Float32Array, kt: Float32Array, v: Float32Array, kk: Float32Array, a: Float32Array,
  T: number, H: number, N: number, h0: number, h1: number,
): void {
  const C = H * N;
  // this head's token vectors, copied once per (token, head) so the N×N loops read local arrays
  const kkl = new Float64Array(N), ka = new Float64Array(N), wl = new Float64Array(N), kl = new Float64Array(N), rl = new Float64Array(N);
  for (let t = 0; t < T; t++) {
    const to = t * C;
    for (let h = h0; h < h1; h++) {
      const ho = to + h * N;
      const so = h * N * N;
      for (let j = 0; j < N; j++) {
        const q = kk[ho + j];
        kkl[j] = q; ka[j] = q * a[ho + j]; wl[j] = w[ho + j]; kl[j] = kt[ho + j]; rl[j] = r[ho + j];
      }
      for (let i = 0; i < N; i++) {
        const row = so + i * N;
        // four independent accumulators: the JIT keeps them in registers and overlaps the adds
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (let j = 0; j < N; j += 4) {
          s0 += S[row + j] * kkl[j]; s1 += S[row + j + 1] * kkl[j + 1];
          s2 += S[row + j + 2] * kkl[j + 2]; s3 += S[row + j + 3] * kkl[j + 3];
        }
        const sa = -(s0 + s1 + s2 + s3), vi = v[ho + i];
        let y0 = 0, y1 = 0, y2 = 0, y3 = 0;
        for (let j = 0; j < N; j += 4) {
          const a0 = Math.fround(S[row + j] * wl[j] + sa * ka[j] + vi * kl[j]);
          const a1 = Math.fround(S[row + j + 1] * wl[j + 1] + sa * ka[j + 1] + vi * kl[j + 1]);
          const a2 = Math.fround(S[row + j + 2] * wl[j + 2] + sa * ka[j + 2] + vi * kl[j + 2]);
          const a3 = Math.fround(S[row + j + 3] * wl[j + 3] + sa * ka[j + 3] + vi * kl[j + 3]);
          S[row + j] = a0; S[row + j + 1] = a1; S[row + j + 2] = a2; S[row + j + 3] = a3;
          y0 += a0 * rl[j]; y1 += a1 * rl[j + 1]; y2 += a2 * rl[j + 2]; y3 += a3 * rl[j + 3];
        }
        y[ho + i] = y0 + y1 + y2 + y3;
      }
    }
  }
}

// ---- the pool job: share s runs heads [⌊H·s/n⌋, ⌊H·(s+1)/n⌋) ---------------------------------
/** Opcode of the wkv7 job (matmul.ts's runShare dispatches it here). */
export const OP_WKV7 = 3;
const W_T = 0, W_H = 1, W_N = 2, W_ARR = 3; // then (buffer id, start index) for y, S, r, w, kt, v, kk, a

function headRange(H: number, share: number, shares: number): [number, number] {
  return [Math.floor((H * share) / shares), Math.floor((H * (share + 1)) / shares)];
}

let mainArrays: Float32Array[] = [];
function wkv7Parallel(arrays: Float32Array[], T: number, H: number, N: number, shares: number): void {
  const args = jobArgs();
  args[W_T] = T; args[W_H] = H; args[W_N] = N;
  arrays.forEach((x, i) => {
    args[W_ARR + 2 * i] = inHeap(x) ? 0 : bufferId(x.buffer as SharedArrayBuffer);
    args[W_ARR + 2 * i + 1] = x.byteOffset >>> 2;
  });
  mainArrays = arrays;
  try {
    runJob(OP_WKV7, shares, () => {
      const [h0, h1] = headRange(H, 0, shares);
      const [yy, SS, rr, ww, kk2, vv, kkk, aa] = mainArrays;
      wkv7Heads(yy, SS, rr, ww, kk2, vv, kkk, aa, T, H, N, h0, h1);
    });
  } finally {
    mainArrays = [];
  }
}

/** A worker's share of the wkv7 job; `view(id)` is the whole buffer the pool knows by id. */
export function wkv7Share(args: Int32Array, share: number, shares: number, view: (id: number) => Float32Array): void {
  const T = args[W_T], H = args[W_H], N = args[W_N], C = H * N;
  const at = (i: number, len: number) => {
    const start = args[W_ARR + 2 * i + 1];
    return view(args[W_ARR + 2 * i]).subarray(start, start + len);
  };
  const [h0, h1] = headRange(H, share, shares);
  wkv7Heads(at(0, T * C), at(1, H * N * N), at(2, T * C), at(3, T * C), at(4, T * C), at(5, T * C), at(6, T * C), at(7, T * C),
    T, H, N, h0, h1);
}

// ---------------------------------------------------------------------------------------------
// Training: the same recurrence with the state saved every `every` tokens, and its backward.

type FloatArray = Float32Array | Float64Array;

/**
 * wkv7 over T tokens, first copying S (the state before token t0) into checkpoint c for every
 * t0 = c·every. `checkpoints` holds ⌈T/every⌉ states of H·N·N. Results are identical to wkv7.
 */
export function wkv7Checkpointed(
  y: Float32Array, S: Float32Array,
  r: Float32Array, w: Float32Array, kt: Float32Array, v: Float32Array, kk: Float32Array, a: Float32Array,
  T: number, H: number, N: number, every: number, checkpoints: Float32Array,
): void {
  const C = H * N, SS = H * N * N;
  for (let t0 = 0, c = 0; t0 < T; t0 += every, c++) {
    const n = Math.min(every, T - t0);
    checkpoints.set(S, c * SS);
    const s = (x: Float32Array) => x.subarray(t0 * C, (t0 + n) * C);
    wkv7(s(y), S, s(r), s(w), s(kt), s(v), s(kk), s(a), n, H, N);
  }
}

/**
 * Backward of wkv7 through the state recurrence, from the checkpoints of wkv7Checkpointed. Per head,
 * with S the state before token t, S' after it, b = κ̂⊙a, sa = −S·κ̂ and G = dS' = dS_next + dy·rᵀ:
 *   dr = S'ᵀ·dy;  dω_j = Σ_i G_ij S_ij;  dv = G·k̃;  dk̃ = Gᵀ·v;  dsa = G·b;  db = Gᵀ·sa;
 *   dS = G·diag(ω) − dsa·κ̂ᵀ;  dκ̂ = −Sᵀ·dsa + db⊙a;  da = db⊙κ̂.
 * Chunks are processed last to first; inside a chunk the states are recomputed forward from its
 * checkpoint (with wkv7 itself, so they are bit-identical) and walked backwards. Memory: one chunk of
 * states, (every + 1)·H·N·N floats. The final state's gradient is zero (the loss sees only y).
 * Gradients accumulate (+=) into dr, dw, dkt, dv, dkk, da.
 */
export function wkv7Backward(
  dr: FloatArray, dw: FloatArray, dkt: FloatArray, dv: FloatArray, dkk: FloatArray, da: FloatArray, dy: FloatArray,
  r: Float32Array, w: Float32Array, kt: Float32Array, v: Float32Array, kk: Float32Array, a: Float32Array,
  T: number, H: number, N: number, every: number, checkpoints: Float32Array,
): void {
  const C = H * N, SS = H * N * N;
  const states = new Float32Array((Math.min(every, T) + 1) * SS);
  const dS = new Float64Array(SS);
  const yScratch = new Float32Array(C);
  const b = new Float64Array(N), db = new Float64Array(N), drj = new Float64Array(N), dwj = new Float64Array(N);
  const dktj = new Float64Array(N), dkkj = new Float64Array(N);
  const nChunks = Math.ceil(T / every);
  for (let c = nChunks - 1; c >= 0; c--) {
    const t0 = c * every, n = Math.min(every, T - t0);
    states.set(checkpoints.subarray(c * SS, (c + 1) * SS), 0);
    for (let u = 0; u < n; u++) {
      const S = states.subarray((u + 1) * SS, (u + 2) * SS);
      S.set(states.subarray(u * SS, (u + 1) * SS));
      const o = (t0 + u) * C, s = (x: Float32Array) => x.subarray(o, o + C);
      wkv7(yScratch, S, s(r), s(w), s(kt), s(v), s(kk), s(a), 1, H, N);
    }
    for (let u = n - 1; u >= 0; u--) {
      const po = u * SS, co = (u + 1) * SS; // S before and after token t0 + u
      const to = (t0 + u) * C;
      for (let h = 0; h < H; h++) {
        const ho = to + h * N, so = h * N * N;
        for (let j = 0; j < N; j++) {
          b[j] = kk[ho + j] * a[ho + j];
          db[j] = 0; drj[j] = 0; dwj[j] = 0; dktj[j] = 0; dkkj[j] = 0;
        }
        for (let i = 0; i < N; i++) {
          const row = so + i * N, pr = po + row, cr = co + row;
          let sa = 0;
          for (let j = 0; j < N; j++) sa -= states[pr + j] * kk[ho + j];
          const dyi = dy[ho + i], vi = v[ho + i];
          let dsa = 0, dvi = 0;
          for (let j = 0; j < N; j++) {
            const g = dS[row + j] + dyi * r[ho + j];
            drj[j] += states[cr + j] * dyi;
            dwj[j] += g * states[pr + j];
            dsa += g * b[j];
            db[j] += g * sa;
            dvi += g * kt[ho + j];
            dktj[j] += g * vi;
            dS[row + j] = g * w[ho + j];
          }
          for (let j = 0; j < N; j++) {
            dS[row + j] -= dsa * kk[ho + j];
            dkkj[j] -= dsa * states[pr + j];
          }
          dv[ho + i] += dvi;
        }
        for (let j = 0; j < N; j++) {
          dr[ho + j] += drj[j];
          dw[ho + j] += dwj[j];
          dkt[ho + j] += dktj[j];
          dkk[ho + j] += dkkj[j] + db[j] * a[ho + j];
          da[ho + j] += db[j] * kk[ho + j];
        }
      }
    }
  }
}
