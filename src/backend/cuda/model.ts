/**
 * RWKV-X / RWKV-7 inference on an NVIDIA GPU: the same interface and numbers (within bf16) as the
 * CPU `Model`. Weights bf16 (converted at load from any checkpoint dtype); residual stream, WKV
 * state, softmax and the mixing math float32; GEMMs through cuBLAS with float32 accumulation; the
 * rest in the NVRTC-compiled kernels of kernels/rwkvx.cu. States live on the GPU.
 */
import { openCheckpoint } from '../../io/open.js';
import type { TensorSource } from '../../io/types.js';
import { fail } from '../../util/errors.js';
import { layout, type AttentionSemantics, type LayoutEntry, type ModelConfig } from '../../model/config.js';
import { inferConfig, weightReaders, type ModelWeights } from '../../model/weights.js';
import { Fingerprint } from '../../model/state-io.js';
import { checkAttentionParams, type ForwardOptions, type LoadOptions } from '../../model/model.js';
import { createState, type ModelState } from '../../model/state.js';
import { CudaContext, CudaGraph, CudaTimer } from './driver.js';
import { Cublas } from './cublas.js';
import { alloc, copyDtoD, copyDtoH, copyHtoD, DeviceBuffer, fromBf16, toBf16, upload, zero } from './memory.js';
import { launch, loadModule, setMaxDynamicSmem, type CudaModule } from './module-cache.js';
import { wavefrontOrder } from './wavefront.js';
import { DecodeStep, decodeGemvUnsupported } from './decode.js';
import { KvPager, type KvPagerOptions, type PagedBuffer } from './kv-pages.js';
import { createStream, destroyStream, StreamEvent, syncContext } from './streams.js';
import { randomSpec, type Leaves, type RandomInit } from '../../model/random.js';

/** Weights as host float32 tensors or as random initialisations to run on the GPU. */
type WeightLeaf = Float32Array | RandomInit | (() => Float32Array);
type WeightTree = Leaves<ModelWeights, WeightLeaf>;

export interface CudaLoadOptions extends LoadOptions {
  /** CUDA device ordinal (default 0). */
  device?: number;
  /** K/V cache placement (paged; oldest pages move to pinned host memory past the device budget). */
  kv?: KvPagerOptions;
}

/** K/V paging options from RWKVX_KV_DEVICE_GB (device budget) and RWKVX_KV_RESERVE_GB (memory kept free). */
export function kvOptionsFromEnv(): KvPagerOptions {
  const gb = (v: string | undefined, name: string) => {
    if (v === undefined || v === '') return undefined;
    const x = Number(v);
    if (!Number.isFinite(x) || x < 0) fail(`${name} must be a number of GiB ≥ 0 (got '${v}')`);
    return x * 2 ** 30;
  };
  return { deviceBytes: gb(process.env.RWKVX_KV_DEVICE_GB, 'RWKVX_KV_DEVICE_GB'), reserveBytes: gb(process.env.RWKVX_KV_RESERVE_GB, 'RWKVX_KV_RESERVE_GB') };
}

const MAXSEL = 8;
const HEAD_ROWS = 512;
const F32 = 4, BF = 2;
/** Chunked WKV-7: tokens per chunk and floats per (chunk, head) record (kernels/rwkvx.cu WKV_CL, WKV_REC). */
const WKV_CL = 16, WKV_REC = 4672;
/** Bytes of the chunked WKV-7 records for a call of n tokens (the `rec` argument of CudaModel.tmixWkv). */
export function wkvRecordBytes(n: number, heads: number): number { return Math.ceil(n / WKV_CL) * heads * WKV_REC * F32; }
/** Record buffers of the WKV-7 scan (kernels/rwkvx.cu WKV_STAGES): 3, or 2 with RWKVX_WKV_STAGES=2 (A/B). */
const WKV_STAGES = process.env.RWKVX_WKV_STAGES === '2' ? 2 : 3;
/** Floats of one record buffer of the tensor-core scan: the record and V, padded (kernels/rwkvx.cu WKV_TC_STAGE). */
const WKV_TC_STAGE = 6208;
/** 32-bit words of one buffer of pre-split record fragments (kernels/rwkvx.cu WKV_TC_FRAGS). */
const WKV_TC_FRAGS = 4608;
/** Scan layouts (RWKVX_WKV_ROWS) → [state rows per block, rows per warp]; threads = 32 · rows / rows per warp. */
export const WKV_SCAN_SHAPES = { '4': [4, 2], '8': [8, 2], '16': [16, 2], '16w': [16, 4], '32w': [32, 8], tc: [64, 16], tcs: [64, 16], tcp: [64, 16], tc2: [64, 32], tc2s: [64, 32] } as const;
export type WkvScanLayout = keyof typeof WKV_SCAN_SHAPES;
const WKV_SCAN_LAYOUTS = Object.keys(WKV_SCAN_SHAPES) as WkvScanLayout[];
/** RWKVX_WKV_ROWS, checked (a misspelt layout is an error, not a silent fallback); default 'tc'. */
function wkvScanLayoutFromEnv(): WkvScanLayout {
  const v = process.env.RWKVX_WKV_ROWS;
  if (v === undefined || v === '') return 'tc';
  if (!(WKV_SCAN_LAYOUTS as string[]).includes(v)) fail(`RWKVX_WKV_ROWS=${v}: not a scan layout (one of ${WKV_SCAN_LAYOUTS.join(', ')})`);
  return v as WkvScanLayout;
}
/**
 * Bytes of a tensor-core scan's shared memory: `stages` record buffers and 4 / mt warps' [16 tokens][16 mt + 4]
 * y rows; `pre` (tcp): 4 record buffers, the y rows, then two buffers of pre-split fragments (kernels/rwkvx.cu
 * WKV_TC_FRAGS words each).
 */
export function wkvScanSmemTc(mt: number, stages: number, pre = false): number {
  if (pre) return (4 * WKV_TC_STAGE + 4 * 16 * 20 + 2 * WKV_TC_FRAGS) * F32;
  return (stages * WKV_TC_STAGE + (4 / mt) * 16 * (16 * mt + 4)) * F32;
}
/** Dynamic shared memory of a scan layout: record buffers, the state rows, the u/y rows (the kernel's LU: padded by 4 past 2 rows per warp). */
function wkvScanSmem(layout: WkvScanLayout): number {
  const [R, RW] = WKV_SCAN_SHAPES[layout];
  // the tensor-core scans: padded record + V copies (kernels/rwkvx.cu WKV_TC_STAGE) and each warp's y staging
  if (layout.startsWith('tc')) return wkvScanSmemTc(RW / 16, WKV_STAGES, layout === 'tcp');
  return (WKV_STAGES * (WKV_REC + WKV_CL * R) + 64 * R + 2 * WKV_CL * (RW === 2 ? R : R + 4)) * F32;
}

interface RwkvW {
  ln1w: number; ln1b: number; ln2w: number; ln2b: number;
  mu6: number; // [6, C]: r, w, k, v, a, g
  w0: number; a0: number; v0: number; kk: number; ka: number; rk: number; lnxw: number; lnxb: number;
  w1: number; w2: number; a1: number; a2: number; v1: number; v2: number; g1: number; g2: number;
  Wr: number; Wk: number; Wv: number; Wo: number;
  ffnXk: number; ffnK: number; ffnV: number;
}
interface AttnW {
  ln1w: number; ln1b: number; ln2w: number; ln2b: number;
  Wq: number; Wk: number; Wv: number; Wo: number;
  ffnXk: number; ffnK: number; ffnV: number;
}

/** Device buffers ([n, C] fp32) of CudaModel.tmixWkv. */
export interface WkvIo { y: number; r: number; w: number; a: number; k: number; v: number; kk: number; dv: number; vFirst: number }

export interface CudaRwkvLayerState { attX: DeviceBuffer; wkv: DeviceBuffer; ffnX: DeviceBuffer }
export interface CudaAttnLayerState {
  len: number; cap: number; k: PagedBuffer | null; v: PagedBuffer | null;
  means: DeviceBuffer | null; meansCap: number; nMeans: number; ffnX: DeviceBuffer;
}

/** A sequence's state on the GPU. dispose() frees it (or let the model free it with its own dispose()). */
export class CudaState {
  pos = 0;
  disposed = false;
  constructor(readonly rwkv: CudaRwkvLayerState[], readonly attn: CudaAttnLayerState[]) {}
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const r of this.rwkv) { r.attX.free(); r.wkv.free(); r.ffnX.free(); }
    for (const a of this.attn) { a.k?.free(); a.v?.free(); a.means?.free(); a.ffnX.free(); }
  }
}

/** Per-call scratch, sized for `cap` tokens. */
class Scratch {
  readonly bufs: DeviceBuffer[] = [];
  h: number; x: number; mix: number; r: number; k: number; v: number; w: number; a: number; g: number; kk: number;
  dv: number; vFirst: number; lo: number; lob: number; y: number; yb: number; ab: number; hid: number; q: number;
  sel: number; tok: number; logits: number;
  /** Chunked WKV-7 records: one of WKV_REC floats per (16-token chunk, head). */
  wkvRec: number;
  /** Bytes of a scratch set for `cap` tokens (what the constructor allocates, before rounding). */
  static bytes(cap: number, cfg: ModelConfig): number {
    const C = cfg.dim, D = Math.max(cfg.lora.w, cfg.lora.a, cfg.lora.v, cfg.lora.g), F = Math.max(cfg.ffn, cfg.attnFfn);
    const rc = cap * C;
    return rc * F32 * 13 + 6 * rc * BF + cap * D * (F32 + BF) + 2 * rc * BF + cap * F * BF + cap * cfg.heads * MAXSEL * 4 + cap * 4
      + Math.min(cap, HEAD_ROWS) * cfg.vocab * F32 + wkvRecordBytes(cap, cfg.heads);
  }
  constructor(ctx: CudaContext, readonly cap: number, cfg: ModelConfig) {
    const C = cfg.dim, D = Math.max(cfg.lora.w, cfg.lora.a, cfg.lora.v, cfg.lora.g), F = Math.max(cfg.ffn, cfg.attnFfn);
    const a = (bytes: number, what: string) => { const b = alloc(ctx, bytes, `scratch ${what}`); this.bufs.push(b); return b.ptr; };
    const rc = cap * C;
    this.h = a(rc * F32, 'h'); this.x = a(rc * F32, 'x'); this.mix = a(6 * rc * BF, 'mix');
    this.r = a(rc * F32, 'r'); this.k = a(rc * F32, 'k'); this.v = a(rc * F32, 'v'); this.w = a(rc * F32, 'w');
    this.a = a(rc * F32, 'a'); this.g = a(rc * F32, 'g'); this.kk = a(rc * F32, 'kk'); this.dv = a(rc * F32, 'dv');
    this.vFirst = a(rc * F32, 'vFirst'); this.lo = a(cap * D * F32, 'lora'); this.lob = a(cap * D * BF, 'lora');
    this.y = a(rc * F32, 'y'); this.yb = a(rc * BF, 'yb'); this.ab = a(rc * BF, 'attn'); this.hid = a(cap * F * BF, 'ffn');
    this.q = a(rc * F32, 'q'); this.sel = a(cap * cfg.heads * MAXSEL * 4, 'sel'); this.tok = a(cap * 4, 'tokens');
    this.logits = a(Math.min(cap, HEAD_ROWS) * cfg.vocab * F32, 'logits');
    this.wkvRec = a(wkvRecordBytes(cap, cfg.heads), 'wkv chunks');
  }
  free(): void { for (const b of this.bufs) b.free(); }
}

/**
 * Where a layer of the wavefront hands state to the next segment's same layer: `ln` the time mix's
 * token-shift row, `scan` the WKV state, `ffn` the channel mix's token-shift row (RWKV-7 and attention
 * blocks), `kv` the attention block's K/V rows and chunk means. before() is called just ahead of the
 * first read of what earlier segments wrote, after() once this segment's part is written.
 */
type HandOn = 'ln' | 'scan' | 'ffn' | 'kv';
type StateGate = { before(p: HandOn): void; after(p: HandOn): void };

/** One lane of the prefill wavefront: its stream, cuBLAS handle (own workspace) and scratch. */
interface Slot { stream: unknown; blas: Cublas; scratch: Scratch; tag: string }

export class CudaModel {
  readonly backend = 'cuda';
  readonly order: LayoutEntry[];
  readonly ctx: CudaContext;
  private blas: Cublas;
  private mod: CudaModule;
  private initMod: CudaModule | undefined;
  private weightBufs: DeviceBuffer[] = [];
  private emb = 0; private lnOutW = 0; private lnOutB = 0; private headW = 0;
  private rw: RwkvW[] = [];
  private aw: AttnW[] = [];
  private scratch: Scratch | undefined;
  private states = new Set<CudaState>();
  /** Tokens per internal segment of a long call (bounds scratch memory). */
  segment = 8192;
  /** Threads per WKV state row (4, 8 or 16; RWKVX_WKV_TPR). */
  wkvThreadsPerRow = [4, 8, 16].includes(Number(process.env.RWKVX_WKV_TPR)) ? Number(process.env.RWKVX_WKV_TPR) : 16;
  /**
   * WKV-7 over a call of n tokens: the chunked-parallel kernels (`wkv7_chunk_prep` + `wkv7_chunk_scan*`)
   * when n ≥ wkvChunkMin, else the sequential one. RWKVX_WKV=seq always takes the sequential kernel.
   */
  wkvChunked = process.env.RWKVX_WKV !== 'seq';
  wkvChunkMin = 64;
  /**
   * Layout of `wkv7_chunk_scan*` (RWKVX_WKV_ROWS): state rows per block, 2 per warp ('4', '8', '16'), or
   * '16w' / '32w': 16 or 32 rows with 4 or 8 per warp, 128 threads (a half or a quarter of the blocks of
   * '8', each warp reading the record once for 4 or 8 rows), or 'tc': the scan on tensor cores, one block of
   * 4 warps per head (docs/cuda.md "Missing / next" item 15). Default 'tc': 128K RWKV-X prefill 216.0 /
   * 216.7 ms against 232.5 / 237.1 with '16w', RWKV-7 151.1 / 152.6 against 167.7 / 167.6 (H100,
   * 2026-12-07, two interleaved passes); its y and state differ from '16w' by ≤ 7.3e-5 relative (bf16
   * hi + lo operands). '16w' had beaten '8' and '32w' (232.9 / 234.9 ms against 250.8 / 250.9 and 260.1 /
   * 256.5; layouts with 2 or 8 warps per block were slower: item 13). Opt-in and not yet timed: 'tcs'
   * (its corrections in accumulators of their own), 'tcp' (each record's fragments split once per block),
   * 'tc2' / 'tc2s' (2 warps of 32 rows).
   */
  wkvScanRows: WkvScanLayout = wkvScanLayoutFromEnv();
  /**
   * moba prefill attention on Hopper's warpgroup MMA (kernels/attn-sm90.cu, compiled for sm_90a): keys per
   * tile, 128 or 64; 0 = the mma.sync kernels of rwkvx.cu (always on other GPUs). RWKVX_ATTN_WG.
   */
  attnWg = ['0', '64', '128'].includes(process.env.RWKVX_ATTN_WG ?? '') ? Number(process.env.RWKVX_ATTN_WG) : 128;
  private wgMod: CudaModule | undefined;
  /** Calls of several tokens use ln_mix8 (rows staged in shared memory; RWKVX_LNMIX=warp: ln_mix). */
  lnMixStaged = process.env.RWKVX_LNMIX !== 'warp';
  /** Dynamic shared memory each kernel of this.mod has been allowed past the default 48 KB (bytes). */
  private smemRaised = new Map<string, number>();
  /**
   * Time-mix LoRAs as one kernel each (`lora32…128`: the middle stays in registers) with RWKVX_LORA=fused;
   * by default two cuBLAS GEMMs + act_bf16 (the fused kernel passes the GPU suites but was no faster at
   * 128K on the H100: docs/cuda.md).
   */
  loraFused = process.env.RWKVX_LORA === 'fused';
  private loraSmemSet = new Set<number>();
  /** moba prefill chooses chunks with select_chunks_tiled (RWKVX_SELECT=scores: chunk_scores + select_chunks). */
  selectTiled = process.env.RWKVX_SELECT !== 'scores';
  /** One-token moba steps replay a CUDA graph (RWKVX_CUDA_GRAPH=0 turns it off). */
  useGraph = process.env.RWKVX_CUDA_GRAPH !== '0';
  private graph: CudaGraph;
  private graphState: CudaState | undefined;
  private graphGen = -1;
  /**
   * One-token steps through decode.ts (multi-GEMV kernels, fused element-wise work, PDL);
   * RWKVX_DECODE_GEMV=0 (or false) records the cuBLAS step of `stepBody` instead.
   */
  decodeGemv = process.env.RWKVX_DECODE_GEMV !== '0';
  private decoder: DecodeStep | undefined;
  private graphDecoder: DecodeStep | undefined;
  /** Bumped whenever a buffer that a captured graph may use is reallocated. */
  private gen = 0;
  private tmpBufs = new Map<string, DeviceBuffer>();
  private kvPager: KvPager | undefined;
  /**
   * Development A/B (RWKVX_WAVEFRONT_FINE=1): a layer of segment s waits for segment s − 1's same layer
   * only where it reads what that layer hands on (token-shift rows, WKV state, K/V rows and chunk means),
   * not for the whole layer — its GEMMs and chunk prep then overlap the previous segment's scan. Not yet
   * measured.
   */
  wavefrontFine = process.env.RWKVX_WAVEFRONT_FINE === '1';
  /** Development and tests: at most this many segments alive at once in the wavefront (default: as memory allows). */
  wavefrontLive: number | undefined;
  /** Segments of a long prefill in flight at once (RWKVX_WAVEFRONT; 1 = one after the other). */
  wavefront = Number.isInteger(Number(process.env.RWKVX_WAVEFRONT)) && Number(process.env.RWKVX_WAVEFRONT) >= 1 ? Number(process.env.RWKVX_WAVEFRONT) : 4;
  private slots: Slot[] = [];
  private events: StreamEvent[] = [];
  private tmpTag = '';
  /** K/V paging policy (see kv-pages.ts); read when the first cache page is mapped. */
  kvOptions: KvPagerOptions = kvOptionsFromEnv();
  private stepIds = new Int32Array(2);

  private constructor(readonly cfg: ModelConfig, weights: WeightTree, public attention: AttentionSemantics, device: number, seed = 1) {
    this.order = layout(cfg);
    if (cfg.headSize !== 64) fail(`the CUDA backend needs head size 64 (this model has ${cfg.headSize})`);
    if (cfg.topk - 1 > MAXSEL || (attention === 'official' && cfg.topk > MAXSEL)) fail(`the CUDA backend supports top-k up to ${MAXSEL} (got ${cfg.topk})`);
    this.ctx = CudaContext.get(device);
    this.mod = loadModule(this.ctx, 'rwkvx.cu', WKV_STAGES === 3 ? [] : [`-DWKV_STAGES=${WKV_STAGES}`]);
    if (this.ctx.arch !== 'sm_90') this.attnWg = 0;
    this.blas = new Cublas(this.ctx);
    this.graph = new CudaGraph(this.ctx);
    this.fingerprint = this.upload(weights, seed);
  }

  readonly fingerprint: string;

  exportState(s: CudaState): ModelState {
    return this.downloadState(s);
  }

  importState(m: ModelState): CudaState {
    return this.uploadState(m);
  }

  static load(path: string, opts: CudaLoadOptions = {}): CudaModel {
    const src = openCheckpoint(path);
    try { return CudaModel.fromSource(src, opts); } finally { src.close(); }
  }

  static fromSource(src: TensorSource, opts: CudaLoadOptions = {}): CudaModel {
    const cfg = inferConfig(src);
    if (opts.chunk !== undefined) cfg.chunk = opts.chunk;
    if (opts.topk !== undefined) cfg.topk = opts.topk;
    checkAttentionParams(cfg.chunk, cfg.topk);
    // tensor by tensor: read, round to bf16, upload, drop (no float32 copy of the whole model on the host)
    return CudaModel.withOptions(new CudaModel(cfg, weightReaders(src, cfg, (n) => new Float32Array(n)), opts.attention ?? 'moba', opts.device ?? 0), opts);
  }

  /** From float32 weights already in memory (e.g. src/model/random.ts). */
  static fromWeights(cfg: ModelConfig, w: ModelWeights, opts: CudaLoadOptions = {}): CudaModel {
    const c = { ...cfg, chunk: opts.chunk ?? cfg.chunk, topk: opts.topk ?? cfg.topk };
    checkAttentionParams(c.chunk, c.topk);
    return CudaModel.withOptions(new CudaModel(c, w, opts.attention ?? 'moba', opts.device ?? 0), opts);
  }

  /**
   * A model of `cfg`'s shape with random weights generated on the GPU (same distributions as
   * src/model/random.ts, other values): benchmarks of shapes too big to build on the host.
   */
  static random(cfg: ModelConfig, seed = 1, opts: CudaLoadOptions = {}): CudaModel {
    const c = { ...cfg, chunk: opts.chunk ?? cfg.chunk, topk: opts.topk ?? cfg.topk };
    checkAttentionParams(c.chunk, c.topk);
    return CudaModel.withOptions(new CudaModel(c, randomSpec(c), opts.attention ?? 'moba', opts.device ?? 0, seed), opts);
  }

  private static withOptions(m: CudaModel, opts: CudaLoadOptions): CudaModel {
    if (opts.kv) m.kvOptions = { ...m.kvOptions, ...opts.kv };
    return m;
  }

  /**
   * Weights to the GPU: host float32 tensors are rounded to bf16 (matrices) or kept float32 (vectors);
   * `RandomInit` leaves are generated on the GPU (kernels/init.cu), so a multi-billion-parameter
   * benchmark model never exists on the host. Reader leaves are called one at a time. Returns the
   * model fingerprint (state files), the CPU's for the same weights, or `random:<seed>`.
   */
  private upload(w: WeightTree, seed = 1): string {
    const fp = new Fingerprint();
    let random = false;
    let tensor = 0;
    const fill = (ptr: number, t: RandomInit, f32: boolean) => {
      this.initMod ??= loadModule(this.ctx, 'init.cu');
      launch(this.ctx, this.initMod, 'fill_uniform', 'ppiiiff', [Math.min(Math.ceil(t.n / 256), 8192)], [256], 0,
        [f32 ? ptr : 0, f32 ? 0 : ptr, t.n, seed, tensor++, t.scale, t.offset]);
    };
    const read = (x: WeightLeaf) => typeof x === 'function' ? x() : x;
    const put = (leaf: WeightLeaf, what: string, f32: boolean, mix = false) => {
      const x = read(leaf);
      let b: DeviceBuffer;
      if (x instanceof Float32Array) {
        if (mix) fp.mix(x);
        b = upload(this.ctx, f32 ? x : toBf16(x), what);
      } else { random = true; b = alloc(this.ctx, x.n * (f32 ? F32 : BF), what); fill(b.ptr, x, f32); }
      this.weightBufs.push(b);
      return b.ptr;
    };
    const f = (x: WeightLeaf, what: string) => put(x, what, true);
    const h = (x: WeightLeaf, what: string, mix = false) => put(x, what, false, mix);
    const emb = read(w.emb);
    if (!(emb instanceof Float32Array)) {
      // random embedding rows are layer-normalised, as src/model/random.ts does on the CPU
      random = true;
      const C = this.cfg.dim, rows = emb.n / C;
      const tmp = alloc(this.ctx, emb.n * F32, 'embedding (random, float32)');
      fill(tmp.ptr, emb, true);
      const ones = alloc(this.ctx, C * F32, 'ones'), zeros = alloc(this.ctx, C * F32, 'zeros');
      fill(ones.ptr, { n: C, scale: 0, offset: 1 }, true); fill(zeros.ptr, { n: C, scale: 0, offset: 0 }, true);
      const e = alloc(this.ctx, emb.n * BF, 'embedding');
      this.weightBufs.push(e);
      this.k('layer_norm', 'pppppii', [Math.ceil(rows / 8)], [256], [0, e.ptr, tmp.ptr, ones.ptr, zeros.ptr, rows, C]);
      this.ctx.sync();
      tmp.free(); ones.free(); zeros.free();
      this.emb = e.ptr;
    } else this.emb = h(emb, 'embedding', true);
    const C = this.cfg.dim;
    this.lnOutW = f(w.lnOutW, 'ln_out'); this.lnOutB = f(w.lnOutB, 'ln_out');
    this.headW = h(w.head, 'head', true);
    w.blocks.forEach((b, i) => {
      const n = `block ${i}`;
      const mixes = [b.xr, b.xw, b.xk, b.xv, b.xa, b.xg].map(read);
      let mu6: number;
      if (mixes.every((m) => m instanceof Float32Array)) {
        const cat = new Float32Array(6 * C);
        mixes.forEach((m, j) => cat.set(m as Float32Array, j * C));
        mu6 = f(cat, n);
      } else {
        const buf = alloc(this.ctx, 6 * C * F32, n);
        this.weightBufs.push(buf);
        mixes.forEach((m, j) => fill(buf.ptr + j * C * F32, m as RandomInit, true));
        mu6 = buf.ptr;
      }
      this.rw.push({
        ln1w: f(b.ln1w, n), ln1b: f(b.ln1b, n), ln2w: f(b.ln2w, n), ln2b: f(b.ln2b, n), mu6,
        w0: f(b.w0, n), a0: f(b.a0, n), v0: f(b.v0, n), kk: f(b.kk, n), ka: f(b.ka, n), rk: f(b.rk, n), lnxw: f(b.lnxw, n), lnxb: f(b.lnxb, n),
        w1: h(b.w1, n), w2: h(b.w2, n), a1: h(b.a1, n), a2: h(b.a2, n), v1: h(b.v1, n), v2: h(b.v2, n), g1: h(b.g1, n), g2: h(b.g2, n),
        Wr: h(b.Wr, n, true), Wk: h(b.Wk, n), Wv: h(b.Wv, n), Wo: h(b.Wo, n),
        ffnXk: f(b.ffnXk, n), ffnK: h(b.ffnK, n), ffnV: h(b.ffnV, n),
      });
    });
    w.attn.forEach((a, j) => {
      const n = `attention block ${j}`;
      this.aw.push({
        ln1w: f(a.ln1w, n), ln1b: f(a.ln1b, n), ln2w: f(a.ln2w, n), ln2b: f(a.ln2b, n),
        Wq: h(a.Wq, n, true), Wk: h(a.Wk, n), Wv: h(a.Wv, n), Wo: h(a.Wo, n),
        ffnXk: f(a.ffnXk, n), ffnK: h(a.ffnK, n), ffnV: h(a.ffnV, n),
      });
    });
    return random ? `random:${seed}` : fp.digest(this.cfg);
  }

  newState(): CudaState {
    const cfg = this.cfg, C = cfg.dim;
    const z = (bytes: number, what: string) => { const b = alloc(this.ctx, bytes, what); zero(this.ctx, b.ptr, b.bytes); return b; };
    const rwkv: CudaRwkvLayerState[] = [];
    for (let i = 0; i < cfg.nLayer; i++) rwkv.push({ attX: z(C * F32, 'state'), wkv: z(cfg.heads * 64 * 64 * F32, 'state'), ffnX: z(C * F32, 'state') });
    const attn: CudaAttnLayerState[] = [];
    for (let j = 0; j < cfg.nAttn; j++) attn.push({ len: 0, cap: 0, k: null, v: null, means: null, meansCap: 0, nMeans: 0, ffnX: z(C * F32, 'state') });
    const s = new CudaState(rwkv, attn);
    this.states.add(s);
    return s;
  }

  /** Copies a GPU state into a CPU `ModelState` (for state files and checks). */
  downloadState(s: CudaState): ModelState {
    const cfg = this.cfg, C = cfg.dim;
    const out = createState(cfg);
    out.pos = s.pos;
    s.rwkv.forEach((r, i) => {
      copyDtoH(out.rwkv[i].attXPrev, r.attX.ptr); copyDtoH(out.rwkv[i].wkv, r.wkv.ptr); copyDtoH(out.rwkv[i].ffnXPrev, r.ffnX.ptr);
    });
    s.attn.forEach((a, j) => {
      const o = out.attn[j];
      copyDtoH(o.ffnXPrev, a.ffnX.ptr);
      o.len = a.len;
      const kb = new Uint16Array(a.len * C), vb = new Uint16Array(a.len * C);
      if (a.len > 0) { copyDtoH(kb, a.k!.ptr); copyDtoH(vb, a.v!.ptr); }
      o.k = fromBf16(kb); o.v = fromBf16(vb);
      o.nMeans = a.nMeans;
      o.means = new Float32Array(a.nMeans * C);
      if (a.nMeans > 0) copyDtoH(o.means, a.means!.ptr);
    });
    return out;
  }

  /** Uploads a CPU `ModelState` (e.g. read from a state file). */
  uploadState(m: ModelState): CudaState {
    const C = this.cfg.dim;
    const s = this.newState();
    s.pos = m.pos;
    s.rwkv.forEach((r, i) => { copyHtoD(r.attX.ptr, m.rwkv[i].attXPrev); copyHtoD(r.wkv.ptr, m.rwkv[i].wkv); copyHtoD(r.ffnX.ptr, m.rwkv[i].ffnXPrev); });
    s.attn.forEach((a, j) => {
      const o = m.attn[j];
      copyHtoD(a.ffnX.ptr, o.ffnXPrev);
      this.reserveKv(a, o.len);
      copyHtoD(a.k!.ptr, toBf16(o.k.subarray(0, o.len * C)));
      copyHtoD(a.v!.ptr, toBf16(o.v.subarray(0, o.len * C)));
      a.len = o.len;
      this.reserveMeans(a, o.nMeans);
      copyHtoD(a.means!.ptr, o.means.subarray(0, o.nMeans * C));
      a.nMeans = o.nMeans;
    });
    this.ctx.sync();
    return s;
  }

  dispose(): void {
    this.ctx.sync();
    for (const s of this.states) s.dispose();
    this.states.clear();
    this.graph.dispose(); this.graphState = undefined;
    this.profTimer?.dispose(); this.profTimer = undefined;
    this.decoder?.dispose(); this.decoder = undefined; this.graphDecoder = undefined;
    for (const b of this.tmpBufs.values()) b.free();
    this.tmpBufs.clear();
    this.scratch?.free(); this.scratch = undefined;
    syncContext();
    for (const sl of this.slots) { sl.scratch?.free(); sl.blas.dispose(); destroyStream(sl.stream); }
    this.slots = [];
    for (const e of this.events) e.destroy();
    this.events = [];
    for (const b of this.weightBufs) b.free();
    this.weightBufs = [];
    this.blas.dispose();
  }

  forward(tokens: ArrayLike<number>, state: CudaState, opts: ForwardOptions = {}): Float32Array {
    const cfg = this.cfg, V = cfg.vocab;
    const T = tokens.length;
    if (T === 0) fail('no tokens to process (empty input)');
    if (state.disposed) fail('this state was disposed');
    for (let t = 0; t < T; t++) {
      const id = tokens[t];
      if (!Number.isInteger(id) || id < 0 || id >= V) fail(`token id ${id} at position ${t} is out of range for vocabulary ${V}`);
    }
    const mode = opts.logits ?? 'all';
    if (T === 1 && this.attention === 'moba' && this.useGraph && !this.profile) return this.step(tokens[0], state, mode);
    const seg = this.attention === 'official' ? T : Math.max(1, opts.segment ?? this.segment);
    if (this.attention === 'moba' && this.wavefront > 1 && !this.profile && opts.segment === undefined) {
      // split long calls into at least `wavefront` segments (of ≥ 4096 tokens) so that they overlap
      const segLen = Math.min(seg, Math.max(4096, Math.ceil(T / this.wavefront)));
      // each segment in flight holds a scratch set: at most 1/8 of the device's memory for them (a 3.6B
      // model's 5 GB sets would otherwise push its K/V cache to the host; a small GPU runs serially)
      const fit = Math.floor(this.ctx.info.totalMem / 8 / Scratch.bytes(segLen, cfg));
      if (T > segLen && fit >= 2) return this.forwardWavefront(tokens, state, mode, segLen, fit);
    }
    const out = new Float32Array(mode === 'all' ? T * V : mode === 'last' ? V : 0);
    const sc = this.scratchFor(Math.min(seg, T));
    for (let s = 0; s < T; s += seg) {
      const n = Math.min(seg, T - s);
      const ids = new Int32Array(n);
      for (let t = 0; t < n; t++) ids[t] = tokens[s + t];
      copyHtoD(sc.tok, ids);
      this.k('embed', 'pppi', [n], [256], [sc.h, this.emb, sc.tok, cfg.dim]);
      for (const e of this.order) {
        if (e.kind === 'rwkv') this.rwkvBlock(sc, e.index, state.rwkv[e.index], n);
        else this.attnBlock(sc, e.index, state.attn[e.index], state.pos, n);
        if (e.kind === 'attn') state.attn[e.index].len = state.pos + n;
      }
      state.pos += n;
      if (mode === 'all') this.head(sc, out.subarray(s * V, (s + n) * V), 0, n);
      else if (mode === 'last' && s + n === T) this.head(sc, out, n - 1, 1);
    }
    if (mode === 'none') this.ctx.sync();
    return out;
  }

  /**
   * A long prefill as a wavefront over (segment, layer): segment s's layer l runs as soon as its
   * layer l − 1 and segment s − 1's layer l are done, so up to `wavefront` segments are in flight on
   * their own streams, scratch and cuBLAS handles. The WKV-7 scan of one segment (a long chain of
   * small steps that leaves most of the GPU idle) then overlaps other segments' GEMMs and attention.
   * The kernels and their inputs are those of the one-segment-after-another order: same results.
   *
   * A slot's scratch is free again after each (segment, layer) task (its stream runs them in turn), but
   * a segment's residual stream h and value-residual input vFirst (layer 0 writes it, every later layer
   * reads it) live from its first layer to its last, and segments s and s + K share a slot while both
   * are alive: each live segment has its own pair (`wavefrontLive` of them, reused in turn, a segment
   * admitted only once the pair's previous owner has finished).
   */
  private forwardWavefront(tokens: ArrayLike<number>, state: CudaState, mode: 'all' | 'last' | 'none', segLen: number, fit: number): Float32Array {
    const cfg = this.cfg, V = cfg.vocab, C = cfg.dim, T = tokens.length, L = this.order.length;
    const nSeg = Math.ceil(T / segLen), P0 = state.pos;
    const pairBytes = 2 * segLen * C * F32;
    const R = Math.max(1, Math.min(nSeg, L, this.wavefrontLive ?? Infinity, Math.floor(this.ctx.info.totalMem / 8 / pairBytes)));
    const K = Math.min(this.wavefront, nSeg, fit, R);
    // size everything first: no buffer may move while several streams use it
    for (const a of state.attn) { this.reserveKv(a, P0 + T); this.reserveMeans(a, Math.floor((P0 + T) / cfg.chunk)); }
    const slots = this.slotsFor(K, segLen);
    const toks = this.tmp('wavefront tokens', T * 4);
    const live = Array.from({ length: R }, (_, b) => ({
      h: this.tmp(`wavefront h ${b}`, segLen * C * F32), vFirst: this.tmp(`wavefront vFirst ${b}`, segLen * C * F32),
    }));
    copyHtoD(toks, Int32Array.from(tokens));
    const fine = this.wavefrontFine;
    const points: HandOn[] = ['ln', 'scan', 'ffn', 'kv'];
    while (this.events.length < L + 1 + R + (fine ? points.length * L : 0)) this.events.push(new StreamEvent());
    const ready = this.events[L], freed = this.events.slice(L + 1, L + 1 + R);
    const handOn = (l: number, p: HandOn) => this.events[L + 1 + R + points.length * l + points.indexOf(p)];
    ready.record(this.ctx.stream);
    for (const sl of slots) ready.waitOn(sl.stream);
    const out = new Float32Array(mode === 'all' ? T * V : mode === 'last' ? V : 0);
    const task = (s: number, l: number) => {
      const slot = slots[s % K], e = this.order[l], pair = live[s % R];
      const sc: Scratch = Object.assign(Object.create(Scratch.prototype), slot.scratch, pair);
      const P = P0 + s * segLen, n = Math.min(segLen, T - s * segLen);
      this.onSlot(slot, () => {
        if (l === 0) {
          if (s >= R) freed[s % R].waitOn(slot.stream);
          this.k('embed', 'pppi', [n], [256], [sc.h, this.emb, toks + s * segLen * 4, C]);
        }
        if (s > 0 && !fine) this.events[l].waitOn(slot.stream);
        const gate: StateGate | undefined = fine ? {
          before: (p) => { if (s > 0) handOn(l, p).waitOn(slot.stream); },
          after: (p) => handOn(l, p).record(slot.stream),
        } : undefined;
        if (e.kind === 'rwkv') this.rwkvBlock(sc, e.index, state.rwkv[e.index], n, gate);
        else { this.attnBlock(sc, e.index, state.attn[e.index], P, n, gate); state.attn[e.index].len = P + n; }
        this.events[l].record(slot.stream);
        if (l === L - 1) {
          if (mode === 'all') this.head(sc, out.subarray(s * segLen * V, (s * segLen + n) * V), 0, n);
          else if (mode === 'last' && s === nSeg - 1) this.head(sc, out, n - 1, 1);
          freed[s % R].record(slot.stream);
        }
      });
    };
    for (const [s, l] of wavefrontOrder(nSeg, L, R)) task(s, l);
    for (const sl of slots) { ready.record(sl.stream); ready.waitOn(this.ctx.stream); }
    state.pos = P0 + T;
    if (mode === 'none') this.ctx.sync();
    return out;
  }

  private slotsFor(k: number, cap: number): Slot[] {
    while (this.slots.length < k) {
      const stream = createStream();
      const slot = { stream, blas: undefined as unknown as Cublas, scratch: undefined as unknown as Scratch, tag: `#${this.slots.length}` };
      this.onSlot(slot, () => { slot.blas = new Cublas(this.ctx); });
      this.slots.push(slot);
    }
    const out = this.slots.slice(0, k);
    for (const sl of out) {
      if (sl.scratch && sl.scratch.cap >= cap) continue;
      if (sl.scratch) { syncContext(); sl.scratch.free(); }
      sl.scratch = new Scratch(this.ctx, cap, this.cfg);
    }
    return out;
  }

  /** Runs `f` with the context's stream, cuBLAS handle and temporary buffers of `slot`. */
  private onSlot(slot: Slot, f: () => void): void {
    const c = this.ctx as { stream: unknown }, saved = { stream: c.stream, blas: this.blas, tag: this.tmpTag };
    c.stream = slot.stream; if (slot.blas) this.blas = slot.blas; this.tmpTag = slot.tag;
    try { f(); } finally { c.stream = saved.stream; this.blas = saved.blas; this.tmpTag = saved.tag; }
  }

  /** Waits for queued GPU work (forward() returns once logits are back; with logits 'none' it also waits). */
  sync(): void { this.ctx.sync(); }

  private scratchFor(n: number): Scratch {
    if (this.scratch && this.scratch.cap >= n) return this.scratch;
    let cap = 64;
    while (cap < n) cap *= 2;
    if (cap > this.segment) cap = Math.max(n, this.segment);
    if (this.scratch) { this.ctx.sync(); this.scratch.free(); }
    this.scratch = new Scratch(this.ctx, cap, this.cfg);
    this.gen++;
    return this.scratch;
  }

  /**
   * Development only: launches to leave out (RWKVX_DEV_SKIP=name,name,… with kernel names or `gemm linear`
   * / `gemm matmul`). The results are then wrong; the wall time says what each op costs inside the
   * overlapped prefill, which the per-launch profile cannot.
   */
  private devSkip = new Set((process.env.RWKVX_DEV_SKIP ?? '').split(',').map((x) => x.trim()).filter(Boolean));
  private k(name: string, sig: string, grid: [number, number?, number?], block: [number, number?, number?], args: number[], smem = 0): void {
    if (this.devSkip.size && this.devSkip.has(name)) return;
    if (this.profile) this.timed(name, () => launch(this.ctx, this.mod, name, sig, grid, block, smem, args));
    else launch(this.ctx, this.mod, name, sig, grid, block, smem, args);
  }

  /**
   * With `profile` set, every launch runs alone (the context synchronised before it) between two events
   * of its stream: ms by kernel name, device time plus the launch's own host latency (a few µs; the
   * host-side synchronisation is not counted).
   */
  profile: Map<string, number> | undefined;
  private profTimer: CudaTimer | undefined;
  private timed(name: string, f: () => void): void {
    const tm = (this.profTimer ??= new CudaTimer(this.ctx));
    this.ctx.sync();
    tm.start();
    f();
    const ms = tm.stop();
    this.profile!.set(name, (this.profile!.get(name) ?? 0) + ms);
  }
  private gemm(name: string, f: () => void): void {
    if (this.devSkip.size && this.devSkip.has(`gemm ${name}`)) return;
    if (this.profile) this.timed(`gemm ${name}`, f); else f();
  }

  /** Lets kernel `name` of this.mod launch with `bytes` of dynamic shared memory (an attribute past 48 KB). */
  private allowSmem(name: string, bytes: number): void {
    if (bytes <= 48 * 1024 || (this.smemRaised.get(name) ?? 0) >= bytes) return;
    const limit = this.ctx.info.smemOptin;
    if (limit > 0 && bytes > limit) {
      fail(`${this.ctx.info.name} gives a block at most ${limit} bytes of shared memory; ${name} needs ${bytes}` +
        (name.startsWith('wkv7_chunk_scan') ? ` (RWKVX_WKV_ROWS=${this.wkvScanRows}: unset it for the default layout)` : ''));
    }
    setMaxDynamicSmem(this.mod, name, bytes);
    this.smemRaised.set(name, bytes);
  }

  private layerNorm(outF: number, outB: number, x: number, w: number, b: number, n: number): void {
    this.k('layer_norm', 'pppppii', [Math.ceil(n / 8)], [256], [outF, outB, x, w, b, n, this.cfg.dim]);
  }

  /**
   * LayerNorm of x and its M token-shift mixes into sc.mix (bf16), prev ← the last row's LN output.
   * One token updates prev in place; longer calls stage the last row in sc.x (prev is read by token 0).
   */
  private lnMix(sc: Scratch, x: number, lnw: number, lnb: number, prev: number, mu: number, M: number, n: number): void {
    const C = this.cfg.dim, last = n === 1 ? prev : sc.x;
    if (this.lnMixStaged && C % 8 === 0 && n > 1) {
      const smem = 9 * C * F32;
      this.allowSmem('ln_mix8', smem);
      this.k('ln_mix8', 'pppppppiii', [Math.ceil(n / 8)], [256], [sc.mix, last, x, lnw, lnb, prev, mu, n, C, M], smem);
    } else this.k('ln_mix', 'pppppppiii', [Math.ceil(n / 8)], [256], [sc.mix, last, x, lnw, lnb, prev, mu, n, C, M]);
    if (last !== prev) copyDtoD(this.ctx, prev, last, C * F32);
  }

  private rwkvBlock(sc: Scratch, li: number, st: CudaRwkvLayerState, n: number, gate?: StateGate): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, w = this.rw[li], blas = this.blas, L = cfg.lora;
    gate?.before('ln');
    this.lnMix(sc, sc.h, w.ln1w, w.ln1b, st.attX.ptr, w.mu6, 6, n);
    gate?.after('ln');
    const xm = (m: number) => sc.mix + m * n * C * BF; // r, w, k, v, a, g
    this.gemm('linear', () => blas.linear(sc.r, 'f32', xm(0), w.Wr, n, C, C));
    this.gemm('linear', () => blas.linear(sc.k, 'f32', xm(2), w.Wk, n, C, C));
    this.gemm('linear', () => blas.linear(sc.v, 'f32', xm(3), w.Wv, n, C, C));
    this.lora(sc, sc.w, xm(1), w.w1, w.w2, L.w, 0, n);                  // decay: tanh(x_w·w1)·w2
    this.lora(sc, sc.a, xm(4), w.a1, w.a2, L.a, -1, n);                 // in-context rate: (x_a·a1)·a2
    if (li > 0) this.lora(sc, sc.dv, xm(3), w.v1, w.v2, L.v, -1, n);    // value residual: (x_v·v1)·v2
    this.lora(sc, sc.g, xm(5), w.g1, w.g2, L.g, 1, n);                  // gate: σ(x_g·g1)·g2
    const warps = n * H;
    this.tmixWkv(sc, li, st.wkv.ptr, n, sc.wkvRec, undefined, undefined, gate);
    this.k('gn_bonus_gate', 'pppppppppii', [Math.ceil(warps / 8)], [256], [sc.yb, sc.y, sc.r, sc.k, sc.v, sc.g, w.lnxw, w.lnxb, w.rk, n, H]);
    this.gemm('linear', () => blas.linear(sc.h, 'f32', sc.yb, w.Wo, n, C, C, true));
    this.channelMix(sc, w.ln2w, w.ln2b, w.ffnXk, w.ffnK, w.ffnV, st.ffnX, cfg.ffn, n, gate);
  }

  /**
   * The WKV-7 part of layer li's time mix over n tokens, from the projections as the GEMMs leave them
   * (io.w, io.a: decay and rate LoRA outputs; io.dv: value-residual LoRA output, unused in layer 0, where
   * io.vFirst is written instead): y [n, C] fp32 out, the state updated in place, io.k and io.v left as
   * the recurrence used them (k̃ and the value-mixed v: the bonus term reads them). Chunked path (n ≥
   * wkvChunkMin): `wkv7_chunk_prep` does tmix_prep's work while it builds the chunk records, then
   * `wkv7_chunk_scan`; otherwise `tmix_prep` (io.w, io.a, io.kk overwritten) + the sequential kernel.
   * `first` overrides whether this is layer 0 (tests).
   */
  tmixWkv(io: WkvIo, li: number, state: number, n: number, rec: number,
    chunked = this.wkvChunked && n >= this.wkvChunkMin, first = li === 0, gate?: StateGate): void {
    const C = this.cfg.dim, H = this.cfg.heads, w = this.rw[li];
    if (chunked) {
      const lay = this.wkvScanRows, [R, RW] = WKV_SCAN_SHAPES[lay], threads = (32 * R) / RW;
      this.k('wkv7_chunk_prep', 'pppppppppppppiii', [Math.ceil(n / WKV_CL), H], [256],
        [rec, io.r, io.w, io.a, io.k, io.v, io.vFirst, io.dv, w.w0, w.a0, w.v0, w.kk, w.ka, n, C, first ? 1 : 0]);
      const name = `wkv7_chunk_scan${lay}`, smem = wkvScanSmem(lay);
      this.allowSmem(name, smem);
      gate?.before('scan');
      this.k(name, 'ppppii', [H, 64 / R], [threads], [io.y, state, rec, io.v, n, C], smem);
      gate?.after('scan');
      return;
    }
    this.k('tmix_prep', 'ppppppppppppiii', [Math.ceil((n * H) / 8)], [256],
      [io.w, io.a, io.kk, io.k, io.v, io.vFirst, io.dv, w.w0, w.a0, w.v0, w.kk, w.ka, n, H, first ? 1 : 0]);
    const tpr = this.wkvThreadsPerRow;
    gate?.before('scan');
    this.k(tpr === 4 ? 'wkv7_seq' : `wkv7_seq${tpr}`, 'ppppppppii', [H, 4], [16 * tpr],
      [io.y, state, io.r, io.w, io.k, io.v, io.kk, io.a, n, C]);
    gate?.after('scan');
  }

  /** out[n, C] (fp32) = f(x·W1)·W2, f = tanh (mode 0), σ (1) or the identity (−1); the middle bf16. */
  private lora(sc: Scratch, out: number, x: number, W1: number, W2: number, rank: number, mode: number, n: number): void {
    const C = this.cfg.dim;
    if (this.loraFused && C % 64 === 0 && rank % 32 === 0 && rank <= 128) {
      const name = `lora${rank}`, smem = 2 * 128 * 72 * BF + 2 * 64 * (rank + 8) * BF;
      if (!this.loraSmemSet.has(rank)) { setMaxDynamicSmem(this.mod, name, smem); this.loraSmemSet.add(rank); }
      this.k(name, 'ppppiii', [Math.ceil(n / 128)], [256], [out, x, W1, W2, n, C, mode], smem);
      return;
    }
    const blas = this.blas;
    if (mode < 0) this.gemm('matmul', () => blas.matmul(sc.lob, 'bf16', x, W1, n, C, rank));
    else {
      this.gemm('matmul', () => blas.matmul(sc.lo, 'f32', x, W1, n, C, rank));
      this.act(sc.lob, sc.lo, n * rank, mode);
    }
    this.gemm('matmul', () => blas.matmul(out, 'f32', sc.lob, W2, n, rank, C));
  }

  private act(out: number, inp: number, count: number, mode: number): void {
    this.k('act_bf16', 'ppii', [Math.min(4096, Math.ceil(count / 256))], [256], [out, inp, count, mode]);
  }

  /** LN2 + token shift + W_key + relu² + W_value (added into the residual). */
  private channelMix(sc: Scratch, lnw: number, lnb: number, mu: number, Wk: number, Wv: number, prev: DeviceBuffer, F: number, n: number, gate?: StateGate): void {
    const C = this.cfg.dim;
    gate?.before('ffn');
    this.lnMix(sc, sc.h, lnw, lnb, prev.ptr, mu, 1, n);
    gate?.after('ffn');
    this.gemm('linear', () => this.blas.linear(sc.hid, 'bf16', sc.mix, Wk, n, C, F));
    const n2 = (n * F) / 2;
    this.k('relu_sq_bf16', 'pi', [Math.max(1, Math.min(2048, Math.ceil(n2 / 2048)))], [256], [sc.hid, n2]);
    this.gemm('linear', () => this.blas.linear(sc.h, 'f32', sc.hid, Wv, n, F, C, true));
  }

  /** K/V rows [0, rows) addressable (paged: growing maps pages, the oldest may live on the host). */
  private reserveKv(a: CudaAttnLayerState, rows: number): void {
    if (a.cap >= rows && a.k) return;
    const rowBytes = this.cfg.dim * BF;
    this.kvPager ??= new KvPager(this.ctx, rowBytes, this.cfg.chunk, this.kvOptions);
    a.k ??= this.kvPager.buffer('K cache');
    a.v ??= this.kvPager.buffer('V cache');
    // a chunk's worth of slack so decoding does not grow the cache every step
    const want = rows + this.cfg.chunk;
    const moved = [a.k.ensure(want * rowBytes), a.v.ensure(want * rowBytes)];
    a.cap = Math.floor(Math.min(a.k.bytes, a.v.bytes) / rowBytes);
    if (moved[0] || moved[1]) this.gen++;
  }

  /** Where the K/V caches are: bytes on the device and in pinned host memory, pages moved so far. */
  kvPlacement(): { deviceBytes: number; hostBytes: number; offloads: number; pageBytes: number } {
    const p = this.kvPager;
    return { deviceBytes: p?.deviceUsed ?? 0, hostBytes: p?.hostUsed ?? 0, offloads: p?.offloads ?? 0, pageBytes: p?.pageBytes ?? 0 };
  }

  private reserveMeans(a: CudaAttnLayerState, rows: number): void {
    if (a.meansCap >= rows && a.means) return;
    const C = this.cfg.dim;
    let cap = Math.max(64, a.meansCap);
    while (cap < rows) cap *= 2;
    const m = alloc(this.ctx, cap * C * F32, 'chunk means');
    if (a.means && a.nMeans > 0) copyDtoD(this.ctx, m.ptr, a.means.ptr, a.nMeans * C * F32);
    if (a.means) { this.ctx.sync(); a.means.free(); }
    a.means = m; a.meansCap = cap;
    this.gen++;
  }

  private attnBlock(sc: Scratch, j: number, st: CudaAttnLayerState, P: number, n: number, gate?: StateGate): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, B = cfg.chunk, w = this.aw[j], blas = this.blas;
    if (st.len !== P) fail(`internal: attention cache holds ${st.len} tokens at position ${P}`);
    this.layerNorm(0, sc.yb, sc.h, w.ln1w, w.ln1b, n);
    this.reserveKv(st, P + n);
    this.gemm('linear', () => blas.linear(sc.q, 'f32', sc.yb, w.Wq, n, C, C));
    this.gemm('linear', () => blas.linear(st.k!.ptr + P * C * BF, 'bf16', sc.yb, w.Wk, n, C, C));
    this.gemm('linear', () => blas.linear(st.v!.ptr + P * C * BF, 'bf16', sc.yb, w.Wv, n, C, C));
    const len = P + n;
    const complete = Math.floor(len / B);
    gate?.before('kv');  // a chunk's mean may take rows of the previous segment; the attention reads its K/V
    if (complete > st.nMeans) {
      this.reserveMeans(st, complete);
      this.k('chunk_means', 'ppiii', [complete - st.nMeans, Math.ceil(C / 256)], [256], [st.means!.ptr, st.k!.ptr, C, B, st.nMeans]);
      st.nMeans = complete;
    }
    gate?.after('kv');
    const dense = B * cfg.topk;
    let mode = 0, nSel = 0, wsConst = 0, nFixed = -1;
    if (this.attention === 'moba') {
      nSel = cfg.topk - 1;
      if (Math.floor((len - 1) / B) === 0) nSel = 0; // no query has a complete past chunk
    } else if (n > 1) {
      mode = len <= dense ? 1 : 2;
    } else if (P <= dense) {
      mode = 1;
    } else {
      const c = Math.floor(P / B);
      mode = 3; nSel = cfg.topk; nFixed = c; wsConst = c * B;
    }
    const nC = st.nMeans;
    let scores = 0;
    if (nSel > 0 && nFixed < 0 && n >= 64 && this.selectTiled) {
      // scores and top-k in one pass (the same choices as select_chunks)
      this.k('select_chunks_tiled', 'pppiiiii', [Math.ceil(n / 64), H], [256], [sc.sel, sc.q, st.means!.ptr, n, H, P, B, nSel]);
    } else if (nSel > 0 && nFixed < 0 && n >= 64) {
      // q·mean for every (query, head, complete chunk) at once; the same sums select_chunks would make
      scores = this.tmp('scores', n * H * nC * F32);
      this.k('chunk_scores', 'pppiii', [Math.ceil(n / 64), H, Math.ceil(nC / 64)], [256], [scores, sc.q, st.means!.ptr, n, H, nC]);
    }
    if (nSel > 0 && !(nFixed < 0 && n >= 64 && this.selectTiled)) {
      const rows = nFixed >= 0 ? n : n * H;
      this.k('select_chunks', 'ppppp' + 'iiiiiii', [Math.ceil(rows / 8)], [256], [sc.sel, sc.q, st.means!.ptr, scores, 0, n, H, P, B, nSel, nFixed, nC]);
    }
    const chunkLast = Math.floor((len - 1) / B);
    const smem = (Math.floor(chunkLast / 32) + 1) * 4;
    // the bitmap of selected chunks is dynamic shared memory beside the kernel's 20 KB of static tiles, within
    // the 48 KB a launch gets without opting in (ptxas -v: `attention` 20480 bytes)
    if (smem > 28 * 1024) fail(`the CUDA attention kernel supports up to ${28 * 1024 * 8} chunks (context ${len}, chunk ${B})`);
    const scale = 0.125 * Math.LOG2E;
    if (this.attention === 'moba' && nSel > 0) {
      this.mobaAttention(sc, st, P, n, nSel, nC, scale, smem);
    } else {
      this.k('attention', 'ppppppp' + 'iiiiiiii' + 'f', [Math.ceil(n / 64), H], [128],
        [sc.ab, sc.q, st.k!.ptr, st.v!.ptr, nSel > 0 ? sc.sel : 0, 0, 0, n, H, P, B, nSel, mode, wsConst, 1, scale], smem);
    }
    this.gemm('linear', () => blas.linear(sc.h, 'f32', sc.ab, w.Wo, n, C, C, true));
    this.channelMix(sc, w.ln2w, w.ln2b, w.ffnXk, w.ffnK, w.ffnV, st.ffnX, cfg.attnFfn, n, gate);
  }

  /** A device buffer of at least `bytes` kept between calls under `name` (grown on demand). */
  private tmp(tmpName: string, bytes: number): number {
    const name = tmpName + this.tmpTag;
    const b = this.tmpBufs.get(name);
    if (b && b.bytes >= bytes) return b.ptr;
    if (b) { this.ctx.sync(); b.free(); }
    const nb = alloc(this.ctx, Math.max(bytes, b ? Math.ceil(b.bytes * 1.5) : 0), `attention scratch (${name})`);
    this.tmpBufs.set(name, nb);
    this.gen++;
    return nb.ptr;
  }

  /**
   * moba prefill: the own chunk (causal) per 64-query tile, then, per head and selected chunk, the
   * queries that chose it, 64 at a time, over that whole chunk; the slots merged by log-sum-exp. The
   * work done is what the queries use (no masked union of chunks).
   */
  private mobaAttention(sc: Scratch, st: CudaAttnLayerState, P: number, n: number, nSel: number, nC: number, scale: number, smem: number): void {
    const H = this.cfg.heads, B = this.cfg.chunk, nSlot = nSel + 1;
    const partO = this.tmp('partO', n * H * nSlot * 64 * F32), partL = this.tmp('partL', n * H * nSlot * F32);
    const wg = this.wgKernels();
    if (wg) this.kw(wg.mod, wg.own, 'pppppiiiiif', [Math.ceil(n / 64), H], [128], [partO, partL, sc.q, st.k!.ptr, st.v!.ptr, n, H, P, B, nSlot, scale], wg.smem);
    else this.k('attention', 'ppppppp' + 'iiiiiiii' + 'f', [Math.ceil(n / 64), H], [128],
      [sc.ab, sc.q, st.k!.ptr, st.v!.ptr, 0, partO, partL, n, H, P, B, 0, 0, 0, nSlot, scale], smem);
    const nPairs = H * nC, entries = n * H * nSel;
    const ib = this.tmp('lists', (4 * nPairs + 2 + entries) * 4);
    const cnt = ib, fill = ib + nPairs * 4, off = ib + 2 * nPairs * 4, tileOff = off + (nPairs + 1) * 4, list = tileOff + (nPairs + 1) * 4;
    zero(this.ctx, ib, 2 * nPairs * 4);
    const g = Math.ceil(entries / 256);
    this.k('moba_count', 'ppiiii', [g], [256], [cnt, sc.sel, n, H, nSel, nC]);
    this.k('moba_scan', 'pppi', [1], [1024], [off, tileOff, cnt, nPairs]);
    this.k('moba_scatter', 'ppppiiii', [g], [256], [list, fill, off, sc.sel, n, H, nSel, nC]);
    const tiles = Math.floor(entries / 64) + nPairs + 1;
    const selArgs = [partO, partL, sc.q, st.k!.ptr, st.v!.ptr, list, off, tileOff, H, nC, B, nSlot, scale];
    if (wg) this.kw(wg.mod, wg.sel, 'pppppppp' + 'iiii' + 'f', [tiles], [128], selArgs, wg.smem);
    else this.k('moba_attn', 'pppppppp' + 'iiii' + 'f', [tiles], [128], selArgs);
    this.k('moba_merge', 'ppppiii', [Math.ceil((n * H) / 8)], [256], [sc.ab, partO, partL, sc.sel, n, H, nSel]);
  }

  /** The sm_90a attention kernels for the current `attnWg` (compiled on first use), or undefined. */
  private wgKernels(): { mod: CudaModule; own: string; sel: string; smem: number } | undefined {
    const nk = this.attnWg;
    if (nk !== 64 && nk !== 128) return undefined;
    const own = `own_attn_wg${nk}`, sel = `moba_attn_wg${nk}`, smem = 2 * 2 * nk * 128 + 1024;
    if (!this.wgMod) {
      this.wgMod = loadModule(this.ctx, 'attn-sm90.cu', [], 'sm_90a');
      for (const k of [64, 128]) for (const f of [`own_attn_wg${k}`, `moba_attn_wg${k}`]) setMaxDynamicSmem(this.wgMod, f, 2 * 2 * k * 128 + 1024);
    }
    return { mod: this.wgMod, own, sel, smem };
  }
  /** A launch of another module's kernel, profiled like `k`. */
  private kw(mod: CudaModule, name: string, sig: string, grid: [number, number?, number?], block: [number], args: number[], smem: number): void {
    if (this.profile) this.timed(name, () => launch(this.ctx, mod, name, sig, grid, block, smem, args));
    else launch(this.ctx, mod, name, sig, grid, block, smem, args);
  }

  /**
   * One moba token: the whole step is a CUDA graph (captured on first use for this state and these
   * buffers, replayed after); the token id and position go to the device in one copy.
   */
  private step(token: number, state: CudaState, mode: 'all' | 'last' | 'none'): Float32Array {
    const cfg = this.cfg, V = cfg.vocab, H = cfg.heads, B = cfg.chunk, P = state.pos;
    const sc = this.scratchFor(1);
    for (const a of state.attn) {
      if (a.len !== P) fail(`internal: attention cache holds ${a.len} tokens at position ${P}`);
      this.reserveKv(a, P + 1);
      this.reserveMeans(a, Math.floor((P + 1) / B));
    }
    const nSel = cfg.topk - 1, nSplit = Math.ceil(B / 256), nBlk = nSplit * (nSel + 1);
    const dec = this.decodeGemv && !decodeGemvUnsupported(cfg)
      ? (this.decoder ??= new DecodeStep(this.ctx, cfg, this.order, { emb: this.emb, lnOutW: this.lnOutW, lnOutB: this.lnOutB, headW: this.headW, rw: this.rw, aw: this.aw }))
      : undefined;
    const part = dec ? 0 : this.tmp('decode', H * nBlk * 66 * F32);
    const scores = this.tmp('decodeScores', H * Math.max(...state.attn.map((a) => a.meansCap), 1) * F32);
    if (this.graphState !== state || this.graphGen !== this.gen || !this.graph.ready || this.graphDecoder !== dec) {
      this.ctx.sync();
      if (dec) dec.capture(this.graph, state, scores);
      else this.graph.capture(() => this.stepBody(sc, state, part, scores, nSel, nSplit));
      this.graphState = state; this.graphGen = this.gen; this.graphDecoder = dec;
    }
    if (dec) dec.setInput(token, P);
    else { this.stepIds[0] = token; this.stepIds[1] = P; copyHtoD(sc.tok, this.stepIds); }
    this.graph.launch();
    for (const a of state.attn) { a.len = P + 1; a.nMeans = Math.floor((P + 1) / B); }
    state.pos = P + 1;
    const out = new Float32Array(mode === 'none' ? 0 : V);
    if (mode === 'none') this.ctx.sync(); else if (dec) dec.readLogits(out); else copyDtoH(out, sc.logits);
    return out;
  }

  private stepBody(sc: Scratch, state: CudaState, part: number, scores: number, nSel: number, nSplit: number): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, B = cfg.chunk, blas = this.blas;
    this.k('embed', 'pppi', [1], [256], [sc.h, this.emb, sc.tok, C]);
    for (const e of this.order) {
      if (e.kind === 'rwkv') { this.rwkvBlock(sc, e.index, state.rwkv[e.index], 1); continue; }
      const st = state.attn[e.index], w = this.aw[e.index];
      this.stepAttnFront(sc, st, w, scores, nSel);
      this.k('attn_decode', 'pppppp' + 'iii' + 'f', [nSplit * (nSel + 1), H], [128], [part, sc.q, st.k!.ptr, st.v!.ptr, sc.sel, sc.tok, H, B, nSplit, 0.125 * Math.LOG2E]);
      this.k('attn_decode_combine', 'ppii', [H], [64], [sc.ab, part, H, nSplit * (nSel + 1)]);
      blas.linear(sc.h, 'f32', sc.ab, w.Wo, 1, C, C, true);
      this.channelMix(sc, w.ln2w, w.ln2b, w.ffnXk, w.ffnK, w.ffnV, st.ffnX, cfg.attnFfn, 1);
    }
    this.layerNorm(0, sc.yb, sc.h, this.lnOutW, this.lnOutB, 1);
    blas.linear(sc.logits, 'f32', sc.yb, this.headW, 1, C, cfg.vocab);
  }

  /** A step's attention block up to its chunk choice: LN, q (sc.q), the K/V rows, the completed chunk's mean, choices (sc.sel). */
  private stepAttnFront(sc: Scratch, st: CudaAttnLayerState, w: AttnW, scores: number, nSel: number): void {
    const C = this.cfg.dim, H = this.cfg.heads, B = this.cfg.chunk, blas = this.blas;
    const kn = sc.mix, vn = sc.mix + C * BF;
    this.layerNorm(0, sc.yb, sc.h, w.ln1w, w.ln1b, 1);
    blas.linear(sc.q, 'f32', sc.yb, w.Wq, 1, C, C);
    blas.linear(kn, 'bf16', sc.yb, w.Wk, 1, C, C);
    blas.linear(vn, 'bf16', sc.yb, w.Wv, 1, C, C);
    this.k('kv_append', 'ppppp' + 'i', [Math.ceil(C / 256)], [256], [st.k!.ptr, st.v!.ptr, kn, vn, sc.tok, C]);
    this.k('chunk_means_dyn', 'ppiip', [Math.ceil(C / 256)], [256], [st.means!.ptr, st.k!.ptr, C, B, sc.tok]);
    if (nSel > 0) {
      const cap = st.meansCap;
      this.k('dec_scores', 'pppp' + 'iii', [Math.ceil((H * cap) / 128)], [128], [scores, sc.q, st.means!.ptr, sc.tok, H, B, cap]);
      this.k('select_chunks', 'ppppp' + 'iiiiiii', [Math.ceil(H / 8)], [256], [sc.sel, sc.q, st.means!.ptr, scores, sc.tok, 1, H, 0, B, nSel, -1, cap]);
    }
  }

  /** Logits of rows [r0, r0 + rows) of the segment into `out`. */
  private head(sc: Scratch, out: Float32Array, r0: number, rows: number): void {
    const C = this.cfg.dim, V = this.cfg.vocab;
    for (let i = 0; i < rows; i += HEAD_ROWS) {
      const m = Math.min(HEAD_ROWS, rows - i);
      this.layerNorm(0, sc.yb, sc.h + (r0 + i) * C * F32, this.lnOutW, this.lnOutB, m);
      this.gemm('linear', () => this.blas.linear(sc.logits, 'f32', sc.yb, this.headW, m, C, V));
      copyDtoH(out.subarray(i * V, (i + m) * V), sc.logits);
    }
  }
}
