/**
 * The big shape on one GPU: RWKV-X 3.6B (RWKV-7 L32 C2560 + 8 attention blocks, V 65536, chunk 2048,
 * top-k 3), random weights generated on the GPU. Prefill of --prefill tokens (default 128K), decode
 * there, then the same state grown to --context tokens (default 1M) and decode again. The K/V cache
 * (8 blocks × 2 × C × 2 B = 80 KiB per token: 80 GiB at 1M) is paged: once the device is full, the
 * oldest pages move to pinned host memory and decoding reads only the chunks it selects from there.
 *   npm run bench:cuda-big -- [--prefill 131072] [--context 1048576] [--steps 16] [--segment 16384]
 * Env: RWKVX_KV_DEVICE_GB caps the device share of K/V, RWKVX_KV_RESERVE_GB sets the memory kept free.
 */
import { shapeConfig } from '../src/model/random.js';
import { CudaModel } from '../src/backend/cuda/model.js';
import { peakAllocatedBytes, resetPeak } from '../src/backend/cuda/memory.js';
import { arg, median, randomTokens, requireCuda } from './util.js';

await requireCuda();

const prefillN = Number(arg('prefill', '131072'));
const contextN = Number(arg('context', '1048576'));
const steps = Number(arg('steps', '16'));
const GiB = 2 ** 30;

const cfg = shapeConfig({ vocab: 65536, dim: 2560, nLayer: 32, nAttn: 8, chunk: 2048, topk: 3 });
const t0 = performance.now();
const m = CudaModel.random(cfg, 1);
m.segment = Number(arg('segment', '16384'));
m.sync();
const params = cfg.vocab * cfg.dim * 2 + cfg.nLayer * (12 * cfg.dim ** 2 + 2 * cfg.dim * (cfg.lora.w + cfg.lora.a + cfg.lora.v + cfg.lora.g)) + cfg.nAttn * 12 * cfg.dim ** 2;
console.log(`RWKV-X ${(params / 1e9).toFixed(2)}B (L${cfg.nLayer} C${cfg.dim} + ${cfg.nAttn} attention) built on ${m.ctx.info.name} in ${(performance.now() - t0).toFixed(0)} ms; weights ${(peakAllocatedBytes() / GiB).toFixed(2)} GiB`);

{ const s = m.newState(); m.forward(randomTokens(4096, cfg.vocab, 9), s, { logits: 'last' }); m.forward([1], s, { logits: 'last' }); s.dispose(); }

const kv = () => { const p = m.kvPlacement(); return `K/V ${(p.deviceBytes / GiB).toFixed(1)} GiB on the GPU, ${(p.hostBytes / GiB).toFixed(1)} GiB in host memory (${p.offloads} pages of ${(p.pageBytes / 2 ** 20).toFixed(0)} MiB moved)`; };
function decode(s: ReturnType<typeof m.newState>, at: number): { ms: number; bare: number } {
  const times: number[] = [], bare: number[] = [];
  for (let i = 0; i < steps; i++) { const b = performance.now(); m.forward([(at + i) % cfg.vocab], s, { logits: 'last' }); times.push(performance.now() - b); }
  for (let i = 0; i < 8; i++) { const b = performance.now(); m.forward([(at + i) % cfg.vocab], s, { logits: 'none' }); bare.push(performance.now() - b); }
  return { ms: median(times), bare: median(bare) };
}

const rows: string[] = [];
resetPeak();
const s = m.newState();
m.sync();
let a = performance.now();
m.forward(randomTokens(prefillN, cfg.vocab, 1), s, { logits: 'last' });
const pre = performance.now() - a;
const d1 = decode(s, prefillN);
console.log(`prefill ${prefillN}: ${pre.toFixed(0)} ms (${Math.round(prefillN / (pre / 1000))} tok/s); decode ${d1.ms.toFixed(2)} ms/token (${d1.bare.toFixed(2)} without the logits copy); ${kv()}; peak ${(peakAllocatedBytes() / GiB).toFixed(1)} GiB`);
rows.push(`| RWKV-X 3.6B | ${prefillN} | ${pre.toFixed(0)} | ${d1.ms.toFixed(2)} | ${(m.kvPlacement().hostBytes / GiB).toFixed(1)} | ${(peakAllocatedBytes() / GiB).toFixed(1)} |`);

// grow the context in calls of up to 128K tokens (progress printed as it goes)
const call = 131072;
a = performance.now();
let grown = 0;
while (s.pos < contextN) {
  const n = Math.min(call, contextN - s.pos);
  const b = performance.now();
  m.forward(randomTokens(n, cfg.vocab, s.pos + 7), s, { logits: 'none' });
  grown += n;
  console.log(`  context ${s.pos}: +${n} tokens in ${(performance.now() - b).toFixed(0)} ms; ${kv()}`);
}
if (grown) {
  const t = performance.now() - a;
  const d2 = decode(s, s.pos);
  console.log(`context ${s.pos} (grown by ${grown} tokens in ${(t / 1000).toFixed(1)} s, ${Math.round(grown / (t / 1000))} tok/s): decode ${d2.ms.toFixed(2)} ms/token (${d2.bare.toFixed(2)} without the logits copy); ${kv()}; peak ${(peakAllocatedBytes() / GiB).toFixed(1)} GiB`);
  rows.push(`| RWKV-X 3.6B | ${s.pos} | (grown ${(t / 1000).toFixed(1)} s) | ${d2.ms.toFixed(2)} | ${(m.kvPlacement().hostBytes / GiB).toFixed(1)} | ${(peakAllocatedBytes() / GiB).toFixed(1)} |`);
}
s.dispose();
m.dispose();
console.log('\n| model | context | prefill ms | decode ms/token | K/V on host GiB | peak GPU GiB |\n|---|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(r);
