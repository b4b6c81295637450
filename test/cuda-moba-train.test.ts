/**
 * The tensor-core attention core for training (kernels/moba-train.cu mt_*) against the reference kernels
 * (tr_moba_*, fp32 FMAs, themselves equal to the CPU in the trainer's fp32 mode): random q, k, v already
 * rounded to bf16 so both sides see the same numbers; chunks of 64 and 128, sequences not a multiple of 64,
 * batches, top-k 1…4. The selection must be identical; y, dq, dk, dv within bf16 error (P and dS are rounded
 * to bf16 on the tensor-core side): max |Δ| / max |reference| ≤ 1e-2 per tensor (measured ≤ 2.1e-3 on an H100). Then the trainer: all
 * parameter gradients of a bf16 RWKV-X batch with RWKVX_TRAIN_MOBA=ref and with the tensor cores. Skips,
 * saying why, where there is no CUDA.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { skipReason } from './helpers/cuda.js';
import { shapeConfig, randomWeights } from '../src/model/random.js';
import { trainModelFromWeights } from '../src/train/model-grad.js';
import { rel, rng } from './helpers/numeric.js';

const TOL = 1e-2;
const dev = skipReason ? undefined : {
  driver: await import('../src/backend/cuda/driver.js'),
  mem: await import('../src/backend/cuda/memory.js'),
  mc: await import('../src/backend/cuda/module-cache.js'),
  moba: await import('../src/backend/cuda/train/moba.js'),
  grad: await import('../src/backend/cuda/train/grad.js'),
};

for (const [Bn, T, H, B, topk] of [[2, 337, 2, 64, 3], [1, 1000, 1, 128, 4], [3, 200, 2, 64, 1], [1, 100, 1, 128, 3], [2, 640, 3, 64, 2]] as const) {
  test(`CUDA tensor-core moba training kernels = reference kernels (${Bn} × ${T}, H ${H}, chunk ${B}, top-k ${topk})`, { skip: skipReason }, () => {
    const { driver, mem, mc, moba } = dev!;
    const ctx = driver.CudaContext.get(0);
    const train = mc.loadModule(ctx, 'train.cu');
    const bufs = new Map<string, InstanceType<typeof mem.DeviceBuffer>>();
    const scratch = (name: string, bytes: number) => {
      const b = bufs.get(name);
      if (b && b.bytes >= bytes) return b.ptr;
      if (b) { ctx.sync(); b.free(); }
      const nb = mem.alloc(ctx, bytes, name);
      bufs.set(name, nb);
      return nb.ptr;
    };
    const toBf = (o: number, i: number, n: number) =>
      mc.launch(ctx, train, 'tr_f2bf', train.sigs.get('tr_f2bf')!, [Math.min(4096, Math.ceil(n / 256))], [256], 0, [o, i, n]);
    const core = new moba.MobaTrain(ctx, { scratch, toBf, timed: (_t, f) => f() });
    const C = H * 64, R = Bn * T, n = R * C, nSel = topk - 1, shape = { Bn, T, H, B, nSel };
    const u = rng(7 + T + B + topk);
    const draw = (scale: number) => mem.fromBf16(mem.toBf16(Float32Array.from({ length: n }, () => scale * (2 * u() - 1))));
    const [q, k, v, dy] = [draw(2), draw(2), draw(1), draw(1)];
    const up = (name: string, x: Float32Array) => { const p = scratch(name, x.byteLength); mem.copyHtoD(p, x); return p; };
    const down = (p: number, m: number, I = Float32Array) => { ctx.sync(); const o = new I(m); mem.copyDtoH(o, p); return o; };
    try {
      const qd = up('q', q), kd = up('k', k), vd = up('v', v), dyd = up('dy', dy);
      const out = (tag: string) => ({
        y: scratch(`${tag}.y`, n * 4), lse: scratch(`${tag}.lse`, R * H * 4), sel: scratch(`${tag}.sel`, Math.max(1, R * H * nSel) * 4),
        mask: scratch(`${tag}.mask`, moba.MobaTrain.maskBytes(shape)),
      });
      const grads = (tag: string) => ({ dq: scratch(`${tag}.dq`, n * 4), dk: scratch(`${tag}.dk`, n * 4), dv: scratch(`${tag}.dv`, n * 4) });
      const oR = out('ref'), oT = out('tc'), gR = grads('ref'), gT = grads('tc');
      core.forward(oR, qd, kd, vd, shape, false);
      core.backward(gR, dyd, oR, qd, kd, vd, shape, false);
      core.forward(oT, qd, kd, vd, shape, true);
      core.backward(gT, dyd, oT, qd, kd, vd, shape, true);
      const selR = down(oR.sel, R * H * nSel, Int32Array as never), selT = down(oT.sel, R * H * nSel, Int32Array as never);
      assert.deepEqual(selT, selR, 'the two paths selected different chunks');
      const errs = (['y', 'dq', 'dk', 'dv'] as const).map((nm) => {
        const [a, b] = nm === 'y' ? [oT.y, oR.y] : [gT[nm], gR[nm]];
        return [nm, rel(down(a, n), down(b, n))] as const;
      });
      console.log(`${Bn} × ${T}, H ${H}, chunk ${B}, top-k ${topk}: tensor cores vs reference: ${errs.map(([nm, e]) => `${nm} ${e.toExponential(2)}`).join(', ')}`);
      for (const [nm, e] of errs) assert.ok(e <= TOL, `${nm}: ${e}`);
    } finally {
      ctx.sync();
      for (const b of bufs.values()) b.free();
    }
  });
}

test('CUDA trainer (bf16): tensor-core attention gives the reference kernels\' gradients within bf16 error (RWKV-X, chunk 64)', { skip: skipReason }, () => {
  const { grad } = dev!;
  const cfg = shapeConfig({ vocab: 64, dim: 128, nLayer: 2, nAttn: 1, chunk: 64, topk: 3 });
  const model = trainModelFromWeights(cfg, randomWeights(cfg, 5));
  const tr = new grad.CudaTrainer(model);
  const saved = process.env.RWKVX_TRAIN_MOBA;
  try {
    assert.ok(tr.mobaTC(64), 'the bf16 trainer should use the tensor cores at chunk 64');
    const seqs = Array.from({ length: 2 }, (_, b) => Array.from({ length: 300 }, (_, i) => (i * 29 + b * 13 + ((i * i) >> 3)) % cfg.vocab));
    process.env.RWKVX_TRAIN_MOBA = 'ref';
    const lossR = tr.computeBatch(seqs);
    const gR = tr.getGrads();
    delete process.env.RWKVX_TRAIN_MOBA;
    const lossT = tr.computeBatch(seqs);
    const gT = tr.getGrads();
    const errs = [...gR].map(([name, g]) => [name, rel(gT.get(name)!, g)] as const).sort((a, b) => b[1] - a[1]);
    const p90 = errs[Math.floor(errs.length * 0.1)][1];
    console.log(`losses ref ${lossR.map((x) => x.toFixed(5)).join(' ')}, tensor cores ${lossT.map((x) => x.toFixed(5)).join(' ')}`);
    console.log(`gradients over ${errs.length} tensors: p90 ${p90.toExponential(2)}; worst ${errs.slice(0, 5).map(([nm, e]) => `${nm} ${e.toExponential(2)}`).join(', ')}`);
    lossR.forEach((l, i) => assert.ok(Math.abs(l - lossT[i]) <= 1e-2, `loss ${i}: ${l} vs ${lossT[i]}`));
    assert.ok(p90 <= 1e-2, `p90 relative error ${p90}`);
    assert.ok(errs[0][1] <= 5e-2, `${errs[0][0]}: ${errs[0][1]}`);
  } finally {
    if (saved === undefined) delete process.env.RWKVX_TRAIN_MOBA; else process.env.RWKVX_TRAIN_MOBA = saved;
    tr.dispose();
  }
});

// A kept block (activations held from the forward, no recompute in the backward) must read only buffers of
// its own: the second call of a shape keeps blocks, the first keeps none, so their gradients must agree.
// Before 2026-12-07 kept attention blocks read the last block's bf16 q, k, v (tensor cores, nAttn ≥ 2)
// and kept RWKV blocks the last block's WKV outputs when those were not kept per block.
for (const env of [{}, { RWKVX_TRAIN_KEEP_WKV: '0' }, { RWKVX_TRAIN_WKV: 'seq' }] as Record<string, string>[]) {
  const tag = Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ') || 'defaults';
  test(`CUDA trainer (bf16): kept activations give the recomputed gradients (RWKV-X, 2 attention blocks, chunk 64; ${tag})`, { skip: skipReason }, () => {
    const { grad } = dev!;
    const cfg = shapeConfig({ vocab: 64, dim: 128, nLayer: 4, nAttn: 2, chunk: 64, topk: 3 });  // two attention blocks (interval 2)
    const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, env);
    const tr = new grad.CudaTrainer(trainModelFromWeights(cfg, randomWeights(cfg, 6)));
    let trF: InstanceType<typeof grad.CudaTrainer> | undefined;
    try {
      assert.ok(tr.mobaTC(64), 'the bf16 trainer should use the tensor cores at chunk 64');
      const seqs = Array.from({ length: 2 }, (_, b) => Array.from({ length: 300 }, (_, i) => (i * 31 + b * 7 + ((i * i) >> 2)) % cfg.vocab));
      const loss0 = tr.computeBatch(seqs);
      assert.equal(tr.keptActivations, 0, 'the first call of a shape keeps nothing');
      const g0 = tr.getGrads();
      const loss1 = tr.computeBatch(seqs);
      const wkvKept = !env.RWKVX_TRAIN_KEEP_WKV && !env.RWKVX_TRAIN_WKV;
      assert.equal(tr.keptActivations, wkvKept ? cfg.nLayer + cfg.nAttn : cfg.nAttn, 'blocks kept on the second call');
      const g1 = tr.getGrads();
      const errs = [...g0].map(([name, g]) => [name, rel(g1.get(name)!, g)] as const).sort((a, b) => b[1] - a[1]);
      // the floor: two calls with nothing kept. The sequential WKV backward adds its row groups' partial sums
      // with atomics (any order), and a bf16 cast downstream can turn an fp32 ulp into a bf16 one, so there
      // two identical calls differ by up to ~1e-3; the chunked kernels add in a fixed order (~1e-7 here)
      trF = new grad.CudaTrainer(trainModelFromWeights(cfg, randomWeights(cfg, 6)), { keepActivations: false });
      trF.computeBatch(seqs);
      const f0 = trF.getGrads();
      trF.computeBatch(seqs);
      assert.equal(trF.keptActivations, 0, 'keepActivations: false keeps nothing');
      const f1 = trF.getGrads();
      const floor = Math.max(...[...f0].map(([name, g]) => rel(f1.get(name)!, g)));
      console.log(`${tag}: kept vs recomputed, worst ${errs.slice(0, 3).map(([nm, e]) => `${nm} ${e.toExponential(2)}`).join(', ')}; two unkept calls differ by ${floor.toExponential(2)}`);
      loss0.forEach((l, i) => assert.ok(Math.abs(l - loss1[i]) <= 1e-5, `loss ${i}: ${l} vs ${loss1[i]}`));
      assert.ok(errs[0][1] <= 1e-3 + 4 * floor, `${errs[0][0]}: ${errs[0][1]} (unkept calls differ by ${floor})`);
    } finally {
      tr.dispose();
      trF?.dispose();
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  });
}
