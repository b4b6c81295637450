/**
 * What the training loop (trainer.ts) needs from a compute backend: gradients of micro-batches added
 * up over a step, one clipped AdamW update, and the parameters and optimizer state for checkpoints.
 * The CPU implementation is here; the CUDA one is src/backend/cuda/train/backend.ts. Both keep the
 * parameters, the AdamW moments and the step count in the same names and layout, so a checkpoint
 * written by one resumes on the other.
 */
import { AdamW, clipGradients, isMatrix, type AdamWOptions, type Param } from './adamw.js';
import { computeGradients, parameterTensors, type TrainModel } from './model-grad.js';
import { expectedTensors } from '../model/weights.js';

export interface BackendSpec {
  /** Whether the optimizer updates this parameter (stage 1: only `moba.`). */
  trainable: (name: string) => boolean;
  /** Learning-rate multiplier per parameter (w0 from scratch). */
  lrScale: (name: string) => number;
  adam: AdamWOptions;
  /** Global gradient-norm clip (0 = none). */
  gradClip: number;
  chunk?: number;
  topk?: number;
  l2wrap: boolean;
}

export interface OptimizerState {
  /** AdamW steps taken (bias correction). */
  t: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

export interface TrainBackend {
  /** 'cpu', or 'cuda (device name)'. */
  readonly description: string;
  /**
   * Adds the gradients of a micro-batch — sequences of equal length, each tokens[0..T−1) predicting
   * tokens[1..T) — divided by `denom` (the sequences of the whole step) to the step's gradients
   * (`first`: start the step from zero). Returns each sequence's mean loss; a non-finite one may end the
   * micro-batch early (the caller stops).
   */
  microBatch(seqs: ArrayLike<number>[], o: { first: boolean; denom: number; tokenWeights?: ArrayLike<number>[] }): number[];
  /**
   * Clips the step's gradients and applies AdamW at `lr`; returns the gradient norm before clipping.
   * With a non-finite norm nothing is updated.
   */
  step(lr: number): number;
  /** Makes the host model's tensors (parameterTensors) the current parameters. */
  syncModel(): void;
  /** AdamW state of the trainable parameters. */
  optimizerState(): OptimizerState;
  setOptimizerState(s: OptimizerState): void;
  dispose(): void;
}

/** The float32 reference: computeGradients per sequence, AdamW on the host, updating the model in place. */
export class CpuTrainBackend implements TrainBackend {
  readonly description = 'cpu';
  private opt: AdamW;
  private params: Param[] = [];
  private grads = new Map<string, Float32Array>();

  constructor(private model: TrainModel, private spec: BackendSpec) {
    const shapes = new Map(expectedTensors(model.cfg));
    for (const [name, value] of parameterTensors(model)) {
      if (!spec.trainable(name)) continue;
      const shape = shapes.get(name)!;
      this.params.push({ name, shape, value, decay: isMatrix(shape), lrScale: spec.lrScale(name) });
    }
    this.opt = new AdamW(this.params, spec.adam);
  }

  microBatch(seqs: ArrayLike<number>[], o: { first: boolean; denom: number; tokenWeights?: ArrayLike<number>[] }): number[] {
    if (o.first) this.grads = new Map(this.params.map((q) => [q.name, new Float32Array(q.value.length)]));
    const { chunk, topk, l2wrap } = this.spec;
    const losses: number[] = [];
    for (let j = 0; j < seqs.length; j++) {
      const r = computeGradients(this.model, seqs[j], { chunk, topk, l2wrap, tokenWeights: o.tokenWeights?.[j] });
      losses.push(r.loss);
      if (!Number.isFinite(r.loss)) break;
      for (const q of this.params) {
        const g = this.grads.get(q.name)!, s = r.grads.get(q.name)!;
        for (let i = 0; i < g.length; i++) g[i] += s[i] / o.denom;
      }
    }
    return losses;
  }

  step(lr: number): number {
    const norm = clipGradients(this.grads, this.spec.gradClip);
    if (Number.isFinite(norm)) this.opt.step(this.grads, lr);
    return norm;
  }

  syncModel(): void {}

  optimizerState(): OptimizerState {
    return { t: this.opt.t, m: this.opt.m, v: this.opt.v };
  }

  setOptimizerState(s: OptimizerState): void {
    this.opt.t = s.t;
    for (const q of this.params) {
      this.opt.m.get(q.name)!.set(s.m.get(q.name)!);
      this.opt.v.get(q.name)!.set(s.v.get(q.name)!);
    }
  }

  dispose(): void {}
}
