/**
 * The prefill wavefront (segments of one long call overlapping on several streams) against the same
 * segments run one after the other: the same kernels on the same inputs, so bit-identical logits and
 * state. Skips, saying why, without CUDA.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { shapeConfig, randomWeights } from '../src/model/random.js';
import { cuda, firstDiff, keep, skipReason } from './helpers/cuda.js';
import type { CudaModel } from '../src/backend/cuda/model.js';


for (const nAttn of [0, 2]) {
  test(`CUDA: prefill wavefront equals segments one after the other (${nAttn ? 'RWKV-X' : 'RWKV-7'})`, (t) => {
    if (skipReason) { t.skip(skipReason); return; }
    const cfg = shapeConfig({ vocab: 400, dim: 256, nLayer: 4, nAttn, chunk: 256, topk: 3 });
    const m: CudaModel = keep(cuda!.CudaModel.fromWeights(cfg, randomWeights(cfg, 9)));
    m.segment = 4096;
    const T = 4096 * 5 + 123;
    const ids = Array.from({ length: T + 3 }, (_, i) => (i * 7919 + 13) % cfg.vocab);
    const run = (k: number) => {
      m.wavefront = k;
      const st = m.newState();
      const pre = m.forward(ids.slice(0, 9000), st, { logits: 'last' });
      const all = m.forward(ids.slice(9000, T), st);
      const steps = [0, 1, 2].map((i) => m.forward([ids[T + i]], st));
      const back = m.downloadState(st);
      st.dispose();
      return { pre, all, steps, back };
    };
    const serial = run(1), wave = run(4);
    assert.equal(firstDiff(wave.pre, serial.pre), -1, 'last-token logits of the first call');
    assert.equal(firstDiff(wave.all, serial.all), -1, 'all logits of the second call');
    wave.steps.forEach((x, i) => assert.equal(firstDiff(x, serial.steps[i]), -1, `decode step ${i}`));
    serial.back.rwkv.forEach((r, i) => assert.equal(firstDiff(wave.back.rwkv[i].wkv, r.wkv), -1, `WKV state of block ${i}`));
    serial.back.attn.forEach((a, j) => assert.equal(firstDiff(wave.back.attn[j].k, a.k), -1, `K cache of attention block ${j}`));
    let finite = true;
    for (const x of wave.all) if (!Number.isFinite(x)) { finite = false; break; }
    assert.ok(finite, 'finite logits');
  });
}
