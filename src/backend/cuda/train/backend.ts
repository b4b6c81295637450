/**
 * The training loop's backend on an NVIDIA GPU (src/train/backend.ts): a micro-batch is one
 * forward/backward of all its sequences (B·T rows), gradients are accumulated on the device over the
 * step's micro-batches, clipping and AdamW run on the device with fp32 master weights. The host model
 * is refreshed from the device only when asked (checkpoints, LongCE weights, the end).
 */
import type { BackendSpec, OptimizerState, TrainBackend } from '../../../train/backend.js';
import { parameterTensors, type TrainModel } from '../../../train/model-grad.js';
import { CudaTrainer } from './grad.js';

export class CudaTrainBackend implements TrainBackend {
  readonly description: string;
  private tr: CudaTrainer;

  constructor(private model: TrainModel, private spec: BackendSpec, device = 0) {
    // frozen parameters need no gradients (stage 1): their weight-gradient GEMMs and sums are skipped
    this.tr = new CudaTrainer(model, { device, trainable: spec.trainable, frozenGrads: false });
    this.tr.initOptimizer(spec.lrScale);
    this.description = `cuda (${this.tr.ctx.info.name})`;
  }

  microBatch(seqs: ArrayLike<number>[], o: { first: boolean; denom: number; tokenWeights?: ArrayLike<number>[] }): number[] {
    const { chunk, topk, l2wrap } = this.spec;
    // computeBatch's gradient is of the mean over its Bn·T tokens; each sequence must weigh 1/denom
    return this.tr.computeBatch(seqs, { chunk, topk, l2wrap, tokenWeights: o.tokenWeights, accumulate: !o.first, scale: seqs.length / o.denom });
  }

  step(lr: number): number {
    return this.tr.step(lr, { gradClip: this.spec.gradClip, adam: this.spec.adam });
  }

  syncModel(): void {
    const cur = this.tr.getParams();
    for (const [name, v] of parameterTensors(this.model)) v.set(cur.get(name)!);
  }

  optimizerState(): OptimizerState {
    return this.tr.exportOptimizer();
  }

  setOptimizerState(s: OptimizerState): void {
    this.tr.importOptimizer(s.t, s.m, s.v);
  }

  dispose(): void {
    this.tr.dispose();
  }
}
