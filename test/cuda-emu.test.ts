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
import { topIndices } from '../src/model/attention-block.js';
import { WKV_SCAN_SHAPES, wkvScanSmemTc } from '../src/backend/cuda/model.js';

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

test('emulated kernels: chunked WKV-7 (wkv7_chunk_prep + wkv7_chunk_scan4/8/16/16w/32w/tc/tcs/tc2/tc2s/tcp) and tmix_prep + wkv7_seq16 equal the CPU reference', { skip: skip || false }, (t) => {
  const mod = emuModule('rwkvx.cu'), mod2 = emuModule('rwkvx.cu', ['WKV_STAGES=2']);
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
      // dynamic shared memory of the scan with R rows per block and NB record buffers (model.ts wkvScanSmem)
      const scanSmem = (R: number, NB = 3, wide = false) => (NB * (4672 + 16 * R) + 64 * R + 32 * (wide ? R + 4 : R)) * 4;
      mod.launch('wkv7_chunk_scan8', { grid: [H, 8], block: [128], smem: scanSmem(8) }, y, S, rec, io.v, T, C);
      // the other scan layouts (4 and 16 rows per block; two record buffers) do the same arithmetic
      // (and 16 or 32 rows with 4 or 8 per warp: 128 threads)
      for (const [m, lay] of [[mod, '4'], [mod, '16'], [mod, '16w'], [mod, '32w'], [mod2, '8']] as const) {
        const [R, RW] = WKV_SCAN_SHAPES[lay], threads = (32 * R) / RW;
        const name = `wkv7_chunk_scan${lay}${m === mod2 ? ' (2 buffers)' : ''}`, yo = new Float32Array(n).fill(NaN), So = S0.slice();
        m.launch(`wkv7_chunk_scan${lay}`, { grid: [H, 64 / R], block: [threads], smem: scanSmem(R, m === mod2 ? 2 : 3, RW > 2) }, yo, So, rec, io.v, T, C);
        assert.deepEqual(yo, y, `T=${T}: ${name} y differs from wkv7_chunk_scan8`);
        assert.deepEqual(So, S, `T=${T}: ${name} state differs from wkv7_chunk_scan8`);
      }
      // the tensor-core scan (bf16 hi + lo operands: not the same bits, the same values to ≈ 2⁻¹⁶)
      // (tcs: its corrections in accumulators of their own, so other sums in another order)
      const tcOut = (['tc', 'tcs', 'tc2', 'tc2s', 'tcp'] as const).map((lay) => {
        const yo = new Float32Array(n).fill(NaN), So = S0.slice(), mt = WKV_SCAN_SHAPES[lay][1] / 16;
        mod.launch(`wkv7_chunk_scan${lay}`, { grid: [H, 1], block: [128 / mt], smem: wkvScanSmemTc(mt, 3, lay === 'tcp') }, yo, So, rec, io.v, T, C);
        return { lay, yo, So };
      });
      // two row tiles per warp do each tile's arithmetic in the same order: the same bits as one tile per warp;
      // so do the pre-split fragments (tcp) as tc's own splits
      for (const [a, b] of [[0, 2], [1, 3], [0, 4]]) {
        assert.deepEqual(tcOut[b].yo, tcOut[a].yo, `T=${T}: ${tcOut[b].lay} y differs from ${tcOut[a].lay}`);
        assert.deepEqual(tcOut[b].So, tcOut[a].So, `T=${T}: ${tcOut[b].lay} state differs from ${tcOut[a].lay}`);
      }
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
      for (const { lay, yo, So } of tcOut) {
        report(t, `${tag}: tensor-core scan ${lay} y vs CPU (relative)`, maxDiff(yo, yRef) / ys, 1e-4);
        report(t, `${tag}: tensor-core scan ${lay} state vs CPU`, maxDiff(So, sRef), 5e-4);
      }
      report(t, `${tag}: sequential y vs CPU (relative)`, maxDiff(y2, yRef) / ys, 2e-5);
      report(t, `${tag}: sequential state vs CPU`, maxDiff(S2, sRef), 1e-4);
      report(t, `${tag}: chunk prep's k̃ and v vs CPU`, Math.max(maxDiff(io.k, kt), maxDiff(io.v, vm)), 1e-5);
      if (first) report(t, `${tag}: chunk prep's vFirst vs CPU`, maxDiff(io.vFirst, inp.v), 0);
    }
  }
});

const fromBf = (b: Uint16Array) => { const u = new Uint32Array(b.length); for (let i = 0; i < b.length; i++) u[i] = b[i] << 16; return new Float32Array(u.buffer); };
const toBf = (x: Float32Array) => { const u = new Uint32Array(x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength)), o = new Uint16Array(x.length); for (let i = 0; i < x.length; i++) o[i] = (u[i] + 0x7fff + ((u[i] >> 16) & 1)) >>> 16; return o; };

test('emulated kernels: ln_mix8 (rows staged in shared memory) equals ln_mix bit for bit, and both the CPU LayerNorm + token-shift mixes', { skip: skip || false }, (t) => {
  const mod = emuModule('rwkvx.cu');
  const C = 128, M = 6, r = rng(9);
  const w = gaussArray(C, r, 0.3).map((x) => 1 + x), b = gaussArray(C, r, 0.1), prev = gaussArray(C, r), mu = Float32Array.from({ length: M * C }, () => r.u());
  for (const T of [1, 7, 64, 301]) {
    const x = gaussArray(T * C, r, 2).map((v, i) => v + (i % 7) - 3);
    const outs: Uint16Array[] = [], lasts: Float32Array[] = [];
    for (const k of ['ln_mix', 'ln_mix8']) {
      const out = new Uint16Array(M * T * C), last = new Float32Array(C).fill(NaN);
      mod.launch(k, { grid: [Math.ceil(T / 8)], block: [256], smem: k === 'ln_mix8' ? 9 * C * 4 : 0 }, out, last, x, w, b, prev, mu, T, C, M);
      outs.push(out); lasts.push(last);
    }
    assert.deepEqual(outs[1], outs[0], `T=${T}: ln_mix8 and ln_mix differ`);
    assert.deepEqual(lasts[1], lasts[0], `T=${T}: the last LN rows differ`);
    // CPU: LayerNorm in float64, then y + (y_prev − y)·μ rounded to bf16
    const y = new Float64Array(T * C);
    for (let tt = 0; tt < T; tt++) {
      let s = 0, q = 0;
      for (let i = 0; i < C; i++) s += x[tt * C + i];
      const mean = s / C;
      for (let i = 0; i < C; i++) q += (x[tt * C + i] - mean) ** 2;
      const inv = 1 / Math.sqrt(q / C + 1e-5);
      for (let i = 0; i < C; i++) y[tt * C + i] = (x[tt * C + i] - mean) * inv * w[i] + b[i];
    }
    let worst = 0;
    const got = fromBf(outs[0]);
    for (let m = 0; m < M; m++) for (let tt = 0; tt < T; tt++) for (let i = 0; i < C; i++) {
      const yy = y[tt * C + i], p = tt > 0 ? y[(tt - 1) * C + i] : prev[i];
      const want = yy + (p - yy) * mu[m * C + i];
      worst = Math.max(worst, Math.abs(got[(m * T + tt) * C + i] - want) / Math.max(1, Math.abs(want)));
    }
    report(t, `T=${T}: mixes vs CPU (relative, bf16 outputs)`, worst, 2 ** -8);
    report(t, `T=${T}: last LN row vs CPU`, maxDiff(lasts[0], y.subarray((T - 1) * C)), 1e-5);
  }
});

test('emulated kernels: relu_sq_bf16 (16-byte accesses, two in flight) squares the positive bf16 values, for any length and grid', { skip: skip || false }, () => {
  const mod = emuModule('rwkvx.cu'), r = rng(5);
  for (const [n, grid] of [[2, 1], [30, 1], [64, 1], [4102, 3], [9000, 1], [8, 4]] as const) {
    const x = toBf(gaussArray(n, r, 3)), want = fromBf(x).map((v) => (v > 0 ? v * v : 0));
    const buf = new Uint32Array(x.buffer);
    mod.launch('relu_sq_bf16', { grid: [grid], block: [256] }, buf, n / 2);
    assert.deepEqual(fromBf(x), fromBf(toBf(want)), `n=${n}, grid ${grid}`);
    // 4 bytes past a 16-byte boundary: the scalar loop throughout
    if (n < 4) continue;
    const y = new Uint16Array(n + 2);
    y.set(toBf(Float32Array.from({ length: n }, (_, i) => (i % 2 ? -1.5 : 2.5))), 2);
    mod.launch('relu_sq_bf16', { grid: [grid], block: [256] }, new Uint32Array(y.buffer, 4, n / 2), n / 2);
    assert.deepEqual(Array.from(fromBf(y.subarray(2))), Array.from({ length: n }, (_, i) => (i % 2 ? 0 : 6.25)), `n=${n}, unaligned`);
  }
});

test('emulated kernels: the fused time-mix LoRA (lora32/64/96/128: f(x·W1)·W2, the middle bf16) vs the CPU', { skip: skip || false }, (t) => {
  const mod = emuModule('rwkvx.cu'), r = rng(21);
  const cases: [number, number, number, number][] = [[32, 128, 200, -1], [64, 192, 129, 0], [96, 128, 17, 1], [128, 128, 130, 1]];
  for (const [L, C, T, mode] of cases) {
    const x = toBf(gaussArray(T * C, r)), W1 = toBf(gaussArray(C * L, r, 0.1)), W2 = toBf(gaussArray(L * C, r, 0.1));
    const out = new Float32Array(T * C).fill(NaN);
    const smem = 2 * 128 * 72 * 2 + 2 * 64 * (L + 8) * 2;
    mod.launch(`lora${L}`, { grid: [Math.ceil(T / 128)], block: [256], smem }, out, x, W1, W2, T, C, mode);
    const xf = fromBf(x), w1 = fromBf(W1), w2 = fromBf(W2);
    const f = (v: number) => mode === 0 ? Math.tanh(v) : mode === 1 ? sig(v) : v;
    let worst = 0, scale = 0;
    const h = new Float32Array(L);
    for (let tt = 0; tt < T; tt++) {
      for (let j = 0; j < L; j++) {
        let s = 0;
        for (let i = 0; i < C; i++) s += xf[tt * C + i] * w1[i * L + j];
        h[j] = f(s);
      }
      const hb = fromBf(toBf(h));
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let j = 0; j < L; j++) s += hb[j] * w2[j * C + c];
        worst = Math.max(worst, Math.abs(out[tt * C + c] - s));
        scale = Math.max(scale, Math.abs(s));
      }
    }
    // the middle's bf16 rounding may fall the other way where the fp32 sums differ in order: a few ulps of h
    report(t, `L=${L} C=${C} T=${T} mode=${mode}: max |GPU − CPU| / max |out|`, worst / scale, 2e-3);
  }
});

test('emulated kernels: moba prefill — chunk means, the one-pass chunk choice (= chunk_scores + select_chunks bit for bit, = the CPU top-k) and the tensor-core attention (own chunk + selected chunks, merged; mma.sync and the sm_90a wgmma kernels) vs the CPU', { skip: skip || false }, (t) => {
  const mod = emuModule('rwkvx.cu'), wg = emuModule('attn-sm90.cu');
  const H = 2, C = 64 * H, B = 64, topk = 3, nSel = topk - 1, MAXSEL = 8, r = rng(31);
  for (const [P, n] of [[0, 300], [128, 200]]) {
    const len = P + n, nC = Math.floor(len / B);
    const q = gaussArray(n * C, r);
    // keys with a per-chunk offset, so chunk scores are spread out (no near ties)
    const K = toBf(Float32Array.from({ length: len * C }, (_, i) => r.g() + 0.6 * Math.sin(Math.floor(i / C / B) * 1.7 + (i % C) * 0.37)));
    const V = toBf(gaussArray(len * C, r));
    const means = new Float32Array(Math.max(1, nC) * C).fill(NaN);
    mod.launch('chunk_means', { grid: [nC, Math.ceil(C / 256)], block: [256] }, means, K, C, B, 0);
    const Kf = fromBf(K), Vf = fromBf(V);
    let dm = 0;
    for (let c = 0; c < nC; c++) for (let i = 0; i < C; i++) {
      let s = 0;
      for (let j = 0; j < B; j++) s += Kf[(c * B + j) * C + i];
      dm = Math.max(dm, Math.abs(means[c * C + i] - s / B));
    }
    report(t, `P=${P} n=${n}: chunk means vs CPU`, dm, 1e-6);
    // chunk choice, both ways
    const selT = new Int32Array(n * H * MAXSEL).fill(-7), selS = new Int32Array(n * H * MAXSEL).fill(-7);
    mod.launch('select_chunks_tiled', { grid: [Math.ceil(n / 64), H], block: [256] }, selT, q, means, n, H, P, B, nSel);
    const scores = new Float32Array(n * H * nC);
    mod.launch('chunk_scores', { grid: [Math.ceil(n / 64), H, Math.ceil(nC / 64)], block: [256] }, scores, q, means, n, H, nC);
    mod.launch('select_chunks', { grid: [Math.ceil((n * H) / 8)], block: [256] }, selS, q, means, scores, null, n, H, P, B, nSel, -1, nC);
    for (let i = 0; i < n * H; i++) for (let s = 0; s < nSel; s++) assert.equal(selT[i * MAXSEL + s], selS[i * MAXSEL + s], `query·head ${i} slot ${s}: tiled and scored choices differ`);
    let mism = 0;
    for (let tt = 0; tt < n; tt++) for (let h = 0; h < H; h++) {
      const past = Math.floor((P + tt) / B), sc = new Float64Array(past);
      for (let c = 0; c < past; c++) { let s = 0; for (let j = 0; j < 64; j++) s += q[tt * C + h * 64 + j] * means[c * C + h * 64 + j]; sc[c] = s; }
      const want = [...(topIndices(sc, past, nSel))];
      for (let s = 0; s < nSel; s++) if (selT[(tt * H + h) * MAXSEL + s] !== (s < want.length ? want[s] : -1)) mism++;
    }
    report(t, `P=${P} n=${n}: chunk choices differing from the CPU top-k (of ${n * H * nSel})`, mism, 0);
    // attention: own chunk (causal) into slot 0, selected chunks by query lists into slots 1…, merged
    const nSlot = nSel + 1, scale = 0.125 * Math.LOG2E;
    const partO = new Float32Array(n * H * nSlot * 64).fill(NaN), partL = new Float32Array(n * H * nSlot).fill(NaN);
    const chunkLast = Math.floor((len - 1) / B), smem = (Math.floor(chunkLast / 32) + 1) * 4;
    mod.launch('attention', { grid: [Math.ceil(n / 64), H], block: [128], smem }, new Uint16Array(1), q, K, V, new Int32Array(1), partO, partL, n, H, P, B, 0, 0, 0, nSlot, scale);
    const nPairs = H * nC, entries = n * H * nSel;
    const cnt = new Int32Array(nPairs), fill = new Int32Array(nPairs), off = new Int32Array(nPairs + 1), tileOff = new Int32Array(nPairs + 1), list = new Int32Array(Math.max(1, entries));
    const g = Math.ceil(entries / 256);
    mod.launch('moba_count', { grid: [g], block: [256] }, cnt, selT, n, H, nSel, nC);
    mod.launch('moba_scan', { grid: [1], block: [1024] }, off, tileOff, cnt, nPairs);
    mod.launch('moba_scatter', { grid: [g], block: [256] }, list, fill, off, selT, n, H, nSel, nC);
    mod.launch('moba_attn', { grid: [Math.floor(entries / 64) + nPairs + 1], block: [128] }, partO, partL, q, K, V, list, off, tileOff, H, nC, B, nSlot, scale);
    const out = new Uint16Array(n * C);
    mod.launch('moba_merge', { grid: [Math.ceil((n * H) / 8)], block: [256] }, out, partO, partL, selT, n, H, nSel);
    // the sm_90a kernels (warpgroup MMA, 128- or 64-key tiles) on the same lists
    const outs = new Map<string, Float32Array>([['mma.sync', fromBf(out)]]);
    for (const nk of [128, 64]) {
      const pO = new Float32Array(partO.length).fill(NaN), pL = new Float32Array(partL.length).fill(NaN), wsm = 2 * 2 * nk * 128 + 1024;
      wg.launch(`own_attn_wg${nk}`, { grid: [Math.ceil(n / 64), H], block: [128], smem: wsm }, pO, pL, q, K, V, n, H, P, B, nSlot, scale);
      wg.launch(`moba_attn_wg${nk}`, { grid: [Math.floor(entries / 64) + nPairs + 1], block: [128], smem: wsm }, pO, pL, q, K, V, list, off, tileOff, H, nC, B, nSlot, scale);
      const o2 = new Uint16Array(n * C);
      mod.launch('moba_merge', { grid: [Math.ceil((n * H) / 8)], block: [256] }, o2, pO, pL, selT, n, H, nSel);
      outs.set(`wgmma ${nk}-key tiles`, fromBf(o2));
    }
    for (const [kind, got] of outs) {
    let worst = 0;
    for (let tt = 0; tt < n; tt++) for (let h = 0; h < H; h++) {
      const pos = P + tt, keys: number[] = [];
      for (let j = Math.floor(pos / B) * B; j <= pos; j++) keys.push(j);
      for (let s = 0; s < nSel; s++) { const c = selT[(tt * H + h) * MAXSEL + s]; if (c >= 0) for (let j = c * B; j < (c + 1) * B; j++) keys.push(j); }
      const o = cpuAttend(q, tt * C + h * 64, Kf, Vf, keys, C, h);
      for (let d = 0; d < 64; d++) worst = Math.max(worst, Math.abs(got[tt * C + h * 64 + d] - o[d]));
    }
    report(t, `P=${P} n=${n}: moba attention (${kind}) vs CPU (bf16 P·V and output)`, worst, 2e-2);
    }
  }
});

test('emulated kernels: training attention on tensor cores (mt_select, mt_fwd, mt_dq, mt_dkv) vs the fp32 reference kernels (tr_moba_*): same chunk choices, y/dq/dk/dv within bf16 error', { skip: skip || false }, async (t) => {
  const { mobaQueryLists } = await import('../src/backend/cuda/train/moba.js');
  const mod = emuModule('moba-train.cu');
  const Bn = 2, T = 200, H = 2, C = 64 * H, B = 64, nSel = 2, R = Bn * T, n = R * C, r = rng(404);
  const nc = Math.floor(T / B), nQt = Math.ceil(T / 64), nW = Math.max(1, Math.ceil(nc / 32)), SCALE = 0.125;
  // inputs rounded to bf16 once, so both paths see the same numbers
  const bfr = (x: Float32Array) => fromBf(toBf(x));
  const q = bfr(gaussArray(n, r)), k = bfr(Float32Array.from({ length: n }, (_, i) => r.g() + 0.5 * Math.sin(Math.floor((i / C) % T / B) * 2.1 + (i % C)))), v = bfr(gaussArray(n, r)), dy = bfr(gaussArray(n, r));
  const means = new Float32Array(Bn * nc * C);
  mod.launch('tr_chunk_means', { grid: [nc, Math.ceil(C / 256), Bn], block: [256] }, means, k, T, C, B);
  // reference
  const yR = new Float32Array(n), lseR = new Float32Array(R * H), selR = new Int32Array(R * H * nSel);
  mod.launch('tr_moba_fwd', { grid: [nQt, H, Bn], block: [64] }, yR, lseR, selR, q, k, v, means, T, H, B, nSel, SCALE);
  const DR = new Float32Array(R * H);
  mod.launch('tr_moba_dvec', { grid: [Math.ceil((R * H) / 8)], block: [256] }, DR, dy, yR, R, H);
  const dqR = new Float32Array(n), dkR = new Float32Array(n), dvR = new Float32Array(n);
  mod.launch('tr_moba_dq', { grid: [nQt, H, Bn], block: [64] }, dqR, dy, q, k, v, lseR, DR, selR, T, H, B, nSel, SCALE);
  const { list, offs } = mobaQueryLists(selR, { Bn, T, H, B, nSel });
  mod.launch('tr_moba_dkv', { grid: [nQt, H, Bn], block: [64] }, dvR, dy, q, k, v, lseR, DR, list.length ? list : new Int32Array(1), offs, T, H, B, nc, SCALE, 0);
  mod.launch('tr_moba_dkv', { grid: [nQt, H, Bn], block: [64] }, dkR, dy, q, k, v, lseR, DR, list.length ? list : new Int32Array(1), offs, T, H, B, nc, SCALE, 1);
  // tensor cores
  const sel = new Int32Array(R * H * nSel), mask = new Uint32Array(Bn * H * nQt * nW);
  mod.launch('mt_select', { grid: [nQt, H, Bn], block: [64], smem: nW * 4 }, sel, mask, q, means, T, H, B, nSel, nW);
  assert.deepEqual(sel, selR, 'mt_select and tr_moba_fwd choose differently');
  const qB = toBf(q), kB = toBf(k), vB = toBf(v), dyB = toBf(dy), sl = SCALE * Math.LOG2E;
  const y = new Float32Array(n), lse2 = new Float32Array(R * H);
  mod.launch('mt_fwd', { grid: [nQt, H, Bn], block: [128] }, y, lse2, qB, kB, vB, sel, mask, T, H, B, nSel, nW, sl);
  const D = new Float32Array(R * H);
  mod.launch('tr_moba_dvec', { grid: [Math.ceil((R * H) / 8)], block: [256] }, D, dy, y, R, H);
  const dq = new Float32Array(n), dk = new Float32Array(n), dv = new Float32Array(n);
  mod.launch('mt_dq', { grid: [nQt, H, Bn], block: [128] }, dq, qB, kB, vB, dyB, lse2, D, sel, mask, T, H, B, nSel, nW, sl, SCALE);
  mod.launch('mt_dkv', { grid: [nQt, H, Bn], block: [128] }, dk, dv, qB, kB, vB, dyB, lse2, D, sel, mask, T, H, B, nSel, nW, sl, SCALE);
  for (const [nm, a, b] of [['y', y, yR], ['dq', dq, dqR], ['dk', dk, dkR], ['dv', dv, dvR]] as const) {
    report(t, `${nm}: tensor cores vs reference, max |Δ| / max |ref|`, maxDiff(a, b) / maxAbs(b), 1e-2);
  }
});

test('emulated kernels: training WKV-7 — chunked (wkt_prep/scan/chain/grad; scan and chain also in the wide and tensor-core layouts, wkt_grad_tc) and sequential (tr_wkv_fwd/bwd) forward and gradients vs the CPU wkv7 / wkv7Backward', { skip: skip || false }, async (t) => {
  const { wkv7Checkpointed, wkv7Backward } = await import('../src/backend/cpu/wkv7.js');
  const chunkedMod = emuModule('wkv7-train.cu'), seqMod = emuModule('train.cu');
  const wideMod = emuModule('wkv7-train.cu', ['WKT_ROWS=16', 'WKT_THREADS=128']);  // RWKVX_TRAIN_WKT=wide
  const H = 2, C = 64 * H, N = 64, r = rng(1234);
  for (const [Bn, T] of [[1, 37], [2, 50]]) {
    const R = Bn * T, n = R * C, nch = Math.ceil(T / 16);
    // r, ω in (0.55, 1), k̃, v, κ̂ (unit per head), a in (0, 1) and the loss gradient dy
    const rr = gaussArray(n, r), om = Float32Array.from({ length: n }, () => Math.exp(-Math.exp(-0.5) / (1 + Math.exp(-2 * r.g()))));
    const kt = gaussArray(n, r), v = gaussArray(n, r), a = Float32Array.from({ length: n }, () => r.u()), dy = gaussArray(n, r);
    const kh = gaussArray(n, r);
    for (let i = 0; i < R * H; i++) { let s = 0; for (let j = 0; j < N; j++) s += kh[i * N + j] ** 2; for (let j = 0; j < N; j++) kh[i * N + j] /= Math.sqrt(s); }
    // CPU, sequence by sequence from S = 0
    const yRef = new Float32Array(n), g = Array.from({ length: 6 }, () => new Float64Array(n));
    for (let b = 0; b < Bn; b++) {
      const sl = (x: Float32Array) => x.subarray(b * T * C, (b + 1) * T * C), sg = (x: Float64Array) => x.subarray(b * T * C, (b + 1) * T * C);
      const ck = new Float32Array(nch * H * N * N), S = new Float32Array(H * N * N);
      wkv7Checkpointed(sl(yRef), S, sl(rr), sl(om), sl(kt), sl(v), sl(kh), sl(a), T, H, N, 16, ck);
      wkv7Backward(sg(g[0]), sg(g[1]), sg(g[2]), sg(g[3]), sg(g[4]), sg(g[5]), sl(dy), sl(rr), sl(om), sl(kt), sl(v), sl(kh), sl(a), T, H, N, 16, ck);
    }
    const names = ['dr', 'dω', 'dk̃', 'dv', 'dκ̂', 'da'];
    const check = (tag: string, y: Float32Array, d: Float32Array[], yBound = 1e-5, gBound = 1e-4) => {
      report(t, `Bn=${Bn} T=${T} ${tag}: y vs CPU (relative)`, maxDiff(y, yRef) / maxAbs(yRef), yBound);
      // the kernels add −dα (into dκ̂) and dβ; the CPU's dκ̂ = −dα + dβ⊙a and da = dβ⊙κ̂
      const full = [d[0], d[1], d[2], d[3], d[4].map((x, i) => x + d[5][i] * a[i]), d[5].map((x, i) => x * kh[i])];
      full.forEach((x, q) => report(t, `Bn=${Bn} T=${T} ${tag}: ${names[q]} vs CPU (relative)`, maxDiff(x, g[q]) / Math.max(1e-30, maxAbs(g[q])), gBound));
    };
    {
      const y = new Float32Array(n).fill(NaN), ckpt = new Float32Array(Bn * nch * H * 4096), rec = new Float32Array(Bn * nch * H * 6208);
      chunkedMod.launch('wkt_prep', { grid: [nch, H, Bn], block: [256] }, rec, rr, om, kt, v, kh, a, T, C);
      chunkedMod.launch('wkt_scan', { grid: [H, 8, Bn], block: [128] }, y, ckpt, null, rec, v, T, C);
      const d = Array.from({ length: 6 }, () => new Float32Array(n)), gend = new Float32Array(ckpt.length);
      chunkedMod.launch('wkt_chain', { grid: [H, 8, Bn], block: [128] }, gend, null, rec, dy, T, C);
      chunkedMod.launch('wkt_grad', { grid: [nch, H, Bn], block: [256], smem: 99840 }, d[0], d[1], d[2], d[3], d[4], d[5], dy, rr, om, kt, v, kh, a, ckpt, gend, T, C);
      check('chunked', y, d);
      // the wide layout (16 rows, 128 threads) of the two sequential passes: the same bits
      const yw = new Float32Array(n).fill(NaN), ckw = new Float32Array(ckpt.length).fill(NaN), gw = new Float32Array(ckpt.length).fill(NaN);
      const sfw = new Float32Array(Bn * H * 4096).fill(NaN), dsw = new Float32Array(Bn * H * 4096).fill(NaN);
      wideMod.launch('wkt_scan', { grid: [H, 4, Bn], block: [128] }, yw, ckw, sfw, rec, v, T, C);
      wideMod.launch('wkt_chain', { grid: [H, 4, Bn], block: [128] }, gw, dsw, rec, dy, T, C);
      assert.deepEqual(yw, y, `Bn=${Bn} T=${T}: wide wkt_scan y differs`);
      assert.deepEqual(ckw, ckpt, `Bn=${Bn} T=${T}: wide wkt_scan ckpt differs`);
      assert.deepEqual(gw, gend, `Bn=${Bn} T=${T}: wide wkt_chain gend differs`);
      // the tensor-core passes (RWKVX_TRAIN_WKT=tc; split-bf16 products: close, not the same bits), and wkt_grad
      // from their chunk states
      const yt = new Float32Array(n).fill(NaN), ckt = new Float32Array(ckpt.length).fill(NaN), gt = new Float32Array(ckpt.length).fill(NaN);
      const sft = new Float32Array(Bn * H * 4096).fill(NaN), dst = new Float32Array(Bn * H * 4096).fill(NaN);
      chunkedMod.launch('wkt_scan_tc', { grid: [H, 1, Bn], block: [128], smem: 98816 }, yt, ckt, sft, rec, v, T, C);
      chunkedMod.launch('wkt_chain_tc', { grid: [H, 1, Bn], block: [128], smem: 53760 }, gt, dst, rec, dy, T, C);
      report(t, `Bn=${Bn} T=${T} wkt_scan_tc: chunk states vs wkt_scan (relative)`, maxDiff(ckt, ckpt) / maxAbs(ckpt), 1e-4);
      report(t, `Bn=${Bn} T=${T} wkt_chain_tc: end-state gradients vs wkt_chain (relative)`, maxDiff(gt, gend) / maxAbs(gend), 1e-4);
      report(t, `Bn=${Bn} T=${T} wkt_scan_tc / wkt_chain_tc: final state and initial-state gradient vs wkt_scan / wkt_chain (relative)`,
        Math.max(maxDiff(sft, sfw) / maxAbs(sfw), maxDiff(dst, dsw) / maxAbs(dsw)), 1e-4);
      // wkt_grad_tc (its state products on tensor cores) from the fp32 passes' states, against wkt_grad's
      const dg = Array.from({ length: 6 }, () => new Float32Array(n));
      chunkedMod.launch('wkt_grad_tc', { grid: [nch, H, Bn], block: [256], smem: 99840 }, dg[0], dg[1], dg[2], dg[3], dg[4], dg[5], dy, rr, om, kt, v, kh, a, ckpt, gend, T, C);
      report(t, `Bn=${Bn} T=${T} wkt_grad_tc vs wkt_grad, worst of the six (relative)`, Math.max(...dg.map((x, q) => maxDiff(x, d[q]) / maxAbs(d[q]))), 1e-4);
      // and the whole tensor-core backward (wkt_grad_tc on the tc passes' states) against the CPU
      const dt = Array.from({ length: 6 }, () => new Float32Array(n));
      chunkedMod.launch('wkt_grad_tc', { grid: [nch, H, Bn], block: [256], smem: 99840 }, dt[0], dt[1], dt[2], dt[3], dt[4], dt[5], dy, rr, om, kt, v, kh, a, ckt, gt, T, C);
      check('chunked tc', yt, dt, 5e-5, 5e-4);
    }
    {
      const y = new Float32Array(n).fill(NaN), ckpt = new Float32Array(Bn * nch * H * 4096);
      seqMod.launch('tr_wkv_fwd', { grid: [H, 8, Bn], block: [256] }, y, ckpt, rr, om, kt, v, kh, a, T, C);
      const d = Array.from({ length: 6 }, () => new Float32Array(n));
      seqMod.launch('tr_wkv_bwd', { grid: [H, 8, Bn], block: [256] }, d[0], d[1], d[2], d[3], d[4], d[5], dy, rr, om, kt, v, kh, a, ckpt, T, C);
      check('sequential', y, d);
    }
  }
});

test('emulated kernels: one decoding step of moba attention — dec_scores + select_chunks (the CPU top-k), split-K attn_decode + attn_decode_combine vs the CPU', { skip: skip || false }, (t) => {
  const mod = emuModule('rwkvx.cu');
  const H = 2, C = 64 * H, B = 512, nSel = 2, MAXSEL = 8, r = rng(99);
  for (const P of [700, 1800, 2047]) {
    const len = P + 1, nC = Math.floor(P / B), cap = 64;
    const K = toBf(Float32Array.from({ length: len * C }, (_, i) => r.g() + 0.7 * Math.cos(Math.floor(i / C / B) * 2.3 + (i % C) * 0.41)));
    const V = toBf(gaussArray(len * C, r)), q = gaussArray(C, r), Kf = fromBf(K), Vf = fromBf(V);
    const means = new Float32Array(cap * C);
    if (nC > 0) mod.launch('chunk_means', { grid: [nC, 1], block: [256] }, means, K, C, B, 0);
    const dyn = new Int32Array([5, P]), scores = new Float32Array(H * cap).fill(NaN), sel = new Int32Array(H * MAXSEL).fill(-7);
    mod.launch('dec_scores', { grid: [Math.ceil((H * cap) / 128)], block: [128] }, scores, q, means, dyn, H, B, cap);
    mod.launch('select_chunks', { grid: [Math.ceil(H / 8)], block: [256] }, sel, q, means, scores, dyn, 1, H, 0, B, nSel, -1, cap);
    for (let h = 0; h < H; h++) {
      const sc = new Float64Array(nC);
      for (let c = 0; c < nC; c++) { let s = 0; for (let j = 0; j < 64; j++) s += q[h * 64 + j] * means[c * C + h * 64 + j]; sc[c] = s; }
      const want = topIndices(sc, nC, nSel);
      for (let s = 0; s < nSel; s++) assert.equal(sel[h * MAXSEL + s], s < want.length ? want[s] : -1, `P=${P} head ${h} slot ${s}: chunk choice differs from the CPU`);
    }
    const nSplit = Math.ceil(B / 256), nBlk = nSplit * (nSel + 1);
    const part = new Float32Array(H * nBlk * 66).fill(NaN), out = new Uint16Array(C);
    mod.launch('attn_decode', { grid: [nBlk, H], block: [128] }, part, q, K, V, sel, dyn, H, B, nSplit, 0.125 * Math.LOG2E);
    mod.launch('attn_decode_combine', { grid: [H], block: [64] }, out, part, H, nBlk);
    const got = fromBf(out);
    let worst = 0;
    for (let h = 0; h < H; h++) {
      const keys: number[] = [];
      for (let j = Math.floor(P / B) * B; j <= P; j++) keys.push(j);
      for (let s = 0; s < nSel; s++) { const c = sel[h * MAXSEL + s]; if (c >= 0) for (let j = c * B; j < (c + 1) * B; j++) keys.push(j); }
      const o = cpuAttend(q, h * 64, Kf, Vf, keys, C, h);
      for (let d = 0; d < 64; d++) worst = Math.max(worst, Math.abs(got[h * 64 + d] - o[d]) / Math.max(1, Math.abs(o[d])));
    }
    report(t, `P=${P}: decode attention vs CPU (bf16 output)`, worst, 2 ** -7);
  }
});

/** softmax(q·kᵀ/8)·v over the given key rows of head h, in float64 (q at qOff; K, V rows of C). */
function cpuAttend(q: Float32Array, qOff: number, K: Float32Array, V: Float32Array, keys: number[], C: number, h: number): Float64Array {
  const lg = keys.map((j) => { let s = 0; for (let d = 0; d < 64; d++) s += q[qOff + d] * K[j * C + h * 64 + d]; return s * 0.125; });
  const mx = Math.max(...lg), p = lg.map((x) => Math.exp(x - mx)), z = p.reduce((a, b) => a + b, 0), o = new Float64Array(64);
  keys.forEach((j, i) => { for (let d = 0; d < 64; d++) o[d] += (p[i] / z) * V[j * C + h * 64 + d]; });
  return o;
}

test('emulated kernels: tr_f2bf, tr_act and tr_act_bwd (4 elements a step where aligned) give the scalar path\'s bits, for any length, offset and grid', { skip: skip || false }, () => {
  const r = rng(31);
  for (const fp32 of [false, true]) {
    const mod = emuModule('train.cu', fp32 ? ['TR_FP32'] : []);
    const gin = (len: number) => (fp32 ? new Float32Array(len) : new Uint16Array(len));
    const asF = (x: Float32Array | Uint16Array) => (x instanceof Uint16Array ? fromBf(x) : x);
    for (const [n, grid] of [[1, 1], [7, 1], [1027, 2], [4096, 3]] as const) {
      const x0 = gaussArray(n, r, 2), d0 = gaussArray(n, r), y0 = gaussArray(n, r).map((v) => v / 3);
      // the same values at offset 0 (the 16-byte path and the tail) and at offset 1 (the scalar loop throughout)
      const run = (off: number) => {
        const at = (v: Float32Array) => { const a = new Float32Array(n + 1); a.set(v, off); return a; };
        const x = at(x0), d = at(d0), y = at(y0);
        const o: Record<string, Float32Array> = {};
        const b = gin(n + 1);
        mod.launch('tr_f2bf', { grid: [grid], block: [256] }, b.subarray(off, off + n), x.subarray(off, off + n), n);
        o.f2bf = asF(b).slice(off, off + n);
        for (const mode of [0, 1, 2]) {
          const f = new Float32Array(n + 1), bb = gin(n + 1), db = gin(n + 1);
          mod.launch('tr_act', { grid: [grid], block: [256] }, f.subarray(off, off + n), bb.subarray(off, off + n), x.subarray(off, off + n), n, mode);
          mod.launch('tr_act_bwd', { grid: [grid], block: [256] }, db.subarray(off, off + n), d.subarray(off, off + n), y.subarray(off, off + n), n, mode);
          o[`act${mode}`] = f.slice(off, off + n); o[`actB${mode}`] = asF(bb).slice(off, off + n); o[`bwd${mode}`] = asF(db).slice(off, off + n);
        }
        return o;
      };
      const a = run(0), b = run(1);
      for (const k of Object.keys(a)) assert.deepEqual(a[k], b[k], `${fp32 ? 'fp32' : 'bf16'} n=${n} ${k}: the aligned and unaligned paths differ`);
      const xs = x0;
      const round = (v: Float32Array) => (fp32 ? v : fromBf(toBf(v)));
      assert.deepEqual(a.f2bf, round(Float32Array.from(xs)), `n=${n}: tr_f2bf`);
      assert.deepEqual(a.act2, Float32Array.from(xs, (v) => (v > 0 ? v * v : 0)), `n=${n}: relu²`);
      assert.ok(maxDiff(a.act0, Float32Array.from(xs, Math.tanh)) < 1e-6 && maxDiff(a.act1, Float32Array.from(xs, sig)) < 1e-6, `n=${n}: tanh / σ`);
      assert.deepEqual(a.actB0, round(a.act0), `n=${n}: the GEMM-input copy`);
      const ys = y0, ds = d0;
      assert.ok(maxDiff(a.bwd1, round(Float32Array.from(ds, (g, i) => g * (ys[i] * (1 - ys[i]))))) <= (fp32 ? 1e-6 : 2e-2), `n=${n}: σ backward`);
    }
  }
});

test('emulated kernels: the fused training backward (tr_out_bwd_f, tr_tmix_bwd_f, tr_ln_bwd_f, tr_mix_bwd_f) equals the separate passes (kernel + tr_colsum + tr_f2bf): element-wise outputs bit for bit, column sums to rounding; tr_ln_bwd_w / tr_ln_w / tr_mix_rows the same as tr_ln_bwd_f / tr_ln / tr_mix', { skip: skip || false }, (t) => {
  const H = 2, C = 64 * H, Bn = 2, T = 37, R = Bn * T, n = R * C, r = rng(77);
  for (const fp32 of [false, true]) {
    const mod = emuModule('train.cu', fp32 ? ['TR_FP32'] : []);
    const tag = fp32 ? 'fp32' : 'bf16';
    /** A GEMM-input buffer (bf16 bits, or float32 in the TR_FP32 build). */
    const gin = (len: number) => (fp32 ? new Float32Array(len) : new Uint16Array(len));
    const asF = (x: Float32Array | Uint16Array) => (x instanceof Uint16Array ? fromBf(x) : x);
    /** the unfused path's bf16 copy of an fp32 array (tr_f2bf) */
    const cast = (x: Float32Array) => { const o = gin(x.length); mod.launch('tr_f2bf', { grid: [4], block: [256] }, o, x, x.length); return asF(o); };
    const colsum = (x: Float32Array, y: Float32Array | null, mode: number, rows = R) => {
      const o = new Float32Array(C);
      mod.launch('tr_colsum', { grid: [Math.ceil(C / 32), Math.min(128, Math.ceil(rows / 8))], block: [32, 8] }, o, x, y, rows, C, T, mode);
      return o;
    };
    const same = (what: string, a: Float32Array, b: Float32Array) => assert.equal(maxDiff(a, b), 0, `${tag} ${what}: fused and separate differ`);
    const close = (what: string, a: Float32Array, b: Float32Array) => report(t, `${tag} ${what} (relative)`, maxDiff(a, b) / Math.max(1e-30, maxAbs(b)), 1e-5);
    const cvec = (s = 1) => gaussArray(C, r, s);
    {
      // output gate / GroupNorm / bonus
      const dz = gaussArray(n, r), y = gaussArray(n, r), rr = gaussArray(n, r), kt = gaussArray(n, r), v = gaussArray(n, r);
      const gate = Float32Array.from({ length: n }, () => r.u()), lnw = cvec(), lnb = cvec(), rk = cvec();
      const o = Array.from({ length: 8 }, () => new Float32Array(n));
      mod.launch('tr_out_bwd', { grid: [Math.ceil((R * H) / 8)], block: [256] }, ...o, dz, y, rr, kt, v, gate, lnw, lnb, rk, R, H);
      const f = Array.from({ length: 4 }, () => new Float32Array(n).fill(NaN)), dgB = gin(n), gs = Array.from({ length: 3 }, () => new Float32Array(C));
      mod.launch('tr_out_bwd_f', { grid: [Math.ceil(R / 64), H], block: [256] }, dgB, ...f, ...gs, dz, y, rr, kt, v, gate, lnw, lnb, rk, R, H);
      same('out: dgate', asF(dgB), cast(o[0]));
      ['dv', 'dr', 'dk̃', 'dy'].forEach((nm, i) => same(`out: ${nm}`, f[i], o[i + 1]));
      ['ρ', 'ln_x.weight', 'ln_x.bias'].forEach((nm, i) => close(`out: Σ ${nm}`, gs[i], colsum(o[5 + i], null, 0)));
    }
    for (const first of [1, 0]) {
      const a = Float32Array.from({ length: n }, () => r.u()), om = Float32Array.from({ length: n }, () => 0.5 + 0.5 * r.u());
      const sv = Float32Array.from({ length: n }, () => r.u());
      const [dr, dom, db, dkk, dkt, dv, kh, k, d, vFirst, vraw] = Array.from({ length: 11 }, () => gaussArray(n, r));
      const knorm = Float32Array.from({ length: R * H }, () => 0.5 + r.u());
      const kkp = cvec(), ka = cvec();
      const dkO = new Float32Array(n), dapre = new Float32Array(n), pka = new Float32Array(n), pkk = new Float32Array(n);
      const domO = dom.slice(), dvraw = new Float32Array(n), dvpre = new Float32Array(n), dvF0 = gaussArray(n, r), dvFO = dvF0.slice();
      mod.launch('tr_tmix_bwd', { grid: [Math.ceil((R * H) / 8)], block: [256] }, dkO, dapre, pka, pkk, domO, dvraw, dvpre, dvFO, db, dkk, dkt, dv, kh, a, k, knorm, kkp, ka, om, d, sv, vFirst, vraw, R, H, first);
      const B = Array.from({ length: 6 }, () => gin(n)), dvFF = dvF0.slice(), gs = Array.from({ length: 5 }, () => new Float32Array(C));
      mod.launch('tr_tmix_bwd_f', { grid: [Math.ceil(R / 64), H], block: [256] }, ...B, dvFF, ...gs, dr, dom, db, dkk, dkt, dv, kh, a, k, knorm, kkp, ka, om, d, sv, vFirst, vraw, R, H, first);
      const ref = [dkO, dapre, domO, dvraw, dvpre, dr];
      ['dk', 'dapre', 'dω', 'dvraw', 'dvpre', 'dr'].forEach((nm, i) => { if (!(first && nm === 'dvpre')) same(`tmix (first ${first}): ${nm}`, asF(B[i]), cast(ref[i])); });
      same(`tmix (first ${first}): dvFirst`, dvFF, dvFO);
      const sums: [string, Float32Array][] = [['k_a', pka], ['k_k', pkk], ['w0', domO], ['a0', dapre], ['v0', dvpre]];
      sums.forEach(([nm, x], i) => { if (!(first && nm === 'v0')) close(`tmix (first ${first}): Σ ${nm}`, gs[i], colsum(x, null, 0)); });
      if (first) assert.equal(maxAbs(gs[4]), 0, 'block 0 has no v0 gradient');
    }
    for (const add of [0, 1]) {
      // LayerNorm backward: dx (= or +=), bf16 copy, Σ dout⊙x̂ and Σ dout
      const x = gaussArray(n, r, 2), dout = gaussArray(n, r), w = cvec(0.3).map((q) => 1 + q), dx0 = gaussArray(n, r);
      const dxO = dx0.slice(), pw = new Float32Array(n);
      mod.launch('tr_ln_bwd', { grid: [R], block: [256] }, dxO, pw, dout, x, w, C, add);
      const dxF = dx0.slice(), dxB = gin(n), gw = new Float32Array(C), gb = new Float32Array(C);
      mod.launch('tr_ln_bwd_f', { grid: [Math.ceil(R / 16)], block: [256] }, dxF, dxB, gw, gb, dout, x, w, R, C, add);
      same(`ln (add ${add}): dx`, dxF, dxO);
      same(`ln (add ${add}): bf16 dx`, asF(dxB), cast(dxO));
      close(`ln (add ${add}): Σ dout⊙x̂`, gw, colsum(pw, null, 0));
      close(`ln (add ${add}): Σ dout`, gb, colsum(dout, null, 0));
      // the warp-per-row variant: its row sums in block_sum's order, so dx bit for bit
      const dxW = dx0.slice(), dxWB = gin(n), gwW = new Float32Array(C), gbW = new Float32Array(C);
      mod.launch(`tr_ln_bwd_w${C / 32}`, { grid: [Math.ceil(R / 64)], block: [256] }, dxW, dxWB, gwW, gbW, dout, x, w, R, C, add);
      same(`ln warp (add ${add}): dx`, dxW, dxO);
      same(`ln warp (add ${add}): bf16 dx`, asF(dxWB), cast(dxO));
      close(`ln warp (add ${add}): Σ dout⊙x̂`, gwW, colsum(pw, null, 0));
      close(`ln warp (add ${add}): Σ dout`, gbW, colsum(dout, null, 0));
    }
    for (const C2 of [128, 256, 768]) {
      // the warp variants at each width class (M = C/32 = 4, 8, 24): backward against tr_ln_bwd_f, forward
      // (tr_ln_w) against tr_ln
      const R2 = 11, n2 = R2 * C2, x = gaussArray(n2, r, 2).map((v, i) => v + (i % 5) - 2), dout = gaussArray(n2, r);
      const w = gaussArray(C2, r, 0.3).map((q) => 1 + q), b = gaussArray(C2, r, 0.1);
      const dxF = new Float32Array(n2), dxB = gin(n2), dxW = new Float32Array(n2), dxWB = gin(n2);
      mod.launch('tr_ln_bwd_f', { grid: [Math.ceil(R2 / 16)], block: [256] }, dxF, dxB, null, null, dout, x, w, R2, C2, 0);
      mod.launch(`tr_ln_bwd_w${C2 / 32}`, { grid: [Math.ceil(R2 / 64)], block: [256] }, dxW, dxWB, null, null, dout, x, w, R2, C2, 0);
      same(`ln warp C ${C2}: dx`, dxW, dxF);
      same(`ln warp C ${C2}: bf16 dx`, asF(dxWB), asF(dxB));
      const yF = new Float32Array(n2), yB = gin(n2), yWF = new Float32Array(n2).fill(NaN), yWB = gin(n2);
      mod.launch('tr_ln', { grid: [R2], block: [256] }, yF, yB, x, w, b, C2);
      mod.launch(`tr_ln_w${C2 / 32}`, { grid: [Math.ceil(R2 / 8)], block: [256] }, yWF, yWB, x, w, b, R2, C2);
      same(`ln forward warp C ${C2}: y`, yWF, yF);
      same(`ln forward warp C ${C2}: bf16 y`, asF(yWB), asF(yB));
    }
    for (const M of [1, 6]) {
      // token-shift mixes backward, per sequence
      const dmix = gaussArray(M * n, r), mu = Float32Array.from({ length: M * C }, () => r.u()), x = gaussArray(n, r);
      const dxO = new Float32Array(n), dxF = new Float32Array(n), gmu = new Float32Array(M * C);
      mod.launch('tr_mix_bwd', { grid: [8], block: [256] }, dxO, dmix, mu, R, T, C, M, 0);
      mod.launch('tr_mix_bwd_f', { grid: [Math.ceil(C / 32), Math.min(128, Math.ceil(R / 8))], block: [32, 8] }, dxF, gmu, dmix, mu, x, R, T, C, M, 0);
      same(`mix (M ${M}): dx`, dxF, dxO);
      // the forward mixes: tr_mix_rows (a block per row) against the grid-stride tr_mix, sequence starts included
      const oG = gin(M * n), oR = gin(M * n);
      mod.launch('tr_mix', { grid: [7], block: [256] }, oG, x, mu, R, T, C, M);
      mod.launch('tr_mix_rows', { grid: [R], block: [C / 4] }, oR, x, mu, R, T, C, M);
      same(`mix forward (M ${M})`, asF(oR), asF(oG));
      assert.ok(asF(oG).some((q) => q !== 0), 'mixes were written');
      for (let m = 0; m < M; m++) close(`mix (M ${M}): Σ μ_${m}`, gmu.subarray(m * C, (m + 1) * C), colsum(dmix.subarray(m * n, (m + 1) * n), x, 2));
    }
  }
});
