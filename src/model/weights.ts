/**
 * Reading a checkpoint into the model's weights: official RWKV-7 names, the RWKV-X authors' names
 * (`rwkv.` + `moba.{j}.`), or our native safetensors (same names, config in the metadata).
 * Every dimension is read from shapes; a missing, unknown or mis-shaped tensor is a clear error.
 */
import type { F32Alloc, TensorSource } from '../io/types.js';
import { fail } from '../util/errors.js';
import { DEFAULT_CHUNK, DEFAULT_TOPK, type ModelConfig } from './config.js';
import { layerNorm } from '../backend/cpu/ops.js';

export interface RwkvBlockWeights {
  ln1w: Float32Array; ln1b: Float32Array; ln2w: Float32Array; ln2b: Float32Array;
  xr: Float32Array; xw: Float32Array; xk: Float32Array; xv: Float32Array; xa: Float32Array; xg: Float32Array;
  w0: Float32Array; w1: Float32Array; w2: Float32Array;
  a0: Float32Array; a1: Float32Array; a2: Float32Array;
  v0: Float32Array; v1: Float32Array; v2: Float32Array;
  g1: Float32Array; g2: Float32Array;
  kk: Float32Array; ka: Float32Array; rk: Float32Array;
  Wr: Float32Array; Wk: Float32Array; Wv: Float32Array; Wo: Float32Array;
  lnxw: Float32Array; lnxb: Float32Array;
  ffnXk: Float32Array; ffnK: Float32Array; ffnV: Float32Array;
}

export interface AttnBlockWeights {
  ln1w: Float32Array; ln1b: Float32Array; ln2w: Float32Array; ln2b: Float32Array;
  Wq: Float32Array; Wk: Float32Array; Wv: Float32Array; Wo: Float32Array;
  ffnXk: Float32Array; ffnK: Float32Array; ffnV: Float32Array;
}

export interface ModelWeights {
  /** Embedding with block 0's ln0 folded in (SPEC §2). */
  emb: Float32Array;
  lnOutW: Float32Array; lnOutB: Float32Array;
  head: Float32Array;
  blocks: RwkvBlockWeights[];
  attn: AttnBlockWeights[];
}

/** Suffixes of one RWKV-7 block's tensors, with their shapes as functions of the config. */
export function rwkvBlockTensors(cfg: ModelConfig, i: number): [string, number[]][] {
  const C = cfg.dim, { w, a, v, g } = cfg.lora;
  const t: [string, number[]][] = [];
  if (i === 0) t.push(['ln0.weight', [C]], ['ln0.bias', [C]]);
  t.push(['ln1.weight', [C]], ['ln1.bias', [C]], ['ln2.weight', [C]], ['ln2.bias', [C]]);
  for (const n of ['x_r', 'x_w', 'x_k', 'x_v', 'x_a', 'x_g', 'w0', 'a0', 'v0', 'k_k', 'k_a']) t.push([`att.${n}`, [1, 1, C]]);
  t.push(['att.w1', [C, w]], ['att.w2', [w, C]], ['att.a1', [C, a]], ['att.a2', [a, C]]);
  t.push(['att.v1', [C, v]], ['att.v2', [v, C]], ['att.g1', [C, g]], ['att.g2', [g, C]]);
  t.push(['att.r_k', [cfg.heads, cfg.headSize]]);
  for (const n of ['receptance', 'key', 'value', 'output']) t.push([`att.${n}.weight`, [C, C]]);
  t.push(['att.ln_x.weight', [C]], ['att.ln_x.bias', [C]]);
  t.push(['ffn.x_k', [1, 1, C]], ['ffn.key.weight', [cfg.ffn, C]], ['ffn.value.weight', [C, cfg.ffn]]);
  return t;
}

export function attnBlockTensors(cfg: ModelConfig): [string, number[]][] {
  const C = cfg.dim;
  return [
    ['ln1.weight', [C]], ['ln1.bias', [C]], ['ln2.weight', [C]], ['ln2.bias', [C]],
    ['att.receptance.weight', [C, C]], ['att.key.weight', [C, C]], ['att.value.weight', [C, C]], ['att.output.weight', [C, C]],
    ['ffn.x_k', [1, 1, C]], ['ffn.key.weight', [cfg.attnFfn, C]], ['ffn.value.weight', [C, cfg.attnFfn]],
  ];
}

/** Prefixes of the RWKV part and of attention block j for a config. */
export function rwkvPrefix(cfg: ModelConfig): string {
  return cfg.arch === 'rwkvx' ? 'rwkv.' : '';
}
export function attnPrefix(j: number): string {
  return `moba.${j}.`;
}

/** Every tensor a model of this config has, with its shape, in a stable order. */
export function expectedTensors(cfg: ModelConfig): [string, number[]][] {
  const p = rwkvPrefix(cfg);
  const out: [string, number[]][] = [[`${p}emb.weight`, [cfg.vocab, cfg.dim]]];
  for (let i = 0; i < cfg.nLayer; i++) for (const [n, s] of rwkvBlockTensors(cfg, i)) out.push([`${p}blocks.${i}.${n}`, s]);
  out.push([`${p}ln_out.weight`, [cfg.dim]], [`${p}ln_out.bias`, [cfg.dim]], [`${p}head.weight`, [cfg.vocab, cfg.dim]]);
  for (let j = 0; j < cfg.nAttn; j++) for (const [n, s] of attnBlockTensors(cfg)) out.push([`${attnPrefix(j)}${n}`, s]);
  return out;
}

/** Metadata key of our native format (safetensors): JSON of {format, version, arch, chunk, topk}. */
export const NATIVE_META_KEY = 'rwkvx';
export const NATIVE_VERSION = 1;

function shapeOf(src: TensorSource, name: string): number[] {
  const info = src.info(name);
  if (!info) fail(`${src.path}: missing tensor '${name}'`);
  return info.shape;
}

/** Infers the config from tensor names and shapes (and our metadata, when present). */
export function inferConfig(src: TensorSource): ModelConfig {
  const names = src.names();
  if (names.length === 0) fail(`${src.path}: the checkpoint holds no tensors`);
  const isX = names.some((n) => n.startsWith('rwkv.')) || names.some((n) => n.startsWith('moba.'));
  const p = isX ? 'rwkv.' : '';
  if (!names.includes(`${p}emb.weight`)) {
    fail(`${src.path}: not an RWKV-7 / RWKV-X checkpoint (no '${p}emb.weight'; found e.g. '${names[0]}')`);
  }
  const [vocab, dim] = shapeOf(src, `${p}emb.weight`);
  let nLayer = 0;
  const blockRe = new RegExp(`^${p.replace('.', '\\.')}blocks\\.(\\d+)\\.`);
  const attnRe = /^moba\.(\d+)\./;
  let nAttn = 0;
  for (const n of names) {
    const m = blockRe.exec(n);
    if (m) nLayer = Math.max(nLayer, Number(m[1]) + 1);
    const a = attnRe.exec(n);
    if (a) nAttn = Math.max(nAttn, Number(a[1]) + 1);
  }
  if (nLayer === 0) fail(`${src.path}: no '${p}blocks.N.*' tensors`);
  const b = `${p}blocks.0.att.`;
  const [heads, headSize] = shapeOf(src, `${b}r_k`);
  if (heads * headSize !== dim) fail(`${src.path}: att.r_k is [${heads}, ${headSize}] but the width is ${dim}`);
  const rank = (n: string) => shapeOf(src, `${b}${n}`)[1];
  const ffn = shapeOf(src, `${p}blocks.0.ffn.key.weight`)[0];
  const attnFfn = nAttn > 0 ? shapeOf(src, 'moba.0.ffn.key.weight')[0] : 4 * dim;
  let chunk = DEFAULT_CHUNK, topk = DEFAULT_TOPK;
  const meta = src.metadata[NATIVE_META_KEY];
  if (meta !== undefined) {
    let m: { chunk?: unknown; topk?: unknown; version?: unknown };
    try { m = JSON.parse(meta); } catch { fail(`${src.path}: metadata '${NATIVE_META_KEY}' is not valid JSON`); }
    if (typeof m.version === 'number' && m.version > NATIVE_VERSION) fail(`${src.path}: native format version ${m.version} is newer than this rwkvx understands (${NATIVE_VERSION})`);
    if (m.chunk !== undefined) chunk = Number(m.chunk);
    if (m.topk !== undefined) topk = Number(m.topk);
  }
  const cfg: ModelConfig = {
    arch: isX ? 'rwkvx' : 'rwkv7', vocab, dim, heads, headSize, nLayer, ffn,
    lora: { w: rank('w1'), a: rank('a1'), v: rank('v1'), g: rank('g1') },
    nAttn, attnFfn, chunk, topk,
  };
  if (isX && nAttn > 0 && nLayer % nAttn !== 0) {
    fail(`${src.path}: ${nAttn} attention blocks do not divide ${nLayer} RWKV blocks evenly`);
  }
  return cfg;
}

/** Checks that the checkpoint holds exactly the tensors of `cfg`, with the right shapes. */
export function validateTensors(src: TensorSource, cfg: ModelConfig): void {
  const expected = expectedTensors(cfg);
  const want = new Set(expected.map(([n]) => n));
  for (const [name, shape] of expected) {
    const info = src.info(name);
    if (!info) fail(`${src.path}: missing tensor '${name}'`);
    const ok = info.shape.length === shape.length && info.shape.every((d, k) => d === shape[k]);
    if (!ok) fail(`${src.path}: tensor '${name}' has shape [${info.shape}], expected [${shape}]`);
  }
  for (const n of src.names()) if (!want.has(n)) fail(`${src.path}: unknown tensor '${n}'`);
}

/** Reads every weight as float32 (large matrices through `alloc`, so worker threads can see them). */
export function loadWeights(src: TensorSource, cfg: ModelConfig, alloc: F32Alloc): ModelWeights {
  const r = weightReaders(src, cfg, alloc);
  const all = <W extends object>(o: W) => Object.fromEntries(Object.entries(o).map(([k, f]) => [k, (f as () => Float32Array)()]));
  const emb = r.emb();
  const blocks = r.blocks.map((b) => all(b) as unknown as RwkvBlockWeights);
  const attn = r.attn.map((a) => all(a) as unknown as AttnBlockWeights);
  return { emb, lnOutW: r.lnOutW(), lnOutB: r.lnOutB(), head: r.head(), blocks, attn };
}

/** A tree shaped like ModelWeights with other leaves (readers, random initialisations, …). */
export type Leaves<W, T> = { [K in keyof W]: W[K] extends Float32Array ? T : W[K] extends (infer E)[] ? Leaves<E, T>[] : W[K] };

/**
 * Each tensor as a function that reads it (float32) when called: loaders that convert and upload
 * tensor by tensor (the CUDA backend) never hold the whole model in float32. The embedding's reader
 * folds block 0's ln0 into it (SPEC §2).
 */
export function weightReaders(src: TensorSource, cfg: ModelConfig, alloc: F32Alloc): Leaves<ModelWeights, () => Float32Array> {
  validateTensors(src, cfg);
  const p = rwkvPrefix(cfg);
  const get = (name: string) => () => src.readF32(name, alloc);
  const C = cfg.dim;
  const emb = () => {
    const e = src.readF32(`${p}emb.weight`, alloc);
    layerNorm(e, e, src.readF32(`${p}blocks.0.ln0.weight`, alloc), src.readF32(`${p}blocks.0.ln0.bias`, alloc), cfg.vocab, C);
    return e;
  };
  const blocks: Leaves<RwkvBlockWeights, () => Float32Array>[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const b = (n: string) => get(`${p}blocks.${i}.${n}`);
    blocks.push({
      ln1w: b('ln1.weight'), ln1b: b('ln1.bias'), ln2w: b('ln2.weight'), ln2b: b('ln2.bias'),
      xr: b('att.x_r'), xw: b('att.x_w'), xk: b('att.x_k'), xv: b('att.x_v'), xa: b('att.x_a'), xg: b('att.x_g'),
      w0: b('att.w0'), w1: b('att.w1'), w2: b('att.w2'),
      a0: b('att.a0'), a1: b('att.a1'), a2: b('att.a2'),
      v0: b('att.v0'), v1: b('att.v1'), v2: b('att.v2'),
      g1: b('att.g1'), g2: b('att.g2'),
      kk: b('att.k_k'), ka: b('att.k_a'), rk: b('att.r_k'),
      Wr: b('att.receptance.weight'), Wk: b('att.key.weight'), Wv: b('att.value.weight'), Wo: b('att.output.weight'),
      lnxw: b('att.ln_x.weight'), lnxb: b('att.ln_x.bias'),
      ffnXk: b('ffn.x_k'), ffnK: b('ffn.key.weight'), ffnV: b('ffn.value.weight'),
    });
  }
  const attn: Leaves<AttnBlockWeights, () => Float32Array>[] = [];
  for (let j = 0; j < cfg.nAttn; j++) {
    const a = (n: string) => get(`${attnPrefix(j)}${n}`);
    attn.push({
      ln1w: a('ln1.weight'), ln1b: a('ln1.bias'), ln2w: a('ln2.weight'), ln2b: a('ln2.bias'),
      Wq: a('att.receptance.weight'), Wk: a('att.key.weight'), Wv: a('att.value.weight'), Wo: a('att.output.weight'),
      ffnXk: a('ffn.x_k'), ffnK: a('ffn.key.weight'), ffnV: a('ffn.value.weight'),
    });
  }
  return { emb, lnOutW: get(`${p}ln_out.weight`), lnOutB: get(`${p}ln_out.bias`), head: get(`${p}head.weight`), blocks, attn };
}

/**
 * The weights as named float32 tensors in checkpoint naming (the inverse of loadWeights). The
 * embedding is stored already normalised, with block 0's ln0 as the identity.
 */
export function weightsToTensors(cfg: ModelConfig, w: ModelWeights): { name: string; dtype: 'F32'; shape: number[]; data: Float32Array }[] {
  const p = rwkvPrefix(cfg);
  const C = cfg.dim;
  const byName = new Map<string, Float32Array>();
  byName.set(`${p}emb.weight`, w.emb);
  byName.set(`${p}blocks.0.ln0.weight`, new Float32Array(C).fill(1));
  byName.set(`${p}blocks.0.ln0.bias`, new Float32Array(C));
  const rwkvFields: [string, keyof RwkvBlockWeights][] = [
    ['ln1.weight', 'ln1w'], ['ln1.bias', 'ln1b'], ['ln2.weight', 'ln2w'], ['ln2.bias', 'ln2b'],
    ['att.x_r', 'xr'], ['att.x_w', 'xw'], ['att.x_k', 'xk'], ['att.x_v', 'xv'], ['att.x_a', 'xa'], ['att.x_g', 'xg'],
    ['att.w0', 'w0'], ['att.w1', 'w1'], ['att.w2', 'w2'], ['att.a0', 'a0'], ['att.a1', 'a1'], ['att.a2', 'a2'],
    ['att.v0', 'v0'], ['att.v1', 'v1'], ['att.v2', 'v2'], ['att.g1', 'g1'], ['att.g2', 'g2'],
    ['att.k_k', 'kk'], ['att.k_a', 'ka'], ['att.r_k', 'rk'],
    ['att.receptance.weight', 'Wr'], ['att.key.weight', 'Wk'], ['att.value.weight', 'Wv'], ['att.output.weight', 'Wo'],
    ['att.ln_x.weight', 'lnxw'], ['att.ln_x.bias', 'lnxb'],
    ['ffn.x_k', 'ffnXk'], ['ffn.key.weight', 'ffnK'], ['ffn.value.weight', 'ffnV'],
  ];
  w.blocks.forEach((b, i) => { for (const [n, f] of rwkvFields) byName.set(`${p}blocks.${i}.${n}`, b[f]); });
  const attnFields: [string, keyof AttnBlockWeights][] = [
    ['ln1.weight', 'ln1w'], ['ln1.bias', 'ln1b'], ['ln2.weight', 'ln2w'], ['ln2.bias', 'ln2b'],
    ['att.receptance.weight', 'Wq'], ['att.key.weight', 'Wk'], ['att.value.weight', 'Wv'], ['att.output.weight', 'Wo'],
    ['ffn.x_k', 'ffnXk'], ['ffn.key.weight', 'ffnK'], ['ffn.value.weight', 'ffnV'],
  ];
  w.attn.forEach((a, j) => { for (const [n, f] of attnFields) byName.set(`${attnPrefix(j)}${n}`, a[f]); });
  byName.set(`${p}ln_out.weight`, w.lnOutW);
  byName.set(`${p}ln_out.bias`, w.lnOutB);
  byName.set(`${p}head.weight`, w.head);
  return expectedTensors(cfg).map(([name, shape]) => ({ name, dtype: 'F32' as const, shape, data: byName.get(name)! }));
}
