/**
 * The whole model: embedding, the hybrid stack of RWKV-7 and attention blocks, output norm and head.
 * forward() consumes tokens into a state and returns logits; one call or many, any split, the same
 * numbers (moba semantics).
 */
import { openCheckpoint } from '../io/open.js';
import type { TensorSource } from '../io/types.js';
import { fail } from '../util/errors.js';
import { layout, type AttentionSemantics, type LayoutEntry, type ModelConfig } from './config.js';
import { inferConfig, loadWeights, type ModelWeights } from './weights.js';
import { createState, type ModelState } from './state.js';
import { modelFingerprint } from './state-io.js';
import { rwkvBlock } from './rwkv7-block.js';
import { attentionBlock } from './attention-block.js';
import { Workspace } from '../backend/cpu/workspace.js';
import { heapF32 } from '../backend/cpu/shared.js';
import { linear } from '../backend/cpu/matmul.js';
import { layerNorm } from '../backend/cpu/ops.js';

export interface LoadOptions {
  chunk?: number;
  topk?: number;
  attention?: AttentionSemantics;
}

export interface ForwardOptions {
  /** Which rows of logits to return: every token's, only the last token's, or none. */
  logits?: 'all' | 'last' | 'none';
  /** Tokens per internal segment, bounding scratch memory on long inputs. */
  segment?: number;
}

export class Model {
  readonly order: LayoutEntry[];
  private ws = new Workspace();

  constructor(readonly cfg: ModelConfig, readonly weights: ModelWeights, public attention: AttentionSemantics = 'moba') {
    this.order = layout(cfg);
  }

  static load(path: string, opts: LoadOptions = {}): Model {
    const src = openCheckpoint(path);
    try {
      return Model.fromSource(src, opts);
    } finally {
      src.close();
    }
  }

  static fromSource(src: TensorSource, opts: LoadOptions = {}): Model {
    const cfg = inferConfig(src);
    if (opts.chunk !== undefined) cfg.chunk = opts.chunk;
    if (opts.topk !== undefined) cfg.topk = opts.topk;
    checkAttentionParams(cfg.chunk, cfg.topk);
    return new Model(cfg, loadWeights(src, cfg, heapF32), opts.attention ?? 'moba');
  }

  readonly backend = 'cpu';
  private fp: string | undefined;

  get fingerprint(): string {
    return (this.fp ??= modelFingerprint(this.cfg, this.weights));
  }

  newState(): ModelState {
    return createState(this.cfg);
  }

  exportState(s: ModelState): ModelState {
    return s;
  }

  importState(m: ModelState): ModelState {
    return m;
  }

  /**
   * Runs `tokens` through the model from `state` (updated in place). Returns logits [rows, V] as
   * requested. With "official" attention a call's split matters (it mirrors the authors' package).
   */
  forward(tokens: ArrayLike<number>, state: ModelState, opts: ForwardOptions = {}): Float32Array {
    const cfg = this.cfg, C = cfg.dim, V = cfg.vocab;
    const T = tokens.length;
    if (T === 0) fail('no tokens to process (empty input)');
    for (let t = 0; t < T; t++) {
      const id = tokens[t];
      if (!Number.isInteger(id) || id < 0 || id >= V) fail(`token id ${id} at position ${t} is out of range for vocabulary ${V}`);
    }
    const mode = opts.logits ?? 'all';
    const seg = this.attention === 'official' ? T : Math.max(1, opts.segment ?? 512);
    const out = new Float32Array(mode === 'all' ? T * V : mode === 'last' ? V : 0);
    for (let s = 0; s < T; s += seg) {
      const n = Math.min(seg, T - s);
      const h = this.hidden(tokens, s, n, state);
      if (mode === 'all') this.head(out.subarray(s * V, (s + n) * V), h, n);
      else if (mode === 'last' && s + n === T) this.head(out, h.subarray((n - 1) * C, n * C), 1);
    }
    return out;
  }

  /** Embeds tokens[s, s+n) and runs every block; returns the final hidden rows (before ln_out). */
  private hidden(tokens: ArrayLike<number>, s: number, n: number, state: ModelState): Float32Array {
    const cfg = this.cfg, C = cfg.dim, w = this.weights;
    const h = this.ws.get('h', n * C);
    for (let t = 0; t < n; t++) h.set(w.emb.subarray(tokens[s + t] * C, (tokens[s + t] + 1) * C), t * C);
    const vFirst = this.ws.get('vFirst', n * C);
    for (const e of this.order) {
      if (e.kind === 'rwkv') rwkvBlock(this.ws, cfg, w.blocks[e.index], state.rwkv[e.index], e.index, h, vFirst, n);
      else attentionBlock(this.ws, cfg, w.attn[e.index], state.attn[e.index], this.attention, h, n);
    }
    state.pos += n;
    return h;
  }

  private head(out: Float32Array, h: Float32Array, n: number): void {
    const C = this.cfg.dim;
    const x = this.ws.get('headIn', n * C);
    layerNorm(x, h, this.weights.lnOutW, this.weights.lnOutB, n, C);
    const logits = this.ws.get('logits', n * this.cfg.vocab);
    linear(logits, x, this.weights.head, n, C, this.cfg.vocab);
    out.set(logits);
  }
}

export function checkAttentionParams(chunk: number, topk: number): void {
  if (!Number.isInteger(chunk) || chunk <= 0) fail(`chunk size must be a positive integer (got ${chunk})`);
  if (!Number.isInteger(topk) || topk <= 0) fail(`top-k must be a positive integer (got ${topk})`);
}
