/**
 * CUDA training throughput: tokens/s and MFU of one full training step (forward, block-recomputing
 * backward, AdamW) for the RWKV-7 0.19B (L12 C768 V65536) and RWKV-X 0.22B (+4 attention blocks, chunk
 * 2048, top-k 3) shapes, batch 1, random weights; then a per-op breakdown of one step (each op
 * synchronised and timed, so the breakdown's total exceeds the plain step time).
 *
 *   npm run bench:cuda-train [-- --ctx 4096,16384 --steps 3 --peak 989]
 *
 * Model FLOPs per step ≈ 6·(parameters without the embedding)·tokens + 12·C·Σ_t keys(t) for the
 * attention blocks (QKᵀ and PV, forward and backward); MFU against the card's dense bf16 peak (--peak,
 * TFLOP/s; H100 SXM 989).
 */
import { cudaAvailable } from '../src/backend/cuda/driver.js';
import { shapeConfig, randomWeights } from '../src/model/random.js';
import { parameterCount, type ModelConfig } from '../src/model/config.js';
import { trainModelFromWeights } from '../src/train/model-grad.js';
import { RWKV_ADAMW } from '../src/train/adamw.js';

const arg = (k: string, d: string) => { const i = process.argv.indexOf(`--${k}`); return i > 0 ? process.argv[i + 1] : d; };
const ctxs = arg('ctx', '4096').split(',').map(Number);
const STEPS = Number(arg('steps', '3'));
const PEAK = Number(arg('peak', '989')) * 1e12;
const only = arg('model', 'both');

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
  if (only !== 'both' && !label.toLowerCase().includes(only)) continue;
  const model = trainModelFromWeights(cfg, randomWeights(cfg, 7));
  const tr = new CudaTrainer(model);
  for (const T of ctxs) {
    const tokens = Array.from({ length: T + 1 }, (_, i) => (i * 7919 + 13) % cfg.vocab);
    const step = () => { tr.computeGradients(tokens); tr.step(1e-5, { gradClip: 1, adam: RWKV_ADAMW }); };
    step(); // warm-up (kernel compile, scratch allocation)
    tr.ctx.sync();
    const t0 = performance.now();
    for (let s = 0; s < STEPS; s++) step();
    tr.ctx.sync();
    const sec = (performance.now() - t0) / 1000 / STEPS;
    const f = flops(cfg, T);
    const line = `| ${label} | ${T} | ${(sec * 1000).toFixed(1)} | ${Math.round(T / sec)} | ${(f / sec / 1e12).toFixed(1)} | ${((100 * f) / sec / PEAK).toFixed(1)}% |`;
    rows.push(line);
    console.log(line);
    tr.profile = new Map();
    step();
    const prof = [...tr.profile].sort((x, y) => y[1] - x[1]);
    const total = prof.reduce((s, [, v]) => s + v, 0);
    console.log(`  per-op breakdown (synchronised, total ${total.toFixed(1)} ms):`);
    for (const [name, ms] of prof.slice(0, 18)) console.log(`    ${name.padEnd(24)} ${ms.toFixed(2).padStart(9)} ms  ${((100 * ms) / total).toFixed(1)}%`);
    tr.profile = undefined;
  }
  tr.dispose();
}
console.log('\n| model | context | ms/step | tokens/s | model TFLOP/s | MFU |\n|---|---|---|---|---|---|');
for (const r of rows) console.log(r);
