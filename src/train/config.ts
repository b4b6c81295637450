/** Training configuration: defaults, a JSON file, then command-line flags, in that order of precedence. */
import { readFileSync } from 'node:fs';
import { fail } from '../util/errors.js';

export interface TrainConfig {
  /** Start from this checkpoint; without it, a fresh RWKV-7 of `init`'s shape. */
  model?: string;
  init: { vocab: number; dim: number; layers: number };
  /** binidx prefix. */
  data: string;
  /** Output directory: model.safetensors, train-state.safetensors, log.jsonl. */
  out: string;
  ctx: number;
  /**
   * Sequences per optimizer step: micro-batch × gradient accumulation. On the GPU a micro-batch is one
   * forward/backward of all its sequences (the throughput lever); the CPU runs them one after another.
   * Either way the loss is the mean over all predicted tokens of the step.
   */
  microBatch: number;
  gradAccum: number;
  steps: number;
  lr: number;
  lrFinal: number;
  warmupSteps: number;
  schedule: 'cosine' | 'constant';
  weightDecay: number;
  beta1: number;
  beta2: number;
  adamEps: number;
  gradClip: number;
  /** 'rwkv': train only the attention blocks (stage 1); 'none': everything (stage 2 / from scratch). */
  freeze: 'none' | 'rwkv';
  /** w0 learning-rate multiplier (2 from scratch, as the authors do). */
  w0LrScale: number;
  l2wrap: boolean;
  /** LongCE loss weighting (SPEC §5): off by default; window/stride/cap as the authors use them. */
  longce: boolean;
  longceWindow: number;
  longceStride: number;
  longceCap: number;
  saveEvery: number;
  seed: number;
  /** Where the gradients and the optimizer run: 'cpu' (default, the float32 reference), 'cuda', or 'auto'. */
  backend: 'cpu' | 'cuda' | 'auto';
  chunk?: number;
  topk?: number;
}

export const DEFAULT_TRAIN: TrainConfig = {
  init: { vocab: 65536, dim: 256, layers: 4 },
  data: '', out: 'out',
  ctx: 512, microBatch: 1, gradAccum: 1, steps: 1000,
  lr: 6e-4, lrFinal: 6e-5, warmupSteps: 10, schedule: 'cosine',
  weightDecay: 0.001, beta1: 0.9, beta2: 0.99, adamEps: 1e-18, gradClip: 1.0,
  freeze: 'none', w0LrScale: 2, l2wrap: true, saveEvery: 100, seed: 0,
  longce: false, longceWindow: 8000, longceStride: 4000, longceCap: 10, backend: 'cpu',
};

export function loadTrainConfig(file: string | undefined, flags: Partial<TrainConfig>): TrainConfig {
  let fromFile: Partial<TrainConfig> = {};
  if (file) {
    let text: string;
    try { text = readFileSync(file, 'utf8'); } catch (e) { fail(`cannot read config ${file}: ${(e as NodeJS.ErrnoException).code}`); }
    try { fromFile = JSON.parse(text); } catch { fail(`config ${file} is not valid JSON`); }
    const known = new Set(Object.keys(DEFAULT_TRAIN).concat(['model', 'chunk', 'topk', '$comment']));
    for (const k of Object.keys(fromFile)) if (!known.has(k)) fail(`config ${file}: unknown option '${k}'`);
  }
  const defined = Object.fromEntries(Object.entries(flags).filter(([, v]) => v !== undefined));
  const c: TrainConfig = { ...DEFAULT_TRAIN, ...fromFile, ...defined, init: { ...DEFAULT_TRAIN.init, ...(fromFile.init ?? {}), ...(flags.init ?? {}) } };
  if (!c.data) fail('no training data given (--data PREFIX of a binidx dataset, see `rwkvx data prepare`)');
  for (const k of ['ctx', 'microBatch', 'gradAccum', 'steps', 'saveEvery'] as const) {
    if (!Number.isInteger(c[k]) || c[k] <= 0) fail(`${k} must be a positive integer (got ${c[k]})`);
  }
  if (!(c.lr > 0)) fail(`lr must be > 0 (got ${c.lr})`);
  if (c.schedule !== 'cosine' && c.schedule !== 'constant') fail(`schedule must be 'cosine' or 'constant' (got '${c.schedule}')`);
  if (c.freeze !== 'none' && c.freeze !== 'rwkv') fail(`freeze must be 'none' or 'rwkv' (got '${c.freeze}')`);
  if (c.backend !== 'cpu' && c.backend !== 'cuda' && c.backend !== 'auto') fail(`backend must be 'cpu', 'cuda' or 'auto' (got '${c.backend}')`);
  return c;
}
