/**
 * The prefill wavefront (segments of one long call overlapping on several streams) against the same
 * segments run one after the other: the same kernels on the same inputs, so bit-identical logits and
 * state. Also with fewer streams than segments (segments s and s + K share a slot's scratch while both
 * are alive), with fewer live segments than segments (a segment waits for a free residual stream), and
 * with the finer hand-over (`wavefrontFine`: a layer waits only for what the previous segment's same
 * layer hands on — token-shift rows, WKV state, K/V rows and chunk means).
 * Skips, saying why, without CUDA.
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
    const run = (k: number, live?: number, fine = false) => {
      m.wavefront = k;
      m.wavefrontLive = live;
      m.wavefrontFine = fine;
      const st = m.newState();
      const pre = m.forward(ids.slice(0, 9000), st, { logits: 'last' });
      const all = m.forward(ids.slice(9000, T), st);
      const steps = [0, 1, 2].map((i) => m.forward([ids[T + i]], st));
      const back = m.downloadState(st);
      st.dispose();
      return { pre, all, steps, back };
    };
    const serial = run(1);
    for (const [k, live, fine] of [[4, undefined, false], [2, undefined, false], [4, 2, false], [4, undefined, true], [2, 2, true]] as const) {
      const wave = run(k, live, fine), how = `wavefront ${k}${live ? `, ${live} live` : ''}${fine ? ', handing on state only' : ''}`;
      assert.equal(firstDiff(wave.pre, serial.pre), -1, `${how}: last-token logits of the first call`);
      assert.equal(firstDiff(wave.all, serial.all), -1, `${how}: all logits of the second call`);
      wave.steps.forEach((x, i) => assert.equal(firstDiff(x, serial.steps[i]), -1, `${how}: decode step ${i}`));
      serial.back.rwkv.forEach((r, i) => assert.equal(firstDiff(wave.back.rwkv[i].wkv, r.wkv), -1, `${how}: WKV state of block ${i}`));
      serial.back.attn.forEach((a, j) => assert.equal(firstDiff(wave.back.attn[j].k, a.k), -1, `${how}: K cache of attention block ${j}`));
      assert.ok(wave.all.every(Number.isFinite), `${how}: finite logits`);
    }
  });
}
