import type { Command } from 'commander';
import { writeSafetensors } from '../../io/safetensors.js';
import { readStateFile, stateTensors, writeStateFile } from '../../model/state-io.js';
import { fail } from '../../util/errors.js';
import { int, readTokensFile } from '../args.js';
import { loadRunner, type ModelFlags } from '../load.js';
import { addModelFlags } from './flags.js';

interface ForwardFlags extends ModelFlags {
  tokens: string;
  out: string;
  mode: string;
  prefill?: number;
  stateIn?: string;
  stateOut?: string;
}

/** `rwkvx forward`: logits of every token and the final state, to a safetensors file. */
export function register(program: Command): void {
  addModelFlags(
    program
      .command('forward')
      .description('run a token sequence; write logits [T, V] and the final state to safetensors')
      .requiredOption('--tokens <file>', 'JSON array of token ids')
      .requiredOption('--out <file>', 'output .safetensors')
      .option('--mode <mode>', 'parallel (one call) or step (one token per call)', 'parallel')
      .option('--prefill <n>', 'first N tokens in one parallel call, the rest one at a time', int('--prefill', 0))
      .option('--state-in <file>', 'start from a saved state instead of an empty one')
      .option('--state-out <file>', 'save the final state'),
  ).action(async (o: ForwardFlags) => {
    if (o.mode !== 'parallel' && o.mode !== 'step') fail(`--mode must be 'parallel' or 'step' (got '${o.mode}')`);
    const tokens = readTokensFile(o.tokens);
    if (o.prefill !== undefined && o.prefill > tokens.length) fail(`--prefill ${o.prefill} is longer than the ${tokens.length} tokens given`);
    const model = await loadRunner(o);
    const { cfg } = model;
    for (const [i, id] of tokens.entries()) if (id >= cfg.vocab) fail(`token id ${id} at position ${i} is out of range for vocabulary ${cfg.vocab}`);
    const state = o.stateIn ? model.importState(readStateFile(o.stateIn, cfg, model.fingerprint)) : model.newState();
    const T = tokens.length, V = cfg.vocab;
    const logits = new Float32Array(T * V);
    const first = o.prefill ?? (o.mode === 'parallel' ? T : 0);
    if (first > 0) logits.set(model.forward(tokens.slice(0, first), state), 0);
    for (let t = first; t < T; t++) logits.set(model.forward([tokens[t]], state), t * V);
    const host = model.exportState(state);
    writeSafetensors(o.out, [{ name: 'logits', dtype: 'F32', shape: [T, V], data: logits }, ...stateTensors(host, cfg)]);
    if (o.stateOut) writeStateFile(o.stateOut, host, cfg, model.fingerprint);
    model.dispose?.();
  });
}
