/**
 * The paged K/V cache: pages moved to pinned host memory give bit-identical logits to an all-device
 * cache (prefill across many pages, then decoding steps that read offloaded chunks); models with
 * random weights generated on the GPU are deterministic per seed. Skips, saying why, without CUDA.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { shapeConfig, randomWeights } from '../src/model/random.js';
import { cuda, firstDiff, keep, skipReason } from './helpers/cuda.js';
import type { CudaModel } from '../src/backend/cuda/model.js';


test('CUDA: K/V pages offloaded to host memory give identical logits (prefill + decode)', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  // C 128: a 2 MiB page holds 8192 rows, so 40K tokens span 5+ pages per cache
  const cfg = shapeConfig({ vocab: 300, dim: 128, nLayer: 2, nAttn: 2, chunk: 512, topk: 3 });
  const w = randomWeights(cfg, 5);
  const ref = keep(cuda!.CudaModel.fromWeights(cfg, w, { kv: { deviceBytes: Infinity } }));
  const off = keep(cuda!.CudaModel.fromWeights(cfg, w, { kv: { deviceBytes: 0 } }));
  const N = 40000, steps = 6;
  const ids = Array.from({ length: N + steps }, (_, i) => (i * 7919 + 13) % cfg.vocab);
  const run = (m: CudaModel) => {
    const st = m.newState();
    const outs: Float32Array[] = [];
    // several calls so pages move between and within calls
    for (let s = 0; s < N; s += 9000) outs.push(m.forward(ids.slice(s, Math.min(N, s + 9000)), st, { logits: 'last' }));
    for (let i = 0; i < steps; i++) outs.push(m.forward([ids[N + i]], st));
    const back = m.downloadState(st);
    const placed = m.kvPlacement();
    st.dispose();
    return { outs, back, placed };
  };
  const a = run(ref), b = run(off);
  const p = b.placed;
  t.diagnostic(`offloaded model: ${(p.hostBytes / 2 ** 20).toFixed(0)} MiB of K/V on the host, ${(p.deviceBytes / 2 ** 20).toFixed(0)} MiB on the device, ${p.offloads} page moves, page ${(p.pageBytes / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(p.hostBytes > 0, 'the budget of 0 bytes should have moved pages to the host');
  assert.equal(a.placed.hostBytes, 0);
  assert.ok(p.deviceBytes > 0);
  a.outs.forEach((x, i) => assert.equal(firstDiff(x, b.outs[i]), -1, `call ${i}: logits differ between device and offloaded K/V`));
  for (let j = 0; j < cfg.nAttn; j++) {
    assert.equal(firstDiff(a.back.attn[j].k, b.back.attn[j].k), -1, `block ${j}: K cache read back differs`);
    assert.equal(firstDiff(a.back.attn[j].v, b.back.attn[j].v), -1, `block ${j}: V cache read back differs`);
  }
});

test('CUDA: random weights generated on the GPU are deterministic per seed and finite', (t) => {
  if (skipReason) { t.skip(skipReason); return; }
  const cfg = shapeConfig({ vocab: 1000, dim: 256, nLayer: 2, nAttn: 1, chunk: 64, topk: 2 });
  const m1 = cuda!.CudaModel.random(cfg, 3), m2 = cuda!.CudaModel.random(cfg, 3), m3 = cuda!.CudaModel.random(cfg, 4);
  [m1, m2, m3].forEach(keep);
  const ids = Array.from({ length: 200 }, (_, i) => (i * 31 + 7) % cfg.vocab);
  const [a, b, c] = [m1, m2, m3].map((m) => m.forward(ids, m.newState(), { logits: 'last' }));
  assert.ok(a.every(Number.isFinite), 'logits finite');
  assert.equal(firstDiff(a, b), -1, 'same seed, same logits');
  assert.notEqual(firstDiff(a, c), -1, 'another seed, other logits');
  let sd = 0;
  for (const x of a) sd += x * x;
  sd = Math.sqrt(sd / a.length);
  t.diagnostic(`logit rms ${sd.toFixed(3)}`);
  assert.ok(sd > 0.05 && sd < 50, `logits of a sane scale (rms ${sd})`);
});
