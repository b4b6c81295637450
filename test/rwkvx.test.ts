/** RWKV-X on the CPU (SPEC §3–4) against the authors' reference outputs in test/fixtures/A. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Model } from '../src/model/model.js';
import { stateTensors, readStateFile, writeStateFile } from '../src/model/state-io.js';
import { expandTensors } from '../src/model/expand.js';
import { inferConfig } from '../src/model/weights.js';
import { openCheckpoint } from '../src/io/open.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { describeLayout } from '../src/model/config.js';
import { shutdownPool } from '../src/backend/cpu/matmul.js';
import { A, expectedTensor, expectedTokens, maxAbsDiff } from './helpers/vectors.js';

const dir = mkdtempSync(join(tmpdir(), 'rwkvx-test-'));
after(() => { shutdownPool(); rmSync(dir, { recursive: true, force: true }); });

const LOGIT_TOL = 5e-4;
const STATE_TOL = 1e-3;
const tokens = expectedTokens();
const V = 1000;
// chunk and top-k of the reference vectors (meta.json); .pth files do not store them
const model = Model.load(A('rwkvx.pth'), { chunk: 16, topk: 3 });

function stepwise(m: Model, ids: number[], state = m.newState()): Float32Array {
  const out = new Float32Array(ids.length * V);
  ids.forEach((id, t) => out.set(m.forward([id], state), t * V));
  return out;
}

function checkState(state: ReturnType<Model['newState']>, prefix: string): void {
  for (const t of stateTensors(state, model.cfg)) {
    const d = maxAbsDiff(t.data as Float32Array, expectedTensor(`${prefix}.${t.name}`));
    assert.ok(d <= STATE_TOL, `${t.name}: max |diff| ${d}`);
  }
}

test('the authors\' checkpoint loads with its layout', () => {
  const c = model.cfg;
  assert.equal(c.arch, 'rwkvx');
  assert.equal(c.nAttn, 2);
  assert.equal(describeLayout(c), 'RRARRA');
});

test('dense region (≤ B·k tokens): parallel, step and final state match rwkvx.dense.*', () => {
  const ids = tokens.slice(0, 40);
  const st = model.newState();
  assert.ok(maxAbsDiff(model.forward(ids, st), expectedTensor('rwkvx.dense.logits')) <= LOGIT_TOL);
  checkState(st, 'rwkvx.dense');
  const st2 = model.newState();
  assert.ok(maxAbsDiff(stepwise(model, ids, st2), expectedTensor('rwkvx.dense.logits_step')) <= LOGIT_TOL);
  checkState(st2, 'rwkvx.dense');
});

test('moba: one parallel call reproduces rwkvx.moba.logits and state', () => {
  const st = model.newState();
  const d = maxAbsDiff(model.forward(tokens, st), expectedTensor('rwkvx.moba.logits'));
  assert.ok(d <= LOGIT_TOL, `max |diff| ${d}`);
  checkState(st, 'rwkvx.moba');
});

test('moba: token-at-a-time decoding reproduces the same logits', () => {
  const st = model.newState();
  const d = maxAbsDiff(stepwise(model, tokens, st), expectedTensor('rwkvx.moba.logits'));
  assert.ok(d <= LOGIT_TOL, `max |diff| ${d}`);
  checkState(st, 'rwkvx.moba');
});

test('moba: prefill N then step, and several prefill calls, all agree', () => {
  const want = expectedTensor('rwkvx.moba.logits');
  for (const n of [1, 15, 16, 17, 48, 100, 199]) {
    const st = model.newState();
    const out = new Float32Array(tokens.length * V);
    out.set(model.forward(tokens.slice(0, n), st), 0);
    out.set(stepwise(model, tokens.slice(n), st), n * V);
    assert.ok(maxAbsDiff(out, want) <= LOGIT_TOL, `prefill ${n}`);
  }
  const st = model.newState();
  const cuts = [0, 5, 33, 64, 65, 130, 200];
  const out = new Float32Array(tokens.length * V);
  for (let i = 0; i + 1 < cuts.length; i++) out.set(model.forward(tokens.slice(cuts[i], cuts[i + 1]), st), cuts[i] * V);
  assert.ok(maxAbsDiff(out, want) <= LOGIT_TOL);
});

test('moba semantics matter: a different top-k changes the logits', () => {
  const m1 = Model.load(A('rwkvx.pth'), { chunk: 16, topk: 1 });
  const d = maxAbsDiff(m1.forward(tokens, m1.newState()), expectedTensor('rwkvx.moba.logits'));
  assert.ok(d > 1e-2, 'top-k 1 must differ from top-k 3 on 200 tokens of chunk 16');
});

test('official: prefill 48 then step reproduces rwkvx.official_decode.logits', () => {
  const m = Model.load(A('rwkvx.pth'), { chunk: 16, topk: 3, attention: 'official' });
  const st = m.newState();
  const out = new Float32Array(tokens.length * V);
  out.set(m.forward(tokens.slice(0, 48), st), 0);
  out.set(stepwise(m, tokens.slice(48), st), 48 * V);
  const d = maxAbsDiff(out, expectedTensor('rwkvx.official_decode.logits'));
  assert.ok(d <= LOGIT_TOL, `max |diff| ${d}`);
  assert.ok(maxAbsDiff(out, expectedTensor('rwkvx.moba.logits')) > 1e-2, 'official decoding differs from moba');
});

test('expansion: the expanded model equals its base on any input (zero and copy init)', () => {
  const base = Model.load(A('rwkv7.pth'));
  const want = base.forward(tokens, base.newState());
  for (const init of ['zero', 'copy'] as const) {
    const src = openCheckpoint(A('rwkv7.pth'));
    const { tensors, cfg } = expandTensors(src, inferConfig(src), { nAttn: 2, init, seed: 1, chunk: 16, topk: 3 });
    const out = join(dir, `expanded-${init}.safetensors`);
    writeSafetensors(out, tensors.map((t) => ({ ...t, data: t.data() })), { rwkvx: JSON.stringify({ chunk: cfg.chunk, topk: cfg.topk }) });
    src.close();
    const x = Model.load(out);
    assert.equal(x.cfg.nAttn, 2);
    assert.equal(x.cfg.chunk, 16);
    const d = maxAbsDiff(x.forward(tokens, x.newState()), want);
    assert.ok(d <= 1e-6, `${init}: max |diff| ${d}`);
    // the new blocks are not trivially empty: their K/V caches fill with non-zero keys
    const st = x.newState();
    x.forward(tokens.slice(0, 20), st);
    assert.ok(st.attn[0].k.subarray(0, 20 * 128).some((v) => v !== 0));
  }
});

test('expansion refuses a block count that does not divide the RWKV blocks', () => {
  const src = openCheckpoint(A('rwkv7.pth'));
  assert.throws(() => expandTensors(src, inferConfig(src), { nAttn: 3, init: 'zero', seed: 1, chunk: 16, topk: 3 }), /does not divide the 4 RWKV blocks; choose one of 1, 2, 4/);
  src.close();
});

test('state file: save, reload, continue — same logits as one uninterrupted run', () => {
  const st = model.newState();
  model.forward(tokens.slice(0, 77), st);
  const path = join(dir, 'doc.state');
  writeStateFile(path, st, model.cfg, model.fingerprint);
  const back = readStateFile(path, model.cfg, model.fingerprint);
  const rest = model.forward(tokens.slice(77), back);
  const want = expectedTensor('rwkvx.moba.logits').subarray(77 * V);
  assert.ok(maxAbsDiff(rest, want) <= LOGIT_TOL);
});

test('state file from another model is refused', () => {
  const st = model.newState();
  model.forward(tokens.slice(0, 10), st);
  const path = join(dir, 'x.state');
  writeStateFile(path, st, model.cfg, model.fingerprint);
  const other = Model.load(A('rwkv7.pth'));
  assert.throws(() => readStateFile(path, other.cfg, other.fingerprint), /written for a different model/);
  const otherChunk = Model.load(A('rwkvx.pth'), { chunk: 32, topk: 3 });
  assert.throws(() => readStateFile(path, otherChunk.cfg, otherChunk.fingerprint), /chunk size 16/);
});

test('chunk or top-k ≤ 0 is refused', () => {
  assert.throws(() => Model.load(A('rwkvx.pth'), { chunk: 0 }), /chunk size must be a positive integer/);
  assert.throws(() => Model.load(A('rwkvx.pth'), { topk: -1 }), /top-k must be a positive integer/);
});

test('an attention block missing a tensor is refused, naming it', () => {
  const src = openCheckpoint(A('rwkvx.pth'));
  const tensors = src.names().filter((n) => n !== 'moba.1.att.key.weight')
    .map((n) => ({ name: n, dtype: src.info(n)!.dtype, shape: src.info(n)!.shape, data: src.readRaw(n) }));
  src.close();
  const path = join(dir, 'broken.safetensors');
  writeSafetensors(path, tensors);
  assert.throws(() => Model.load(path), /missing tensor 'moba\.1\.att\.key\.weight'/);
});
