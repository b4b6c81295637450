/**
 * CUDA training throughput: tokens/s and MFU of one full training step (forward, block-recomputing
 * backward, AdamW) for the RWKV-7 0.19B (L12 C768 V65536) and RWKV-X 0.22B (+4 attention blocks, chunk
 * 2048, top-k 3) shapes, random weights, micro-batches of B sequences (one forward/backward of B·T rows);
 * then a per-op breakdown of one step at the best batch of each context (each op synchronised and timed,
 * so the breakdown's total exceeds the plain step time).
 *
 *   npm run bench:cuda-train [-- --ctx 4096,16384 --batch 1,8,16 --steps 3 --peak 989 --model x|7|both --profile 1]
 *
 * --batch takes a list per context too: `--batch 4096:1,8,16/16384:1,4` (a batch that does not fit is reported
 * and skipped). The profile uses the fastest batch.
 * Model FLOPs per step ≈ 6·(parameters without the embedding)·tokens + 12·C·Σ_t keys(t) for the
 * attention blocks (QKᵀ and PV, forward and backward); MFU against the card's dense bf16 peak (--peak,
 * TFLOP/s; H100 SXM 989).
 */
import { cudaAvailable } from '../src/backend/cuda/driver.js';
import { shapeConfig, randomWeights } from '../src/model/random.js';
import { parameterCount, type ModelConfig } from '../src/model/config.js';
import { trainModelFromWeights } from '../src/train/model-grad.js';
import { RWKV_ADAMW } from '../src/train/adamw.js';
import { peakAllocatedBytes, resetPeak } from '../src/backend/cuda/memory.js';
import { requireCuda } from './util.js';

await requireCuda();

const arg = (k: string, d: string) => { const i = process.argv.indexOf(`--${k}`); return i > 0 ? process.argv[i + 1] : d; };
const ctxs = arg('ctx', '4096').split(',').map(Number);
const STEPS = Number(arg('steps', '3'));
const PEAK = Number(arg('peak', '989')) * 1e12;
const only = arg('model', 'both');
const PROFILE = arg('profile', '1') !== '0';
/** Batches to try for context T. */
function batches(T: number): number[] {
  const spec = arg('batch', '1');
  if (!spec.includes(':')) return spec.split(',').map(Number);
  for (const part of spec.split('/')) { const [c, b] = part.split(':'); if (Number(c) === T) return b.split(',').map(Number); }
  return [1];
}

const a = cudaAvailable();
if (!a.ok) { console.log(`skipped: ${a.reason}`); process.exit(0); }
const { CudaTrainer } = await import('../src/backend/cuda/train/grad.js');
console.log(`device: ${a.ctx.info.name} (sm_${a.ctx.info.major}${a.ctx.info.minor}), ${new Date().toISOString().slice(0, 10)}`);

function flops(cfg: ModelConfig, T: number): number {
  const dense = 6 * (parameterCount(cfg) - cfg.vocab * cfg.dim) * T;
  let keys = 0;
  const B = cfg.chunk, k = cfg.topk;
  for (let t = 0; t < T; t++) { const c = Math.floor(t / B); keys += (t % B) + 1 + Math.min(c, k - 1) * B; }
  return dense + cfg.nAttn * 12 * cfg.dim * keys;
}

const rows: string[] = [];
const shapes: [string, ModelConfig][] = [
  ['RWKV-7 0.19B', shapeConfig({ vocab: 65536, dim: 768, nLayer: 12 })],
  ['RWKV-X 0.22B', shapeConfig({ vocab: 65536, dim: 768, nLayer: 12, nAttn: 4, chunk: 2048, topk: 3 })],
];
for (const [label, cfg] of shapes) {
  if (only !== 'both' && !label.toLowerCase().includes(`-${only}`) && !label.toLowerCase().includes(only)) continue;
  const model = trainModelFromWeights(cfg, randomWeights(cfg, 7));
  for (const T of ctxs) {
    let best: { Bn: number; tps: number } | undefined;
    for (const Bn of batches(T)) {
      resetPeak();
      // a fresh trainer per batch, so that one that does not fit leaves no scratch behind
      const tr = new CudaTrainer(model);
      try {
        const seqs = Array.from({ length: Bn }, (_, b) => Array.from({ length: T + 1 }, (_, i) => (i * 7919 + b * 104729 + 13) % cfg.vocab));
        const step = () => { tr.computeBatch(seqs); tr.step(1e-5, { gradClip: 1, adam: RWKV_ADAMW }); };
        step(); // warm-up (kernel compile, scratch allocation)
        tr.ctx.sync();
        const t0 = performance.now();
        for (let s = 0; s < STEPS; s++) step();
        tr.ctx.sync();
        const sec = (performance.now() - t0) / 1000 / STEPS;
        const f = Bn * flops(cfg, T), tps = (Bn * T) / sec;
        const line = `| ${label} | ${T} | ${Bn} | ${(sec * 1000).toFixed(1)} | ${Math.round(tps)} | ${(f / sec / 1e12).toFixed(1)} | ${((100 * f) / sec / PEAK).toFixed(1)}% | ${(peakAllocatedBytes() / 2 ** 30).toFixed(1)} |`;
        rows.push(line);
        console.log(line);
        console.log(`    (${label}, ${T} × ${Bn}: activations kept for ${tr.keptActivations} of ${cfg.nLayer + cfg.nAttn} blocks, WKV-7 outputs ${tr.keptWkv ? '' : 'not '}kept, element-wise backward ${tr.fused ? 'fused' : 'separate'})`);
        if (!best || tps > best.tps) best = { Bn, tps };
      } catch (e) {
        console.log(`| ${label} | ${T} | ${Bn} | does not fit: ${(e as Error).message} |`);
      } finally {
        tr.dispose();
      }
    }
    if (!PROFILE || !best) continue;
    const tr = new CudaTrainer(model);
    const seqs = Array.from({ length: best.Bn }, (_, b) => Array.from({ length: T + 1 }, (_, i) => (i * 7919 + b * 104729 + 13) % cfg.vocab));
    tr.computeBatch(seqs);
    tr.profile = new Map();
    tr.profileCalls.clear();
    tr.computeBatch(seqs);
    tr.step(1e-5, { gradClip: 1, adam: RWKV_ADAMW });
    const prof = [...tr.profile].sort((x, y) => y[1] - x[1]);
    const total = prof.reduce((s, [, v]) => s + v, 0);
    console.log(`  ${label}, ${T} × ${best.Bn}: per-op breakdown (synchronised, total ${total.toFixed(1)} ms):`);
    for (const [name, ms] of prof.slice(0, 30)) {
      const calls = tr.profileCalls.get(name) ?? 0;
      console.log(`    ${name.padEnd(24)} ${ms.toFixed(2).padStart(9)} ms  ${((100 * ms) / total).toFixed(1).padStart(4)}%  ${String(calls).padStart(4)} calls, ${(ms / calls).toFixed(3)} ms each`);
    }
    tr.dispose();
  }
}
console.log('\n| model | context | batch | ms/step | tokens/s | model TFLOP/s | MFU | peak GiB |\n|---|---|---|---|---|---|---|---|');
for (const r of rows) console.log(r);
