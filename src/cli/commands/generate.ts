import type { Command } from 'commander';
import { WorldTokenizer } from '../../tokenizer/index.js';
import { chatPrompt, generate, type GenerateStats } from '../../generate/generate.js';
import { DEFAULT_SAMPLING } from '../../generate/sampler.js';
import { readStateFile, writeStateFile } from '../../model/state-io.js';
import { fail } from '../../util/errors.js';
import { collect, float, int, readStdin } from '../args.js';
import { loadRunner, type ModelFlags } from '../load.js';
import { addModelFlags } from './flags.js';

interface GenerateFlags extends ModelFlags {
  prompt?: string;
  chat?: boolean;
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stop: string[];
  stats?: boolean;
  stateIn?: string;
  stateOut?: string;
}

/** `rwkvx generate`: stream a continuation of a prompt to stdout. */
export function register(program: Command): void {
  addModelFlags(
    program
      .command('generate')
      .description('generate text from a prompt, streamed to stdout')
      .option('--prompt <text>', "the prompt ('-' reads stdin)")
      .option('--chat', 'wrap the prompt as "User: …\\n\\nAssistant:" and stop at the end of the turn')
      .option('--max-tokens <n>', 'tokens to generate at most', int('--max-tokens', 0), 200)
      .option('--temperature <t>', 'sampling temperature (0 = greedy)', float('--temperature'), DEFAULT_SAMPLING.temperature)
      .option('--top-p <p>', 'nucleus sampling mass (1 = off)', float('--top-p'), DEFAULT_SAMPLING.topP)
      .option('--top-k <k>', 'sample among the k most likely tokens (0 = off)', int('--top-k', 0), DEFAULT_SAMPLING.topK)
      .option('--seed <n>', 'random seed (same seed, same text)', int('--seed'), 42)
      .option('--stop <text>', 'stop when this text is produced (repeatable)', collect, [])
      .option('--stats', 'print prompt/generation speed to stderr at the end')
      .option('--state-in <file>', 'continue from a saved state (e.g. a prefilled document)')
      .option('--state-out <file>', 'save the state after generation'),
  ).action(async (o: GenerateFlags) => {
    let prompt = o.prompt;
    if (prompt === undefined) fail('no prompt given (use --prompt TEXT, or --prompt - to read stdin)');
    if (prompt === '-') prompt = readStdin();
    if (prompt.length === 0 && !o.stateIn) fail('the prompt is empty');
    const model = await loadRunner(o);
    const tok = WorldTokenizer.load();
    const text = o.chat ? chatPrompt(prompt) : prompt;
    const ids = tok.encode(text);
    const state = o.stateIn ? model.importState(readStateFile(o.stateIn, model.cfg, model.fingerprint)) : model.newState();
    const stop = o.chat ? [...o.stop, '\n\n'] : o.stop;
    const stats = {} as GenerateStats;
    for (const piece of generate(model, tok, ids, state, { ...o, stop }, stats)) process.stdout.write(piece);
    process.stdout.write('\n');
    if (o.stateOut) writeStateFile(o.stateOut, model.exportState(state), model.cfg, model.fingerprint);
    model.dispose?.();
    if (o.stats) {
      const pf = (stats.promptTokens / (stats.prefillMs / 1000)).toFixed(1);
      const dc = stats.generatedTokens > 1 ? ((stats.generatedTokens - 1) / (stats.decodeMs / 1000)).toFixed(1) : '-';
      process.stderr.write(`prompt ${stats.promptTokens} tokens in ${stats.prefillMs.toFixed(0)} ms (${pf} tok/s); generated ${stats.generatedTokens} tokens (${dc} tok/s); ended by ${stats.reason}\n`);
    }
  });
}
