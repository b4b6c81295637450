/**
 * CPU inference speed (npm run bench:cpu): RWKV-7 0.19B shape prefill/decode, and how RWKV-X's cost
 * grows with context (prefill linear, decode per token nearly flat). Random weights, made in-process.
 *   npm run bench:cpu -- [--quick] [--skip-rwkv7] [--skip-rwkvx] [--max-ctx N]
 */
import { cpus } from 'node:os';
import { Model } from '../src/model/model.js';
import { randomWeights, shapeConfig } from '../src/model/random.js';
import { getThreads, shutdownPool } from '../src/backend/cpu/matmul.js';
import { Rng } from '../src/generate/rng.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const maxCtxArg = args.indexOf('--max-ctx');
const maxCtx = maxCtxArg >= 0 ? Number(args[maxCtxArg + 1]) : quick ? 4096 : 65536;

function tokens(n: number, vocab: number, seed = 3): number[] {
  const r = new Rng(seed);
  return Array.from({ length: n }, () => 1 + Math.floor(r.next() * (vocab - 1)));
}

function time(f: () => void): number {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
}

console.log(`machine: ${cpus()[0]?.model ?? 'unknown'}, ${cpus().length} cores, ${getThreads()} compute threads, node ${process.version}`);

if (!args.includes('--skip-rwkv7')) {
  const cfg = shapeConfig({ vocab: 65536, dim: 768, nLayer: 12 });
  const model = new Model(cfg, randomWeights(cfg));
  const prefillN = quick ? 128 : 512, decodeN = quick ? 16 : 64;
  const st = model.newState();
  model.forward(tokens(16, cfg.vocab), st, { logits: 'last' }); // warm-up: JIT, workers
  const st2 = model.newState();
  const pre = time(() => model.forward(tokens(prefillN, cfg.vocab), st2, { logits: 'last' }));
  const ids = tokens(decodeN, cfg.vocab, 5);
  model.forward([1], st2, { logits: 'last' });
  const dec = time(() => { for (const id of ids) model.forward([id], st2, { logits: 'last' }); });
  console.log('\nRWKV-7 0.19B shape (L12 C768 V65536, float32, batch 1)');
  console.log('| phase   | tokens | time (s) | tokens/s |');
  console.log('|---------|-------:|---------:|---------:|');
  console.log(`| prefill | ${prefillN} | ${(pre / 1000).toFixed(2)} | ${(prefillN / (pre / 1000)).toFixed(1)} |`);
  console.log(`| decode  | ${decodeN} | ${(dec / 1000).toFixed(2)} | ${(decodeN / (dec / 1000)).toFixed(1)} |`);
}

if (!args.includes('--skip-rwkvx')) {
  const cfg = shapeConfig({ vocab: 65536, dim: 256, nLayer: 4, nAttn: 2, chunk: 256, topk: 3 });
  const model = new Model(cfg, randomWeights(cfg));
  console.log(`\nRWKV-X small (RWKV-7 L4 C256 + 2 attention blocks, V65536, chunk 256, top-k 3): cost vs context`);
  console.log('| context | prefill (s) | prefill tokens/s | decode ms/token |');
  console.log('|--------:|------------:|-----------------:|----------------:|');
  model.forward(tokens(300, cfg.vocab), model.newState(), { logits: 'last' });
  for (const ctx of [1024, 4096, 16384, 65536].filter((c) => c <= maxCtx)) {
    const st = model.newState();
    const pre = time(() => model.forward(tokens(ctx, cfg.vocab), st, { logits: 'last', segment: 1024 }));
    const steps = 32;
    const ids = tokens(steps, cfg.vocab, 9);
    // one untimed step first: it grows the KV cache (amortised O(1) doubling) past the prefill's size
    model.forward([1], st, { logits: 'last' });
    const dec = time(() => { for (const id of ids) model.forward([id], st, { logits: 'last' }); });
    console.log(`| ${ctx} | ${(pre / 1000).toFixed(2)} | ${(ctx / (pre / 1000)).toFixed(0)} | ${(dec / steps).toFixed(2)} |`);
  }
}
shutdownPool();
