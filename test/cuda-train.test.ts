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
 * Skips, saying why, where there is no CUDA.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { cudaAvailable } from '../src/backend/cuda/driver.js';
import { computeGradients, loadTrainModel, parameterTensors, type TrainModel } from '../src/train/model-grad.js';
import { fromBf16, toBf16 } from '../src/backend/cuda/memory.js';
import { AdamW, clipGradients, isMatrix, RWKV_ADAMW, type Param } from '../src/train/adamw.js';
import { expectedTensors } from '../src/model/weights.js';
import { shutdownPool } from '../src/backend/cpu/matmul.js';
import { A, expectedTokens } from './helpers/vectors.js';

const REL_TOL = 5e-2, LOSS_TOL = 1e-2;
const CHUNK = 16, TOPK = 3;
const avail = cudaAvailable();
const skip = avail.ok ? false : `no CUDA: ${avail.reason}`;
const tokens = expectedTokens().slice(0, 101);
const cuda = avail.ok ? await import('../src/backend/cuda/train/grad.js') : undefined;
after(() => shutdownPool());

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
