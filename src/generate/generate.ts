/** Autoregressive generation: prefill the prompt, then sample and feed back one token at a time. */
import type { ModelRunner } from '../model/runner.js';
import { StreamDecoder, type WorldTokenizer } from '../tokenizer/index.js';
import { fail } from '../util/errors.js';
import { Rng } from './rng.js';
import { checkSampling, sample, type SamplingOptions } from './sampler.js';
import { StopMatcher } from './stop.js';

export interface GenerateOptions extends SamplingOptions {
  maxTokens: number;
  stop: string[];
  seed: number;
}

export interface GenerateStats {
  promptTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  /** Why generation ended. */
  reason: 'max_tokens' | 'stop' | 'end_of_text';
}

/** The chat format of the RWKV World models: "User: …\n\nAssistant:"; "\n\n" ends a turn. */
export function chatPrompt(message: string): string {
  return `User: ${message.replace(/\r\n/g, '\n').replace(/\n\n+/g, '\n').trim()}\n\nAssistant:`;
}

/**
 * Yields text pieces as they become final (complete UTF-8, not part of a possible stop string).
 * The state is advanced in place, so a caller can keep it for a follow-up turn.
 */
export function* generate<S>(
  model: ModelRunner<S>, tok: WorldTokenizer, prompt: number[], state: S, o: GenerateOptions, stats?: GenerateStats,
): Generator<string, void, void> {
  checkSampling(o);
  if (!Number.isInteger(o.maxTokens) || o.maxTokens < 0) fail(`max tokens must be a non-negative integer (got ${o.maxTokens})`);
  if (prompt.length === 0) fail('the prompt is empty');
  const rng = new Rng(o.seed);
  const dec = new StreamDecoder(tok);
  const stop = new StopMatcher(o.stop);
  const st = stats ?? ({} as GenerateStats);
  st.promptTokens = prompt.length;
  st.generatedTokens = 0;
  st.reason = 'max_tokens';
  let t0 = performance.now();
  let logits = model.forward(prompt, state, { logits: 'last' });
  st.prefillMs = performance.now() - t0;
  t0 = performance.now();
  for (let n = 0; n < o.maxTokens; n++) {
    const id = sample(logits, o, rng);
    if (id === 0) { st.reason = 'end_of_text'; break; }
    st.generatedTokens++;
    const text = stop.push(dec.push(id));
    if (text) yield text;
    if (stop.stopped) { st.reason = 'stop'; break; }
    if (n + 1 < o.maxTokens) logits = model.forward([id], state, { logits: 'last' });
  }
  const rest = stop.push(dec.flush()) + stop.flush();
  if (rest) yield rest;
  st.decodeMs = performance.now() - t0;
}
