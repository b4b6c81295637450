/**
 * Gradients of the mean next-token cross-entropy w.r.t. every parameter, on the CPU.
 *
 *   computeGradients(model, tokens, {chunk, topk}) → { loss, grads: Map<name, Float32Array> }
 *
 * Inputs are tokens[0..T−1) and targets tokens[1..T). Names are those of the model file (official
 * RWKV-7 names; `rwkv.` / `moba.{j}.` for RWKV-X); every gradient is shaped like its parameter.
 *
 * Memory plan (block-level recomputation): the forward keeps only each block's input [T, C] and
 * v_first [T, C]. The backward walks the blocks last to first; for each it recomputes the block's
 * activations from the stored input (one block's worth of activations at a time), then runs the
 * block's backward. The WKV state is checkpointed every WKV_EVERY tokens inside a block and
 * recomputed per stretch (see wkv7Backward). The head and loss run in segments of tokens.
 */
import { openCheckpoint } from '../io/open.js';
import type { TensorSource } from '../io/types.js';
import { fail } from '../util/errors.js';
import { layout, type ModelConfig } from '../model/config.js';
import { inferConfig, loadWeights, rwkvPrefix, weightsToTensors, type ModelWeights } from '../model/weights.js';
import { checkAttentionParams } from '../model/model.js';
import { sharedF32 } from '../backend/cpu/shared.js';
import { Workspace } from '../backend/cpu/workspace.js';
import { rwkvBlockBackward, rwkvBlockForward, WKV_EVERY, zeroRwkvGrads } from './rwkv7-grad.js';
import { attnBlockBackward, attnBlockForward, zeroAttnGrads } from './attention-grad.js';
import { embedBackward, embedForward, headLossBackward } from './loss.js';

/** The parameters as trained: the embedding NOT folded with ln0, and ln0 itself. */
export interface TrainModel {
  cfg: ModelConfig;
  /** Same layout as the inference weights, except `emb` is the raw embedding table. */
  weights: ModelWeights;
  ln0w: Float32Array;
  ln0b: Float32Array;
}

export interface GradOptions {
  /** Attention chunk size B and top-k (default: the model config's). */
  chunk?: number;
  topk?: number;
  /** Tokens between WKV state checkpoints (default 32). */
  wkvEvery?: number;
  /** Tokens per head/loss segment (default 256). */
  segment?: number;
  /**
   * Add RWKV-LM's L2Wrap term to the gradient (SPEC §5: 1e-4/T·max-logit on each token's arg-max
   * logit); the loss value is unchanged. Default false (the plain cross-entropy gradient).
   */
  l2wrap?: boolean;
  /** Per-target-token loss weights (LongCE), length T−1; constants, not differentiated. */
  tokenWeights?: ArrayLike<number>;
}

export interface GradResult {
  loss: number;
  grads: Map<string, Float32Array>;
}

/** Reads a checkpoint for training (validated like loadWeights; emb kept unfolded). */
export function trainModelFromSource(src: TensorSource, opts: { chunk?: number; topk?: number } = {}): TrainModel {
  const cfg = inferConfig(src);
  if (opts.chunk !== undefined) cfg.chunk = opts.chunk;
  if (opts.topk !== undefined) cfg.topk = opts.topk;
  checkAttentionParams(cfg.chunk, cfg.topk);
  const weights = loadWeights(src, cfg, sharedF32);
  const p = rwkvPrefix(cfg);
  weights.emb = src.readF32(`${p}emb.weight`, sharedF32);
  return { cfg, weights, ln0w: src.readF32(`${p}blocks.0.ln0.weight`), ln0b: src.readF32(`${p}blocks.0.ln0.bias`) };
}

export function loadTrainModel(path: string, opts: { chunk?: number; topk?: number } = {}): TrainModel {
  const src = openCheckpoint(path);
  try {
    return trainModelFromSource(src, opts);
  } finally {
    src.close();
  }
}

/** From inference weights (embedding already normalised): ln0 becomes weight 1, bias 0. */
export function trainModelFromWeights(cfg: ModelConfig, weights: ModelWeights): TrainModel {
  return { cfg, weights, ln0w: new Float32Array(cfg.dim).fill(1), ln0b: new Float32Array(cfg.dim) };
}

/** Named views of a TrainModel-shaped set of tensors (parameters or gradients), in checkpoint order. */
export function namedTensors(cfg: ModelConfig, w: ModelWeights, ln0w: Float32Array, ln0b: Float32Array): Map<string, Float32Array> {
  const p = rwkvPrefix(cfg);
  const out = new Map<string, Float32Array>();
  for (const t of weightsToTensors(cfg, w)) out.set(t.name, t.data);
  out.set(`${p}blocks.0.ln0.weight`, ln0w);
  out.set(`${p}blocks.0.ln0.bias`, ln0b);
  return out;
}

/** The model's parameters by name (live views: writing into them changes the model). */
export function parameterTensors(m: TrainModel): Map<string, Float32Array> {
  return namedTensors(m.cfg, m.weights, m.ln0w, m.ln0b);
}

/** A training sequence needs ≥ 2 tokens (inputs and next-token targets), all within the vocabulary. */
export function checkTrainingTokens(tokens: ArrayLike<number>, V: number): void {
  if (tokens.length < 2) fail(`need at least 2 tokens to compute a next-token loss (got ${tokens.length})`);
  for (let t = 0; t < tokens.length; t++) {
    const id = tokens[t];
    if (!Number.isInteger(id) || id < 0 || id >= V) fail(`token id ${id} at position ${t} is out of range for vocabulary ${V}`);
  }
}

export function computeGradients(m: TrainModel, tokens: ArrayLike<number>, opts: GradOptions = {}): GradResult {
  const { cfg, weights: w } = m;
  const C = cfg.dim, V = cfg.vocab;
  checkTrainingTokens(tokens, V);
  const B = opts.chunk ?? cfg.chunk, topk = opts.topk ?? cfg.topk;
  checkAttentionParams(B, topk);
  const every = opts.wkvEvery ?? WKV_EVERY;
  if (!Number.isInteger(every) || every < 1) fail(`WKV checkpoint interval must be a positive integer (got ${every})`);
  const T = tokens.length - 1;
  if (opts.tokenWeights && opts.tokenWeights.length !== T) fail(`tokenWeights has ${opts.tokenWeights.length} entries for ${T} target tokens`);
  const inputs = Array.from({ length: T }, (_, t) => tokens[t]);
  const targets = Array.from({ length: T }, (_, t) => tokens[t + 1]);
  const order = layout(cfg);
  const ws = new Workspace();

  // forward, keeping each block's input
  const h = sharedF32(T * C);
  embedForward(h, w.emb, m.ln0w, m.ln0b, inputs, T, C);
  const vFirst = sharedF32(T * C);
  const inputsOf: (Float32Array | undefined)[] = [];
  for (const e of order) {
    const saved = sharedF32(T * C);
    saved.set(h);
    inputsOf.push(saved);
    if (e.kind === 'rwkv') rwkvBlockForward(ws, cfg, w.blocks[e.index], e.index, h, vFirst, T, every);
    else attnBlockForward(ws, cfg, w.attn[e.index], h, T, B, topk);
  }

  // gradients, shaped like the weights
  const g: ModelWeights = {
    emb: new Float32Array(w.emb.length), lnOutW: new Float32Array(C), lnOutB: new Float32Array(C),
    head: new Float32Array(w.head.length), blocks: w.blocks.map(zeroRwkvGrads), attn: w.attn.map(zeroAttnGrads),
  };
  const gln0w = new Float32Array(C), gln0b = new Float32Array(C);

  // backward
  const dh = sharedF32(T * C);
  const loss = headLossBackward(ws, dh, g.head, g.lnOutW, g.lnOutB, h, w.lnOutW, w.lnOutB, w.head, targets, T, C, V, opts.segment, opts.l2wrap ?? false, opts.tokenWeights);
  const dvFirst = sharedF32(T * C);
  for (let b = order.length - 1; b >= 0; b--) {
    const e = order[b], hIn = inputsOf[b]!;
    if (e.kind === 'rwkv') rwkvBlockBackward(ws, cfg, w.blocks[e.index], g.blocks[e.index], e.index, hIn, dh, vFirst, dvFirst, T, every);
    else attnBlockBackward(ws, cfg, w.attn[e.index], g.attn[e.index], hIn, dh, T, B, topk);
    inputsOf[b] = undefined;
  }
  embedBackward(ws, g.emb, gln0w, gln0b, dh, w.emb, m.ln0w, inputs, T, C);
  return { loss, grads: namedTensors(cfg, g, gln0w, gln0b) };
}
