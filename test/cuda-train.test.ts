/**
 * CUDA training (src/backend/cuda/train) against the CPU training code, which is exact against the
 * authors' autograd: fixture A (the first 101 tokens), every gradient compared per tensor
 * (max |Δ| / max |g_cpu|), the loss, and a few AdamW steps against the CPU optimizer.
 *
 * The reference is the CPU on the weights the GPU computes with (bf16-rounded matrices and head; the
 * embedding and vectors stay float32), so what is left is the GPU's bf16 activations into the GEMMs.
 * RWKV-7 is held to 5e-2 per tensor (observed: median 1.1e-2, max 3.5e-2 on an H100).
 * Fixture A's RWKV-X is ill-conditioned under bf16: on the CPU alone, bf16-rounding its weights moves
 * its gradients by a median ~1e-1 and up to ~4e-1 (top-k 3 or 7, and no better with smaller Wq/Wk), so
 * there the GPU is held to that measured sensitivity (median within 3×, every tensor below 1) and the
 * numbers are printed; the moba backward algorithm itself (key-centric dK/dV over the queries that
 * selected each chunk) was checked against mobaBackward by a float64 port, to 5e-7.
 * In the fp32 test mode (float32 weights and GEMM inputs) only fp32 rounding is left, and every tensor of
 * RWKV-7 and RWKV-X is held to 1e-3 of the CPU's (relative to the tensor's largest gradient).
 * A micro-batch of B sequences (one forward/backward of B·T rows) is checked against B single-sequence
 * calls accumulated, in fp32 mode, RWKV-X with the chunk selection active.
 * The trainer on the GPU (`rwkvx train --backend cuda`): the loss falls on a toy corpus, the checkpoint
 * loads and continues on the CPU, resume continues (not bit-exactly: the GPU sums with atomics), stage 1
 * leaves the RWKV part bit-identical, a diverging run stops keeping its checkpoint.
 * Skips, saying why, where there is no CUDA.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTrainConfig, type TrainConfig } from '../src/train/config.js';
import { train, type StepLog } from '../src/train/trainer.js';
import { openCheckpoint } from '../src/io/open.js';
import { rwkvx } from './helpers/cli.js';
import { cudaAvailable } from '../src/backend/cuda/driver.js';
import { computeGradients, loadTrainModel, parameterTensors, type TrainModel } from '../src/train/model-grad.js';
import { fromBf16, toBf16 } from '../src/backend/cuda/memory.js';
import { AdamW, clipGradients, isMatrix, RWKV_ADAMW, type Param } from '../src/train/adamw.js';
import { expectedTensors } from '../src/model/weights.js';
import { shutdownPool } from '../src/backend/cpu/matmul.js';
import { A, expectedTokens } from './helpers/vectors.js';
import { writeToyCorpus } from './helpers/toy-corpus.js';
import { rel, rng } from './helpers/numeric.js';
import { assertOnlyAttentionMoved } from './helpers/stage1.js';

const REL_TOL = 5e-2, LOSS_TOL = 1e-2;
const CHUNK = 16, TOPK = 3;
const avail = cudaAvailable();
const skip = avail.ok ? false : `no CUDA: ${avail.reason}`;
const tokens = expectedTokens().slice(0, 101);
const cuda = avail.ok ? await import('../src/backend/cuda/train/grad.js') : undefined;
const dir = mkdtempSync(join(tmpdir(), 'rwkvx-cuda-train-'));
after(() => { shutdownPool(); rmSync(dir, { recursive: true, force: true }); });

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** The CPU model on the weights the GPU computes with (bf16 matrices and head; emb and vectors float32). */
function roundWeights(m: TrainModel): TrainModel {
  const r = (x: Float32Array) => x.set(fromBf16(toBf16(x)));
  r(m.weights.head);
  for (const b of m.weights.blocks) for (const k of ['w1', 'w2', 'a1', 'a2', 'v1', 'v2', 'g1', 'g2', 'Wr', 'Wk', 'Wv', 'Wo', 'ffnK', 'ffnV'] as const) r(b[k]);
  for (const b of m.weights.attn) for (const k of ['Wq', 'Wk', 'Wv', 'Wo', 'ffnK', 'ffnV'] as const) r(b[k]);
  return m;
}

/** Per-tensor relative errors (sorted, worst first), printed with their distribution. */
function relErrors(label: string, cfgNames: string[], cpu: Map<string, Float32Array>, gpu: Map<string, Float32Array>): { name: string; rel: number }[] {
  const rows: { name: string; rel: number; max: number }[] = [];
  for (const name of cfgNames) {
    const c = cpu.get(name)!, g = gpu.get(name)!;
    assert.equal(g.length, c.length, name);
    let d = 0;
    for (let i = 0; i < c.length; i++) { const x = Math.abs(c[i] - g[i]); if (!(x <= d)) d = Number.isNaN(x) ? Infinity : x; }
    const m = maxAbs(c);
    rows.push({ name, rel: m > 0 ? d / m : d <= 1e-6 ? 0 : Infinity, max: m });
  }
  rows.sort((a, b) => b.rel - a.rel);
  const rels = rows.map((r) => r.rel).sort((a, b) => a - b);
  const q = (f: number) => rels[Math.min(rels.length - 1, Math.floor(f * rels.length))].toExponential(2);
  console.log(`${label}: relative error over ${rows.length} tensors: median ${q(0.5)}, p90 ${q(0.9)}, p99 ${q(0.99)}, max ${q(1)}`);
  console.log(`${label}: worst: ${rows.slice(0, 6).map((r) => `${r.name} ${r.rel.toExponential(2)}`).join(', ')}`);
  if (process.env.RWKVX_TRAIN_TEST_VERBOSE) for (const r of rows) console.log(`  ${r.rel.toExponential(2)}  ${r.name}  (max |g| ${r.max.toExponential(2)})`);
  return rows;
}

function compareGradients(file: string, topk: number, tol: number): void {
  const model = loadTrainModel(A(file), { chunk: CHUNK, topk });
  const cpu = computeGradients(roundWeights(loadTrainModel(A(file), { chunk: CHUNK, topk })), tokens, { chunk: CHUNK, topk });
  const gpu = cuda!.cudaComputeGradients(model, tokens, { chunk: CHUNK, topk });
  const label = `${file} top-k ${topk}`;
  console.log(`${label}: loss cpu ${cpu.loss.toFixed(6)} gpu ${gpu.loss.toFixed(6)} (|Δ| ${Math.abs(cpu.loss - gpu.loss).toExponential(2)})`);
  const names = expectedTensors(model.cfg).map(([n]) => n);
  const rows = relErrors(`${label} GPU vs CPU(bf16 weights)`, names, cpu.grads, gpu.grads);
  assert.ok(Math.abs(cpu.loss - gpu.loss) <= LOSS_TOL, `loss ${gpu.loss} vs CPU ${cpu.loss}`);
  if (tol > 0) {
    const bad = rows.filter((r) => !(r.rel <= tol));
    assert.equal(bad.length, 0, `gradients off: ${bad.map((r) => `${r.name} ${r.rel.toExponential(2)}`).join(', ')}`);
    return;
  }
  // ill-conditioned case: compare with the CPU's own sensitivity to bf16 weights
  const cpu32 = computeGradients(model, tokens, { chunk: CHUNK, topk });
  const sens = relErrors(`${label} CPU fp32 vs CPU bf16 weights`, names, cpu32.grads, cpu.grads);
  const med = (x: { rel: number }[]) => x.map((r) => r.rel).sort((a, b) => a - b)[x.length >> 1];
  assert.ok(med(rows) <= 3 * med(sens), `median ${med(rows)} vs CPU sensitivity ${med(sens)}`);
  assert.ok(rows[0].rel < 1, `worst ${rows[0].name} ${rows[0].rel}`);
}

test('CUDA gradients match the CPU on fixture A (RWKV-7)', { skip }, () => compareGradients('rwkv7.pth', TOPK, REL_TOL));
test('CUDA gradients on fixture A (RWKV-X, chunk 16, top-k 7: every past chunk)', { skip }, () => compareGradients('rwkvx.pth', 7, 0));
test('CUDA gradients on fixture A (RWKV-X, chunk 16, top-k 3)', { skip }, () => compareGradients('rwkvx.pth', TOPK, 0));

test('CUDA gradients: l2wrap and token weights follow the CPU (RWKV-7)', { skip }, () => {
  const model = loadTrainModel(A('rwkv7.pth'));
  const tw = Array.from({ length: tokens.length - 1 }, (_, t) => 0.5 + (t % 7) / 4);
  const o = { l2wrap: true, tokenWeights: tw };
  const cpu = computeGradients(roundWeights(loadTrainModel(A('rwkv7.pth'))), tokens, o), gpu = cuda!.cudaComputeGradients(model, tokens, o);
  assert.ok(Math.abs(cpu.loss - gpu.loss) <= LOSS_TOL, `loss ${gpu.loss} vs ${cpu.loss}`);
  const rows = relErrors('l2wrap + token weights', [...cpu.grads.keys()], cpu.grads, gpu.grads);
  assert.ok(rows[0].rel <= REL_TOL, `worst ${rows[0].name} ${rows[0].rel}`);
});

test('CUDA AdamW steps reduce the loss and follow the CPU optimizer (RWKV-7)', { skip }, () => {
  // RWKV-7 (well conditioned), lr 1e-3, clip 1.0, SPEC §5 AdamW betas/eps/decay
  const STEPS = 6, LR = 1e-3, CLIP = 1.0, K = TOPK;
  const cpuModel = roundWeights(loadTrainModel(A('rwkv7.pth')));
  const gpuModel = loadTrainModel(A('rwkv7.pth'));
  const shapes = new Map(expectedTensors(cpuModel.cfg));
  const params: Param[] = [...parameterTensors(cpuModel)].map(([name, value]) => ({ name, shape: shapes.get(name)!, value, decay: isMatrix(shapes.get(name)!), lrScale: 1 }));
  const opt = new AdamW(params, RWKV_ADAMW);
  const tr = new cuda!.CudaTrainer(gpuModel);
  const cpuLoss: number[] = [], gpuLoss: number[] = [], cpuNorm: number[] = [], gpuNorm: number[] = [];
  try {
    for (let s = 0; s < STEPS; s++) {
      const r = computeGradients(cpuModel, tokens, { chunk: CHUNK, topk: K });
      cpuLoss.push(r.loss);
      cpuNorm.push(clipGradients(r.grads, CLIP));
      opt.step(r.grads, LR);
      gpuLoss.push(tr.computeGradients(tokens, { chunk: CHUNK, topk: K }));
      gpuNorm.push(tr.step(LR, { gradClip: CLIP, adam: RWKV_ADAMW }));
    }
  } finally {
    tr.dispose();
  }
  console.log(`loss  cpu ${cpuLoss.map((x) => x.toFixed(4)).join(' ')}\nloss  gpu ${gpuLoss.map((x) => x.toFixed(4)).join(' ')}`);
  console.log(`|g|   cpu ${cpuNorm.map((x) => x.toFixed(4)).join(' ')}\n|g|   gpu ${gpuNorm.map((x) => x.toFixed(4)).join(' ')}`);
  assert.ok(gpuLoss[STEPS - 1] < gpuLoss[0] - 0.05, `GPU loss did not fall: ${gpuLoss.join(', ')}`);
  for (let s = 0; s < 3; s++) assert.ok(Math.abs(gpuLoss[s] - cpuLoss[s]) <= 1e-2 * Math.max(1, cpuLoss[s]), `step ${s}: loss ${gpuLoss[s]} vs CPU ${cpuLoss[s]}`);
  for (let s = 0; s < 3; s++) assert.ok(Math.abs(gpuNorm[s] - cpuNorm[s]) <= 3e-2 * cpuNorm[s], `step ${s}: |g| ${gpuNorm[s]} vs CPU ${cpuNorm[s]}`);
});

// ---------------------------------------------------------------------------------------------
// fp32 test mode: the same algorithm as the CPU up to float32 rounding

function compareFp32(file: string, topk: number): void {
  const cpu = computeGradients(loadTrainModel(A(file), { chunk: CHUNK, topk }), tokens, { chunk: CHUNK, topk, l2wrap: true });
  const gpu = cuda!.cudaComputeGradients(loadTrainModel(A(file), { chunk: CHUNK, topk }), tokens, { chunk: CHUNK, topk, l2wrap: true, fp32: true });
  const label = `${file} top-k ${topk} fp32 mode`;
  console.log(`${label}: loss cpu ${cpu.loss.toFixed(7)} gpu ${gpu.loss.toFixed(7)} (|Δ| ${Math.abs(cpu.loss - gpu.loss).toExponential(2)})`);
  const names = [...cpu.grads.keys()];
  const rows = relErrors(`${label} GPU vs CPU`, names, cpu.grads, gpu.grads);
  assert.ok(Math.abs(cpu.loss - gpu.loss) <= 1e-4, `loss ${gpu.loss} vs CPU ${cpu.loss}`);
  const bad = rows.filter((r) => !(r.rel <= 1e-3));
  assert.equal(bad.length, 0, `gradients off in fp32 mode: ${bad.slice(0, 12).map((r) => `${r.name} ${r.rel.toExponential(2)}`).join(', ')}`);
}

test('fp32 mode: CUDA gradients equal the CPU to fp32 rounding (RWKV-7)', { skip }, () => compareFp32('rwkv7.pth', TOPK));
test('fp32 mode: CUDA gradients equal the CPU to fp32 rounding (RWKV-X, top-k 3)', { skip }, () => compareFp32('rwkvx.pth', TOPK));
test('fp32 mode: CUDA gradients equal the CPU to fp32 rounding (RWKV-X, top-k 7)', { skip }, () => compareFp32('rwkvx.pth', 7));

test('a micro-batch of 3 sequences equals 3 accumulated single-sequence calls (RWKV-X, fp32 mode)', { skip }, () => {
  // 41 tokens = 40 targets: two complete 16-token chunks, so every sequence selects its own chunks
  const seqs = [tokens.slice(0, 41), tokens.slice(30, 71), tokens.slice(60, 101)];
  const tr = new cuda!.CudaTrainer(loadTrainModel(A('rwkvx.pth'), { chunk: CHUNK, topk: TOPK }), { fp32: true });
  try {
    const single = seqs.map((q, b) => tr.computeGradients(q, { chunk: CHUNK, topk: TOPK, l2wrap: true, accumulate: b > 0, scale: 1 / 3 }));
    const gs = tr.getGrads();
    const batch = tr.computeBatch(seqs, { chunk: CHUNK, topk: TOPK, l2wrap: true });
    const gb = tr.getGrads();
    console.log(`per-sequence losses: single ${single.map((x) => x.toFixed(6)).join(' ')}, batch ${batch.map((x) => x.toFixed(6)).join(' ')}`);
    for (let b = 0; b < 3; b++) assert.ok(Math.abs(single[b] - batch[b]) <= 1e-5, `sequence ${b}: ${batch[b]} vs ${single[b]}`);
    assert.ok(new Set(single.map((x) => x.toFixed(4))).size === 3, 'the three windows differ');
    const rows = relErrors('batch of 3 vs 3 single calls', [...gs.keys()], gs, gb);
    assert.ok(rows[0].rel <= 1e-4, `worst ${rows[0].name} ${rows[0].rel}`);
  } finally {
    tr.dispose();
  }
});

// The kernels that must agree bit for bit (the emulator checks their arithmetic, but only the device's
// compiler decides what it fuses): the LayerNorm backward (separate tr_ln_bwd, fused tr_ln_bwd_f and the
// warp-per-row tr_ln_bwd_w*), the forward (tr_ln, tr_ln_w*) and the token-shift mixes (tr_mix, tr_mix_rows).
test('GPU kernels: the warp-per-row LayerNorm and the row-wise mixes give the block kernels\' bits on the device', { skip }, async (t) => {
  const { CudaContext } = await import('../src/backend/cuda/driver.js');
  const { loadModule, launch } = await import('../src/backend/cuda/module-cache.js');
  const mem = await import('../src/backend/cuda/memory.js');
  const ctx = CudaContext.get();
  const u = rng(12345);
  const g = () => Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u());
  const gauss = (n: number, s = 1, off = 0) => Float32Array.from({ length: n }, (_, i) => s * g() + (off ? (i % 7) * off : 0));
  for (const fp32 of [false, true]) {
    const mod = loadModule(ctx, 'train.cu', fp32 ? ['-DTR_FP32'] : []);
    const bufs: InstanceType<typeof mem.DeviceBuffer>[] = [];
    const dev = (a: Float32Array | Uint16Array | number) => { const b = typeof a === 'number' ? mem.alloc(ctx, a) : mem.upload(ctx, a); bufs.push(b); return b.ptr; };
    const k = (name: string, grid: [number, number?], block: [number, number?], args: number[]) => launch(ctx, mod, name, mod.sigs.get(name)!, grid, block, 0, args);
    /** n elements' bits (a GEMM-input buffer: bf16, or float32 in the fp32 build) */
    const bits = (ptr: number, n: number, gin = false) => {
      ctx.sync();
      const o = gin && !fp32 ? new Uint16Array(n) : new Uint32Array(n);
      mem.copyDtoH(o, ptr);
      return o;
    };
    const back = (ptr: number, n: number) => new Float32Array(bits(ptr, n).buffer);
    /** the number of elements whose bits differ */
    const diff = (x: Uint16Array | Uint32Array, y: Uint16Array | Uint32Array) => { let d = 0; for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) d++; return d; };
    const eb = fp32 ? 4 : 2, tag = fp32 ? 'fp32' : 'bf16';
    try {
      for (const C of [256, 768]) {
        const R = 200, n = R * C, T = 50;
        const x = dev(gauss(n, 2, 0.5)), dout = dev(gauss(n)), w = dev(gauss(C, 0.3).map((q) => 1 + q)), b = dev(gauss(C, 0.1));
        const dx0 = gauss(n);
        for (const add of [0, 1]) {
          const dxS = dev(dx0), pw = dev(n * 4), dxF = dev(dx0), dxFB = dev(n * eb), dxW = dev(dx0), dxWB = dev(n * eb);
          const gw = [dev(C * 4), dev(C * 4)], gb = [dev(C * 4), dev(C * 4)];
          for (const p of [...gw, ...gb]) mem.zero(ctx, p, C * 4);
          k('tr_ln_bwd', [R], [256], [dxS, pw, dout, x, w, C, add]);
          k('tr_ln_bwd_f', [Math.ceil(R / 16)], [256], [dxF, dxFB, gw[0], gb[0], dout, x, w, R, C, add]);
          k(`tr_ln_bwd_w${C / 32}`, [Math.ceil(R / 64)], [256], [dxW, dxWB, gw[1], gb[1], dout, x, w, R, C, add]);
          const s = bits(dxS, n), f = bits(dxF, n), wv = bits(dxW, n);
          const nd = [diff(f, s), diff(wv, f), diff(bits(dxWB, n, true), bits(dxFB, n, true))];
          t.diagnostic(`${tag} C ${C} add ${add}: dx bits differing, fused vs separate ${nd[0]}, warp vs fused ${nd[1]}, bf16 copies ${nd[2]} of ${n}`);
          assert.deepEqual(nd, [0, 0, 0], `${tag} C ${C} add ${add}: LayerNorm backward kernels differ`);
          const e = rel(back(gw[1], C), back(gw[0], C));
          assert.ok(e < 1e-5, `${tag} C ${C}: Σ dout⊙x̂ warp vs fused ${e}`);
        }
        const yF = dev(n * 4), yB = dev(n * eb), yWF = dev(n * 4), yWB = dev(n * eb);
        k('tr_ln', [R], [256], [yF, yB, x, w, b, C]);
        k(`tr_ln_w${C / 32}`, [Math.ceil(R / 8)], [256], [yWF, yWB, x, w, b, R, C]);
        const nf = [diff(bits(yWF, n), bits(yF, n)), diff(bits(yWB, n, true), bits(yB, n, true))];
        t.diagnostic(`${tag} C ${C}: LayerNorm forward bits differing, warp vs block ${nf[0]}, bf16 ${nf[1]} of ${n}`);
        assert.deepEqual(nf, [0, 0], `${tag} C ${C}: LayerNorm forward kernels differ`);
        const M = 6, mu = dev(Float32Array.from({ length: M * C }, () => u())), oG = dev(M * n * eb), oR = dev(M * n * eb);
        k('tr_mix', [97], [256], [oG, x, mu, R, T, C, M]);
        k('tr_mix_rows', [R], [C / 4], [oR, x, mu, R, T, C, M]);
        const nm = diff(bits(oR, M * n, true), bits(oG, M * n, true));
        t.diagnostic(`${tag} C ${C}: token-shift mix bits differing, rows vs grid ${nm} of ${M * n}`);
        assert.equal(nm, 0, `${tag} C ${C}: tr_mix_rows and tr_mix differ`);
      }
    } finally {
      for (const q of bufs) q.free();
    }
  }
});

test('kept activations (no recompute) and the fused element-wise backward change nothing but rounding (fp32 mode RWKV-X; bf16 RWKV-7)', { skip }, () => {
  for (const [file, fp32, tol] of [['rwkvx.pth', true, 1e-5], ['rwkv7.pth', false, 1e-4]] as const) {
    const model = () => loadTrainModel(A(file), { chunk: CHUNK, topk: TOPK });
    const opts = { chunk: CHUNK, topk: TOPK, l2wrap: true };
    const tr = new cuda!.CudaTrainer(model(), { fp32 });
    let first: Map<string, Float32Array>, kept: Map<string, Float32Array>;
    try {
      tr.computeGradients(tokens, opts);
      assert.equal(tr.keptActivations, 0, 'the first call of a shape keeps nothing (it measures the memory)');
      first = tr.getGrads();
      tr.computeGradients(tokens, opts);
      assert.equal(tr.keptActivations, model().cfg.nLayer + model().cfg.nAttn, 'a small model keeps every block');
      assert.ok(tr.fused, 'fused by default');
      kept = tr.getGrads();
    } finally {
      tr.dispose();
    }
    const prev = process.env.RWKVX_TRAIN_FUSED;
    process.env.RWKVX_TRAIN_FUSED = '0';
    const ref = new cuda!.CudaTrainer(model(), { fp32, keepActivations: false });
    let sep: Map<string, Float32Array>;
    try {
      assert.ok(!ref.fused);
      ref.computeGradients(tokens, opts);
      ref.computeGradients(tokens, opts);
      assert.equal(ref.keptActivations, 0);
      sep = ref.getGrads();
    } finally {
      ref.dispose();
      if (prev === undefined) delete process.env.RWKVX_TRAIN_FUSED; else process.env.RWKVX_TRAIN_FUSED = prev;
    }
    const tag = `${file} ${fp32 ? 'fp32' : 'bf16'}`;
    for (const [what, g] of [['kept vs recomputed', kept], ['separate passes vs fused', sep]] as const) {
      const rows = relErrors(`${tag}: ${what}`, [...first.keys()], first, g);
      assert.ok(rows[0].rel <= tol, `${tag} ${what}: worst ${rows[0].name} ${rows[0].rel}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// the trainer on the GPU

// the toy corpus of test/train.test.ts
const data = writeToyCorpus(join(dir, 'toy'));
function cfg(over: Partial<TrainConfig>): TrainConfig {
  return loadTrainConfig(undefined, { data, ctx: 24, steps: 6, lr: 3e-3, lrFinal: 3e-4, warmupSteps: 2, saveEvery: 3, microBatch: 2, backend: 'cuda', init: { vocab: 32, dim: 64, layers: 2 }, ...over });
}
async function run(c: TrainConfig, resume = false): Promise<StepLog[]> {
  const logs: StepLog[] = [];
  await train(c, resume, { onStep: (s) => logs.push(s) });
  return logs;
}
const close = (a: number, b: number, rel: number) => Math.abs(a - b) <= rel * Math.max(1, Math.abs(b));

test('rwkvx train --backend cuda --batch 4: the loss falls and the model loads on the CPU', { skip }, () => {
  const out = join(dir, 'cli');
  const r = rwkvx(['train', '--backend', 'cuda', '--data', data, '--out', out, '--ctx', '24', '--batch', '4', '--steps', '40', '--lr', '3e-3',
    '--lr-final', '3e-4', '--warmup', '2', '--save-every', '20', '--dim', '64', '--layers', '2', '--vocab', '32']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /training on cuda/);
  assert.match(r.stderr, /step 40\/40 {2}loss \d+\.\d{4} {2}lr \S+ {2}\|g\| \d+\.\d{3} {2}\d+ tok\/s/);
  const log = readFileSync(join(out, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as StepLog);
  assert.equal(log.length, 40);
  const first = log[0].loss, last = log.slice(-5).reduce((s, l) => s + l.loss, 0) / 5;
  console.log(`GPU toy run: loss ${first.toFixed(3)} → ${last.toFixed(3)}, ${Math.round(log[39].tokensPerSec)} tok/s`);
  assert.ok(Math.abs(first - Math.log(32)) < 0.2, `starts near ln(32) = 3.47 (got ${first})`);
  assert.ok(last < first - 1.5, `loss falls: ${first.toFixed(3)} → ${last.toFixed(3)}`);
  // the saved model on the CPU reference: it has learned there too
  const m = loadTrainModel(join(out, 'model.safetensors'));
  const cpuLoss = computeGradients(m, Array.from({ length: 25 }, (_, i) => 1 + ((2 + i * 2) % 31))).loss;
  console.log(`CPU loss of the GPU-trained model on a corpus window: ${cpuLoss.toFixed(3)}`);
  assert.ok(cpuLoss < first - 1.5, `CPU loss ${cpuLoss}`);
});

test('GPU resume continues the run; the GPU checkpoint continues on the CPU', { skip }, async () => {
  const whole = await run(cfg({ out: join(dir, 'whole') }));
  const outB = join(dir, 'interrupted');
  const control = { stop: false };
  const first: StepLog[] = [];
  await train(cfg({ out: outB }), false, { control, onStep: (s) => { first.push(s); if (s.step === 3) control.stop = true; } });
  assert.equal(first.length, 3);
  const rest = await run(cfg({ out: outB }), true);
  const a = [...first, ...rest].map((l) => l.loss), b = whole.map((l) => l.loss);
  console.log(`uninterrupted ${b.map((x) => x.toFixed(6)).join(' ')}\nresumed       ${a.map((x) => x.toFixed(6)).join(' ')}`);
  assert.equal(a.length, 6);
  for (let i = 0; i < 6; i++) assert.ok(close(a[i], b[i], 5e-3), `step ${i + 1}: ${a[i]} vs ${b[i]}`);
  const st = openCheckpoint(join(outB, 'train-state.safetensors'));
  const meta = JSON.parse(st.metadata.rwkvx_train);
  st.close();
  assert.equal(meta.step, 6);
  assert.equal(meta.adamT, 6);
  // one more step: on the GPU from one run's checkpoint, on the CPU from the other's
  const gpu7 = await run(cfg({ out: join(dir, 'whole'), steps: 7 }), true);
  const cpu7 = await run(cfg({ out: outB, steps: 7, backend: 'cpu' }), true);
  console.log(`step 7: GPU ${gpu7[0].loss.toFixed(5)} |g| ${gpu7[0].gradNorm.toFixed(4)}, CPU ${cpu7[0].loss.toFixed(5)} |g| ${cpu7[0].gradNorm.toFixed(4)}`);
  assert.ok(close(cpu7[0].loss, gpu7[0].loss, 1e-2), `CPU ${cpu7[0].loss} vs GPU ${gpu7[0].loss}`);
  assert.ok(close(cpu7[0].gradNorm, gpu7[0].gradNorm, 1e-1), `|g| CPU ${cpu7[0].gradNorm} vs GPU ${gpu7[0].gradNorm}`);
});

test('GPU stage 1 (--freeze rwkv) leaves the RWKV part bit-identical; LongCE runs', { skip }, async () => {
  const base = join(dir, 'whole', 'model.safetensors');
  const expanded = join(dir, 'x.safetensors');
  const r = rwkvx(['expand', '--base', base, '--attn-layers', '1', '--out', expanded, '--chunk', '8', '--topk', '2']);
  assert.equal(r.code, 0, r.stderr);
  const out = join(dir, 'stage1');
  const logs = await run(cfg({ out, model: expanded, freeze: 'rwkv', steps: 3, w0LrScale: 1, longce: true, longceWindow: 8, longceStride: 8 }));
  assert.ok(logs.every((l) => Number.isFinite(l.loss) && l.gradNorm > 0));
  assertOnlyAttentionMoved(expanded, join(out, 'model.safetensors'));
});

test('GPU: a diverging run stops with a clear message and keeps a complete checkpoint', { skip }, async () => {
  const out = join(dir, 'diverge');
  await run(cfg({ out, steps: 2, saveEvery: 1 }));
  const good = readFileSync(join(out, 'train-state.safetensors'));
  await assert.rejects(run(cfg({ out, steps: 8, lr: 1e30, warmupSteps: 0, gradClip: 0, saveEvery: 1 }), true), /became (NaN|Infinity|-Infinity)/);
  assert.ok(existsSync(join(out, 'train-state.safetensors')));
  assert.equal(readFileSync(join(out, 'train-state.safetensors')).length, good.length, 'the checkpoint on disk is a complete one');
});
