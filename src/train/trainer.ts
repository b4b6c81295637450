/**
 * The training loop (SPEC §5): windows from a binidx dataset by the magic-prime schedule, gradients on
 * the CPU or an NVIDIA GPU (a TrainBackend, backend.ts), AdamW, warm-up + cosine/constant schedule,
 * clipping, checkpoints that resume exactly.
 *
 * OUT/train-state.safetensors holds everything a resume needs in one atomically written file:
 * `param.<name>` (the fp32 master weights), `optim.m.<name>`, `optim.v.<name>` and metadata (step,
 * optimizer step, config). The data position is a function of the step (window index step·S + j of the
 * magic-prime schedule), and nothing random is drawn after initialisation, so that is the whole state.
 * OUT/model.safetensors is the same parameters as a plain native model, for inference. Both backends
 * read and write the same files: a GPU run resumes on the CPU and the other way round.
 */
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { BinIdxReader, magicPrime, sampleOffset } from '../io/binidx.js';
import { openCheckpoint } from '../io/open.js';
import { MemorySource } from '../io/memory-source.js';
import { writeSafetensors } from '../io/safetensors.js';
import { fail } from '../util/errors.js';
import { expectedTensors, NATIVE_META_KEY } from '../model/weights.js';
import { nativeMetadata } from '../model/expand.js';
import { shapeConfig } from '../model/random.js';
import type { ModelConfig } from '../model/config.js';
import { learningRate } from './schedule.js';
import { CpuTrainBackend, type BackendSpec, type TrainBackend } from './backend.js';
import { initRwkv7 } from './init.js';
import type { TrainConfig } from './config.js';
import { inferenceModel, longCeWeights } from './longce.js';
import { computeGradients, loadTrainModel, parameterTensors, trainModelFromSource, type TrainModel } from './model-grad.js';

export interface StepLog {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSec: number;
  elapsedSec: number;
}

export interface TrainHooks {
  /** Called after every optimizer step. */
  onStep?: (log: StepLog) => void;
  /** Set `stop` to end training after the current step (saving first). */
  control?: { stop: boolean };
  /** Called once before the first step with the backend used ('cpu' or 'cuda (device)'). */
  onStart?: (info: { backend: string; startStep: number }) => void;
}

export const STATE_FILE = 'train-state.safetensors';
export const MODEL_FILE = 'model.safetensors';
export const LOG_FILE = 'log.jsonl';
const TRAIN_STATE_VERSION = 1;

interface Resumed { model: TrainModel; step: number; adamT: number; m: Map<string, Float32Array>; v: Map<string, Float32Array> }

function readTrainState(path: string, c: TrainConfig): Resumed {
  const src = openCheckpoint(path);
  try {
    const meta = JSON.parse(src.metadata.rwkvx_train ?? 'null') as { version: number; step: number; adamT: number } | null;
    if (!meta || meta.version !== TRAIN_STATE_VERSION) fail(`${path} is not an rwkvx training state (version ${TRAIN_STATE_VERSION})`);
    const params = new Map<string, { shape: number[]; data: Float32Array }>();
    const m = new Map<string, Float32Array>(), v = new Map<string, Float32Array>();
    for (const n of src.names()) {
      if (n.startsWith('param.')) params.set(n.slice(6), { shape: src.info(n)!.shape, data: src.readF32(n) });
      else if (n.startsWith('optim.m.')) m.set(n.slice(8), src.readF32(n));
      else if (n.startsWith('optim.v.')) v.set(n.slice(8), src.readF32(n));
    }
    const model = trainModelFromSource(new MemorySource(path, params, { [NATIVE_META_KEY]: src.metadata[NATIVE_META_KEY] ?? '{}' }), { chunk: c.chunk, topk: c.topk });
    return { model, step: meta.step, adamT: meta.adamT, m, v };
  } finally {
    src.close();
  }
}

function freshModel(c: TrainConfig): TrainModel {
  const cfg: ModelConfig = shapeConfig({ vocab: c.init.vocab, dim: c.init.dim, nLayer: c.init.layers });
  if (cfg.dim % 64 !== 0) fail(`init.dim must be a multiple of 64 (head size), got ${cfg.dim}`);
  const t = initRwkv7(cfg, c.seed);
  const shapes = new Map(expectedTensors(cfg));
  const tensors = new Map([...t].map(([n, d]) => [n, { shape: shapes.get(n)!, data: d }]));
  return trainModelFromSource(new MemorySource('(fresh init)', tensors));
}

function save(dir: string, model: TrainModel, backend: TrainBackend, trainable: string[], step: number, c: TrainConfig): void {
  backend.syncModel();
  const params = parameterTensors(model);
  const shapes = new Map(expectedTensors(model.cfg));
  const meta = nativeMetadata(model.cfg);
  writeSafetensors(join(dir, MODEL_FILE), [...params].map(([name, data]) => ({ name, dtype: 'F32' as const, shape: shapes.get(name)!, data })), meta);
  const all = [...params].map(([name, data]) => ({ name: `param.${name}`, dtype: 'F32' as const, shape: shapes.get(name)!, data }));
  const opt = backend.optimizerState();
  for (const name of trainable) {
    all.push({ name: `optim.m.${name}`, dtype: 'F32', shape: shapes.get(name)!, data: opt.m.get(name)! });
    all.push({ name: `optim.v.${name}`, dtype: 'F32', shape: shapes.get(name)!, data: opt.v.get(name)! });
  }
  writeSafetensors(join(dir, STATE_FILE), all, { ...meta, rwkvx_train: JSON.stringify({ version: TRAIN_STATE_VERSION, step, adamT: opt.t, config: c }) });
}

/** The backend named by the config: cpu; cuda (an error without a usable GPU); auto (cuda when usable, else cpu). */
async function openBackend(c: TrainConfig, model: TrainModel, spec: BackendSpec): Promise<TrainBackend> {
  if (c.backend === 'cpu') return new CpuTrainBackend(model, spec);
  const { cudaAvailable } = await import('../backend/cuda/driver.js');
  const a = cudaAvailable();
  if (!a.ok) {
    if (c.backend === 'cuda') fail(`--backend cuda: ${a.reason}`);
    return new CpuTrainBackend(model, spec);
  }
  const { CudaTrainBackend } = await import('../backend/cuda/train/backend.js');
  return new CudaTrainBackend(model, spec);
}

export async function train(c: TrainConfig, resume: boolean, hooks: TrainHooks = {}): Promise<{ step: number; model: TrainModel; stopped: boolean }> {
  mkdirSync(c.out, { recursive: true });
  const statePath = join(c.out, STATE_FILE);
  let model: TrainModel, startStep = 0, resumed: Resumed | undefined;
  if (resume) {
    if (!existsSync(statePath)) fail(`--resume: no ${STATE_FILE} in ${c.out}`);
    resumed = readTrainState(statePath, c);
    model = resumed.model;
    startStep = resumed.step;
  } else {
    model = c.model ? loadTrainModel(c.model, { chunk: c.chunk, topk: c.topk }) : freshModel(c);
  }
  const cfg = model.cfg;
  if (c.freeze === 'rwkv' && cfg.nAttn === 0) fail('--freeze rwkv trains only attention blocks, but this model has none (expand it first)');
  const reader = new BinIdxReader(c.data);
  try {
    const p = magicPrime(reader.tokens, c.ctx);
    const isTrainable = (name: string) => c.freeze !== 'rwkv' || name.startsWith('moba.');
    const trainable = [...parameterTensors(model).keys()].filter(isTrainable);
    if (resumed) {
      for (const name of trainable) {
        if (!resumed.m.has(name) || !resumed.v.has(name)) fail(`${statePath}: no optimizer state for '${name}' (was it saved with another --freeze?)`);
      }
    }
    const spec: BackendSpec = {
      trainable: isTrainable,
      lrScale: (name) => (/\.att\.w0$/.test(name) ? c.w0LrScale : 1),
      adam: { beta1: c.beta1, beta2: c.beta2, eps: c.adamEps, weightDecay: c.weightDecay },
      gradClip: c.gradClip, chunk: c.chunk, topk: c.topk, l2wrap: c.l2wrap,
    };
    const backend = await openBackend(c, model, spec);
    try {
      if (resumed) backend.setOptimizerState({ t: resumed.adamT, m: resumed.m, v: resumed.v });
      hooks.onStart?.({ backend: backend.description, startStep });
      const r = await loop(c, model, backend, trainable, reader, p, startStep, hooks);
      backend.syncModel();
      return { ...r, model };
    } finally {
      backend.dispose();
    }
  } finally {
    reader.close();
  }
}

async function loop(
  c: TrainConfig, model: TrainModel, backend: TrainBackend, trainable: string[], reader: BinIdxReader, p: number, startStep: number, hooks: TrainHooks,
): Promise<{ step: number; stopped: boolean }> {
  const seqPerStep = c.microBatch * c.gradAccum;
  const logPath = join(c.out, LOG_FILE);
  const t0 = performance.now();
  let step = startStep;
  let stopped = false;
  while (step < c.steps) {
    const ts = performance.now();
    const lr = learningRate(step, { lr: c.lr, lrFinal: c.lrFinal, warmupSteps: c.warmupSteps, totalSteps: c.steps, kind: c.schedule });
    // LongCE weights come from the current parameters (on the CPU, whichever backend trains)
    let inf: ReturnType<typeof inferenceModel> | undefined;
    if (c.longce) { backend.syncModel(); inf = inferenceModel(model); }
    let loss = 0;
    for (let a = 0; a < c.gradAccum; a++) {
      const seqs: Uint16Array[] = [];
      for (let b = 0; b < c.microBatch; b++) {
        const j = a * c.microBatch + b;
        seqs.push(reader.read(sampleOffset(step * seqPerStep + j, p, c.ctx), c.ctx + 1));
      }
      const tokenWeights = inf ? seqs.map((q) => longCeWeights(inf, q, { window: c.longceWindow, stride: c.longceStride, cap: c.longceCap })) : undefined;
      const losses = backend.microBatch(seqs, { first: a === 0, denom: seqPerStep, tokenWeights });
      for (const l of losses) {
        if (!Number.isFinite(l)) {
          fail(`loss became ${l} at step ${step}; stopped without saving (the last good checkpoint in ${c.out} is kept). Try a lower learning rate.`);
        }
        loss += l / seqPerStep;
      }
    }
    const gradNorm = backend.step(lr);
    if (!Number.isFinite(gradNorm)) fail(`gradient norm became ${gradNorm} at step ${step}; stopped without saving (the last good checkpoint in ${c.out} is kept).`);
    step++;
    const now = performance.now();
    const log: StepLog = { step, loss, lr, gradNorm, tokensPerSec: (seqPerStep * c.ctx) / ((now - ts) / 1000), elapsedSec: (now - t0) / 1000 };
    appendFileSync(logPath, JSON.stringify(log) + '\n');
    hooks.onStep?.(log);
    // yield to the event loop so Ctrl-C (SIGINT) handlers can run between steps
    await new Promise((r) => setImmediate(r));
    stopped = hooks.control?.stop === true;
    if (step % c.saveEvery === 0 || step === c.steps || stopped) save(c.out, model, backend, trainable, step, c);
    if (stopped) break;
  }
  return { step, stopped };
}
