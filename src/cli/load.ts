/** Loading the model a command names, with the shared flags (--chunk, --topk, --attention, --backend). */
import { Model } from '../model/model.js';
import type { AttentionSemantics } from '../model/config.js';
import type { ModelRunner } from '../model/runner.js';
import { fail } from '../util/errors.js';

export interface ModelFlags {
  model?: string;
  chunk?: number;
  topk?: number;
  attention?: string;
  backend?: string;
}

function checkFlags(o: ModelFlags): string {
  if (!o.model) fail('no model given (use --model PATH)');
  if (o.attention !== undefined && o.attention !== 'moba' && o.attention !== 'official') {
    fail(`--attention must be 'moba' or 'official' (got '${o.attention}')`);
  }
  const backend = o.backend ?? 'cpu';
  if (backend !== 'cpu' && backend !== 'auto' && backend !== 'cuda') fail(`unknown backend '${backend}' (use cpu, cuda or auto)`);
  return backend;
}

/** The CPU model (commands that need its weights or CPU states: state files). */
export function loadModel(o: ModelFlags): Model {
  const backend = checkFlags(o);
  if (backend === 'cuda') fail('this command runs on the CPU only for now (use --backend cpu)');
  return Model.load(o.model!, { chunk: o.chunk, topk: o.topk, attention: o.attention as AttentionSemantics | undefined });
}

/**
 * A model on the chosen backend: 'cpu'; 'cuda' (a UserError when there is no usable GPU); 'auto':
 * CUDA when a driver and device are present, else the CPU.
 */
export async function loadRunner(o: ModelFlags): Promise<ModelRunner> {
  const backend = checkFlags(o);
  const opts = { chunk: o.chunk, topk: o.topk, attention: o.attention as AttentionSemantics | undefined };
  if (backend === 'cpu') return Model.load(o.model!, opts);
  const { cudaAvailable } = await import('../backend/cuda/driver.js');
  const a = cudaAvailable();
  if (!a.ok) {
    if (backend === 'cuda') fail(a.reason);
    return Model.load(o.model!, opts);
  }
  const { CudaModel } = await import('../backend/cuda/model.js');
  return CudaModel.load(o.model!, opts);
}
