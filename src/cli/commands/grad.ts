import type { Command } from 'commander';
import { writeSafetensors, type TensorToWrite } from '../../io/safetensors.js';
import { openCheckpoint } from '../../io/open.js';
import { expectedTensors } from '../../model/weights.js';
import { computeGradients, trainModelFromSource } from '../../train/model-grad.js';
import { fail } from '../../util/errors.js';
import { readTokensFile } from '../args.js';
import type { ModelFlags } from '../load.js';
import { addModelFlags } from './flags.js';

interface GradFlags extends ModelFlags {
  tokens: string;
  out: string;
}

/** `rwkvx grad`: mean next-token cross-entropy of a token sequence and its gradient for every parameter. */
export function register(program: Command): void {
  addModelFlags(
    program
      .command('grad')
      .description('loss (mean next-token cross-entropy) and the gradient of every parameter, to safetensors')
      .requiredOption('--tokens <file>', 'JSON array of token ids (inputs tokens[0..T-2], targets tokens[1..T-1])')
      .requiredOption('--out <file>', "output .safetensors: 'loss' [1] and 'grad.<parameter name>' for every parameter"),
  ).action(async (o: GradFlags) => {
    if (o.attention !== undefined && o.attention !== 'moba') {
      fail(`gradients use the trained attention semantics only: --attention must be 'moba' (got '${o.attention}')`);
    }
    if (o.backend !== undefined && o.backend !== 'cpu' && o.backend !== 'auto' && o.backend !== 'cuda') fail(`backend '${o.backend}' is not available for gradients (use cpu, cuda or auto)`);
    const tokens = readTokensFile(o.tokens);
    if (tokens.length < 2) fail(`${o.tokens}: need at least 2 tokens to compute a next-token loss (got ${tokens.length})`);
    if (!o.model) fail('no model given (use --model PATH)');
    const src = openCheckpoint(o.model);
    let model;
    try {
      model = trainModelFromSource(src, { chunk: o.chunk, topk: o.topk });
    } finally {
      src.close();
    }
    // --backend cuda: the GPU (an error without one); auto: the GPU when present, else the CPU
    let useCuda = false;
    if (o.backend === 'cuda' || o.backend === 'auto') {
      const { cudaAvailable } = await import('../../backend/cuda/driver.js');
      const a = cudaAvailable();
      if (a.ok) useCuda = true;
      else if (o.backend === 'cuda') fail(a.reason);
    }
    const { loss, grads } = useCuda
      ? (await import('../../backend/cuda/train/grad.js')).cudaComputeGradients(model, tokens)
      : computeGradients(model, tokens);
    const out: TensorToWrite[] = [{ name: 'loss', dtype: 'F32', shape: [1], data: Float32Array.of(loss) }];
    for (const [name, shape] of expectedTensors(model.cfg)) out.push({ name: `grad.${name}`, dtype: 'F32', shape, data: grads.get(name)! });
    writeSafetensors(o.out, out);
  });
}
