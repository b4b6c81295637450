/** Training on the CPU: a fresh model learns, resume is exact, stage 1 freezes the RWKV part, bad runs stop clearly. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_TRAIN, loadTrainConfig, type TrainConfig } from '../src/train/config.js';
import { train, type StepLog } from '../src/train/trainer.js';
import { openCheckpoint } from '../src/io/open.js';
import { shutdownPool } from '../src/backend/cpu/matmul.js';
import { rwkvx, expectUserError } from './helpers/cli.js';
import { writeToyCorpus } from './helpers/toy-corpus.js';
import { assertOnlyAttentionMoved } from './helpers/stage1.js';

const dir = mkdtempSync(join(tmpdir(), 'rwkvx-train-'));
after(() => { shutdownPool(); rmSync(dir, { recursive: true, force: true }); });

const data = writeToyCorpus(join(dir, 'toy'));

function cfg(over: Partial<TrainConfig>): TrainConfig {
  return loadTrainConfig(undefined, { data, ctx: 24, steps: 6, lr: 3e-3, lrFinal: 3e-4, warmupSteps: 2, saveEvery: 3, init: { vocab: 32, dim: 64, layers: 2 }, ...over });
}

async function run(c: TrainConfig, resume = false): Promise<StepLog[]> {
  const logs: StepLog[] = [];
  await train(c, resume, { onStep: (s) => logs.push(s) });
  return logs;
}

test('a fresh RWKV-7 learns a toy corpus (loss clearly falls)', async () => {
  const logs = await run(cfg({ out: join(dir, 'learn'), steps: 40, saveEvery: 40, microBatch: 2 }));
  const first = logs[0].loss;
  const last = logs.slice(-5).reduce((s, l) => s + l.loss, 0) / 5;
  assert.ok(Math.abs(first - Math.log(32)) < 0.2, `starts near ln(32) = 3.47 (got ${first})`);
  assert.ok(last < first - 1.5, `loss falls: ${first.toFixed(3)} → ${last.toFixed(3)}`);
  const log = readFileSync(join(dir, 'learn', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(log.length, 40);
  for (const k of ['step', 'loss', 'lr', 'gradNorm', 'tokensPerSec']) assert.equal(typeof log[0][k], 'number');
});

test('resume continues exactly: the loss curve equals the uninterrupted one step for step', async () => {
  const whole = await run(cfg({ out: join(dir, 'whole') }));
  const part = join(dir, 'part');
  const a = await run(cfg({ out: part, steps: 6 }), false).then(() => null).catch((e) => e);
  assert.equal(a, null);
  // interrupted run: stop after step 3 via the control hook, then resume to step 6
  const outB = join(dir, 'interrupted');
  const control = { stop: false };
  const first: StepLog[] = [];
  await train(cfg({ out: outB }), false, { control, onStep: (s) => { first.push(s); if (s.step === 3) control.stop = true; } });
  assert.equal(first.length, 3);
  const rest = await run(cfg({ out: outB }), true);
  assert.deepEqual([...first, ...rest].map((l) => l.loss), whole.map((l) => l.loss));
  const m1 = openCheckpoint(join(dir, 'whole', 'model.safetensors')), m2 = openCheckpoint(join(outB, 'model.safetensors'));
  for (const n of m1.names()) assert.deepEqual(m1.readRaw(n), m2.readRaw(n), n);
  m1.close(); m2.close();
});

test('stage 1 (--freeze rwkv) trains only the attention blocks of an expanded model', async () => {
  const base = join(dir, 'whole', 'model.safetensors');
  const expanded = join(dir, 'x.safetensors');
  const r = rwkvx(['expand', '--base', base, '--attn-layers', '1', '--out', expanded, '--chunk', '8', '--topk', '2']);
  assert.equal(r.code, 0, r.stderr);
  const out = join(dir, 'stage1');
  await run(cfg({ out, model: expanded, freeze: 'rwkv', steps: 3, w0LrScale: 1 }));
  assertOnlyAttentionMoved(expanded, join(out, 'model.safetensors'));
});

test('a diverging run stops with a clear message and keeps the last good checkpoint', async () => {
  const out = join(dir, 'diverge');
  await run(cfg({ out, steps: 2, saveEvery: 1 }));
  const good = readFileSync(join(out, 'train-state.safetensors'));
  await assert.rejects(run(cfg({ out, steps: 8, lr: 1e30, warmupSteps: 0, gradClip: 0 }), true), /became (NaN|Infinity|-Infinity)|loss became/);
  assert.ok(existsSync(join(out, 'train-state.safetensors')));
  const after = readFileSync(join(out, 'train-state.safetensors'));
  assert.ok(after.length === good.length, 'the checkpoint on disk is a complete one');
});

test('rwkvx train and plot-loss from the command line; config files and bad options', () => {
  const conf = join(dir, 'conf.json');
  writeFileSync(conf, JSON.stringify({ data, ctx: 16, steps: 3, lr: 1e-3, init: { vocab: 32, dim: 64, layers: 1 }, saveEvery: 3 }));
  const out = join(dir, 'cli');
  const r = rwkvx(['train', '--config', conf, '--out', out, '--quiet']);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(join(out, 'model.safetensors')));
  const svg = join(dir, 'loss.svg');
  const p = rwkvx(['plot-loss', join(out, 'log.jsonl'), '--out', svg]);
  assert.equal(p.code, 0, p.stderr);
  assert.match(readFileSync(svg, 'utf8'), /^<svg[\s\S]*<path[\s\S]*<\/svg>$/);
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ data, ctxx: 3 }));
  expectUserError(rwkvx(['train', '--config', bad, '--out', out]), /unknown option 'ctxx'/);
  expectUserError(rwkvx(['train', '--data', join(dir, 'nothing'), '--out', out]), /nothing\.idx/);
  expectUserError(rwkvx(['train', '--out', out]), /no training data/);
  assert.equal(DEFAULT_TRAIN.beta2, 0.99);
});

test('LongCE: weights are exp(CE_short − CE_full) capped, 1 before the window; they scale the loss and gradients', async () => {
  const { loadTrainModel, computeGradients } = await import('../src/train/model-grad.js');
  const { inferenceModel, longCeWeights } = await import('../src/train/longce.js');
  const { A, expectedTokens } = await import('./helpers/vectors.js');
  const m = loadTrainModel(A('rwkv7.pth'));
  const tokens = expectedTokens().slice(0, 61);
  const inf = inferenceModel(m);
  const w = longCeWeights(inf, tokens, { window: 20, stride: 15, cap: 10 });
  assert.equal(w.length, 60);
  for (let t = 0; t < 20; t++) assert.equal(w[t], 1);
  // brute force for target 37: its window starts at 35 − 20 (the stride block holding 37 starts at 35)
  const ce = (ctx: number[], target: number) => {
    const l = inf.forward(ctx, inf.newState(), { logits: 'last' });
    let mx = -Infinity; for (const v of l) mx = Math.max(mx, v);
    let s = 0; for (const v of l) s += Math.exp(v - mx);
    return mx + Math.log(s) - l[target];
  };
  const full = ce(tokens.slice(0, 38), tokens[38]);
  const short = ce(tokens.slice(15, 38), tokens[38]);
  assert.ok(Math.abs(w[37] - Math.min(Math.exp(short - full), 10)) < 1e-4, `${w[37]} vs ${Math.exp(short - full)}`);
  assert.ok(w.some((x) => x !== 1), 'some weights differ from 1');
  const plain = computeGradients(m, tokens);
  const doubled = computeGradients(m, tokens, { tokenWeights: new Float64Array(60).fill(2) });
  assert.ok(Math.abs(doubled.loss - 2 * plain.loss) < 1e-9);
  const g1 = plain.grads.get('blocks.2.att.key.weight')!, g2 = doubled.grads.get('blocks.2.att.key.weight')!;
  for (let i = 0; i < g1.length; i += 97) assert.ok(Math.abs(g2[i] - 2 * g1[i]) <= 1e-6 + 1e-5 * Math.abs(g1[i]));
});

test('--backend and --batch: bad values are one-line errors; --batch is the micro-batch; cuda without a GPU says why', async () => {
  const out = join(dir, 'flags');
  expectUserError(rwkvx(['train', '--data', data, '--out', out, '--backend', 'gpu']), /backend must be 'cpu', 'cuda' or 'auto' \(got 'gpu'\)/);
  expectUserError(rwkvx(['train', '--data', data, '--out', out, '--batch', '2', '--micro-batch', '3']), /same option/);
  const small = ['--data', data, '--out', out, '--ctx', '16', '--steps', '1', '--dim', '64', '--layers', '1', '--vocab', '32'];
  const r = rwkvx(['train', ...small, '--batch', '2', '--backend', 'cpu']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /^training on cpu$/m);
  const st = openCheckpoint(join(out, 'train-state.safetensors'));
  assert.equal(JSON.parse(st.metadata.rwkvx_train).config.microBatch, 2);
  st.close();
  const { cudaAvailable } = await import('../src/backend/cuda/driver.js');
  if (!cudaAvailable().ok) {
    expectUserError(rwkvx(['train', ...small, '--backend', 'cuda']), /--backend cuda: /);
    const a = rwkvx(['train', ...small, '--backend', 'auto']);
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stderr, /^training on cpu$/m);
  }
});
