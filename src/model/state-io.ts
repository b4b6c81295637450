/**
 * The state as named tensors — used both in `forward --out` files and in state files
 * (`--state-in/--state-out`), which are safetensors with a versioned header that names the model.
 */
import { writeSafetensors } from '../io/safetensors.js';
import { openCheckpoint } from '../io/open.js';
import type { DType } from '../io/types.js';
import { fail } from '../util/errors.js';
import type { ModelConfig } from './config.js';
import type { ModelWeights } from './weights.js';
import { createState, reserveKv, type ModelState } from './state.js';
import { updateChunkMeans } from './attention-block.js';

export interface NamedTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: ArrayBufferView;
}

export const STATE_META_KEY = 'rwkvx_state';
export const STATE_VERSION = 1;

/** state.rwkv.{i}.att_x_prev|wkv|ffn_x_prev and state.attn.{j}.k|v|ffn_x_prev. */
export function stateTensors(state: ModelState, cfg: ModelConfig): NamedTensor[] {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize;
  const out: NamedTensor[] = [];
  state.rwkv.forEach((r, i) => {
    out.push({ name: `state.rwkv.${i}.att_x_prev`, dtype: 'F32', shape: [C], data: r.attXPrev });
    out.push({ name: `state.rwkv.${i}.wkv`, dtype: 'F32', shape: [H, N, N], data: r.wkv });
    out.push({ name: `state.rwkv.${i}.ffn_x_prev`, dtype: 'F32', shape: [C], data: r.ffnXPrev });
  });
  state.attn.forEach((a, j) => {
    out.push({ name: `state.attn.${j}.k`, dtype: 'F32', shape: [a.len, C], data: a.k.subarray(0, a.len * C) });
    out.push({ name: `state.attn.${j}.v`, dtype: 'F32', shape: [a.len, C], data: a.v.subarray(0, a.len * C) });
    out.push({ name: `state.attn.${j}.ffn_x_prev`, dtype: 'F32', shape: [C], data: a.ffnXPrev });
  });
  return out;
}

/**
 * A fingerprint of the model a state belongs to: its shape plus a hash of sampled weights, so a
 * state from a different model of the same shape is refused too.
 */
export function modelFingerprint(cfg: ModelConfig, w: ModelWeights): string {
  const f = new Fingerprint();
  f.mix(w.emb); f.mix(w.head);
  for (const b of w.blocks) f.mix(b.Wr);
  for (const a of w.attn) f.mix(a.Wq);
  return f.digest(cfg);
}

/**
 * The model fingerprint built incrementally (for loaders that stream tensors): mix the embedding,
 * the head, each block's Wr, each attention block's Wq, in that order.
 */
export class Fingerprint {
  private h = 0x811c9dc5;
  mix(a: Float32Array): void {
    const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
    const step = Math.max(1, Math.floor(u.length / 4096));
    let h = this.h;
    for (let i = 0; i < u.length; i += step) h = Math.imul(h ^ u[i], 0x01000193) >>> 0;
    this.h = h;
  }
  digest(cfg: ModelConfig): string {
    const shape = [cfg.arch, cfg.vocab, cfg.dim, cfg.nLayer, cfg.nAttn, cfg.ffn, cfg.attnFfn].join('-');
    return `${shape}:${this.h.toString(16).padStart(8, '0')}`;
  }
}

interface StateHeader {
  version: number;
  model: string;
  chunk: number;
  topk: number;
  pos: number;
}

export function writeStateFile(path: string, state: ModelState, cfg: ModelConfig, fingerprint: string): void {
  const header: StateHeader = { version: STATE_VERSION, model: fingerprint, chunk: cfg.chunk, topk: cfg.topk, pos: state.pos };
  writeSafetensors(path, stateTensors(state, cfg), { [STATE_META_KEY]: JSON.stringify(header) });
}

export function readStateFile(path: string, cfg: ModelConfig, fingerprint: string): ModelState {
  const src = openCheckpoint(path);
  try {
    const raw = src.metadata[STATE_META_KEY];
    if (raw === undefined) fail(`${path} is not an rwkvx state file (no '${STATE_META_KEY}' metadata)`);
    let hd: StateHeader;
    try { hd = JSON.parse(raw); } catch { fail(`${path}: state header is not valid JSON`); }
    if (hd.version !== STATE_VERSION) fail(`${path}: state file version ${hd.version} is not supported (expected ${STATE_VERSION})`);
    const fp = fingerprint;
    if (hd.model !== fp) fail(`${path} was written for a different model (${hd.model}), not this one (${fp})`);
    if (cfg.nAttn > 0 && hd.chunk !== cfg.chunk) fail(`${path} was written with chunk size ${hd.chunk}, but the model now uses ${cfg.chunk}`);
    const state = createState(cfg);
    state.pos = hd.pos;
    const C = cfg.dim;
    const read = (name: string, shape: number[]): Float32Array => {
      const info = src.info(name);
      if (!info) fail(`${path}: missing state tensor '${name}'`);
      if (info.shape.length !== shape.length || info.shape.some((d, k) => d !== shape[k])) {
        fail(`${path}: state tensor '${name}' has shape [${info.shape}], expected [${shape}]`);
      }
      return src.readF32(name);
    };
    state.rwkv.forEach((r, i) => {
      r.attXPrev.set(read(`state.rwkv.${i}.att_x_prev`, [C]));
      r.wkv.set(read(`state.rwkv.${i}.wkv`, [cfg.heads, cfg.headSize, cfg.headSize]));
      r.ffnXPrev.set(read(`state.rwkv.${i}.ffn_x_prev`, [C]));
    });
    state.attn.forEach((a, j) => {
      const len = src.info(`state.attn.${j}.k`)?.shape[0] ?? 0;
      if (len !== hd.pos) fail(`${path}: attention cache ${j} holds ${len} tokens but the state is at position ${hd.pos}`);
      reserveKv(a, len, C);
      a.k.set(read(`state.attn.${j}.k`, [len, C]));
      a.v.set(read(`state.attn.${j}.v`, [len, C]));
      a.len = len;
      a.ffnXPrev.set(read(`state.attn.${j}.ffn_x_prev`, [C]));
      updateChunkMeans(a, cfg);
    });
    return state;
  } finally {
    src.close();
  }
}
