/**
 * What the CLI needs of a model, whichever backend runs it: the CPU `Model` (src/model/model.ts)
 * and the CUDA `CudaModel` (src/backend/cuda/model.ts) both satisfy it.
 */
import type { AttentionSemantics, ModelConfig } from './config.js';
import type { ForwardOptions } from './model.js';
import type { ModelState } from './state.js';

export interface ModelRunner<S = unknown> {
  readonly cfg: ModelConfig;
  attention: AttentionSemantics;
  /** 'cpu' or 'cuda'. */
  readonly backend?: string;
  newState(): S;
  /** Consumes tokens into `state` (updated in place); logits as float32 rows of V. */
  forward(tokens: ArrayLike<number>, state: S, opts?: ForwardOptions): Float32Array;
  /** Names the model's weights (shape + hash of samples): state files carry it. */
  readonly fingerprint: string;
  /** Converts between the backend's state and a host `ModelState` (identity on the CPU). */
  exportState(s: S): ModelState;
  importState(m: ModelState): S;
  /** Releases device memory (no-op on the CPU). */
  dispose?(): void;
}
