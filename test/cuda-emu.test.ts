/**
 * The CUDA kernel sources run on the CPU through the execution model of test/cuda-emu (no GPU needed):
 * their arithmetic and data flow — barriers, warp shuffles, cp.async stages, ldmatrix/mma.sync fragments —
 * checked against the CPU float32 reference and against each other, in CI. What only a GPU can show
 * (timing, occupancy, the memory model, the sm_90a wgmma kernels) stays in test/cuda*.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { emuModule, emuSkipReason } from './cuda-emu/emu.js';
import { randomWeights, shapeConfig } from '../src/model/random.js';
import { wkv7 } from '../src/backend/cpu/wkv7.js';

const skip = emuSkipReason();

function rng(seed: number): { u: () => number; g: () => number } {
  let s = seed >>> 0;
  const u = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
  return { u, g: () => Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u()) };
}
const gaussArray = (n: number, r: { g: () => number }, scale = 1) => Float32Array.from({ length: n }, () => scale * r.g());
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) { const x = Math.abs(a[i] - b[i]); if (!(x <= d)) d = Number.isNaN(x) ? Infinity : x; }
  return d;
}
const maxAbs = (a: ArrayLike<number>) => { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i])); return m; };
function report(t: { diagnostic(s: string): void }, what: string, d: number, tol: number): void {
  t.diagnostic(`${what}: ${d.toExponential(3)} (bound ${tol})`);
  assert.ok(d <= tol, `${what}: ${d} > ${tol}`);
}

const DECAY_SCALE = Math.exp(-0.5);
const sig = (x: number) => 1 / (1 + Math.exp(-x));

test('emulated kernels: chunked WKV-7 (wkv7_chunk_prep + wkv7_chunk_scan8) and tmix_prep + wkv7_seq16 equal the CPU reference', { skip: skip || false }, (t) => {
  const mod = emuModule('rwkvx.cu');
  const cfg = shapeConfig({ vocab: 64, dim: 128, nLayer: 2 });
  const C = cfg.dim, H = cfg.heads, N = 64;
  const wb = randomWeights(cfg, 5).blocks[1];
  const r = rng(77);
  for (const first of [true, false]) {
    for (const T of first ? [17, 100] : [1, 16, 33, 150]) {
      const n = T * C;
      const inp = { r: gaussArray(n, r), wd: gaussArray(n, r, 2), da: gaussArray(n, r), k: gaussArray(n, r), v: gaussArray(n, r), dv: gaussArray(n, r), vFirst: gaussArray(n, r) };
      const S0 = gaussArray(H * N * N, r, 0.3);
      // CPU: the time mix's element-wise part as src/model/rwkv7-block.ts does it, then the recurrence
      const om = new Float32Array(n), a = new Float32Array(n), kk = new Float32Array(n), kt = new Float32Array(n), vm = new Float32Array(n);
      for (let tt = 0; tt < T; tt++) for (let h = 0; h < H; h++) {
        const o = tt * C + h * N;
        let ss = 0;
        for (let j = 0; j < N; j++) { const q = inp.k[o + j] * wb.kk[h * N + j]; kk[o + j] = q; ss += q * q; }
        const inv = 1 / Math.max(Math.sqrt(ss), 1e-12);
        for (let j = 0; j < N; j++) {
          const c = h * N + j, i = o + j;
          kk[i] *= inv;
          a[i] = sig(inp.da[i] + wb.a0[c]);
          om[i] = Math.exp(-DECAY_SCALE * sig(inp.wd[i] + wb.w0[c]));
          kt[i] = inp.k[i] * (1 + (a[i] - 1) * wb.ka[c]);
          vm[i] = first ? inp.v[i] : inp.v[i] + (inp.vFirst[i] - inp.v[i]) * sig(inp.dv[i] + wb.v0[c]);
        }
      }
      const yRef = new Float32Array(n), sRef = S0.slice();
      wkv7(yRef, sRef, inp.r, om, kt, vm, kk, a, T, H, N);

      // chunked: prep (the element-wise work too) + scan
      const io = Object.fromEntries(Object.entries(inp).map(([k, x]) => [k, x.slice()])) as typeof inp;
      const rec = new Float32Array(Math.ceil(T / 16) * H * 4672), y = new Float32Array(n).fill(NaN), S = S0.slice();
      if (first) io.vFirst.fill(NaN);
      mod.launch('wkv7_chunk_prep', { grid: [Math.ceil(T / 16), H], block: [256] },
        rec, io.r, io.wd, io.da, io.k, io.v, io.vFirst, io.dv, wb.w0, wb.a0, wb.v0, wb.kk, wb.ka, T, C, first ? 1 : 0);
      mod.launch('wkv7_chunk_scan8', { grid: [H, 8], block: [128] }, y, S, rec, io.v, T, C);
      // sequential: tmix_prep (ω, a, κ̂ in place) + one warp-split recurrence
      const sq = Object.fromEntries(Object.entries(inp).map(([k, x]) => [k, x.slice()])) as typeof inp;
      const kk2 = new Float32Array(n), y2 = new Float32Array(n).fill(NaN), S2 = S0.slice();
      if (first) sq.vFirst.fill(NaN);
      mod.launch('tmix_prep', { grid: [Math.ceil((T * H) / 8)], block: [256] },
        sq.wd, sq.da, kk2, sq.k, sq.v, sq.vFirst, sq.dv, wb.w0, wb.a0, wb.v0, wb.kk, wb.ka, T, H, first ? 1 : 0);
      mod.launch('wkv7_seq16', { grid: [H, 4], block: [256] }, y2, S2, sq.r, sq.wd, sq.k, sq.v, kk2, sq.da, T, C);

      const ys = Math.max(1, maxAbs(yRef)), tag = `T=${T}${first ? ' layer 0' : ''}`;
      report(t, `${tag}: chunked y vs CPU (relative)`, maxDiff(y, yRef) / ys, 2e-5);
      report(t, `${tag}: chunked state vs CPU`, maxDiff(S, sRef), 1e-4);
      report(t, `${tag}: sequential y vs CPU (relative)`, maxDiff(y2, yRef) / ys, 2e-5);
      report(t, `${tag}: sequential state vs CPU`, maxDiff(S2, sRef), 1e-4);
      report(t, `${tag}: chunk prep's k̃ and v vs CPU`, Math.max(maxDiff(io.k, kt), maxDiff(io.v, vm)), 1e-5);
      if (first) report(t, `${tag}: chunk prep's vFirst vs CPU`, maxDiff(io.vFirst, inp.v), 0);
    }
  }
});
