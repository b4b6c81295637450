/**
 * The recurrent state of one sequence: per RWKV-7 block the token-shift rows and the WKV matrix,
 * per attention block the K/V cache (with each completed chunk's mean key) and its channel-mix shift.
 */
import type { ModelConfig } from './config.js';
import { sharedF32 } from '../backend/cpu/shared.js';

export interface RwkvLayerState {
  attXPrev: Float32Array; // [C] LN1 output of the previous token
  wkv: Float32Array;      // [H, N, N], rows = value index
  ffnXPrev: Float32Array; // [C] LN2 output of the previous token
}

export interface AttnLayerState {
  /** Cached tokens. */
  len: number;
  /** Rows of C; capacity grows by doubling, only the first `len` rows are meaningful. */
  k: Float32Array;
  v: Float32Array;
  /** Mean key of each completed chunk, `nMeans` rows of C (capacity may be larger). */
  means: Float32Array;
  nMeans: number;
  ffnXPrev: Float32Array;
}

export interface ModelState {
  /** Tokens consumed so far (absolute position of the next token). */
  pos: number;
  rwkv: RwkvLayerState[];
  attn: AttnLayerState[];
}

export function createState(cfg: ModelConfig): ModelState {
  const C = cfg.dim;
  const rwkv: RwkvLayerState[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    rwkv.push({ attXPrev: new Float32Array(C), wkv: new Float32Array(cfg.heads * cfg.headSize * cfg.headSize), ffnXPrev: new Float32Array(C) });
  }
  const attn: AttnLayerState[] = [];
  for (let j = 0; j < cfg.nAttn; j++) {
    attn.push({ len: 0, k: new Float32Array(0), v: new Float32Array(0), means: new Float32Array(0), nMeans: 0, ffnXPrev: new Float32Array(C) });
  }
  return { pos: 0, rwkv, attn };
}

export function cloneState(s: ModelState): ModelState {
  return {
    pos: s.pos,
    rwkv: s.rwkv.map((r) => ({ attXPrev: r.attXPrev.slice(), wkv: r.wkv.slice(), ffnXPrev: r.ffnXPrev.slice() })),
    attn: s.attn.map((a) => ({ len: a.len, k: a.k.slice(), v: a.v.slice(), means: a.means.slice(), nMeans: a.nMeans, ffnXPrev: a.ffnXPrev.slice() })),
  };
}

/** Makes room for `rows` rows of C in the K/V cache, doubling capacity to keep appends amortised O(1). */
export function reserveKv(a: AttnLayerState, rows: number, C: number): void {
  if (a.k.length >= rows * C) return;
  let cap = Math.max(16, a.k.length / C);
  while (cap < rows) cap *= 2;
  const k = sharedF32(cap * C); k.set(a.k.subarray(0, a.len * C));
  const v = sharedF32(cap * C); v.set(a.v.subarray(0, a.len * C));
  a.k = k; a.v = v;
}
