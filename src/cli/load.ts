/** Loading the model a command names, with the shared flags (--chunk, --topk, --attention). */
import { Model } from '../model/model.js';
import type { AttentionSemantics } from '../model/config.js';
import { fail } from '../util/errors.js';

export interface ModelFlags {
  model?: string;
  chunk?: number;
  topk?: number;
  attention?: string;
  backend?: string;
}

export function loadModel(o: ModelFlags): Model {
  if (!o.model) fail('no model given (use --model PATH)');
  if (o.attention !== undefined && o.attention !== 'moba' && o.attention !== 'official') {
    fail(`--attention must be 'moba' or 'official' (got '${o.attention}')`);
  }
  if (o.backend !== undefined && o.backend !== 'cpu' && o.backend !== 'auto') {
    fail(`backend '${o.backend}' is not available in this build (use cpu)`);
  }
  return Model.load(o.model, { chunk: o.chunk, topk: o.topk, attention: o.attention as AttentionSemantics | undefined });
}
