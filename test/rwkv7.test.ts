/** RWKV-7 on the CPU against the authors' reference outputs (test/fixtures/A, vectors README). */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Model } from '../src/model/model.js';
import { stateTensors } from '../src/model/state-io.js';
import { shutdownPool } from '../src/backend/cpu/matmul.js';
import { A, expectedTensor, expectedTokens, maxAbsDiff } from './helpers/vectors.js';

after(() => shutdownPool());

const LOGIT_TOL = 5e-4;
const STATE_TOL = 1e-3;

const model = Model.load(A('rwkv7.pth'));
const tokens = expectedTokens();

function checkState(state: ReturnType<Model['newState']>, prefix: string): void {
  for (const t of stateTensors(state, model.cfg)) {
    const want = expectedTensor(`${prefix}.${t.name}`);
    const d = maxAbsDiff(t.data as Float32Array, want);
    assert.ok(d <= STATE_TOL, `${t.name}: max |diff| ${d}`);
  }
}

test('dimensions come from the tensor shapes', () => {
  const c = model.cfg;
  assert.deepEqual([c.vocab, c.dim, c.heads, c.headSize, c.nLayer, c.ffn], [1000, 128, 2, 64, 4, 512]);
  assert.deepEqual(c.lora, { w: 32, a: 32, v: 16, g: 32 });
  assert.equal(c.arch, 'rwkv7');
});

test('parallel forward reproduces rwkv7.logits and the final state', () => {
  const state = model.newState();
  const logits = model.forward(tokens, state);
  const d = maxAbsDiff(logits, expectedTensor('rwkv7.logits'));
  assert.ok(d <= LOGIT_TOL, `max |diff| ${d}`);
  checkState(state, 'rwkv7');
});

test('one token at a time reproduces rwkv7.logits_step and the final state', () => {
  const state = model.newState();
  const V = model.cfg.vocab;
  const logits = new Float32Array(tokens.length * V);
  tokens.forEach((id, t) => logits.set(model.forward([id], state), t * V));
  const d = maxAbsDiff(logits, expectedTensor('rwkv7.logits_step'));
  assert.ok(d <= LOGIT_TOL, `max |diff| ${d}`);
  checkState(state, 'rwkv7');
});

test('any split of the sequence gives the same logits (state carried across calls)', () => {
  const state = model.newState();
  const V = model.cfg.vocab;
  const parts = [0, 37, 38, 120, tokens.length];
  const logits = new Float32Array(tokens.length * V);
  for (let i = 0; i + 1 < parts.length; i++) logits.set(model.forward(tokens.slice(parts[i], parts[i + 1]), state), parts[i] * V);
  assert.ok(maxAbsDiff(logits, expectedTensor('rwkv7.logits')) <= LOGIT_TOL);
});

test('internal segmentation of a long call does not change the result', () => {
  const a = model.forward(tokens, model.newState(), { segment: 7 });
  const b = model.forward(tokens, model.newState(), { segment: 1000 });
  assert.ok(maxAbsDiff(a, b) <= 1e-5);
});

test('the bf16 checkpoint gives the same logits within bf16 rounding of the weights', () => {
  const bf = Model.load(A('rwkv7.bf16.pth'));
  const logits = bf.forward(tokens, bf.newState());
  const want = expectedTensor('rwkv7.logits');
  // bf16 keeps 8 significant bits (relative rounding ≤ 2^-9 per weight); through 4 blocks and
  // the head that moves logits of std ≈ 1 by a few hundredths, not more.
  const d = maxAbsDiff(logits, want);
  let rms = 0;
  for (let i = 0; i < want.length; i++) rms += (logits[i] - want[i]) ** 2;
  rms = Math.sqrt(rms / want.length);
  assert.ok(d < 0.1, `max |diff| ${d}`);
  assert.ok(rms < 0.02, `rms diff ${rms}`);
  assert.ok(d > 0, 'bf16 weights must differ from float32 ones');
});

test('out-of-range and empty token input are refused clearly', () => {
  assert.throws(() => model.forward([1, 1000], model.newState()), /token id 1000 at position 1 is out of range/);
  assert.throws(() => model.forward([], model.newState()), /empty/);
});
