/**
 * The CUDA backend against the CPU reference (float32, exact against the authors' code): fixtures A
 * (RWKV-7 and RWKV-X with chunk 16, top-k 3) and a random L12 C768 + 4-attention model, for prefill,
 * token-by-token decoding and prefill-then-decode. Skips, saying why, where there is no CUDA.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Model, type LoadOptions } from '../src/model/model.js';
import type { ModelWeights } from '../src/model/weights.js';
import { fromBf16, toBf16 } from '../src/backend/cuda/memory.js';
import { shapeConfig, randomWeights } from '../src/model/random.js';
import { checkComputeCapability, cudaAvailable, CudaContext } from '../src/backend/cuda/driver.js';
import { UserError } from '../src/util/errors.js';
import type { CudaModel } from '../src/backend/cuda/model.js';
import { A, expectedTensor, expectedTokens, maxAbsDiff } from './helpers/vectors.js';

const TOL = 2e-2;
/** Bounds against the float32-weight CPU model (bf16 weights alone move the fixture logits by ~4e-2). */
const F32_TOL = 0.1;
/**
 * Fixture A's tiny model is more sensitive: bf16 weights alone move its logits by 3.6e-2 on the CPU,
 * and bf16 activations into the GEMMs add as much again; its rows are checked at this bound.
 */
const FIXTURE_TOL = 8e-2;

/**
 * The CPU reference on the weights the GPU holds (bf16-rounded matrices and embedding): what is
 * left is the GPU's arithmetic (bf16 activations into the GEMMs, accumulation order).
 */
function roundWeights(w: ModelWeights): ModelWeights {
  const r = (x: Float32Array) => x.set(fromBf16(toBf16(x)));
  r(w.emb); r(w.head);
  for (const b of w.blocks) for (const k of ['w1', 'w2', 'a1', 'a2', 'v1', 'v2', 'g1', 'g2', 'Wr', 'Wk', 'Wv', 'Wo', 'ffnK', 'ffnV'] as const) r(b[k]);
  for (const b of w.attn) for (const k of ['Wq', 'Wk', 'Wv', 'Wo', 'ffnK', 'ffnV'] as const) r(b[k]);
  return w;
}
function bf16Cpu(file: string, opts: LoadOptions = {}): Model {
  const m = Model.load(A(file), opts);
  roundWeights(m.weights);
  return m;
}
const avail = cudaAvailable();
const skipReason = avail.ok ? undefined : avail.reason.startsWith('no NVIDIA GPU') ? avail.reason : `no NVIDIA GPU / CUDA driver found: ${avail.reason}`;
const tokens = expectedTokens();

// loaded lazily so that a machine without CUDA never touches the backend
const cuda = avail.ok ? await import('../src/backend/cuda/model.js') : undefined;
const made: { dispose(): void }[] = [];
after(() => { for (const m of made) m.dispose(); });

type CM = CudaModel;
function stepwise(m: { forward(t: number[], s: unknown): Float32Array; newState(): unknown; cfg: { vocab: number } }, ids: number[], state = m.newState()): Float32Array {
  const V = m.cfg.vocab;
  const out = new Float32Array(ids.length * V);
  ids.forEach((id, t) => out.set(m.forward([id], state), t * V));
  return out;
}
function prefillThenStep(m: CM, ids: number[], n: number): Float32Array {
  const V = m.cfg.vocab;
  const st = m.newState();
  const out = new Float32Array(ids.length * V);
  out.set(m.forward(ids.slice(0, n), st), 0);
  out.set(stepwise(m as never, ids.slice(n), st), n * V);
  return out;
}
function report(t: { diagnostic(s: string): void }, what: string, d: number, tol: number | null = TOL): void {
  t.diagnostic(`${what}: max |diff| ${d.toExponential(3)}`);
  console.log(`cuda ${what}: max |diff| ${d.toExponential(3)}${tol === null ? ' (reported only)' : ''}`);
  if (tol !== null) assert.ok(d <= tol, `${what}: max |diff| ${d} > ${tol}`);
}

test('CUDA: kernel arguments are packed into 8-byte slots and checked against the signature (runs without a GPU)', async () => {
  const { packKernelArgs } = await import('../src/backend/cuda/module-cache.js');
  const view = new DataView(new ArrayBuffer(32 * 8));
  const addr = 0x7f12_3456_789a;  // a 47-bit device address: both 32-bit halves matter
  packKernelArgs(view, 'k', 'pifp', [addr, -7, 1.5, 0]);
  assert.equal(view.getBigUint64(0, true), BigInt(addr));
  assert.equal(view.getInt32(8, true), -7);
  assert.equal(view.getFloat32(16, true), 1.5);
  assert.equal(view.getBigUint64(24, true), 0n);
  for (const [sig, args, re] of [
    ['pi', [1], /1 arguments for signature 'pi'/],
    ['p', [-1], /argument 0 is not a device address/],
    ['p', [0.5], /argument 0 is not a device address/],
    ['i', [2 ** 31], /argument 0 must be a 32-bit integer/],
    ['i', [1.5], /argument 0 must be a 32-bit integer/],
    ['x', [1], /bad signature letter 'x'/],
    ['p'.repeat(33), new Array(33).fill(0), /more than 32 arguments/],
  ] as [string, number[], RegExp][]) assert.throws(() => packKernelArgs(view, 'k', sig, args), re);
});

test('CUDA: a GPU older than compute capability 8.0 is refused in one line (runs without a GPU)', () => {
  assert.throws(() => checkComputeCapability({ name: 'Tesla T4', major: 7, minor: 5 }),
    (e: unknown) => e instanceof UserError && /Tesla T4 \(compute capability 7\.5\) is too old/.test(e.message) && !e.message.includes('\n'));
  assert.doesNotThrow(() => checkComputeCapability({ name: 'NVIDIA H100 80GB HBM3', major: 9, minor: 0 }));
  assert.doesNotThrow(() => checkComputeCapability({ name: 'NVIDIA A100', major: 8, minor: 0 }));
});

test('CUDA: NVRTC compiles and runs a kernel (bindings)', async (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const { loadSource, launch } = await import('../src/backend/cuda/module-cache.js');
  const { alloc, copyDtoH, upload } = await import('../src/backend/cuda/memory.js');
  const ctx = CudaContext.get(0);
  t.diagnostic(`${ctx.info.name} ${ctx.arch}, ${ctx.info.sms} SMs, driver ${ctx.info.driverVersion}`);
  console.log(`cuda device: ${ctx.info.name} ${ctx.arch}, ${ctx.info.sms} SMs, driver ${ctx.info.driverVersion}`);
  const mod = loadSource(ctx, 'extern "C" __global__ void axpy(float* y, const float* x, float a, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] += a * x[i]; }', 'axpy.cu');
  const n = 1000;
  const x = Float32Array.from({ length: n }, (_, i) => i), y = Float32Array.from({ length: n }, (_, i) => 1 - i);
  const dx = upload(ctx, x), dy = upload(ctx, y);
  launch(ctx, mod, 'axpy', 'ppfi', [Math.ceil(n / 128)], [128], 0, [dy.ptr, dx.ptr, 2, n]);
  const back = new Float32Array(n);
  copyDtoH(back, dy.ptr);
  for (let i = 0; i < n; i++) assert.equal(back[i], 1 + i);
  dx.free(); dy.free();
  assert.throws(() => alloc(ctx, 1e15, 'test'), /CUDA out of memory allocating test: asked for .* MiB free of/);
});

/** Max |diff| over rows [r0, r1) of V logits. */
function rowsDiff(a: Float32Array, b: Float32Array, V: number, r0: number, r1: number): number {
  return maxAbsDiff(a.subarray(r0 * V, r1 * V), b.subarray(r0 * V, r1 * V));
}
/** Fraction of rows whose arg-max agrees. */
function argmaxAgreement(a: Float32Array, b: Float32Array, V: number): number {
  let same = 0;
  const rows = a.length / V;
  for (let r = 0; r < rows; r++) {
    let ia = 0, ib = 0;
    for (let i = 1; i < V; i++) { if (a[r * V + i] > a[r * V + ia]) ia = i; if (b[r * V + i] > b[r * V + ib]) ib = i; }
    if (ia === ib) same++;
  }
  return same / rows;
}

test('CUDA: RWKV-7 fixture — prefill, step, prefill-then-step match the CPU', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const f32 = Model.load(A('rwkv7.pth'));
  const cpu = bf16Cpu('rwkv7.pth');
  const m = cuda!.CudaModel.load(A('rwkv7.pth')); made.push(m);
  const want = cpu.forward(tokens, cpu.newState());
  const pre = m.forward(tokens, m.newState());
  const checks: [string, number, number | null][] = [
    ['rwkv7 prefill vs f32-weight CPU', maxAbsDiff(pre, f32.forward(tokens, f32.newState())), F32_TOL],
    ['rwkv7 prefill vs bf16-weight CPU', maxAbsDiff(pre, want), FIXTURE_TOL],
    ['rwkv7 step vs bf16-weight CPU', maxAbsDiff(stepwise(m as never, tokens), want), FIXTURE_TOL],
    ['rwkv7 prefill 77 + step vs bf16-weight CPU', maxAbsDiff(prefillThenStep(m, tokens, 77), want), FIXTURE_TOL],
    // steps run the sequential WKV-7 kernel, prefill the chunked one (equal to fp32 rounding); this
    // tiny model turns that into ~2e-2 through bf16 GEMM inputs, so the fixture bound applies
    ['rwkv7 GPU step vs GPU prefill', maxAbsDiff(stepwise(m as never, tokens), pre), FIXTURE_TOL],
    ['rwkv7 logits last', maxAbsDiff(m.forward(tokens, m.newState(), { logits: 'last' }), pre.subarray((tokens.length - 1) * 1000)), TOL],
  ];
  const cs = cpu.newState(); cpu.forward(tokens, cs);
  const gs = m.newState(); m.forward(tokens, gs, { logits: 'none' });
  const back = m.downloadState(gs);
  checks.push(['rwkv7 wkv state vs bf16-weight CPU', Math.max(...cs.rwkv.map((r, i) => maxAbsDiff(r.wkv, back.rwkv[i].wkv))), null]);
  for (const [w, d, tol] of checks) report(t, w, d, tol);
});

test('CUDA: RWKV-X fixture (chunk 16, top-k 3, moba) — prefill, step and splits match', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const cpu = bf16Cpu('rwkvx.pth', { chunk: 16, topk: 3 });
  const m = cuda!.CudaModel.load(A('rwkvx.pth'), { chunk: 16, topk: 3 }); made.push(m);
  const V = 1000;
  const want = cpu.forward(tokens, cpu.newState());
  // Chunked WKV-7 (the default for calls of ≥ 64 tokens) and sequential WKV-7 agree to fp32 rounding,
  // but on this fixture such differences flip near-tied top-k chunk choices (as bf16 weights do against
  // the authors' fp32 logits), so the chunked prefill is checked where no choice exists (rows < 48) and
  // by arg-max; the decoding/prefill/segmentation consistency checks below use the sequential kernel
  // on both sides, so that they stay about the attention paths.
  const preChunked = m.forward(tokens, m.newState());
  m.wkvChunked = false;
  const pre = m.forward(tokens, m.newState());
  const step = stepwise(m as never, tokens);
  const checks: [string, number, number | null][] = [
    // against the authors' float32 logits: bf16 weights flip near-tied chunk choices, so only reported
    ['rwkvx prefill vs authors (f32 weights), all rows', maxAbsDiff(pre, expectedTensor('rwkvx.moba.logits')), null],
    ['rwkvx prefill vs bf16-weight CPU, all rows', maxAbsDiff(pre, want), null],
    // rows < B·k = 48 have no chunk choice to make (every complete chunk is attended)
    ['rwkvx prefill vs bf16-weight CPU, rows < 48', rowsDiff(pre, want, V, 0, 48), FIXTURE_TOL],
    ['rwkvx step vs bf16-weight CPU, rows < 48', rowsDiff(step, want, V, 0, 48), FIXTURE_TOL],
    // decoding (GEMV kernels, split-K attention in fp32) and prefill (cuBLAS, tensor cores, per-slot
    // log-sum-exp merge) round differently; this tiny model amplifies that, and past row 48 it flips
    // near-tied chunk choices (as bf16 weights do against the CPU): rows < 48 at the fixture bound, the
    // rest by arg-max
    ['rwkvx GPU step vs GPU prefill, rows < 48', rowsDiff(step, pre, V, 0, 48), FIXTURE_TOL],
    ['rwkvx GPU step vs GPU prefill, all rows', maxAbsDiff(step, pre), null],
    ['rwkvx GPU step, arg-max disagreement with GPU prefill (fraction)', 1 - argmaxAgreement(step, pre, V), 0.05],
    ['rwkvx chunked-WKV prefill vs bf16-weight CPU, rows < 48', rowsDiff(preChunked, want, V, 0, 48), FIXTURE_TOL],
    // the two WKV kernels agree to ~4e-7 relative (test below); this fixture amplifies that like the
    // rwkv7 step/prefill pair above (measured 2.9e-2 on an H100), hence the fixture bound
    ['rwkvx chunked-WKV prefill vs sequential-WKV prefill, rows < 48', rowsDiff(preChunked, pre, V, 0, 48), FIXTURE_TOL],
    ['rwkvx chunked-WKV prefill vs sequential-WKV prefill, all rows', maxAbsDiff(preChunked, pre), null],
    ['rwkvx chunked-WKV prefill, arg-max disagreement with bf16-weight CPU (fraction)', 1 - argmaxAgreement(preChunked, want, V), 0.05],
  ];
  for (const n of [1, 16, 17, 100]) {
    const mixed = prefillThenStep(m, tokens, n);
    checks.push([`rwkvx GPU prefill ${n} + step vs GPU prefill, rows < 48`, rowsDiff(mixed, pre, V, 0, 48), FIXTURE_TOL]);
    checks.push([`rwkvx GPU prefill ${n} + step, arg-max disagreement with GPU prefill`, 1 - argmaxAgreement(mixed, pre, V), 0.05]);
  }
  const st = m.newState();
  // calls of several tokens each (a one-token call is a decoding step, checked above)
  const cuts = [0, 5, 33, 64, 66, 130, 200];
  const out = new Float32Array(tokens.length * V);
  for (let i = 0; i + 1 < cuts.length; i++) out.set(m.forward(tokens.slice(cuts[i], cuts[i + 1]), st), cuts[i] * V);
  checks.push(['rwkvx GPU several calls vs GPU prefill', maxAbsDiff(out, pre), TOL]);
  checks.push(['rwkvx GPU segment 23 vs GPU prefill', maxAbsDiff(m.forward(tokens, m.newState(), { segment: 23 }), pre), TOL]);
  const agree = argmaxAgreement(pre, want, V);
  checks.push(['rwkvx arg-max disagreement with bf16-weight CPU (fraction)', 1 - agree, 0.05]);
  for (const [w, d, tol] of checks) report(t, w, d, tol);
  m.wkvChunked = true;
});

test('CUDA: RWKV-X official semantics — prefill 48 then step', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const cpu = bf16Cpu('rwkvx.pth', { chunk: 16, topk: 3, attention: 'official' });
  const m = cuda!.CudaModel.load(A('rwkvx.pth'), { chunk: 16, topk: 3, attention: 'official' }); made.push(m);
  const V = 1000;
  const cst = cpu.newState();
  const want = new Float32Array(tokens.length * V);
  want.set(cpu.forward(tokens.slice(0, 48), cst), 0);
  want.set(stepwise(cpu as never, tokens.slice(48), cst), 48 * V);
  const got = prefillThenStep(m, tokens, 48);
  const cpu2 = cpu.forward(tokens, cpu.newState());
  const got2 = m.forward(tokens, m.newState());
  const checks: [string, number, number | null][] = [
    ['official prefill 48 + step, all rows', maxAbsDiff(got, want), null],
    ['official prefill 48 + step, rows < 49 (dense)', rowsDiff(got, want, V, 0, 49), FIXTURE_TOL],
    // official decoding picks chunks by scores summed over heads: near ties flip with any rounding
    // change (3.5% with 4 threads per WKV row, 5.0% with 16 on the H100)
    ['official prefill 48 + step, arg-max disagreement', 1 - argmaxAgreement(got, want, V), 0.075],
    // a 200-token call attends within 16-token chunks of the call: no choice, so exact up to bf16 and
    // the chunked WKV-7's rounding, which this tiny model amplifies (chunked vs sequential WKV alone moves
    // its rows < 48 by 3.2e-2): measured 6.4e-2 … 8.2e-2 on the H100 as fp32 rounding orders changed
    // (tmix_prep fused into the chunk prep, the V terms summed in another order), and 0.115 with the scan
    // on tensor cores (bf16 hi + lo operands; 6.7e-2 with '16w' in the same call, H100 2026-12-07): 0.15
    ['official prefill 200 (chunked within the call)', maxAbsDiff(got2, cpu2), 0.15],
    ['official prefill 200, arg-max disagreement with bf16-weight CPU', 1 - argmaxAgreement(got2, cpu2, V), 0.075],
  ];
  for (const [w, d, tol] of checks) report(t, w, d, tol);
});

test('CUDA: random L12 C768 + 4 attention blocks (chunk 16, top-k 3)', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const cfg = shapeConfig({ vocab: 1000, dim: 768, nLayer: 12, nAttn: 4, chunk: 16, topk: 3 });
  const w = roundWeights(randomWeights(cfg, 7));
  const cpu = new Model(cfg, w);
  const m = cuda!.CudaModel.fromWeights(cfg, w); made.push(m);
  const ids = tokens.slice(0, 72);
  const want = cpu.forward(ids, cpu.newState());
  report(t, 'random L12 prefill', maxAbsDiff(m.forward(ids, m.newState()), want));
  report(t, 'random L12 step', maxAbsDiff(stepwise(m as never, ids), want));
  report(t, 'random L12 prefill 40 + step', maxAbsDiff(prefillThenStep(m, ids, 40), want));
});

test('CUDA: moba with chunk 512 (split decode, gathered prefill) and the graph against eager steps', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const cfg = shapeConfig({ vocab: 500, dim: 128, nLayer: 2, nAttn: 2, chunk: 512, topk: 3 });
  const w = roundWeights(randomWeights(cfg, 11));
  const cpu = new Model(cfg, w);
  const m = cuda!.CudaModel.fromWeights(cfg, w); made.push(m);
  const V = cfg.vocab, N = 1700;
  const ids = Array.from({ length: N }, (_, i) => (i * 7919 + 13) % V);
  const want = cpu.forward(ids, cpu.newState());
  const pre = m.forward(ids, m.newState());
  report(t, 'chunk 512 GPU prefill vs bf16-weight CPU, rows < 1536', rowsDiff(pre, want, V, 0, 1536), TOL);
  report(t, 'chunk 512 GPU arg-max disagreement with CPU', 1 - argmaxAgreement(pre, want, V), 0.05);
  const n0 = 1600;
  const graphed = prefillThenStep(m, ids, n0);
  report(t, 'chunk 512 GPU prefill 1600 + graph steps vs GPU prefill', rowsDiff(graphed, pre, V, n0, N), TOL);
  m.useGraph = false;
  const eager = prefillThenStep(m, ids, n0);
  m.useGraph = true;
  report(t, 'chunk 512 eager steps vs graph steps', rowsDiff(eager, graphed, V, n0, N), TOL);
});

test('CUDA: the sm_90a (wgmma) moba attention kernels agree with the mma.sync ones (tiles of 128 and 64 keys, unaligned call starts)', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const cfg = shapeConfig({ vocab: 500, dim: 128, nLayer: 2, nAttn: 2, chunk: 512, topk: 3 });
  const w = roundWeights(randomWeights(cfg, 23));
  const m = cuda!.CudaModel.fromWeights(cfg, w); made.push(m);
  if (m.ctx.arch !== 'sm_90') { t.skip(`needs an sm_90 GPU (this one is ${m.ctx.arch})`); return; }
  const V = cfg.vocab, N = 2600;
  const ids = Array.from({ length: N }, (_, i) => (i * 6007 + 5) % V);
  // calls of 300, 1000 and 1300 tokens: windows that start inside a chunk and inside a 64-key tile
  const run = (nk: number) => {
    m.attnWg = nk;
    const st = m.newState(), out = new Float32Array(N * V);
    let p = 0;
    for (const n of [300, 1000, 1300]) { out.set(m.forward(ids.slice(p, p + n), st), p * V); p += n; }
    st.dispose();
    return out;
  };
  const ref = run(0);
  for (const nk of [128, 64]) {
    const got = run(nk);
    assert.ok(got.every(Number.isFinite), `wgmma ${nk}: non-finite logits`);
    report(t, `wgmma tiles of ${nk} keys vs mma.sync, rows < 1536 (no chunk choice)`, rowsDiff(got, ref, V, 0, 1536), 5e-3);
    report(t, `wgmma tiles of ${nk} keys vs mma.sync, arg-max disagreement (all rows)`, 1 - argmaxAgreement(got, ref, V), 0.03);
  }
  m.attnWg = 128;
});

test('CUDA: the one-pass chunk choice (select_chunks_tiled) gives the logits of chunk_scores + select_chunks bit for bit (top-k 3 and 6, unaligned calls)', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  for (const topk of [3, 6]) {
    const cfg = shapeConfig({ vocab: 300, dim: 128, nLayer: 2, nAttn: 2, chunk: 64, topk });
    const m = cuda!.CudaModel.fromWeights(cfg, randomWeights(cfg, 31 + topk)); made.push(m);
    const V = cfg.vocab, N = 5000;
    const ids = Array.from({ length: N }, (_, i) => (i * 4099 + 17) % V);
    const run = (tiled: boolean) => {
      m.selectTiled = tiled;
      const st = m.newState(), out = new Float32Array(N * V);
      let p = 0;
      for (const n of [100, 1900, 3000]) { out.set(m.forward(ids.slice(p, p + n), st), p * V); p += n; }
      st.dispose();
      return out;
    };
    const ref = run(false), got = run(true);
    m.selectTiled = true;
    report(t, `top-k ${topk}: tiled choice vs scores + select_chunks`, maxAbsDiff(got, ref), 0);
  }
});

test('CUDA: ln_mix8 (rows staged in shared memory) gives the logits of ln_mix bit for bit (calls of 1, 7, 64 and 301 tokens)', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const cfg = shapeConfig({ vocab: 300, dim: 192, nLayer: 3, nAttn: 0 });
  const m = cuda!.CudaModel.fromWeights(cfg, randomWeights(cfg, 41)); made.push(m);
  const V = cfg.vocab, calls = [1, 7, 64, 301], N = calls.reduce((a, b) => a + b);
  const ids = Array.from({ length: N }, (_, i) => (i * 211 + 3) % V);
  const run = (staged: boolean) => {
    m.lnMixStaged = staged;
    const st = m.newState(), out = new Float32Array(N * V);
    let p = 0;
    for (const n of calls) { out.set(m.forward(ids.slice(p, p + n), st), p * V); p += n; }
    st.dispose();
    return out;
  };
  const ref = run(false), got = run(true);
  m.lnMixStaged = true;
  report(t, 'ln_mix8 vs ln_mix', maxAbsDiff(got, ref), 0);
});

/** Max |a − b|, Infinity where either holds a NaN (unwritten outputs are poisoned with NaN). */
function diffNaN(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) { const e = Math.abs(a[i] - b[i]); if (!(e <= d)) d = Number.isNaN(e) ? Infinity : e; }
  return d;
}
test('CUDA: chunked WKV-7 (tmix_prep fused into its chunk prep) equals tmix_prep + the sequential kernel (random inputs of real scale, T = 1 … 65537, layer 0 and later layers)', async (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const { alloc, copyDtoH, copyHtoD, copyDtoD } = await import('../src/backend/cuda/memory.js');
  const { wkvRecordBytes } = await import('../src/backend/cuda/model.js');
  const cfg = shapeConfig({ vocab: 256, dim: 128, nLayer: 2, nAttn: 0, chunk: 16, topk: 3 });
  const m = cuda!.CudaModel.fromWeights(cfg, randomWeights(cfg, 3)); made.push(m);
  const C = cfg.dim, H = cfg.heads, Tmax = 65537, bytes = Tmax * C * 4;
  let seed = 12345;
  const rnd = () => { seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0; return seed / 2 ** 32; };
  const gauss = () => Math.sqrt(-2 * Math.log(rnd() + 1e-12)) * Math.cos(2 * Math.PI * rnd());
  // the raw projections as the GEMMs leave them: r, k, v and the LoRA outputs of decay, rate and value residual
  const names = ['r', 'w', 'a', 'k', 'v', 'dv', 'vFirst'] as const;
  const src = new Map(names.map((nm) => {
    const x = Float32Array.from({ length: Tmax * C }, () => (nm === 'w' ? 2 : 1) * gauss());
    const b = alloc(m.ctx, bytes, 'test'); copyHtoD(b.ptr, x); return [nm, b] as const;
  }));
  const work = new Map([...names, 'y', 'kk'].map((nm) => [nm, alloc(m.ctx, bytes, 'test')] as const));
  const nanBuf = alloc(m.ctx, bytes, 'test'); copyHtoD(nanBuf.ptr, new Float32Array(Tmax * C).fill(NaN));
  const state = alloc(m.ctx, H * 4096 * 4, 'test state'), rec = alloc(m.ctx, wkvRecordBytes(Tmax, H), 'test rec');
  const s0 = Float32Array.from({ length: H * 4096 }, () => gauss() * 0.3);
  const io = Object.fromEntries([...work].map(([nm, b]) => [nm, b.ptr])) as unknown as import('../src/backend/cuda/model.js').WkvIo;
  let worstY = 0, worstS = 0, worstKV = 0, worstRows = 0, worstTc = 0;
  for (const first of [true, false]) {
    for (const T of first ? [1, 17, 1000, 16400] : [1, 15, 16, 17, 33, 64, 100, 1000, 4097, 16400, 65537]) {
      const out: Record<string, Float32Array>[] = [];
      for (const chunked of [false, true]) {
        for (const nm of names) copyDtoD(m.ctx, work.get(nm)!.ptr, src.get(nm)!.ptr, T * C * 4);
        copyDtoD(m.ctx, io.y, nanBuf.ptr, T * C * 4);
        if (first) copyDtoD(m.ctx, io.vFirst, nanBuf.ptr, T * C * 4);
        copyHtoD(state.ptr, s0);
        m.tmixWkv(io, first ? 0 : 1, state.ptr, T, rec.ptr, chunked, first);
        const got: Record<string, Float32Array> = { s: new Float32Array(H * 4096) };
        for (const nm of ['y', 'k', 'v', 'vFirst'] as const) { got[nm] = new Float32Array(T * C); copyDtoH(got[nm], work.get(nm)!.ptr); }
        copyDtoH(got.s, state.ptr);
        out.push(got);
      }
      let ymax = 0;
      for (const x of out[0].y) ymax = Math.max(ymax, Math.abs(x));
      // every scan layout against '16w' (fp32 FMAs, the same sums in the same order as '4', '16' and '32w');
      // the tensor-core scan (the default) rounds its operands to bf16 hi + lo, so its own bound
      if (T >= 16) {
        const runLayout = (rows: import('../src/backend/cuda/model.js').WkvScanLayout) => {
          const keep = m.wkvScanRows;
          m.wkvScanRows = rows;
          for (const nm of names) copyDtoD(m.ctx, work.get(nm)!.ptr, src.get(nm)!.ptr, T * C * 4);
          copyDtoD(m.ctx, io.y, nanBuf.ptr, T * C * 4);
          copyHtoD(state.ptr, s0);
          m.tmixWkv(io, first ? 0 : 1, state.ptr, T, rec.ptr, true, first);
          m.wkvScanRows = keep;
          const y = new Float32Array(T * C), st = new Float32Array(H * 4096);
          copyDtoH(y, io.y); copyDtoH(st, state.ptr);
          return { y, st };
        };
        const ref = runLayout('16w');
        for (const rows of ['4', '16', '32w', 'tc', 'tcs', 'tc2', 'tc2s', 'tcp'] as const) {
          const { y, st } = runLayout(rows);
          const d = Math.max(diffNaN(y, ref.y) / Math.max(1, ymax), diffNaN(st, ref.st));
          if (d > 0) console.log(`cuda wkv scan rows ${rows} vs 16w T=${T}: max difference ${d.toExponential(3)}`);
          if (rows.startsWith('tc')) worstTc = Math.max(worstTc, d); else worstRows = Math.max(worstRows, d);
        }
      }
      const dyv = diffNaN(out[1].y, out[0].y), dsv = diffNaN(out[1].s, out[0].s);
      const dkv = Math.max(...(['k', 'v', 'vFirst'] as const).map((nm) => diffNaN(out[1][nm], out[0][nm])));
      console.log(`cuda wkv chunked vs seq T=${T}${first ? ' (layer 0)' : ''}: max |Δy| ${dyv.toExponential(3)} (max |y| ${ymax.toFixed(2)}), max |Δstate| ${dsv.toExponential(3)}, max |Δk̃, v, vFirst| ${dkv.toExponential(3)}`);
      worstY = Math.max(worstY, dyv / Math.max(1, ymax)); worstS = Math.max(worstS, dsv); worstKV = Math.max(worstKV, dkv);
    }
  }
  for (const b of [...src.values(), ...work.values(), nanBuf, state, rec]) b.free();
  report(t, 'chunked WKV-7 vs sequential, max |Δy| / max(1, max |y|)', worstY, 1e-4);
  report(t, 'chunked WKV-7 vs sequential, max |Δstate|', worstS, 1e-3);
  report(t, 'fused chunk prep vs tmix_prep, max |Δ| of k̃, v and vFirst', worstKV, 1e-5);
  report(t, 'scan layouts 4, 16 (2 rows per warp) and 32w (8 per warp) vs 16w (4 per warp), max relative |Δy| and |Δstate|', worstRows, 1e-6);
  report(t, 'tensor-core scans tc, tcs, tc2, tc2s, tcp (bf16 hi + lo operands) vs 16w, max relative |Δy| and |Δstate|', worstTc, 2e-4);
});
