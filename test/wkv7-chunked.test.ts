/**
 * The chunked WKV-7 reference (src/train/wkv7-chunked.ts) against the sequential recurrence: forward y and
 * final state against `wkv7`, gradients against `wkv7Backward`, and the initial-state gradient (plus a
 * final-state gradient fed in) against central finite differences of an independent float64 recurrence.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { wkv7, wkv7Backward, wkv7Checkpointed } from '../src/backend/cpu/wkv7.js';
import { wkv7ChunkedBackward, wkv7ChunkedBackwardStaged, wkv7ChunkedForward } from '../src/train/wkv7-chunked.js';
import { rng } from './helpers/numeric.js';

const REL_TOL = 1e-5;

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

interface Inputs { r: Float32Array; w: Float32Array; kt: Float32Array; v: Float32Array; kk: Float32Array; a: Float32Array; S0: Float32Array; dy: Float32Array }

/**
 * Inputs of the model's scale: ω = exp(−e^{−0.5}·σ(x)) over nearly all of (0.545, 1) (or pinned near the
 * strong end with `strongDecay`), κ̂ of unit norm per head, a = σ(·) ∈ (0, 1), r, k̃, v, S0, dy in (−1, 1).
 */
function draw(T: number, H: number, N: number, seed: number, strongDecay = false): Inputs {
  const u = rng(seed), C = H * N, n = T * C;
  const sym = (m: number) => { const x = new Float32Array(m); for (let i = 0; i < m; i++) x[i] = 2 * u() - 1; return x; };
  const w = new Float32Array(n), a = new Float32Array(n), kk = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    w[i] = Math.exp(-0.6065306597126334 * sigmoid(strongDecay ? 6 + 2 * u() : 12 * u() - 6));
    a[i] = sigmoid(6 * u() - 3);
  }
  for (let o = 0; o < n; o += N) {
    let norm = 0;
    for (let j = 0; j < N; j++) { kk[o + j] = u() - 0.5; norm += kk[o + j] ** 2; }
    for (let j = 0; j < N; j++) kk[o + j] /= Math.sqrt(norm);
  }
  return { r: sym(n), w, kt: sym(n), v: sym(n), kk, a, S0: sym(H * N * N), dy: sym(n) };
}

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length);
  let d = 0, m = 0;
  for (let i = 0; i < got.length; i++) {
    assert.ok(Number.isFinite(got[i]), `non-finite value at ${i}`);
    d = Math.max(d, Math.abs(got[i] - want[i]));
    m = Math.max(m, Math.abs(want[i]));
  }
  return d / Math.max(m, 1e-30);
}

const GRADS = ['dr', 'dw', 'dkt', 'dv', 'dkk', 'da'] as const;
type GradSet = Record<(typeof GRADS)[number], Float64Array>;
const gradSet = (n: number, fill = 0): GradSet =>
  Object.fromEntries(GRADS.map((g) => [g, new Float64Array(n).fill(fill)])) as GradSet;

const CASES: [T: number, N: number, L: number][] = [
  ...[1, 15, 16, 17, 40, 100].flatMap((T) => [[T, 8, 16], [T, 64, 16]] as [number, number, number][]),
  [37, 8, 1], [37, 8, 5], [100, 64, 32], [130, 64, 64],
];
const H = 2;
const worst = { y: 0, S: 0, grad: 0, staged: 0 };

for (const [T, N, L] of CASES) {
  for (const strong of L >= 32 ? [false, true] : [false]) {
    const name = `T ${T}, H ${H}, N ${N}, L ${L}${strong ? ', decays near 0.545' : ''}`;
    test(`chunked forward and backward = sequential: ${name}`, () => {
      const inp = draw(T, H, N, 1000 * T + 10 * N + L + (strong ? 7 : 0), strong);
      const { r, w, kt, v, kk, a, dy } = inp, C = H * N;

      const ySeq = new Float32Array(T * C), SSeq = inp.S0.slice();
      const every = 7, ckpt = new Float32Array(Math.ceil(T / every) * H * N * N);
      wkv7Checkpointed(ySeq, SSeq, r, w, kt, v, kk, a, T, H, N, every, ckpt);
      const yCh = new Float64Array(T * C), SCh = Float64Array.from(inp.S0);
      const states = wkv7ChunkedForward(yCh, SCh, r, w, kt, v, kk, a, T, H, N, L);
      const ey = relErr(yCh, ySeq), eS = relErr(SCh, SSeq);
      assert.ok(ey <= REL_TOL, `y: relative error ${ey}`);
      assert.ok(eS <= REL_TOL, `final state: relative error ${eS}`);
      worst.y = Math.max(worst.y, ey); worst.S = Math.max(worst.S, eS);

      // gradients accumulate: start every output at the same nonzero value
      const want = gradSet(T * C, 0.25), got = gradSet(T * C, 0.25), staged = gradSet(T * C, 0.25);
      wkv7Backward(want.dr, want.dw, want.dkt, want.dv, want.dkk, want.da, dy, r, w, kt, v, kk, a, T, H, N, every, ckpt);
      const dS = new Float64Array(H * N * N), dSStaged = new Float64Array(H * N * N);
      wkv7ChunkedBackward(got.dr, got.dw, got.dkt, got.dv, got.dkk, got.da, dy, r, w, kt, v, kk, a, T, H, N, L, states, dS);
      wkv7ChunkedBackwardStaged(staged.dr, staged.dw, staged.dkt, staged.dv, staged.dkk, staged.da, dy, r, w, kt, v, kk, a, T, H, N, L, states, dSStaged);
      for (const g of GRADS) {
        const e = relErr(got[g].map((x) => x - 0.25), want[g].map((x) => x - 0.25));
        const es = relErr(staged[g].map((x) => x - 0.25), want[g].map((x) => x - 0.25));
        assert.ok(e <= REL_TOL, `${g}: relative error ${e}`);
        assert.ok(es <= REL_TOL, `${g} (staged): relative error ${es}`);
        worst.grad = Math.max(worst.grad, e); worst.staged = Math.max(worst.staged, es);
      }
      const eDS = relErr(dSStaged, dS);
      assert.ok(eDS <= 1e-12, `initial-state gradient, staged vs chunked: ${eDS}`);
    });
  }
}

test('max relative errors over the cases above', () => {
  console.log(`chunked vs sequential, max relative error: y ${worst.y.toExponential(2)}, final state ${worst.S.toExponential(2)}, ` +
    `gradients ${worst.grad.toExponential(2)}, staged gradients ${worst.staged.toExponential(2)}`);
});

type F64Inputs = Record<'r' | 'w' | 'kt' | 'v' | 'kk' | 'a' | 'S0', Float64Array>;

/** Independent float64 sequential recurrence: y [T, C] and the final state. */
function seqForward(x: F64Inputs, T: number, H: number, N: number): { y: Float64Array; S: Float64Array } {
  const C = H * N, S = x.S0.slice(), y = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const o = t * C + h * N;
      for (let i = 0; i < N; i++) {
        const row = S.subarray(h * N * N + i * N, h * N * N + (i + 1) * N);
        let sa = 0;
        for (let j = 0; j < N; j++) sa -= row[j] * x.kk[o + j];
        let yi = 0;
        for (let j = 0; j < N; j++) {
          row[j] = row[j] * x.w[o + j] + sa * x.kk[o + j] * x.a[o + j] + x.v[o + i] * x.kt[o + j];
          yi += row[j] * x.r[o + j];
        }
        y[o + i] = yi;
      }
    }
  }
  return { y, S };
}

/** Σ dy·y + Σ dS_T·S_T through the float64 recurrence. */
function seqLoss(x: F64Inputs & Record<'dy' | 'dST', Float64Array>, T: number, H: number, N: number): number {
  const { y, S } = seqForward(x, T, H, N);
  let loss = 0;
  for (let e = 0; e < y.length; e++) loss += y[e] * x.dy[e];
  for (let e = 0; e < S.length; e++) loss += S[e] * x.dST[e];
  return loss;
}

const toF64 = (d: Inputs): F64Inputs & { dy: Float64Array } => ({
  r: Float64Array.from(d.r), w: Float64Array.from(d.w), kt: Float64Array.from(d.kt), v: Float64Array.from(d.v),
  kk: Float64Array.from(d.kk), a: Float64Array.from(d.a), S0: Float64Array.from(d.S0), dy: Float64Array.from(d.dy),
});

test('float64 inputs: the chunked forward equals a float64 sequential recurrence to float64 rounding', () => {
  for (const [T, L, strong] of [[100, 16, false], [100, 7, false], [130, 64, true]] as const) {
    const N = 64, x = toF64(draw(T, H, N, 77 + L, strong)), want = seqForward(x, T, H, N);
    const y = new Float64Array(T * H * N), S = x.S0.slice();
    wkv7ChunkedForward(y, S, x.r, x.w, x.kt, x.v, x.kk, x.a, T, H, N, L);
    const ey = relErr(y, want.y), eS = relErr(S, want.S);
    console.log(`float64, T ${T}, L ${L}${strong ? ', decays near 0.545' : ''}: y ${ey.toExponential(2)}, state ${eS.toExponential(2)}`);
    assert.ok(ey <= 1e-12 && eS <= 1e-12, `y ${ey}, state ${eS}`);
  }
});

test('initial-state gradient and a final-state gradient fed in: central finite differences (float64)', () => {
  const T = 23, Hh = 2, N = 8, L = 8, C = Hh * N, u = rng(99);
  const d = draw(T, Hh, N, 4242);
  const x = { ...toF64(d), dST: Float64Array.from({ length: Hh * N * N }, () => 2 * u() - 1) };
  const states = wkv7ChunkedForward(new Float64Array(T * C), x.S0.slice(), x.r, x.w, x.kt, x.v, x.kk, x.a, T, Hh, N, L);
  let worstFd = 0;
  for (const backward of [wkv7ChunkedBackward, wkv7ChunkedBackwardStaged]) {
    const g = gradSet(T * C), dS = x.dST.slice();
    backward(g.dr, g.dw, g.dkt, g.dv, g.dkk, g.da, x.dy, x.r, x.w, x.kt, x.v, x.kk, x.a, T, Hh, N, L, states, dS);
    const analytic: Record<string, Float64Array> = { r: g.dr, w: g.dw, kt: g.dkt, v: g.dv, kk: g.dkk, a: g.da, S0: dS };
    for (const [name, grad] of Object.entries(analytic)) {
      const arr = x[name as keyof typeof x];
      let scale = 0;
      for (const q of grad) scale = Math.max(scale, Math.abs(q));
      assert.ok(scale > 0, name);
      // every entry of S0 (the loss is linear in it), 40 random entries of the other inputs
      const idx = name === 'S0' ? [...arr.keys()] : Array.from({ length: 40 }, () => Math.floor(u() * arr.length));
      for (const e of idx) {
        const h = 1e-5, keep = arr[e];
        arr[e] = keep + h; const up = seqLoss(x, T, Hh, N);
        arr[e] = keep - h; const down = seqLoss(x, T, Hh, N);
        arr[e] = keep;
        const fd = (up - down) / (2 * h);
        worstFd = Math.max(worstFd, Math.abs(fd - grad[e]) / scale);
        assert.ok(Math.abs(fd - grad[e]) <= 1e-7 * scale + 1e-9,
          `${backward.name} d${name}[${e}]: analytic ${grad[e]}, finite difference ${fd} (max |grad| ${scale})`);
      }
    }
  }
  console.log(`finite differences: max |analytic − FD| / max |grad| = ${worstFd.toExponential(2)}`);
});

test('float32 outputs: the forward writes y and the state like wkv7, and refuses mismatched saved states', () => {
  const T = 21, N = 8, C = H * N, d = draw(T, H, N, 5);
  const y32 = new Float32Array(T * C), S32 = d.S0.slice(), ySeq = new Float32Array(T * C), SSeq = d.S0.slice();
  const states = wkv7ChunkedForward(y32, S32, d.r, d.w, d.kt, d.v, d.kk, d.a, T, H, N);
  wkv7(ySeq, SSeq, d.r, d.w, d.kt, d.v, d.kk, d.a, T, H, N);
  assert.equal(states.length, 2 * H * N * N);
  assert.ok(relErr(y32, ySeq) <= REL_TOL && relErr(S32, SSeq) <= REL_TOL);
  const g = gradSet(T * C);
  assert.throws(() => wkv7ChunkedBackward(g.dr, g.dw, g.dkt, g.dv, g.dkk, g.da, d.dy, d.r, d.w, d.kt, d.v, d.kk, d.a, T, H, N, 8, states),
    /saved state values/);
});
