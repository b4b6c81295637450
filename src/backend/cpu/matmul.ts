/**
 * float32 matrix products for the CPU backend.
 *
 *   linear(out, x, W, T, K, N):  out[t*N+n] = Σ_k x[t*K+k] · W[n*K+k]   (W is [N, K], PyTorch layout)
 *   matmul(out, x, A, T, K, N):  out[t*N+n] = Σ_k x[t*K+k] · A[k*N+n]   (A is [K, N])
 *
 * Two kernel families compute the same thing:
 *
 * - WebAssembly SIMD (f32x4), generated at start-up by the small assembler below and run on the
 *   compute heap (shared.ts). Register-tiled: linear() computes 3 rows × 3 outputs (9 vector
 *   accumulators) per step over K, with the vector lanes running along K and a horizontal sum at
 *   the end; matmul() computes 4 rows × 8 columns with the lanes running along N. Accumulates in
 *   float32 (four interleaved partial sums per dot product). Uses f32x4.relaxed_madd (fused
 *   multiply-add) where the runtime has relaxed SIMD.
 * - Plain TypeScript (4 × 4 register tiles, accumulating in float64): the fallback where wasm
 *   SIMD or shared wasm memory is missing, and the reference in the tests.
 *
 * Work of at least PAR_MIN multiply-adds is split over the worker pool (pool.ts): linear() by
 * output columns (each thread streams its own rows of W), matmul() by rows of x. Arrays outside
 * the compute heap are copied in: x and out per call by the main thread, W by each thread one
 * panel of rows at a time (so W panels stay in cache). Threads need W (A) to be shared
 * (sharedF32/heapF32); with an ordinary W everything runs on the main thread.
 */
import v8 from 'node:v8';
import { adoptHeapMemory, heapAlloc, heapFree, heapMemory, heapView, inHeap, isShared } from './shared.js';
import { OP_WKV7, wkv7Share } from './wkv7.js';
import {
  availableShares,
  bufferId,
  getThreads,
  jobArgs,
  runJob,
  setThreads,
  setWorkerExtra,
  shutdownPool,
  type ViewOf,
} from './pool.js';

export { getThreads, setThreads, shutdownPool };

// =============================================================================================
// Plain TypeScript kernels. Arrays are (view, start index); all row strides are K (x, W) and
// N (out, A). Accumulation in float64 (JS numbers).

/** out[t, n] for t in [t0, t1), n in [n0, n1) of linear(). */
export function linearTS(
  o: Float32Array, oi: number, x: Float32Array, xi: number, w: Float32Array, wi: number,
  K: number, N: number, t0: number, t1: number, n0: number, n1: number,
): void {
  let t = t0;
  for (; t + 4 <= t1; t += 4) {
    const x0 = xi + t * K, x1 = x0 + K, x2 = x1 + K, x3 = x2 + K;
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      const a = wi + n * K, b = a + K, c = b + K, d = c + K;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let k = 0; k < K; k++) {
        const w0 = w[a + k], w1 = w[b + k], w2 = w[c + k], w3 = w[d + k];
        let v = x[x0 + k];
        s00 += v * w0; s01 += v * w1; s02 += v * w2; s03 += v * w3;
        v = x[x1 + k];
        s10 += v * w0; s11 += v * w1; s12 += v * w2; s13 += v * w3;
        v = x[x2 + k];
        s20 += v * w0; s21 += v * w1; s22 += v * w2; s23 += v * w3;
        v = x[x3 + k];
        s30 += v * w0; s31 += v * w1; s32 += v * w2; s33 += v * w3;
      }
      let p = oi + t * N + n;
      o[p] = s00; o[p + 1] = s01; o[p + 2] = s02; o[p + 3] = s03; p += N;
      o[p] = s10; o[p + 1] = s11; o[p + 2] = s12; o[p + 3] = s13; p += N;
      o[p] = s20; o[p + 1] = s21; o[p + 2] = s22; o[p + 3] = s23; p += N;
      o[p] = s30; o[p + 1] = s31; o[p + 2] = s32; o[p + 3] = s33;
    }
    for (; n < n1; n++) {
      const a = wi + n * K;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < K; k++) {
        const v = w[a + k];
        s0 += x[x0 + k] * v; s1 += x[x1 + k] * v; s2 += x[x2 + k] * v; s3 += x[x3 + k] * v;
      }
      const p = oi + t * N + n;
      o[p] = s0; o[p + N] = s1; o[p + 2 * N] = s2; o[p + 3 * N] = s3;
    }
  }
  for (; t < t1; t++) {
    const x0 = xi + t * K;
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      const a = wi + n * K, b = a + K, c = b + K, d = c + K;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < K; k++) {
        const v = x[x0 + k];
        s0 += v * w[a + k]; s1 += v * w[b + k]; s2 += v * w[c + k]; s3 += v * w[d + k];
      }
      const p = oi + t * N + n;
      o[p] = s0; o[p + 1] = s1; o[p + 2] = s2; o[p + 3] = s3;
    }
    for (; n < n1; n++) {
      const a = wi + n * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += x[x0 + k] * w[a + k];
      o[oi + t * N + n] = s;
    }
  }
}

/** out[t, n] for t in [t0, t1), n in [n0, n1) of matmul(). */
export function matmulTS(
  o: Float32Array, oi: number, x: Float32Array, xi: number, A: Float32Array, ai: number,
  K: number, N: number, t0: number, t1: number, n0: number, n1: number,
): void {
  let t = t0;
  for (; t + 4 <= t1; t += 4) {
    const x0 = xi + t * K, x1 = x0 + K, x2 = x1 + K, x3 = x2 + K;
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      let a = ai + n;
      for (let k = 0; k < K; k++, a += N) {
        const a0 = A[a], a1 = A[a + 1], a2 = A[a + 2], a3 = A[a + 3];
        let v = x[x0 + k];
        s00 += v * a0; s01 += v * a1; s02 += v * a2; s03 += v * a3;
        v = x[x1 + k];
        s10 += v * a0; s11 += v * a1; s12 += v * a2; s13 += v * a3;
        v = x[x2 + k];
        s20 += v * a0; s21 += v * a1; s22 += v * a2; s23 += v * a3;
        v = x[x3 + k];
        s30 += v * a0; s31 += v * a1; s32 += v * a2; s33 += v * a3;
      }
      let p = oi + t * N + n;
      o[p] = s00; o[p + 1] = s01; o[p + 2] = s02; o[p + 3] = s03; p += N;
      o[p] = s10; o[p + 1] = s11; o[p + 2] = s12; o[p + 3] = s13; p += N;
      o[p] = s20; o[p + 1] = s21; o[p + 2] = s22; o[p + 3] = s23; p += N;
      o[p] = s30; o[p + 1] = s31; o[p + 2] = s32; o[p + 3] = s33;
    }
    for (; n < n1; n++) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      let a = ai + n;
      for (let k = 0; k < K; k++, a += N) {
        const v = A[a];
        s0 += x[x0 + k] * v; s1 += x[x1 + k] * v; s2 += x[x2 + k] * v; s3 += x[x3 + k] * v;
      }
      const p = oi + t * N + n;
      o[p] = s0; o[p + N] = s1; o[p + 2 * N] = s2; o[p + 3 * N] = s3;
    }
  }
  for (; t < t1; t++) {
    const x0 = xi + t * K;
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      let a = ai + n;
      for (let k = 0; k < K; k++, a += N) {
        const v = x[x0 + k];
        s0 += v * A[a]; s1 += v * A[a + 1]; s2 += v * A[a + 2]; s3 += v * A[a + 3];
      }
      const p = oi + t * N + n;
      o[p] = s0; o[p + 1] = s1; o[p + 2] = s2; o[p + 3] = s3;
    }
    for (; n < n1; n++) {
      let s = 0;
      let a = ai + n;
      for (let k = 0; k < K; k++, a += N) s += x[x0 + k] * A[a];
      o[oi + t * N + n] = s;
    }
  }
}

// =============================================================================================
// A minimal WebAssembly binary assembler: just what the kernels need (i32/f32/v128 locals,
// loads/stores, arithmetic, block/loop). Binary format reference: the WebAssembly core spec,
// sections 5.x ("Binary Format"); SIMD opcodes are 0xFD-prefixed with a LEB128 sub-opcode.

const T_I32 = 0x7f;
const T_F32 = 0x7d;
const T_V128 = 0x7b;

function uleb(n: number, out: number[]): void {
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
}

function sleb(n: number, out: number[]): void {
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return;
    }
    out.push(b | 0x80);
  }
}

/** Builds one function body. All parameters are i32; the function returns nothing. */
class FnBuilder {
  readonly code: number[] = [];
  private readonly localTypes: number[] = [];
  constructor(readonly nParams: number, readonly fma: boolean) {}

  local(type: number): number {
    this.localTypes.push(type);
    return this.nParams + this.localTypes.length - 1;
  }
  locals(type: number, n: number): number[] {
    return Array.from({ length: n }, () => this.local(type));
  }
  op(...bytes: number[]): this {
    for (const b of bytes) this.code.push(b);
    return this;
  }
  get(i: number): this { this.code.push(0x20); uleb(i, this.code); return this; }
  set(i: number): this { this.code.push(0x21); uleb(i, this.code); return this; }
  i32(v: number): this { this.code.push(0x41); sleb(v, this.code); return this; }
  add(): this { return this.op(0x6a); }
  mul(): this { return this.op(0x6c); }
  /** local[i] += step */
  inc(i: number, step: number): this { return this.get(i).i32(step).add().set(i); }
  /** local[dst] = local[a] + local[b] */
  sum(dst: number, a: number, b: number): this { return this.get(a).get(b).add().set(dst); }
  f32load(offset: number): this { this.code.push(0x2a, 2); uleb(offset, this.code); return this; }
  f32store(offset: number): this { this.code.push(0x38, 2); uleb(offset, this.code); return this; }
  f32add(): this { return this.op(0x92); }
  f32mul(): this { return this.op(0x94); }
  private simd(sub: number): this { this.code.push(0xfd); uleb(sub, this.code); return this; }
  v128load(offset: number): this { this.simd(0x00); this.code.push(0); uleb(offset, this.code); return this; }
  v128store(offset: number): this { this.simd(0x0b); this.code.push(0); uleb(offset, this.code); return this; }
  v128load32splat(offset: number): this { this.simd(0x09); this.code.push(0); uleb(offset, this.code); return this; }
  v128zero(): this { this.simd(0x0c); for (let i = 0; i < 16; i++) this.code.push(0); return this; }
  f32x4add(): this { return this.simd(0xe4); }
  f32x4mul(): this { return this.simd(0xe6); }
  f32x4lane(i: number): this { this.simd(0x1f); this.code.push(i); return this; }
  /** local[acc] = local[a] * local[b] + local[acc]  (fused where relaxed SIMD is available) */
  madd(acc: number, a: number, b: number): this {
    if (this.fma) return this.get(a).get(b).get(acc).simd(0x105).set(acc); // f32x4.relaxed_madd
    return this.get(acc).get(a).get(b).f32x4mul().f32x4add().set(acc);
  }
  /** Counted loop: for (i = start; i < limit(); i += step) body()  — test at the top. */
  loop(i: number, start: () => void, limit: () => void, step: number, body: () => void): this {
    start();
    this.set(i);
    this.op(0x02, 0x40, 0x03, 0x40); // block { loop {
    this.get(i);
    limit();
    this.op(0x4f, 0x0d, 1); // i32.ge_u; br_if 1 (exit block)
    body();
    this.inc(i, step);
    this.op(0x0c, 0, 0x0b, 0x0b); // br 0 (loop) } }
    return this;
  }
  encode(): number[] {
    const body: number[] = [];
    const groups: [number, number][] = [];
    for (const t of this.localTypes) {
      const g = groups[groups.length - 1];
      if (g && g[1] === t) g[0]++;
      else groups.push([1, t]);
    }
    uleb(groups.length, body);
    for (const [n, t] of groups) { uleb(n, body); body.push(t); }
    for (const b of this.code) body.push(b);
    body.push(0x0b);
    const out: number[] = [];
    uleb(body.length, out);
    for (const b of body) out.push(b);
    return out;
  }
}

/** A module importing a shared memory env.mem, exporting the given functions. */
function encodeModule(fns: { name: string; fn: FnBuilder }[]): Uint8Array<ArrayBuffer> {
  const out: number[] = [0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0];
  const section = (id: number, content: number[]) => { out.push(id); uleb(content.length, out); for (const b of content) out.push(b); };
  const vec = (items: number[][]) => { const v: number[] = []; uleb(items.length, v); for (const it of items) for (const b of it) v.push(b); return v; };
  const name = (s: string) => { const v: number[] = []; uleb(s.length, v); for (let i = 0; i < s.length; i++) v.push(s.charCodeAt(i)); return v; };
  const arities = [...new Set(fns.map((f) => f.fn.nParams))];
  section(1, vec(arities.map((n) => { const t = [0x60]; uleb(n, t); for (let i = 0; i < n; i++) t.push(T_I32); t.push(0); return t; })));
  const limits = [0x03]; // shared, with maximum
  uleb(0, limits);
  uleb(65536, limits);
  section(2, vec([[...name('env'), ...name('mem'), 0x02, ...limits]]));
  section(3, vec(fns.map((f) => { const v: number[] = []; uleb(arities.indexOf(f.fn.nParams), v); return v; })));
  section(7, vec(fns.map((f, i) => { const v = [...name(f.name), 0x00]; uleb(i, v); return v; })));
  section(10, vec(fns.map((f) => f.fn.encode())));
  return new Uint8Array(out);
}

/**
 * linear() tile kernel, R rows × C outputs:
 *   params (byte addresses / byte strides):
 *     x, w, o, rows (multiple of R), cols (multiple of C), k4b (bytes of K rounded down to 16),
 *     kb (bytes of K), ldx, ldw, ldo
 *   for n in cols step C, for t in rows step R:
 *     acc[r][c] = Σ over 16-byte steps of x[t+r] * w[n+c] (f32x4), then horizontal sums,
 *     plus a scalar loop over the last K % 4 elements; o[t+r][n+c] = result.
 * Loop order n-outer / t-inner keeps the C rows of W in L1 while x rows stream from L2.
 */
function linearKernel(R: number, C: number, fma: boolean): FnBuilder {
  const f = new FnBuilder(10, fma);
  const [x, w, o, rows, cols, k4b, kb, ldx, ldw, ldo] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const n = f.local(T_I32), t = f.local(T_I32), k = f.local(T_I32);
  const wc = f.locals(T_I32, C);
  const xr = f.locals(T_I32, R);
  const orow = f.local(T_I32);
  const acc = f.locals(T_V128, R * C);
  const xv = f.locals(T_V128, R);
  const wv = f.local(T_V128);
  const s = f.local(T_F32);
  f.loop(n, () => f.i32(0), () => f.get(cols), C, () => {
    // wc[c] = w + (n + c) * ldw
    f.get(n).get(ldw).mul().get(w).add().set(wc[0]);
    for (let c = 1; c < C; c++) f.sum(wc[c], wc[c - 1], ldw);
    f.loop(t, () => f.i32(0), () => f.get(rows), R, () => {
      f.get(t).get(ldx).mul().get(x).add().set(xr[0]);
      for (let r = 1; r < R; r++) f.sum(xr[r], xr[r - 1], ldx);
      for (const a of acc) f.v128zero().set(a);
      f.loop(k, () => f.i32(0), () => f.get(k4b), 16, () => {
        for (let r = 0; r < R; r++) f.get(xr[r]).get(k).add().v128load(0).set(xv[r]);
        for (let c = 0; c < C; c++) {
          // one W vector, used by all R rows
          f.get(wc[c]).get(k).add().v128load(0).set(wv);
          for (let r = 0; r < R; r++) f.madd(acc[r * C + c], xv[r], wv);
        }
      });
      // o row pointer for row t: o + t*ldo + n*4
      for (let r = 0; r < R; r++) {
        f.get(t).i32(r).add().get(ldo).mul().get(o).add().get(n).i32(4).mul().add().set(orow);
        for (let c = 0; c < C; c++) {
          const a = acc[r * C + c];
          f.get(a).f32x4lane(0).get(a).f32x4lane(1).f32add().get(a).f32x4lane(2).get(a).f32x4lane(3).f32add().f32add().set(s);
          // scalar tail over the last K % 4 elements
          f.loop(k, () => f.get(k4b), () => f.get(kb), 4, () => {
            f.get(s).get(xr[r]).get(k).add().f32load(0).get(wc[c]).get(k).add().f32load(0).f32mul().f32add().set(s);
          });
          f.get(orow).get(s).f32store(c * 4);
        }
      }
    });
  });
  return f;
}

/**
 * matmul() tile kernel, R rows × CV vectors of 4 columns:
 *   params: x, a, o, rows (multiple of R), cols (multiple of 4·CV), kb (bytes of K), ldx, lda, ldo
 *   for n in cols step 4·CV, for t in rows step R:
 *     acc[r][v] = Σ_k splat(x[t+r][k]) * A[k][n+4v .. n+4v+3];  o[t+r][n+4v..] = acc[r][v]
 */
function matmulKernel(R: number, CV: number, fma: boolean): FnBuilder {
  const f = new FnBuilder(9, fma);
  const [x, a, o, rows, cols, kb, ldx, lda, ldo] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const n = f.local(T_I32), t = f.local(T_I32), k = f.local(T_I32);
  const xr = f.locals(T_I32, R);
  const ap = f.local(T_I32);
  const orow = f.local(T_I32);
  const acc = f.locals(T_V128, R * CV);
  const xs = f.locals(T_V128, R);
  const av = f.local(T_V128);
  f.loop(n, () => f.i32(0), () => f.get(cols), 4 * CV, () => {
    f.loop(t, () => f.i32(0), () => f.get(rows), R, () => {
      f.get(t).get(ldx).mul().get(x).add().set(xr[0]);
      for (let r = 1; r < R; r++) f.sum(xr[r], xr[r - 1], ldx);
      for (const v of acc) f.v128zero().set(v);
      f.get(n).i32(4).mul().get(a).add().set(ap);
      f.loop(k, () => f.i32(0), () => f.get(kb), 4, () => {
        for (let r = 0; r < R; r++) f.get(xr[r]).get(k).add().v128load32splat(0).set(xs[r]);
        for (let v = 0; v < CV; v++) {
          f.get(ap).v128load(16 * v).set(av);
          for (let r = 0; r < R; r++) f.madd(acc[r * CV + v], xs[r], av);
        }
        f.sum(ap, ap, lda);
      });
      for (let r = 0; r < R; r++) {
        f.get(t).i32(r).add().get(ldo).mul().get(o).add().get(n).i32(4).mul().add().set(orow);
        for (let v = 0; v < CV; v++) f.get(orow).get(acc[r * CV + v]).v128store(16 * v);
      }
    });
  });
  return f;
}

// Tile shapes. linear: 3×3 main tile; 1 or 2 leftover rows use 4 outputs per step.
// (3×3 with FMA reaches ~40 GFLOP/s per core here, about the f32x4 FMA peak; 2×4 and 4×2 are
// within 5%; 3×4, 4×3 and larger run out of the 16 xmm registers V8 uses and spill.)
const LIN_R = 3;
const LIN_C_MAIN = 3;
const LIN_C_NARROW = 4;
// matmul: 4 rows × 2 vectors (8 columns); 1–2 leftover rows (and T = 1) use 4 vectors.
const MM_R = 4;
const MM_CV = 2;
const MM_CV_NARROW = 4;

type Kernel10 = (x: number, w: number, o: number, rows: number, cols: number, k4b: number, kb: number, ldx: number, ldw: number, ldo: number) => void;
type Kernel9 = (x: number, a: number, o: number, rows: number, cols: number, kb: number, ldx: number, lda: number, ldo: number) => void;

interface Kernels {
  /** lin[r][c]: r rows × c outputs, r in 1..3, c in 1..4 */
  lin: Kernel10[][];
  /** mm[r][v]: r rows × v vectors, r in 1..4, v in 1..4 */
  mm: Kernel9[][];
  fma: boolean;
}

/**
 * Whether f32x4.relaxed_madd (relaxed SIMD) validates. Node ≥ 22 ships relaxed SIMD; Node 20 has
 * it behind V8's --experimental-wasm-relaxed-simd, which we switch on at run time (it only adds
 * wasm opcodes; V8 flags are process-wide, so workers get it too). FMA makes prefill ~1.6× faster.
 * RWKVX_NO_FMA=1 disables both.
 */
function hasRelaxedSimd(): boolean {
  if (process.env.RWKVX_NO_FMA === '1') return false;
  if (validateRelaxed()) return true;
  try {
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  } catch {
    return false;
  }
  return validateRelaxed();
}

function validateRelaxed(): boolean {
  // (func (param v128 v128 v128) (result v128) local.get 0 local.get 1 local.get 2 f32x4.relaxed_madd)
  const bytes = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 8, 1, 0x60, 3, 0x7b, 0x7b, 0x7b, 1, 0x7b, 3, 2, 1, 0,
    10, 13, 1, 11, 0, 0x20, 0, 0x20, 1, 0x20, 2, 0xfd, 0x85, 0x02, 0x0b,
  ]);
  try {
    return WebAssembly.validate(bytes);
  } catch {
    return false;
  }
}

function buildModule(): WebAssembly.Module | null {
  if (process.env.RWKVX_NO_WASM === '1') return null;
  if (typeof WebAssembly === 'undefined') return null;
  const fma = hasRelaxedSimd();
  const fns: { name: string; fn: FnBuilder }[] = [];
  for (let r = 1; r <= LIN_R; r++) for (let c = 1; c <= LIN_C_NARROW; c++) fns.push({ name: `lin${r}x${c}`, fn: linearKernel(r, c, fma) });
  for (let r = 1; r <= MM_R; r++) for (let v = 1; v <= MM_CV_NARROW; v++) fns.push({ name: `mm${r}x${v}`, fn: matmulKernel(r, v, fma) });
  fns.push({ name: fma ? 'fma' : 'nofma', fn: new FnBuilder(0, fma) });
  try {
    const bin = encodeModule(fns);
    if (!WebAssembly.validate(bin)) return null;
    return compileOptimized(bin);
  } catch {
    return null;
  }
}

/**
 * Compiles every kernel with V8's optimizing compiler up front. By default V8 (11.x) compiles
 * wasm functions lazily on first call with its baseline compiler (Liftoff, several times slower
 * for SIMD) and tiers hot ones up later, per thread's instance budget; workers then ran the
 * first prefill calls ~30% slower. We switch off lazy compilation and Liftoff only for this
 * synchronous compile and restore both right after (unless the user set either flag).
 */
function compileOptimized(bin: Uint8Array<ArrayBuffer>): WebAssembly.Module {
  const userSet = [...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((a) => /liftoff|lazy-compilation/.test(a));
  let switched = false;
  if (!userSet) {
    try {
      v8.setFlagsFromString('--no-liftoff');
      v8.setFlagsFromString('--no-wasm-lazy-compilation');
      switched = true;
    } catch {
      switched = false;
    }
  }
  try {
    return new WebAssembly.Module(bin);
  } finally {
    if (switched) {
      v8.setFlagsFromString('--liftoff');
      v8.setFlagsFromString('--wasm-lazy-compilation');
    }
  }
}

function instantiate(mod: WebAssembly.Module, mem: WebAssembly.Memory): Kernels {
  const inst = new WebAssembly.Instance(mod, { env: { mem } });
  const e = inst.exports as Record<string, unknown>;
  const lin: Kernel10[][] = [];
  for (let r = 1; r <= LIN_R; r++) {
    lin[r] = [];
    for (let c = 1; c <= LIN_C_NARROW; c++) lin[r][c] = e[`lin${r}x${c}`] as Kernel10;
  }
  const mm: Kernel9[][] = [];
  for (let r = 1; r <= MM_R; r++) {
    mm[r] = [];
    for (let v = 1; v <= MM_CV_NARROW; v++) mm[r][v] = e[`mm${r}x${v}`] as Kernel9;
  }
  return { lin, mm, fma: 'fma' in e };
}

let wasmModule: WebAssembly.Module | null | undefined;
let kernelsCache: Kernels | null | undefined;

/** The SIMD kernels on this thread, or null (no wasm SIMD / shared memory, or RWKVX_NO_WASM=1). */
function kernels(): Kernels | null {
  if (kernelsCache !== undefined) return kernelsCache;
  kernelsCache = null;
  const mem = heapMemory();
  if (!mem) return null;
  if (wasmModule === undefined) wasmModule = buildModule();
  if (wasmModule) {
    try {
      kernelsCache = instantiate(wasmModule, mem);
    } catch {
      kernelsCache = null;
    }
  }
  return kernelsCache;
}

/** Which kernels linear/matmul use on this thread: 'wasm-simd-fma', 'wasm-simd' or 'ts'. */
export function kernelKind(): string {
  const k = kernels();
  return k ? (k.fma ? 'wasm-simd-fma' : 'wasm-simd') : 'ts';
}

/**
 * Forces the plain TypeScript kernels (true) or re-enables the SIMD kernels (false) on the main
 * thread and in workers started afterwards. For tests and benchmarks.
 */
export function useTSKernels(on: boolean): void {
  tsOnly = on;
}
let tsOnly = false;

// Workers get the compiled module and the heap at start-up.
setWorkerExtra(() => {
  kernels(); // builds the module if possible
  return { mem: heapMemory(), module: wasmModule ?? null };
});

/** Called in each worker at start-up with the main thread's setWorkerExtra data. */
export function initWorker(extra: unknown): void {
  const e = extra as { mem: WebAssembly.Memory | null; module: WebAssembly.Module | null } | null;
  kernelsCache = null;
  if (e && e.mem) {
    adoptHeapMemory(e.mem);
    if (e.module) {
      wasmModule = e.module;
      kernelsCache = instantiate(e.module, e.mem);
    }
  }
}

// ---- tile drivers (byte addresses in the heap) ----------------------------------------------

/** linear() on a rectangle: rows × cols outputs, all operands in the heap. */
function linRect(k: Kernels, x: number, w: number, o: number, rows: number, cols: number, K: number, ldo: number): void {
  const kb = K * 4, k4b = kb & ~15;
  let t = 0;
  if (rows >= LIN_R) {
    const rm = rows - (rows % LIN_R);
    linStrip(k, LIN_R, LIN_C_MAIN, x, w, o, rm, cols, k4b, kb, ldo);
    t = rm;
  }
  const rr = rows - t;
  if (rr > 0) linStrip(k, rr, LIN_C_NARROW, x + t * kb, w, o + t * ldo, rr, cols, k4b, kb, ldo);
}

function linStrip(k: Kernels, r: number, C: number, x: number, w: number, o: number, rows: number, cols: number, k4b: number, kb: number, ldo: number): void {
  const cm = cols - (cols % C);
  if (cm > 0) k.lin[r][C](x, w, o, rows, cm, k4b, kb, kb, kb, ldo);
  const cr = cols - cm;
  if (cr > 0) k.lin[r][cr](x, w + cm * kb, o + cm * 4, rows, cr, k4b, kb, kb, kb, ldo);
}

/** matmul() on rows × cols outputs (cols a multiple of 4), all operands in the heap. */
function mmRect(k: Kernels, x: number, a: number, o: number, rows: number, cols: number, K: number, N: number): void {
  const kb = K * 4, ld = N * 4;
  let t = 0;
  const rm = rows - (rows % MM_R);
  if (rm > 0) mmStrip(k, MM_R, MM_CV, x, a, o, rm, cols, kb, ld);
  t = rm;
  const rr = rows - t;
  if (rr > 0) mmStrip(k, rr, rr <= 2 ? MM_CV_NARROW : MM_CV, x + t * kb, a, o + t * ld, rr, cols, kb, ld);
}

function mmStrip(k: Kernels, r: number, cv: number, x: number, a: number, o: number, rows: number, cols: number, kb: number, ld: number): void {
  const step = 4 * cv;
  const cm = cols - (cols % step);
  if (cm > 0) k.mm[r][cv](x, a, o, rows, cm, kb, kb, ld, ld);
  const cr = cols - cm; // a multiple of 4, fewer than 4·cv
  if (cr > 0) k.mm[r][cr / 4](x, a + cm * 4, o + cm * 4, rows, cr, kb, kb, ld, ld);
}

// =============================================================================================
// Jobs: one share of a linear/matmul, run by the main thread (share 0) and by workers.

export const OP_LINEAR = 1;
export const OP_MATMUL = 2;

// argument slots
const A_T = 0, A_K = 1, A_N = 2, A_SPLIT = 3, A_WASM = 4;
const A_OID = 5, A_OI = 6, A_XID = 7, A_XI = 8, A_WID = 9, A_WI = 10;
const A_PANEL = 11, A_PANEL_ROWS = 12;
const SPLIT_N = 0, SPLIT_T = 1;

/** Rows of x per block in linear() prefill (a multiple of 3): x block stays in L2. */
const T_BLOCK = 96;

/** Start of share s when n items are split into `shares` parts on multiples of align. */
function shareStart(n: number, s: number, shares: number, align: number): number {
  if (s >= shares) return n;
  return Math.min(n, Math.floor((Math.ceil(n / align) * s) / shares) * align);
}

/** Alignment of share boundaries over N for linear(): whole tiles (lcm of 3 and 4). */
const LIN_ALIGN = 12;

function linearShare(args: Int32Array, share: number, nShares: number, o: Float32Array, x: Float32Array, w: Float32Array): void {
  const T = args[A_T], K = args[A_K], N = args[A_N];
  let t0 = 0, t1 = T, n0 = 0, n1 = N;
  if (args[A_SPLIT] === SPLIT_N) { n0 = shareStart(N, share, nShares, LIN_ALIGN); n1 = shareStart(N, share + 1, nShares, LIN_ALIGN); }
  else { t0 = shareStart(T, share, nShares, LIN_R); t1 = shareStart(T, share + 1, nShares, LIN_R); }
  if (t0 >= t1 || n0 >= n1) return;
  const oi = args[A_OI], xi = args[A_XI], wi = args[A_WI];
  const k = args[A_WASM] ? kernels() : null;
  if (!k) {
    linearTS(o, oi, x, xi, w, wi, K, N, t0, t1, n0, n1);
    return;
  }
  // SIMD path: x and out are in the heap; W maybe not (then copied panel by panel into this
  // share's scratch). Loop order: panels of W rows sized for L2 outside, blocks of x rows inside,
  // so each W panel is read from memory once and reused from L2 for all of x.
  const xa = xi * 4, oa = oi * 4, ldo = N * 4;
  const direct = args[A_WID] === 0;
  const heap = direct ? null : heapView();
  const panelRows = direct ? panelRowsFor(K) : args[A_PANEL_ROWS];
  const pi = args[A_PANEL] + share * panelRows * K;
  for (let nb = n0; nb < n1; nb += panelRows) {
    const ne = Math.min(n1, nb + panelRows);
    let wa: number;
    if (heap) {
      heap.set(w.subarray(wi + nb * K, wi + ne * K), pi);
      wa = pi * 4;
    } else {
      wa = (wi + nb * K) * 4;
    }
    for (let tb = t0; tb < t1; tb += T_BLOCK) {
      const rows = Math.min(T_BLOCK, t1 - tb);
      linRect(k, xa + tb * K * 4, wa, oa + tb * ldo + nb * 4, rows, ne - nb, K, ldo);
    }
  }
}

function matmulShare(args: Int32Array, share: number, nShares: number, o: Float32Array, x: Float32Array, a: Float32Array): void {
  const T = args[A_T], K = args[A_K], N = args[A_N];
  let t0 = 0, t1 = T, n0 = 0, n1 = N;
  if (args[A_SPLIT] === SPLIT_N) { n0 = shareStart(N, share, nShares, 4); n1 = shareStart(N, share + 1, nShares, 4); }
  else { t0 = shareStart(T, share, nShares, MM_R); t1 = shareStart(T, share + 1, nShares, MM_R); }
  if (t0 >= t1 || n0 >= n1) return;
  const oi = args[A_OI], xi = args[A_XI], ai = args[A_WI];
  const k = args[A_WASM] ? kernels() : null;
  if (!k) {
    matmulTS(o, oi, x, xi, a, ai, K, N, t0, t1, n0, n1);
    return;
  }
  // SIMD path: every operand is in the heap. Columns in whole vectors; the last N % 4 in TS.
  const nv = n0 + ((n1 - n0) & ~3);
  if (nv > n0) mmRect(k, (xi + t0 * K) * 4, (ai + n0) * 4, (oi + t0 * N + n0) * 4, t1 - t0, nv - n0, K, N);
  if (nv < n1) matmulTS(o, oi, x, xi, a, ai, K, N, t0, t1, nv, n1);
}

/** Runs one share of a job (the worker entry point calls this). */
export function runShare(op: number, args: Int32Array, share: number, nShares: number, view: ViewOf): void {
  if (op === OP_WKV7) { wkv7Share(args, share, nShares, view); return; }
  const o = view(args[A_OID]), x = view(args[A_XID]), w = view(args[A_WID]);
  if (op === OP_LINEAR) linearShare(args, share, nShares, o, x, w);
  else if (op === OP_MATMUL) matmulShare(args, share, nShares, o, x, w);
  else throw new Error(`unknown op ${op}`);
}

// =============================================================================================
// Main-thread entry points.

/**
 * Minimum multiply-adds before a product is split over threads. Waking a worker and waiting for
 * it costs ~20–50 µs; 2^18 multiply-adds take ~25 µs from cache, ~100 µs streamed from DRAM.
 */
const PAR_MIN = 1 << 18;

/**
 * Rows of W per panel (read in place, or copied into the heap when W lives elsewhere): about
 * 300–370 KB, so a panel stays in L2 while every block of x passes over it.
 */
function panelRowsFor(K: number): number {
  return Math.max(LIN_ALIGN, Math.min(120, Math.floor(98304 / K / LIN_ALIGN) * LIN_ALIGN));
}

/** Growable staging regions in the heap, by purpose. */
const staging = new Map<string, { off: number; floats: number }>();
function stage(name: string, floats: number): number {
  let s = staging.get(name);
  if (!s || s.floats < floats) {
    if (s) heapFree(s.off);
    const want = Math.max(floats, s ? s.floats * 2 : 0);
    const off = heapAlloc(want * 4);
    if (off < 0) { staging.delete(name); return -1; }
    s = { off, floats: want };
    staging.set(name, s);
  }
  return s.off >>> 2;
}

/** Shared (non-heap) staging for the TS path, so workers can see x/out copies. */
const sharedStaging = new Map<string, Float32Array>();
function sharedStage(name: string, floats: number): Float32Array {
  let s = sharedStaging.get(name);
  if (!s || s.length < floats) {
    s = new Float32Array(new SharedArrayBuffer(Math.max(floats, s ? s.length * 2 : 0) * 4));
    sharedStaging.set(name, s);
  }
  return s;
}

/** Whole-buffer Float32Array views, by buffer. */
const wholeViews = new WeakMap<ArrayBufferLike, Float32Array>();
function whole(a: Float32Array): Float32Array {
  if (inHeap(a)) return heapView();
  const buf = a.buffer;
  let v = wholeViews.get(buf);
  if (!v || v.length * 4 < a.byteOffset + a.byteLength) {
    v = new Float32Array(buf, 0, buf.byteLength >>> 2);
    wholeViews.set(buf, v);
  }
  return v;
}

function bad(name: string, what: string): never {
  throw new RangeError(`${name}: ${what}`);
}

function check(name: string, out: Float32Array, x: Float32Array, m: Float32Array, T: number, K: number, N: number): void {
  if (!(Number.isInteger(T) && T >= 0)) bad(name, `T must be a non-negative integer, got ${T}`);
  if (!(Number.isInteger(K) && K >= 0)) bad(name, `K must be a non-negative integer, got ${K}`);
  if (!(Number.isInteger(N) && N >= 0)) bad(name, `N must be a non-negative integer, got ${N}`);
  if (x.length < T * K) bad(name, `x has ${x.length} elements, need T*K = ${T * K}`);
  if (m.length < K * N) bad(name, `weight has ${m.length} elements, need K*N = ${K * N}`);
  if (out.length < T * N) bad(name, `out has ${out.length} elements, need T*N = ${T * N}`);
  const ob = out.buffer;
  if (ob === x.buffer || ob === m.buffer) {
    const o0 = out.byteOffset, o1 = o0 + T * N * 4;
    if (ob === x.buffer && x.byteOffset < o1 && o0 < x.byteOffset + T * K * 4) bad(name, 'out overlaps x');
    if (ob === m.buffer && m.byteOffset < o1 && o0 < m.byteOffset + K * N * 4) bad(name, 'out overlaps the weight');
  }
}

/** The buffer id workers know `a` by: 0 heap, > 0 registered, -1 main thread only. */
function idOf(a: Float32Array, forWorkers: boolean): number {
  if (inHeap(a)) return 0;
  return forWorkers ? bufferId(a.buffer as SharedArrayBuffer) : -1;
}

// The current job's operands for the main thread's share (whole-buffer views; the start indices
// are in the args). Module-level so no closure is allocated per call.
let curOp = 0, curShares = 1;
let curO: Float32Array = new Float32Array(0), curX = curO, curM = curO;
let curArgs: Int32Array = new Int32Array(32);
const localArgs = curArgs;
function mainShare(): void {
  if (curOp === OP_LINEAR) linearShare(curArgs, 0, curShares, curO, curX, curM);
  else matmulShare(curArgs, 0, curShares, curO, curX, curM);
}

function product(op: number, out: Float32Array, x: Float32Array, m: Float32Array, T: number, K: number, N: number): void {
  check(op === OP_LINEAR ? 'linear' : 'matmul', out, x, m, T, K, N);
  if (T === 0 || N === 0) return;
  if (K === 0) { out.fill(0, 0, T * N); return; }
  const k = tsOnly ? null : kernels();

  // Shares: 1 unless the work is big enough, threads are enabled and W is visible to workers.
  let shares = 1;
  let split = SPLIT_N;
  if (T * K * N >= PAR_MIN && getThreads() > 1 && isShared(m)) {
    const avail = availableShares();
    if (op === OP_LINEAR) {
      if (N >= LIN_ALIGN * 2) shares = Math.min(avail, Math.ceil(N / LIN_ALIGN));
      else if (T >= 2 * LIN_R) { split = SPLIT_T; shares = Math.min(avail, Math.ceil(T / LIN_R)); }
    } else {
      if (T >= 2 * MM_R) { split = SPLIT_T; shares = Math.min(avail, Math.ceil(T / MM_R)); }
      else if (N >= 8) shares = Math.min(avail, Math.ceil(N / 4));
    }
  }
  const par = shares > 1;

  // Operands as the kernels see them (whole-buffer view, start index, id), with staging copies
  // in the heap (SIMD path) or in shared memory (TS path with threads) where needed.
  let copyBack: Float32Array | null = null;
  let panelIdx = 0, panelRows = 0;
  let wasm = k !== null;
  if (wasm) {
    const needX = !inHeap(x), needO = !inHeap(out), needM = op === OP_MATMUL && !inHeap(m);
    const xs = needX ? stage('x', T * K) : 0;
    const os = needO ? stage('o', T * N) : 0;
    const ms = needM ? stage('a', K * N) : 0;
    if (op === OP_LINEAR && !inHeap(m)) {
      panelRows = panelRowsFor(K);
      panelIdx = stage('panel', shares * panelRows * K);
    }
    wasm = xs >= 0 && os >= 0 && ms >= 0 && panelIdx >= 0; // heap full: TS path
    if (wasm) {
      const hv = heapView();
      if (needX) { hv.set(x.subarray(0, T * K), xs); x = hv.subarray(xs, xs + T * K); }
      if (needO) { copyBack = out; out = hv.subarray(os, os + T * N); }
      if (needM) { hv.set(m.subarray(0, K * N), ms); m = hv.subarray(ms, ms + K * N); }
    }
  }
  if (!wasm && par) {
    if (!isShared(x)) { const s = sharedStage('x', T * K); s.set(x.subarray(0, T * K)); x = s.subarray(0, T * K); }
    if (!isShared(out)) { copyBack = out; out = sharedStage('o', T * N).subarray(0, T * N); }
  }
  const oView = whole(out), oIdx = out.byteOffset >>> 2, oId = idOf(out, par);
  const xView = whole(x), xIdx = x.byteOffset >>> 2, xId = idOf(x, par);
  const mView = whole(m), mIdx = m.byteOffset >>> 2, mId = idOf(m, par);

  const args = par ? jobArgs() : localArgs;
  args[A_T] = T; args[A_K] = K; args[A_N] = N; args[A_SPLIT] = split; args[A_WASM] = wasm ? 1 : 0;
  args[A_OID] = oId; args[A_OI] = oIdx; args[A_XID] = xId; args[A_XI] = xIdx;
  args[A_WID] = mId; args[A_WI] = mIdx; args[A_PANEL] = panelIdx; args[A_PANEL_ROWS] = panelRows;
  curOp = op; curShares = shares; curArgs = args; curO = oView; curX = xView; curM = mView;
  try {
    if (par) runJob(op, shares, mainShare);
    else mainShare();
  } finally {
    curO = curX = curM = emptyF32; // drop references to user arrays
  }
  if (copyBack) copyBack.set(out.subarray(0, T * N));
}
const emptyF32 = new Float32Array(0);

/**
 * out[t*N + n] = Σ_k x[t*K + k] · W[n*K + k]  for t < T, n < N.
 * W is [N, K] (PyTorch linear weight). Views with any offset are fine; out must not overlap x or W.
 */
export function linear(out: Float32Array, x: Float32Array, W: Float32Array, T: number, K: number, N: number): void {
  product(OP_LINEAR, out, x, W, T, K, N);
}

/**
 * out[t*N + n] = Σ_k x[t*K + k] · A[k*N + n]  for t < T, n < N.
 * A is [K, N] (LoRA factors). Views with any offset are fine; out must not overlap x or A.
 */
export function matmul(out: Float32Array, x: Float32Array, A: Float32Array, T: number, K: number, N: number): void {
  product(OP_MATMUL, out, x, A, T, K, N);
}
