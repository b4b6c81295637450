/**
 * Gradients on the CPU (src/train): against autograd of the authors' code (test/fixtures/A/grads.safetensors,
 * vectors README), against central finite differences of an independent float64 forward, and the
 * `rwkvx grad` command.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openCheckpoint } from '../src/io/open.js';
import type { TensorSource } from '../src/io/types.js';
import { expectedTensors } from '../src/model/weights.js';
import { shutdownPool } from '../src/backend/cpu/matmul.js';
import { matmulTN, matmulTNLoops } from '../src/backend/cpu/matmul-grad.js';
import { sharedF32 } from '../src/backend/cpu/shared.js';
import { computeGradients, loadTrainModel, parameterTensors, type TrainModel } from '../src/train/model-grad.js';
import { referenceLoss } from '../src/train/reference.js';
import { UserError } from '../src/util/errors.js';
import { Model } from '../src/model/model.js';
import { A, expectedTokens } from './helpers/vectors.js';
import { expectUserError, rwkvx } from './helpers/cli.js';

const dir = mkdtempSync(join(tmpdir(), 'rwkvx-grad-'));
let ref: TensorSource | undefined;
after(() => { ref?.close(); shutdownPool(); rmSync(dir, { recursive: true, force: true }); });

/** Vectors README: each gradient within 1e-3 relative to the largest |gradient| of that tensor, or 1e-5 absolute. */
const REL_TOL = 1e-3, ABS_TOL = 1e-5;
const CHUNK = 16, TOPK = 3;
const tokens = expectedTokens().slice(0, 101);
const refGrads = () => (ref ??= openCheckpoint(A('grads.safetensors')));

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** Checks every gradient of `model` on `tokens` against `${prefix}.grad.<name>`; returns the worst relative error. */
function checkAgainstReference(model: TrainModel, prefix: string): number {
  const { loss, grads } = computeGradients(model, tokens, { chunk: CHUNK, topk: TOPK });
  const src = refGrads();
  const wantLoss = src.readF32(`${prefix}.loss`)[0];
  assert.ok(Math.abs(loss - wantLoss) <= 1e-5, `loss ${loss} vs ${wantLoss}`);
  const expected = expectedTensors(model.cfg);
  assert.deepEqual([...grads.keys()].sort(), expected.map(([n]) => n).sort());
  let worst = 0;
  for (const [name, shape] of expected) {
    const got = grads.get(name)!, want = src.readF32(`${prefix}.grad.${name}`);
    assert.equal(got.length, shape.reduce((a, b) => a * b, 1), name);
    assert.equal(got.length, want.length, name);
    let d = 0;
    for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i] - want[i]));
    if (!(d <= ABS_TOL)) assert.ok(d <= REL_TOL * maxAbs(want), `${name}: max |diff| ${d}, max |grad| ${maxAbs(want)}`);
    worst = Math.max(worst, d / Math.max(maxAbs(want), 1e-30));
  }
  return worst;
}

test('matmulTN (out += Aᵀ·B) agrees with plain loops, accumulating or not, on odd shapes', () => {
  let seed = 1;
  const rnd = (n: number) => { const a = sharedF32(n); for (let i = 0; i < n; i++) { seed = (seed * 1103515245 + 12345) % 2 ** 31; a[i] = seed / 2 ** 30 - 1; } return a; };
  // the last shape spans two slabs of rows of out (slabs hold at most 2^22 floats)
  for (const [T, M, N] of [[3, 5, 7], [37, 129, 67], [101, 64, 300], [130, 1000, 128], [6, 1500, 4096]]) {
    const A = rnd(T * M), B = rnd(T * N), init = rnd(M * N);
    for (const acc of [true, false]) {
      const got = init.slice(), want = init.slice();
      matmulTN(got, A, B, T, M, N, acc);
      matmulTNLoops(want, A, B, T, M, N, acc);
      let d = 0;
      for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i] - want[i]));
      assert.ok(d <= 1e-5 * Math.sqrt(T), `[${T}, ${M}, ${N}] accumulate=${acc}: ${d}`);
    }
  }
});

test('RWKV-7: loss and the gradient of every parameter match autograd of the authors\' code', () => {
  const worst = checkAgainstReference(loadTrainModel(A('rwkv7.pth')), 'rwkv7');
  assert.ok(worst < REL_TOL);
});

test('RWKV-X (moba, chunk 16, top-k 3): loss and every gradient match', () => {
  const worst = checkAgainstReference(loadTrainModel(A('rwkvx.pth'), { chunk: CHUNK, topk: TOPK }), 'rwkvx');
  assert.ok(worst < REL_TOL);
});

test('block 0\'s unused v0/v1/v2 get zero gradient; emb rows of unseen tokens stay zero', () => {
  const m = loadTrainModel(A('rwkv7.pth'));
  const { grads } = computeGradients(m, tokens.slice(0, 20));
  for (const n of ['v0', 'v1', 'v2']) assert.equal(maxAbs(grads.get(`blocks.0.att.${n}`)!), 0);
  const seen = new Set(tokens.slice(0, 19));
  const C = m.cfg.dim, emb = grads.get('emb.weight')!;
  for (let id = 0; id < m.cfg.vocab; id++) {
    const row = maxAbs(emb.subarray(id * C, (id + 1) * C));
    assert.equal(row > 0, seen.has(id), `emb row ${id}`);
  }
});

/**
 * Central differences (h = 1e-5) of the float64 reference loss at the element of largest |gradient|
 * of each named tensor. Passes when |fd − g| ≤ 1e-3·max|g|; and shows that a 1% error in that
 * element would fail the same check.
 */
function finiteDifferences(model: TrainModel, ids: number[], B: number, k: number, names: string[]): void {
  const { grads, loss } = computeGradients(model, ids, { chunk: B, topk: k });
  const P = new Map([...parameterTensors(model)].map(([n, v]) => [n, Float64Array.from(v)]));
  assert.ok(Math.abs(referenceLoss(model.cfg, P, ids, B, k) - loss) < 1e-5, 'float64 reference loss');
  for (const name of names) {
    const g = grads.get(name), p = P.get(name);
    assert.ok(g && p, name);
    let idx = 0;
    for (let i = 0; i < g.length; i++) if (Math.abs(g[i]) > Math.abs(g[idx])) idx = i;
    const mx = Math.abs(g[idx]), eps = 1e-5, orig = p[idx];
    assert.ok(mx > 0, `${name}: zero gradient`);
    p[idx] = orig + eps;
    const lp = referenceLoss(model.cfg, P, ids, B, k);
    p[idx] = orig - eps;
    const lm = referenceLoss(model.cfg, P, ids, B, k);
    p[idx] = orig;
    const fd = (lp - lm) / (2 * eps);
    const ok = (v: number) => Math.abs(fd - v) <= 1e-3 * mx;
    assert.ok(ok(g[idx]), `${name}[${idx}]: backward ${g[idx]}, finite difference ${fd}`);
    assert.ok(!ok(g[idx] * 1.01), `${name}: the check would not catch a 1% error`);
  }
}

test('finite differences: RWKV-7 parameters of every kind', () => {
  finiteDifferences(loadTrainModel(A('rwkv7.pth')), tokens.slice(0, 41), CHUNK, TOPK, [
    'blocks.1.att.w0', 'blocks.2.att.a1', 'blocks.2.att.v2', 'blocks.3.att.r_k', 'blocks.1.att.k_k',
    'blocks.0.att.ln_x.bias', 'emb.weight', 'blocks.0.ln0.weight',
  ]);
});

test('finite differences: RWKV-X attention (chunk 8, top-k 2: chunk selection active)', () => {
  finiteDifferences(loadTrainModel(A('rwkvx.pth'), { chunk: 8, topk: 2 }), tokens.slice(0, 49), 8, 2, [
    'moba.0.att.receptance.weight', 'moba.1.att.key.weight', 'moba.1.att.value.weight', 'moba.0.ffn.x_k',
    'rwkv.blocks.1.att.g2',
  ]);
});

test('WKV checkpoint interval and head segment size do not change the result', () => {
  const m = loadTrainModel(A('rwkvx.pth'), { chunk: CHUNK, topk: TOPK });
  const ids = tokens.slice(0, 70);
  const base = computeGradients(m, ids);
  for (const opts of [{ wkvEvery: 1 }, { wkvEvery: 5, segment: 7 }, { wkvEvery: 1000, segment: 1 }]) {
    const r = computeGradients(m, ids, opts);
    assert.ok(Math.abs(r.loss - base.loss) < 1e-6, JSON.stringify(opts));
    for (const [name, g] of base.grads) {
      const o = r.grads.get(name)!;
      let d = 0;
      for (let i = 0; i < g.length; i++) d = Math.max(d, Math.abs(o[i] - g[i]));
      assert.ok(d <= 1e-6 * Math.max(maxAbs(g), 1e-6), `${name} ${JSON.stringify(opts)}: ${d}`);
    }
  }
});

test('l2wrap adds 1e-4/T·max-logit to each arg-max logit\'s gradient and leaves the loss alone', () => {
  const m = loadTrainModel(A('rwkv7.pth'));
  const ids = tokens.slice(0, 31), T = ids.length - 1, C = m.cfg.dim, V = m.cfg.vocab;
  const plain = computeGradients(m, ids), wrapped = computeGradients(m, ids, { l2wrap: true });
  assert.equal(wrapped.loss, plain.loss);
  // ln_out.bias receives Σ_t dlogits_t·W_head, so the extra term shows there as Σ_t (1e-4/T)·max_t·W_head[argmax_t]
  const inference = Model.load(A('rwkv7.pth'));
  const logits = inference.forward(ids.slice(0, T), inference.newState());
  const head = parameterTensors(m).get('head.weight')!, want = new Float64Array(C);
  for (let t = 0; t < T; t++) {
    let arg = 0;
    for (let i = 1; i < V; i++) if (logits[t * V + i] > logits[t * V + arg]) arg = i;
    for (let c = 0; c < C; c++) want[c] += (1e-4 / T) * logits[t * V + arg] * head[arg * C + c];
  }
  const a = wrapped.grads.get('ln_out.bias')!, b = plain.grads.get('ln_out.bias')!;
  for (let c = 0; c < C; c++) assert.ok(Math.abs(a[c] - b[c] - want[c]) <= 1e-3 * maxAbs(want) + 1e-9, `channel ${c}`);
  assert.ok(maxAbs(want) > 1e-6);
});

test('the smallest inputs work: 2 tokens, and fewer tokens than one chunk', () => {
  const m = loadTrainModel(A('rwkvx.pth'), { chunk: CHUNK, topk: TOPK });
  for (const n of [2, 3, 17]) {
    const { loss, grads } = computeGradients(m, tokens.slice(0, n));
    assert.ok(Number.isFinite(loss));
    for (const [name, g] of grads) assert.ok(Number.isFinite(maxAbs(g)), `${name} (${n} tokens)`);
  }
});

test('bad input to computeGradients is a UserError', () => {
  const m = loadTrainModel(A('rwkv7.pth'));
  assert.throws(() => computeGradients(m, [5]), (e: unknown) => e instanceof UserError && /at least 2 tokens/.test(e.message));
  assert.throws(() => computeGradients(m, [5, 1000]), (e: unknown) => e instanceof UserError && /out of range/.test(e.message));
  assert.throws(() => computeGradients(m, [5, 6], { topk: 0 }), (e: unknown) => e instanceof UserError && /top-k/.test(e.message));
});

test('rwkvx grad writes loss and grad.<name> for every parameter', () => {
  const tokFile = join(dir, 'tokens.json'), out = join(dir, 'grads.safetensors');
  writeFileSync(tokFile, JSON.stringify(tokens));
  const r = rwkvx(['grad', '--model', A('rwkvx.pth'), '--tokens', tokFile, '--out', out, '--chunk', '16', '--topk', '3']);
  assert.equal(r.code, 0, r.stderr);
  const src = openCheckpoint(out), want = refGrads();
  try {
    const m = loadTrainModel(A('rwkvx.pth'));
    const names = expectedTensors(m.cfg);
    assert.deepEqual(src.names().sort(), ['loss', ...names.map(([n]) => `grad.${n}`)].sort());
    assert.ok(Math.abs(src.readF32('loss')[0] - want.readF32('rwkvx.loss')[0]) <= 1e-5);
    for (const [name, shape] of names) {
      assert.deepEqual(src.info(`grad.${name}`)!.shape, shape, name);
      const got = src.readF32(`grad.${name}`), ref = want.readF32(`rwkvx.grad.${name}`);
      let d = 0;
      for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i] - ref[i]));
      assert.ok(d <= Math.max(ABS_TOL, REL_TOL * maxAbs(ref)), `${name}: ${d}`);
    }
  } finally {
    src.close();
  }
});

test('rwkvx grad: bad inputs give one clear error line', () => {
  const one = join(dir, 'one.json'), ok = join(dir, 'ok.json'), bad = join(dir, 'bad.json');
  writeFileSync(one, '[5]');
  writeFileSync(ok, '[5, 6, 7]');
  writeFileSync(bad, '[5, 6, 5000]');
  const out = join(dir, 'x.safetensors');
  expectUserError(rwkvx(['grad', '--model', A('rwkv7.pth'), '--tokens', one, '--out', out]), /at least 2 tokens/);
  expectUserError(rwkvx(['grad', '--model', A('rwkv7.pth'), '--tokens', bad, '--out', out]), /token id 5000 .*out of range/);
  expectUserError(rwkvx(['grad', '--model', A('rwkvx.pth'), '--tokens', ok, '--out', out, '--attention', 'official']), /moba/);
  expectUserError(rwkvx(['grad', '--model', join(dir, 'missing.pth'), '--tokens', ok, '--out', out]), /no such file/);
});
