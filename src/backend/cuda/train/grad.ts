/**
 * Training on an NVIDIA GPU: gradients of the mean next-token cross-entropy (the contract of the CPU
 * `computeGradients`, src/train/model-grad.ts) and an AdamW step, with everything on the device.
 *
 * Parameters live in ONE flat float32 buffer (the fp32 master weights, in checkpoint order), with a bf16
 * copy of the same layout for the GEMMs; gradients and the AdamW moments are flat buffers of the same
 * layout, so clipping and the optimizer are single kernels. GEMMs are cuBLAS bf16 × bf16 → fp32
 * (fp32 accumulation), forward (Y = X·Wᵀ) and backward (dX = dY·W, dW += dYᵀ·X); the other ops are the
 * kernels of kernels/train.cu. Memory plan as on the CPU: the forward keeps each block's input; the
 * backward recomputes one block's activations at a time (WKV state checkpointed every 16 tokens and
 * recomputed per stretch) and the head/loss runs in segments of tokens.
 *
 * A micro-batch of Bn sequences of T tokens is R = Bn·T rows: GEMMs and row-wise kernels see R rows,
 * the kernels that look along time (token shift, WKV-7, attention) get the sequence as a grid dimension.
 */
import { fail } from '../../../util/errors.js';
import { layout, type ModelConfig } from '../../../model/config.js';
import { attnPrefix, expectedTensors, rwkvPrefix } from '../../../model/weights.js';
import { checkAttentionParams } from '../../../model/model.js';
import { isMatrix, type AdamWOptions } from '../../../train/adamw.js';
import { checkTrainingTokens, parameterTensors, type GradOptions, type GradResult, type TrainModel } from '../../../train/model-grad.js';
import { CudaContext, openCudaLibrary } from '../driver.js';
import { Cublas, DT } from '../cublas.js';
import { alloc, copyDtoD, copyDtoH, copyHtoD, type DeviceBuffer, toBf16, zero } from '../memory.js';
import { launch, loadModule, type CudaModule } from '../module-cache.js';
import { Wkv7ChunkedTrain, wktLayoutOptions } from './wkv7-chunked.js';
import { MobaTrain, type MobaSaved, type MobaShape } from './moba.js';

/** Model widths with warp-per-row LayerNorm kernels (tr_ln_w{C/32}, tr_ln_bwd_w{C/32}). */
const WARP_LN_DIMS = [128, 256, 512, 768];

const F32 = 4;
const WKV_EVERY = 16, WR = 8;
const MAX_SEL = 8;
/** The most of the device memory the kept WKV-7 outputs may take (see CudaTrainer.keepWkv). */
const KEEP_WKV_SHARE = 0.4;
/** The most of the device memory kept forward activations may take (see CudaTrainer.keptAct). */
const KEEP_ACT_SHARE = 0.5;
/** The device memory left free beside the kept activations (share of the total). */
const KEEP_ACT_MARGIN = 0.08;

type Fn = (...args: unknown[]) => number;
let gemmEx: Fn | undefined;
function cublasGemmEx(): Fn {
  gemmEx ??= openCudaLibrary('libcublas', ['libcublas.so', 'libcublas.so.13', 'libcublas.so.12'], 'cuBLAS').func(
    'int cublasGemmEx(void *handle, int transa, int transb, int m, int n, int k, const float *alpha, uint64_t A, int Atype, int lda, uint64_t B, int Btype, int ldb, const float *beta, uint64_t C, int Ctype, int ldc, int computeType, int algo)',
  ) as Fn;
  return gemmEx;
}

interface Slot { off: number; n: number; shape: number[] }
/** A scratch buffer by name and size (see CudaTrainer.act). */
type Act = (name: string, bytes: number) => number;

/** Named device scratch buffers, grown on demand (kept between calls). */
class Scratch {
  private bufs = new Map<string, DeviceBuffer>();
  constructor(private ctx: CudaContext) {}
  get(name: string, bytes: number): number {
    const b = this.bufs.get(name);
    if (b && b.bytes >= bytes) return b.ptr;
    if (b) { this.ctx.sync(); b.free(); }
    const nb = alloc(this.ctx, Math.max(bytes, 256), `training scratch (${name})`);
    this.bufs.set(name, nb);
    return nb.ptr;
  }
  free(): void { for (const b of this.bufs.values()) b.free(); this.bufs.clear(); }
  /** Frees the buffers whose names satisfy `f`. */
  dropWhere(f: (name: string) => boolean): void {
    for (const [nm, b] of this.bufs) if (f(nm)) { this.ctx.sync(); b.free(); this.bufs.delete(nm); }
  }
  /** Frees the buffers whose names start with `prefix`. */
  drop(prefix: string): void {
    for (const [nm, b] of this.bufs) if (nm.startsWith(prefix)) { this.ctx.sync(); b.free(); this.bufs.delete(nm); }
  }
}

export interface CudaTrainerOptions {
  device?: number;
  /** What the optimizer updates (default all); e.g. only `moba.` for stage 1. */
  trainable?: (name: string) => boolean;
  /**
   * Whether frozen (not trainable) parameters get gradients too (default true, so getGrads() is complete);
   * false skips their weight-gradient GEMMs and column sums (stage 1 needs only the gradient flow through them).
   */
  frozenGrads?: boolean;
  /**
   * float32 weights and GEMM inputs (cuBLAS fp32 GEMMs) instead of bf16: a test mode that leaves only fp32
   * rounding between the GPU and the CPU reference. Slow; not for training.
   */
  fp32?: boolean;
  /** Keep forward activations for the backward where memory allows (default true; see keptAct). */
  keepActivations?: boolean;
}

export interface CudaBatchOptions extends Omit<GradOptions, 'tokenWeights'> {
  /** Per-target-token loss weights (LongCE), one array of T per sequence. */
  tokenWeights?: ArrayLike<number>[];
  /** Add to the gradients already in the buffer (gradient accumulation) instead of replacing them. */
  accumulate?: boolean;
  /** Multiplies this call's gradient contribution (e.g. 1 / micro-batches per step); losses are unscaled. */
  scale?: number;
}

export interface CudaStepOptions extends GradOptions {
  lr: number;
  /** Global-norm clip (0 = none). */
  gradClip?: number;
  adam?: AdamWOptions;
  /** Learning-rate multiplier per parameter name (default 1). */
  lrScale?: (name: string) => number;
}

/**
 * A model's training state on the GPU: fp32 master parameters, bf16 copies, gradients, AdamW moments.
 * `trainable` (default all) limits what the optimizer updates (e.g. only `moba.` for stage 1).
 */
export class CudaTrainer {
  readonly ctx: CudaContext;
  readonly cfg: ModelConfig;
  private mod: CudaModule;
  private blas: Cublas;
  private one = new Float32Array([1]);
  private zeroF = new Float32Array([0]);
  readonly slots = new Map<string, Slot>();
  readonly total: number;
  /** Bytes per element and cuBLAS type of GEMM inputs (bf16, or float32 in the fp32 test mode). */
  private eb: number; private dt: number;
  readonly fp32: boolean;
  private P: DeviceBuffer; private Pb: DeviceBuffer; private G: DeviceBuffer;
  private M: DeviceBuffer | undefined; private Vm: DeviceBuffer | undefined;
  private sc: Scratch;
  /** AdamW steps taken. */
  t = 0;
  /** Per-op device time (ms) when set: every op is synchronised and timed; profileCalls counts the calls. */
  profile: Map<string, number> | undefined;
  profileCalls = new Map<string, number>();
  private opt: { start: DeviceBuffer; lr: DeviceBuffer; decay: DeviceBuffer; n: number } | undefined;
  /** The trainable parameters' range [lo, hi) of the flat layout (elements). */
  private lo: number; private hi: number;
  private frozenGrads: boolean;
  /** Rows, sequence length and sequences of the current call. */
  private R = 0; private T = 0; private Bn = 0;
  /** Rows of the call that sized the kept activations. */
  private actRows = 0;
  /** Free device memory after the last call with the kept activations of `keptAct` (bytes). */
  private actFree: number | undefined;
  /**
   * WKV-7 by the chunked kernels (kernels/wkv7-train.cu, the default: 1.4× the tokens/s of RWKV-7 0.19B at
   * 4K × 16 on an H100) or by the sequential tr_wkv_fwd/bwd (RWKVX_TRAIN_WKV=seq).
   */
  wkvChunked: boolean;
  private wkc: Wkv7ChunkedTrain | undefined;
  /**
   * Whether each RWKV block's WKV-7 outputs (y, chunk-start states, the chunked record) are kept from the
   * forward for the backward, so its recompute skips wkt_prep and wkt_scan: decided per call, when they take
   * at most KEEP_WKV_SHARE of the device memory (RWKVX_TRAIN_KEEP_WKV=0 never keeps them).
   */
  private keepWkv = false;
  /** Whether the last call kept the WKV-7 outputs (see keepWkv). */
  get keptWkv(): boolean { return this.keepWkv; }
  /**
   * The blocks ('3' RWKV block 3, 'a1' attention block 1) whose forward activations are kept for the backward,
   * which then skips their recompute: as many as fit in the memory the previous call of the shape left free
   * (less KEEP_ACT_MARGIN, at most KEEP_ACT_SHARE of the device), decided per call
   * (RWKVX_TRAIN_KEEP_ACT=0, or keepActivations false, keeps none: every block is recomputed).
   */
  private keptAct = new Set<string>();
  private keepAct: boolean;
  /** How many blocks the last call kept the activations of (see keptAct). */
  get keptActivations(): number { return this.keptAct.size; }
  /** A block's key in keptAct. */
  private static blockKey(en: { kind: string; index: number }): string { return en.kind === 'rwkv' ? `${en.index}` : `a${en.index}`; }
  /**
   * The scratch accessor for a block's forward activations: its own buffers when kept (names with the
   * suffix `#key`), else the ones all blocks share.
   */
  private act(key: string): Act {
    const sfx = this.keptAct.has(key) ? `#${key}` : '';
    return (nm, bytes) => this.sc.get(nm + sfx, bytes);
  }
  /** Bytes of one block's kept forward activations (the buffers its backward reads). */
  private actBytes(kind: 'rwkv' | 'attn', R: number): number {
    const cfg = this.cfg, n = R * cfg.dim, eb = this.eb, L = cfg.lora;
    const cm = (F: number) => 2 * n * F32 + n * eb + R * F * F32 + R * F * eb; // h1, x2, xk, pre, hid
    if (kind === 'attn') return n * eb * 2 + 3 * n * F32 + cm(cfg.attnFfn); // x1B, yB, q, k, v
    return 12 * n * F32 + 7 * n * eb + R * (L.w * (F32 + eb) + L.a * eb + L.v * eb + L.g * (F32 + eb) + cfg.heads * F32) + cm(cfg.ffn);
  }
  private chunked(): Wkv7ChunkedTrain {
    this.wkc ??= new Wkv7ChunkedTrain(this.ctx, (tag, f) => this.timed(tag, f), wktLayoutOptions());
    return this.wkc;
  }

  /**
   * Fused element-wise backward (the default): column sums and bf16 casts inside the kernels that make their
   * inputs (tr_*_f), the same bf16 roundings as the separate passes (RWKVX_TRAIN_FUSED=0: tr_colsum,
   * tr_f2bf; the reference). (bf16 channel-mix pre-activations, tried too, tripled the fixture's bf16
   * gradient error against the CPU: docs/cuda-training.md.)
   */
  readonly fused: boolean;
  /**
   * LayerNorm forward and fused backward with a warp per row (tr_ln_w / tr_ln_bwd_w 4, 8, 16, 24 for
   * C = 128, 256, 512, 768): the same sums in the same order and the same rounded-as-written arithmetic as
   * tr_ln / tr_ln_bwd_f, so the same bits (a GPU test compares them). RWKVX_TRAIN_LN=block: the
   * block-per-row kernels (other widths always use them).
   */
  readonly lnWarp = process.env.RWKVX_TRAIN_LN !== 'block';
  /**
   * Token-shift mixes with a block per row (tr_mix_rows: 16-byte loads, no 64-bit division per element;
   * the same bits as tr_mix, a GPU test compares them). RWKVX_TRAIN_MIX=grid: the grid-stride tr_mix.
   */
  readonly mixRows = process.env.RWKVX_TRAIN_MIX !== 'grid';

  private mb: MobaTrain | undefined;
  private moba(): MobaTrain {
    this.mb ??= new MobaTrain(this.ctx, { scratch: (nm, b) => this.sc.get(nm, b), toBf: (o, i, n) => this.toBf(o, i, n), timed: (t, f) => this.timed(t, f) });
    return this.mb;
  }
  /**
   * The attention core on tensor cores (bf16 GEMM inputs, chunk a multiple of 64; RWKVX_TRAIN_MOBA=ref
   * forces the reference kernels) — see train/moba.ts.
   */
  mobaTC(B: number): boolean { return MobaTrain.tensorCores(!this.fp32, B); }
  private mobaShape(B: number, nSel: number): MobaShape { return { Bn: this.Bn, T: this.T, H: this.cfg.heads, B, nSel }; }
  /** Attention block j's kept forward outputs (the backward's recompute reuses them). */
  private mobaSaved(j: number, sh: MobaShape): MobaSaved {
    const R = sh.Bn * sh.T, s = this.sc;
    return {
      y: s.get(`ab.y.${j}`, R * sh.H * 64 * F32), lse: s.get(`ab.lse.${j}`, R * sh.H * F32),
      sel: s.get(`ab.sel.${j}`, Math.max(1, R * sh.H * sh.nSel) * 4), mask: s.get(`ab.mask.${j}`, MobaTrain.maskBytes(sh)),
    };
  }

  constructor(model: TrainModel, opts: CudaTrainerOptions = {}) {
    const cfg = model.cfg;
    if (cfg.headSize !== 64) fail(`CUDA training needs head size 64 (this model has ${cfg.headSize})`);
    if (cfg.topk - 1 > MAX_SEL) fail(`CUDA training supports top-k up to ${MAX_SEL + 1} (got ${cfg.topk})`);
    this.cfg = cfg;
    this.fp32 = opts.fp32 === true;
    this.eb = this.fp32 ? 4 : 2;
    this.dt = this.fp32 ? DT.F32 : DT.BF16;
    this.ctx = CudaContext.get(opts.device ?? 0);
    this.mod = loadModule(this.ctx, 'train.cu', this.fp32 ? ['-DTR_FP32'] : []);
    const wkvMode = process.env.RWKVX_TRAIN_WKV ?? '';
    if (!['', 'seq', 'chunked'].includes(wkvMode)) fail(`RWKVX_TRAIN_WKV must be 'seq' or 'chunked' (got '${wkvMode}')`);
    this.wkvChunked = wkvMode !== 'seq';
    this.keepAct = (opts.keepActivations ?? true) && process.env.RWKVX_TRAIN_KEEP_ACT !== '0';
    const fz = process.env.RWKVX_TRAIN_FUSED ?? '';
    if (!['', '0', '1'].includes(fz)) fail(`RWKVX_TRAIN_FUSED must be 0 or 1 (got '${fz}')`);
    this.fused = fz !== '0' && cfg.dim <= 4096;
    this.blas = new Cublas(this.ctx);
    this.sc = new Scratch(this.ctx);
    let off = 0;
    for (const [name, shape] of expectedTensors(cfg)) {
      const n = shape.reduce((a, b) => a * b, 1);
      this.slots.set(name, { off, n, shape });
      off += Math.ceil(n / 64) * 64;
    }
    this.total = off;
    const trainable = opts.trainable ?? (() => true);
    this.trainable = new Set([...this.slots.keys()].filter(trainable));
    // the optimizer and the frozen-gradient skip address the trainable tensors as one range of the layout
    // (all of them, or the moba.* tail for stage 1)
    const sl = [...this.slots].filter(([nm]) => this.trainable.has(nm)).map(([, x]) => x);
    this.lo = sl.length ? sl[0].off : 0;
    this.hi = sl.length ? sl[sl.length - 1].off + Math.ceil(sl[sl.length - 1].n / 64) * 64 : 0;
    if (sl.reduce((a, x) => a + Math.ceil(x.n / 64) * 64, 0) !== this.hi - this.lo) fail('internal: the trainable parameters are not one contiguous range');
    this.frozenGrads = opts.frozenGrads ?? true;
    this.P = alloc(this.ctx, off * F32, 'master weights');
    this.Pb = alloc(this.ctx, off * this.eb, 'GEMM weights');
    this.G = alloc(this.ctx, off * F32, 'gradients');
    this.setParams(parameterTensors(model));
  }
  readonly trainable: Set<string>;

  /** Uploads parameters (fp32) and refreshes the GEMM copy. */
  setParams(params: Map<string, Float32Array>): void {
    const host = new Float32Array(this.total);
    for (const [name, s] of this.slots) {
      const v = params.get(name);
      if (!v || v.length !== s.n) fail(`internal: parameter '${name}' missing or mis-sized`);
      host.set(v, s.off);
    }
    copyHtoD(this.P.ptr, host);
    copyHtoD(this.Pb.ptr, this.fp32 ? host : toBf16(host));
  }

  /** The current parameters by name (downloaded). */
  getParams(): Map<string, Float32Array> { return this.download(this.P.ptr); }
  /** The gradients of the last computeGradients by name (downloaded). */
  getGrads(): Map<string, Float32Array> { return this.download(this.G.ptr); }

  private download(ptr: number): Map<string, Float32Array> {
    const host = new Float32Array(this.total);
    copyDtoH(host, ptr);
    const out = new Map<string, Float32Array>();
    for (const [name, s] of this.slots) out.set(name, host.slice(s.off, s.off + s.n));
    return out;
  }

  dispose(): void {
    this.ctx.sync();
    this.sc.free();
    for (const b of [this.P, this.Pb, this.G, this.M, this.Vm]) b?.free();
    if (this.opt) { this.opt.start.free(); this.opt.lr.free(); this.opt.decay.free(); }
    this.blas.dispose();
  }

  // ------------------------------------------------------------------------------------------
  // plumbing

  private f(name: string): number { return this.P.ptr + this.slots.get(name)!.off * F32; }
  private b(name: string): number { return this.Pb.ptr + this.slots.get(name)!.off * this.eb; }
  private g(name: string): number { return this.G.ptr + this.slots.get(name)!.off * F32; }
  /** Whether a gradient destination needs computing (false for frozen parameters unless frozenGrads). */
  private want(gp: number): boolean {
    return this.frozenGrads || (gp >= this.G.ptr + this.lo * F32 && gp < this.G.ptr + this.hi * F32);
  }

  private timed(name: string, f: () => void): void {
    if (!this.profile) { f(); return; }
    this.ctx.sync();
    const a = performance.now();
    f();
    this.ctx.sync();
    this.profile.set(name, (this.profile.get(name) ?? 0) + performance.now() - a);
    this.profileCalls.set(name, (this.profileCalls.get(name) ?? 0) + 1);
  }

  private k(name: string, grid: [number, number?, number?], block: [number, number?, number?], args: number[], smem = 0, tag = name): void {
    const sig = this.mod.sigs.get(name);
    if (sig === undefined) throw new Error(`internal: no kernel ${name} in train.cu`);
    this.timed(tag, () => launch(this.ctx, this.mod, name, sig, grid, block, smem, args));
  }

  /**
   * Row-major C[M, N] (+)= op(A)·op(B): A stored [M, K] (or [K, M] with tA), B stored [K, N] (or [N, K]
   * with tB); A and B GEMM inputs (bf16), C float32 (or a GEMM input with cBf), fp32 accumulation.
   */
  private gemm(tag: string, Cp: number, cBf: boolean, A: number, tA: boolean, B: number, tB: boolean, M: number, N: number, K: number, acc = false): void {
    if (M === 0 || N === 0 || K === 0) return;
    this.timed(`gemm ${tag}`, () => {
      const r = cublasGemmEx()(this.blas.handle, tB ? 1 : 0, tA ? 1 : 0, N, M, K, this.one, B, this.dt, tB ? K : N, A, this.dt, tA ? M : K,
        acc ? this.one : this.zeroF, Cp, cBf ? this.dt : DT.F32, N, 68, -1);
      if (r !== 0) throw new Error(`cuBLAS cublasGemmEx(${tag}) failed (${r})`);
    });
  }
  /** y[T, N] = x[T, K]·W[N, K]ᵀ (acc: +=). */
  private lin(y: number, x: number, W: number, T: number, K: number, N: number, acc = false, yBf = false): void {
    this.gemm('fwd', y, yBf, x, false, W, true, T, N, K, acc);
  }
  /** Backward of lin: dx[T, K] (+)= dy·W; dW[N, K] += dyᵀ·x. dy, x bf16. */
  private linBack(dx: number, dW: number, dy: number, x: number, W: number, T: number, K: number, N: number, accX = false): void {
    if (dx) this.gemm('dX', dx, false, dy, false, W, false, T, K, N, accX);
    if (this.want(dW)) this.gemm('dW', dW, false, dy, true, x, false, N, K, T, true);
  }
  /** y[T, N] = x[T, K]·A[K, N] (a LoRA factor). */
  private mm(y: number, x: number, A: number, T: number, K: number, N: number, yBf = false): void {
    this.gemm('fwd', y, yBf, x, false, A, false, T, N, K);
  }
  /** Backward of mm: dx[T, K] (+)= dy·Aᵀ; dA[K, N] += xᵀ·dy. */
  private mmBack(dx: number, dA: number, dy: number, x: number, A: number, T: number, K: number, N: number, accX = false): void {
    if (dx) this.gemm('dX', dx, false, dy, false, A, true, T, K, N, accX);
    if (this.want(dA)) this.gemm('dW', dA, false, x, true, dy, false, K, N, T, true);
  }

  private ew(n: number): [number] { return [Math.max(1, Math.min(8192, Math.ceil(n / 256)))]; }
  private toBf(out: number, inp: number, n: number): void { this.k('tr_f2bf', this.ew(n), [256], [out, inp, n]); }
  /** out[i] += Σ over R rows (see tr_colsum; mode 2 is the token-shift delta, per sequence). */
  private colsum(out: number, x: number, y: number, R: number, C: number, mode: number): void {
    if (!this.want(out)) return;
    this.k('tr_colsum', [Math.ceil(C / 32), Math.min(128, Math.ceil(R / 8))], [32, 8], [out, x, y, R, C, this.T, mode]);
  }
  private ln(outF: number, outB: number, x: number, w: number, b: number, R: number): void {
    const C = this.cfg.dim;
    if (this.lnWarp && WARP_LN_DIMS.includes(C)) this.k(`tr_ln_w${C / 32}`, [Math.ceil(R / 8)], [256], [outF, outB, x, w, b, R, C]);
    else this.k('tr_ln', [R], [256], [outF, outB, x, w, b, C]);
  }
  /** The M token-shift mixes of x [R, C] → out [M, R, C] (GEMM inputs). */
  private mix(out: number, x: number, mu: number, R: number, M: number): void {
    const C = this.cfg.dim;
    if (this.mixRows && C % 4 === 0 && C <= 4096) this.k('tr_mix_rows', [R], [C / 4], [out, x, mu, R, this.T, C, M], 0, 'tr_mix');
    else this.k('tr_mix', this.ew(R * C), [256], [out, x, mu, R, this.T, C, M]);
  }
  /** dx (= or +=) from dout; weight and bias gradients added to gw, gb; fused: dxB ← bf16(dx) when given. */
  private lnBack(dx: number, gw: number, gb: number, dout: number, x: number, w: number, R: number, add: boolean, dxB = 0): void {
    const C = this.cfg.dim;
    if (this.fused && this.lnWarp && WARP_LN_DIMS.includes(C)) {
      this.k(`tr_ln_bwd_w${C / 32}`, [Math.ceil(R / 64)], [256], [dx, dxB, this.want(gw) ? gw : 0, this.want(gb) ? gb : 0, dout, x, w, R, C, add ? 1 : 0]);
      return;
    }
    if (this.fused) {
      this.k('tr_ln_bwd_f', [Math.ceil(R / 16)], [256], [dx, dxB, this.want(gw) ? gw : 0, this.want(gb) ? gb : 0, dout, x, w, R, C, add ? 1 : 0]);
      return;
    }
    const pw = this.sc.get('ln.pw', R * C * F32);
    this.k('tr_ln_bwd', [R], [256], [dx, pw, dout, x, w, C, add ? 1 : 0]);
    this.colsum(gw, pw, 0, R, C, 0);
    this.colsum(gb, dout, 0, R, C, 0);
  }

  // ------------------------------------------------------------------------------------------
  // blocks

  /** ChannelMix forward (activations in scratch 'cm.*'); out added into h. */
  private cmForward(pfx: string, x2: number, F: number, R: number, h: number, A: Act): void {
    const C = this.cfg.dim;
    const xk = A('cm.xk', R * C * this.eb), pre = A('cm.pre', R * F * F32), hid = A('cm.hid', R * F * this.eb);
    this.mix(xk, x2, this.f(`${pfx}ffn.x_k`), R, 1);
    this.lin(pre, xk, this.b(`${pfx}ffn.key.weight`), R, C, F);
    this.k('tr_act', this.ew(R * F), [256], [0, hid, pre, R * F, 2], 0, 'tr_act relu2');
    this.lin(h, hid, this.b(`${pfx}ffn.value.weight`), R, F, C, true);
  }

  /** ChannelMix backward: dh (bf16 copy in dhB) → returns dx2 (w.r.t. the LN2 output). */
  private cmBackward(pfx: string, x2: number, F: number, R: number, dhB: number, A: Act): number {
    const C = this.cfg.dim, s = this.sc;
    const xk = A('cm.xk', R * C * this.eb), pre = A('cm.pre', R * F * F32), hid = A('cm.hid', R * F * this.eb);
    const dhid = s.get('cmb.dhid', R * F * F32), dpreB = s.get('cmb.dpreB', R * F * this.eb);
    this.linBack(dhid, this.g(`${pfx}ffn.value.weight`), dhB, hid, this.b(`${pfx}ffn.value.weight`), R, F, C);
    this.k('tr_act_bwd', this.ew(R * F), [256], [dpreB, dhid, pre, R * F, 2], 0, 'tr_act_bwd relu2');
    const dxk = s.get('cmb.dxk', R * C * F32);
    this.linBack(dxk, this.g(`${pfx}ffn.key.weight`), dpreB, xk, this.b(`${pfx}ffn.key.weight`), R, C, F);
    const dx2 = s.get('cmb.dx2', R * C * F32);
    this.mixBack(dx2, this.g(`${pfx}ffn.x_k`), dxk, this.f(`${pfx}ffn.x_k`), x2, R, 1);
    return dx2;
  }

  /** Backward of tr_mix: dx = from the M mixes' gradients dmix [M, R, C]; gmu += the mix weights' gradients. */
  private mixBack(dx: number, gmu: number, dmix: number, mu: number, x: number, R: number, M: number): void {
    const C = this.cfg.dim;
    if (this.fused) {
      this.k('tr_mix_bwd_f', [Math.ceil(C / 32), Math.min(128, Math.ceil(R / 8))], [32, 8], [dx, this.want(gmu) ? gmu : 0, dmix, mu, x, R, this.T, C, M, 0]);
      return;
    }
    this.k('tr_mix_bwd', this.ew(R * C), [256], [dx, dmix, mu, R, this.T, C, M, 0]);
    for (let m = 0; m < M; m++) this.colsum(gmu + m * C * F32, dmix + m * R * C * F32, x, R, C, 2);
  }

  /** RWKV block forward over h (in place); with `save`, the WKV checkpoints are kept for the backward. */
  /** The WKV-7 buffers of RWKV block li: its own when kept (see keepWkv), else shared by all blocks. */
  private wkvBufs(li: number): { y: number; ckpt: number; rec: number } {
    const H = this.cfg.heads, sfx = this.keepWkv ? `.${li}` : '';
    return {
      y: this.sc.get(`tm.y${sfx}`, this.R * this.cfg.dim * F32),
      ckpt: this.sc.get(`tm.ckpt${sfx}`, this.Bn * Math.ceil(this.T / WKV_EVERY) * H * 64 * 64 * F32),
      rec: this.wkvChunked ? this.sc.get(`tm.wrec${sfx}`, Wkv7ChunkedTrain.recBytes(this.Bn, this.T, H)) : 0,
    };
  }

  private rwkvForward(li: number, h: number, vFirst: number, R: number, recompute = false): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, L = cfg.lora, s = this.sc, n = R * C;
    const A = this.act(`${li}`);
    const p = `${rwkvPrefix(cfg)}blocks.${li}.`, a = (x: string) => this.f(`${p}att.${x}`), ab = (x: string) => this.b(`${p}att.${x}`);
    const x1 = A('tm.x1', n * F32), mix = A('tm.mix', 6 * n * this.eb);
    const xm = (m: number) => mix + m * n * this.eb; // r, w, k, v, a, g
    this.ln(x1, 0, h, this.f(`${p}ln1.weight`), this.f(`${p}ln1.bias`), R);
    this.mix(mix, x1, a('x_r'), R, 6);
    const r = A('tm.r', n * F32), k = A('tm.k', n * F32), vraw = A('tm.vraw', n * F32);
    this.lin(r, xm(0), ab('receptance.weight'), R, C, C);
    this.lin(k, xm(2), ab('key.weight'), R, C, C);
    this.lin(vraw, xm(3), ab('value.weight'), R, C, C);
    const lw = A('tm.lw', R * L.w * F32), lwB = A('tm.lwB', R * L.w * this.eb), d = A('tm.d', n * F32);
    this.mm(lw, xm(1), ab('w1'), R, C, L.w);
    this.k('tr_act', this.ew(R * L.w), [256], [lw, lwB, lw, R * L.w, 0], 0, 'tr_act tanh');
    this.mm(d, lwB, ab('w2'), R, L.w, C);
    const laB = A('tm.laB', R * L.a * this.eb), av = A('tm.a', n * F32);
    this.mm(laB, xm(4), ab('a1'), R, C, L.a, true);
    this.mm(av, laB, ab('a2'), R, L.a, C);
    const lvB = A('tm.lvB', R * L.v * this.eb), sv = A('tm.sv', n * F32);
    if (li > 0) {
      this.mm(lvB, xm(3), ab('v1'), R, C, L.v, true);
      this.mm(sv, lvB, ab('v2'), R, L.v, C);
    }
    const lg = A('tm.lg', R * L.g * F32), lgB = A('tm.lgB', R * L.g * this.eb), gate = A('tm.gate', n * F32);
    this.mm(lg, xm(5), ab('g1'), R, C, L.g);
    this.k('tr_act', this.ew(R * L.g), [256], [lg, lgB, lg, R * L.g, 1], 0, 'tr_act sigmoid');
    this.mm(gate, lgB, ab('g2'), R, L.g, C);
    const om = A('tm.om', n * F32), kh = A('tm.kh', n * F32), kt = A('tm.kt', n * F32), v = A('tm.v', n * F32);
    const knorm = A('tm.knorm', R * H * F32);
    this.k('tr_tmix_prep', [Math.ceil((R * H) / 8)], [256],
      [d, om, av, sv, kh, kt, v, vFirst, knorm, k, vraw, a('w0'), a('a0'), a('v0'), a('k_k'), a('k_a'), R, H, li === 0 ? 1 : 0]);
    const { y, ckpt, rec } = this.wkvBufs(li);
    if (this.wkvChunked) {
      if (!(recompute && this.keepWkv)) this.chunked().forward(y, ckpt, rec, r, om, kt, v, kh, av, this.Bn, this.T, C);
    } else this.k('tr_wkv_fwd', [H, 64 / WR, this.Bn], [32 * WR], [y, ckpt, r, om, kt, v, kh, av, this.T, C]);
    const zB = A('tm.zB', n * this.eb);
    this.k('tr_out_fwd', [Math.ceil((R * H) / 8)], [256], [zB, y, r, kt, v, gate, a('ln_x.weight'), a('ln_x.bias'), a('r_k'), R, H]);
    this.lin(h, zB, ab('output.weight'), R, C, C, true);
    const h1 = A('rb.h1', n * F32), x2 = A('rb.x2', n * F32);
    copyD(this, h1, h, n * F32);
    this.ln(x2, 0, h, this.f(`${p}ln2.weight`), this.f(`${p}ln2.bias`), R);
    this.cmForward(p, x2, cfg.ffn, R, h, A);
  }

  /** Recomputes block li from its input hIn, then turns dh (w.r.t. its output) into dh w.r.t. its input. */
  private rwkvBackward(li: number, hIn: number, dh: number, vFirst: number, dvFirst: number, R: number): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, L = cfg.lora, s = this.sc, n = R * C;
    const p = `${rwkvPrefix(cfg)}blocks.${li}.`, a = (x: string) => this.f(`${p}att.${x}`), ab = (x: string) => this.b(`${p}att.${x}`);
    const ga = (x: string) => this.g(`${p}att.${x}`);
    const A = this.act(`${li}`);
    if (!this.keptAct.has(`${li}`)) {
      // recompute the block's activations from its input (those of a kept block are still there)
      const h = s.get('rb.h', n * F32);
      copyD(this, h, hIn, n * F32);
      this.rwkvForward(li, h, vFirst, R, true);
    }
    const wb = this.wkvBufs(li);
    const dhB = s.get('b.dhB', n * this.eb), fz = this.fused;
    // ChannelMix and LN2 (fused: dhB already holds bf16(dh), written with dh)
    if (!fz) this.toBf(dhB, dh, n);
    const dx2 = this.cmBackward(p, A('rb.x2', 0), cfg.ffn, R, dhB, A);
    this.lnBack(dh, this.g(`${p}ln2.weight`), this.g(`${p}ln2.bias`), dx2, A('rb.h1', 0), this.f(`${p}ln2.weight`), R, true, dhB);
    // output projection
    if (!fz) this.toBf(dhB, dh, n);
    const dz = s.get('tmb.dz', n * F32);
    this.linBack(dz, ga('output.weight'), dhB, A('tm.zB', 0), ab('output.weight'), R, C, C);
    // fp32 arrays only the separate passes read (the fused kernels write their bf16 copies or sums instead)
    const sep = (nm: string) => (fz ? 0 : s.get(nm, n * F32));
    const dgate = sep('tmb.dgate'), dv = s.get('tmb.dv', n * F32), dr = s.get('tmb.dr', n * F32);
    const dkt = s.get('tmb.dkt', n * F32), dy = s.get('tmb.dy', n * F32);
    const P1 = sep('tmb.P1'), P2 = sep('tmb.P2'), P3 = sep('tmb.P3');
    const y = wb.y, r = A('tm.r', 0), kt = A('tm.kt', 0), v = A('tm.v', 0), gate = A('tm.gate', 0);
    const gw = (x: string) => (this.want(ga(x)) ? ga(x) : 0);
    const bfB = (x: string) => s.get(`tmb.${x}B`, n * this.eb);
    if (fz) {
      this.k('tr_out_bwd_f', [Math.ceil(R / 64), H], [256],
        [bfB('dgate'), dv, dr, dkt, dy, gw('r_k'), gw('ln_x.weight'), gw('ln_x.bias'), dz, y, r, kt, v, gate, a('ln_x.weight'), a('ln_x.bias'), a('r_k'), R, H]);
    } else {
      this.k('tr_out_bwd', [Math.ceil((R * H) / 8)], [256],
        [dgate, dv, dr, dkt, dy, P1, P2, P3, dz, y, r, kt, v, gate, a('ln_x.weight'), a('ln_x.bias'), a('r_k'), R, H]);
      this.colsum(ga('r_k'), P1, 0, R, C, 0);
      this.colsum(ga('ln_x.weight'), P2, 0, R, C, 0);
      this.colsum(ga('ln_x.bias'), P3, 0, R, C, 0);
    }
    // WKV
    const dom = s.get('tmb.dom', n * F32), dkk = s.get('tmb.dkk', n * F32), db = s.get('tmb.db', n * F32);
    zero(this.ctx, dom, n * F32); zero(this.ctx, dkk, n * F32); zero(this.ctx, db, n * F32);
    const om = A('tm.om', 0), kh = A('tm.kh', 0), av = A('tm.a', 0), ckpt = wb.ckpt;
    if (this.wkvChunked) {
      // the record is this block's: kept from the forward, or written by the recompute above
      const gend = s.get('tmb.gend', Wkv7ChunkedTrain.stateBytes(this.Bn, this.T, H));
      this.chunked().backward(dr, dom, dkt, dv, dkk, db, dy, r, om, kt, v, kh, av, ckpt, wb.rec, gend, this.Bn, this.T, C);
    } else this.k('tr_wkv_bwd', [H, 64 / WR, this.Bn], [32 * WR], [dr, dom, dkt, dv, dkk, db, dy, r, om, kt, v, kh, av, ckpt, this.T, C]);
    // keys, rate, decay, value residual
    const dk = sep('tmb.dk'), dapre = sep('tmb.dapre'), dvraw = sep('tmb.dvraw'), dvpre = sep('tmb.dvpre');
    const k = A('tm.k', 0), d = A('tm.d', 0), sv = A('tm.sv', 0), vraw = A('tm.vraw', 0);
    if (fz) {
      this.k('tr_tmix_bwd_f', [Math.ceil(R / 64), H], [256],
        [bfB('dk'), bfB('dapre'), bfB('dom'), bfB('dvraw'), li > 0 ? bfB('dvpre') : 0, bfB('dr'), dvFirst,
          gw('k_a'), gw('k_k'), gw('w0'), gw('a0'), li > 0 ? gw('v0') : 0, dr, dom, db, dkk, dkt, dv, kh, av, k, A('tm.knorm', 0),
          a('k_k'), a('k_a'), om, d, sv, vFirst, vraw, R, H, li === 0 ? 1 : 0]);
    } else {
      this.k('tr_tmix_bwd', [Math.ceil((R * H) / 8)], [256],
        [dk, dapre, P1, P2, dom, dvraw, dvpre, dvFirst, db, dkk, dkt, dv, kh, av, k, A('tm.knorm', 0), a('k_k'), a('k_a'), om, d, sv, vFirst, vraw, R, H, li === 0 ? 1 : 0]);
      this.colsum(ga('k_a'), P1, 0, R, C, 0);
      this.colsum(ga('k_k'), P2, 0, R, C, 0);
      this.colsum(ga('w0'), dom, 0, R, C, 0);
      this.colsum(ga('a0'), dapre, 0, R, C, 0);
    }
    /** The bf16 GEMM input of gradient x: the fused kernel's output, or a cast of the fp32 array into gB. */
    const asB = (x: string, f32: number): number => { if (fz) return bfB(x); this.toBf(gB, f32, n); return gB; };
    // the six mixed inputs' gradients, one GEMM chain each, into dmix [6, R, C]
    const mix = A('tm.mix', 0), xm = (m: number) => mix + m * n * this.eb;
    const dmix = s.get('tmb.dmix', 6 * n * F32), dm = (m: number) => dmix + m * n * F32;
    const D = Math.max(L.w, L.a, L.v, L.g);
    const dlo = s.get('tmb.dlo', R * D * F32), dloB = s.get('tmb.dloB', R * D * this.eb), gB = s.get('tmb.gB', n * this.eb);
    // r, k
    this.linBack(dm(0), ga('receptance.weight'), asB('dr', dr), xm(0), ab('receptance.weight'), R, C, C);
    this.linBack(dm(2), ga('key.weight'), asB('dk', dk), xm(2), ab('key.weight'), R, C, C);
    // decay: dd (in dom) → w2, tanh, w1
    this.mmBack(dlo, ga('w2'), asB('dom', dom), A('tm.lwB', 0), ab('w2'), R, L.w, C);
    this.k('tr_act_bwd', this.ew(R * L.w), [256], [dloB, dlo, A('tm.lw', 0), R * L.w, 0], 0, 'tr_act_bwd tanh');
    this.mmBack(dm(1), ga('w1'), dloB, xm(1), ab('w1'), R, C, L.w);
    // in-context rate: dapre → a2, a1
    this.mmBack(dlo, ga('a2'), asB('dapre', dapre), A('tm.laB', 0), ab('a2'), R, L.a, C);
    this.toBf(dloB, dlo, R * L.a);
    this.mmBack(dm(4), ga('a1'), dloB, xm(4), ab('a1'), R, C, L.a);
    // value: W_v and the residual gate
    this.linBack(dm(3), ga('value.weight'), asB('dvraw', dvraw), xm(3), ab('value.weight'), R, C, C);
    if (li > 0) {
      if (!fz) this.colsum(ga('v0'), dvpre, 0, R, C, 0);
      this.mmBack(dlo, ga('v2'), asB('dvpre', dvpre), A('tm.lvB', 0), ab('v2'), R, L.v, C);
      this.toBf(dloB, dlo, R * L.v);
      this.mmBack(dm(3), ga('v1'), dloB, xm(3), ab('v1'), R, C, L.v, true);
    }
    // gate
    this.mmBack(dlo, ga('g2'), asB('dgate', dgate), A('tm.lgB', 0), ab('g2'), R, L.g, C);
    this.k('tr_act_bwd', this.ew(R * L.g), [256], [dloB, dlo, A('tm.lg', 0), R * L.g, 1], 0, 'tr_act_bwd sigmoid');
    this.mmBack(dm(5), ga('g1'), dloB, xm(5), ab('g1'), R, C, L.g);
    // token-shift mixes and LN1
    const x1 = A('tm.x1', 0), dx1 = s.get('tmb.dx1', n * F32);
    this.mixBack(dx1, ga('x_r'), dmix, a('x_r'), x1, R, 6);
    this.lnBack(dh, this.g(`${p}ln1.weight`), this.g(`${p}ln1.bias`), dx1, hIn, this.f(`${p}ln1.weight`), R, true, dhB);
  }

  /**
   * Attention block forward over h (in place). The attention core's outputs (y, log-sum-exp, selection)
   * go to per-block buffers in the first pass and are reused when the backward recomputes the block
   * (`recompute`), as flash attention keeps O and the log-sum-exp: the core is the dearest op there is.
   */
  private attnForward(j: number, h: number, R: number, B: number, nSel: number, recompute: boolean): void {
    const cfg = this.cfg, C = cfg.dim, s = this.sc, n = R * C, p = attnPrefix(j);
    const A = this.act(`a${j}`);
    const x1B = A('ab.x1B', n * this.eb);
    this.ln(0, x1B, h, this.f(`${p}ln1.weight`), this.f(`${p}ln1.bias`), R);
    const q = A('ab.q', n * F32), k = A('ab.k', n * F32), v = A('ab.v', n * F32);
    this.lin(q, x1B, this.b(`${p}att.receptance.weight`), R, C, C);
    this.lin(k, x1B, this.b(`${p}att.key.weight`), R, C, C);
    this.lin(v, x1B, this.b(`${p}att.value.weight`), R, C, C);
    const shape = this.mobaShape(B, nSel), saved = this.mobaSaved(j, shape);
    this.moba().forward(saved, q, k, v, shape, this.mobaTC(B), recompute);
    const yB = A('ab.yB', n * this.eb);
    this.toBf(yB, saved.y, n);
    this.lin(h, yB, this.b(`${p}att.output.weight`), R, C, C, true);
    const h1 = A('rb.h1', n * F32), x2 = A('rb.x2', n * F32);
    copyD(this, h1, h, n * F32);
    this.ln(x2, 0, h, this.f(`${p}ln2.weight`), this.f(`${p}ln2.bias`), R);
    this.cmForward(p, x2, cfg.attnFfn, R, h, A);
  }

  private attnBackward(j: number, hIn: number, dh: number, R: number, B: number, nSel: number): void {
    const cfg = this.cfg, C = cfg.dim, s = this.sc, n = R * C, p = attnPrefix(j);
    const A = this.act(`a${j}`);
    if (!this.keptAct.has(`a${j}`)) {
      const h = s.get('rb.h', n * F32);
      copyD(this, h, hIn, n * F32);
      this.attnForward(j, h, R, B, nSel, true);
    }
    const dhB = s.get('b.dhB', n * this.eb), fz = this.fused;
    if (!fz) this.toBf(dhB, dh, n);
    const dx2 = this.cmBackward(p, A('rb.x2', 0), cfg.attnFfn, R, dhB, A);
    this.lnBack(dh, this.g(`${p}ln2.weight`), this.g(`${p}ln2.bias`), dx2, A('rb.h1', 0), this.f(`${p}ln2.weight`), R, true, dhB);
    if (!fz) this.toBf(dhB, dh, n);
    const dy = s.get('abb.dy', n * F32);
    this.linBack(dy, this.g(`${p}att.output.weight`), dhB, A('ab.yB', 0), this.b(`${p}att.output.weight`), R, C, C);
    const q = A('ab.q', 0), k = A('ab.k', 0), v = A('ab.v', 0);
    const dq = s.get('abb.dq', n * F32), dk = s.get('abb.dk', n * F32), dv = s.get('abb.dv', n * F32);
    const shape = this.mobaShape(B, nSel), tc = this.mobaTC(B);
    // the tensor cores' bf16 q, k, v live in scratch shared by the attention blocks: a kept block (not
    // recomputed just now) finds the last forward's there, so its own are cast again first
    if (this.keptAct.has(`a${j}`)) this.moba().forward(this.mobaSaved(j, shape), q, k, v, shape, tc, true);
    this.moba().backward({ dq, dk, dv }, dy, this.mobaSaved(j, shape), q, k, v, shape, tc);
    const x1B = A('ab.x1B', 0), gB = s.get('tmb.gB', n * this.eb), dx1 = s.get('abb.dx1', n * F32);
    this.toBf(gB, dq, n);
    this.linBack(dx1, this.g(`${p}att.receptance.weight`), gB, x1B, this.b(`${p}att.receptance.weight`), R, C, C);
    this.toBf(gB, dk, n);
    this.linBack(dx1, this.g(`${p}att.key.weight`), gB, x1B, this.b(`${p}att.key.weight`), R, C, C, true);
    this.toBf(gB, dv, n);
    this.linBack(dx1, this.g(`${p}att.value.weight`), gB, x1B, this.b(`${p}att.value.weight`), R, C, C, true);
    this.lnBack(dh, this.g(`${p}ln1.weight`), this.g(`${p}ln1.bias`), dx1, hIn, this.f(`${p}ln1.weight`), R, true, dhB);
  }

  // ------------------------------------------------------------------------------------------
  // the model

  /**
   * Loss and gradients of one sequence (kept on the GPU in the gradient buffer; getGrads() downloads
   * them); the mean loss. See computeBatch.
   */
  computeGradients(tokens: ArrayLike<number>, opts: GradOptions & { accumulate?: boolean; scale?: number } = {}): number {
    const { tokenWeights, ...rest } = opts;
    return this.computeBatch([tokens], { ...rest, tokenWeights: tokenWeights ? [tokenWeights] : undefined })[0];
  }

  /**
   * Gradients of the mean next-token cross-entropy over all predicted tokens of Bn equal-length sequences
   * (one forward/backward of Bn·T rows; each sequence starts from a zero state), times `scale`. With
   * `accumulate` the gradients add to the buffer's, else they replace them. Returns each sequence's mean
   * loss (unscaled; weighted by tokenWeights when given, as on the CPU).
   */
  computeBatch(seqs: ArrayLike<number>[], opts: CudaBatchOptions = {}): number[] {
    const cfg = this.cfg, C = cfg.dim, V = cfg.vocab, s = this.sc;
    const Bn = seqs.length;
    if (Bn === 0) fail('internal: an empty batch');
    for (const q of seqs) checkTrainingTokens(q, V);
    const T = seqs[0].length - 1;
    if (seqs.some((q) => q.length !== T + 1)) fail(`the sequences of a batch must have equal lengths (${seqs.map((q) => q.length).join(', ')})`);
    const B = opts.chunk ?? cfg.chunk, topk = opts.topk ?? cfg.topk;
    checkAttentionParams(B, topk);
    if (topk - 1 > MAX_SEL) fail(`CUDA training supports top-k up to ${MAX_SEL + 1} (got ${topk})`);
    const R = Bn * T, n = R * C;
    this.R = R; this.T = T; this.Bn = Bn;
    const keep = this.wkvChunked && process.env.RWKVX_TRAIN_KEEP_WKV !== '0' && cfg.nLayer *
      (n * F32 + Wkv7ChunkedTrain.stateBytes(Bn, T, cfg.heads) + Wkv7ChunkedTrain.recBytes(Bn, T, cfg.heads)) <= KEEP_WKV_SHARE * this.ctx.memInfo().total;
    if (this.keepWkv && !keep) for (const x of ['tm.y.', 'tm.ckpt.', 'tm.wrec.']) s.drop(x);
    this.keepWkv = keep;
    // activations kept: sized by the device memory left free after the last call of the same shape (its
    // scratch stays allocated), less a margin; the first call of a shape keeps none (the probe)
    const kept = new Set<string>();
    if (this.keepAct && R === this.actRows && this.actFree !== undefined) {
      const total = this.ctx.memInfo().total;
      let budget = Math.min(KEEP_ACT_SHARE * total, this.actFree - KEEP_ACT_MARGIN * total);
      for (const en of layout(cfg)) {
        // an RWKV block's backward also reads its WKV outputs (y, checkpoints, records): unless those are
        // kept per block (keepWkv), they hold the last block's, so such a block must be recomputed
        if (en.kind === 'rwkv' && !this.keepWkv) continue;
        const b = this.actBytes(en.kind === 'rwkv' ? 'rwkv' : 'attn', R);
        if (b > budget) continue;
        budget -= b;
        kept.add(CudaTrainer.blockKey(en));
      }
    }
    if ([...this.keptAct].some((x) => !kept.has(x)) || [...kept].some((x) => !this.keptAct.has(x)) || R !== this.actRows) s.dropWhere((nm) => nm.includes('#'));
    this.keptAct = kept;
    if (R !== this.actRows) this.actFree = undefined;
    this.actRows = R;
    if (opts.tokenWeights) {
      if (opts.tokenWeights.length !== Bn) fail(`tokenWeights has ${opts.tokenWeights.length} arrays for ${Bn} sequences`);
      for (const w of opts.tokenWeights) if (w.length !== T) fail(`tokenWeights has ${w.length} entries for ${T} target tokens`);
    }
    const nSel = Math.floor((T - 1) / B) > 0 ? topk - 1 : 0;
    const inputs = new Int32Array(R), targets = new Int32Array(R);
    seqs.forEach((q, b) => { for (let t = 0; t < T; t++) { inputs[b * T + t] = q[t]; targets[b * T + t] = q[t + 1]; } });
    const ids = s.get('ids', R * 4), tg = s.get('targets', R * 4);
    copyHtoD(ids, inputs); copyHtoD(tg, targets);
    let wts = 0;
    if (opts.tokenWeights) {
      wts = s.get('weights', R * F32);
      const w = new Float32Array(R);
      opts.tokenWeights.forEach((x, b) => { for (let t = 0; t < T; t++) w[b * T + t] = x[t]; });
      copyHtoD(wts, w);
    }
    if (!opts.accumulate) zero(this.ctx, this.G.ptr, this.total * F32);
    const order = layout(cfg);
    const p = rwkvPrefix(cfg);

    // forward, keeping each block's input
    const hAll = s.get('inputs', (order.length + 1) * n * F32);
    const hIn = (b: number) => hAll + b * n * F32;
    const e = s.get('emb.rows', n * F32);
    this.k('tr_gather', [R], [256], [e, this.f(`${p}emb.weight`), ids, C]);
    this.ln(hIn(0), 0, e, this.f(`${p}blocks.0.ln0.weight`), this.f(`${p}blocks.0.ln0.bias`), R);
    const vFirst = s.get('vFirst', n * F32);
    order.forEach((en, b) => {
      copyD(this, hIn(b + 1), hIn(b), n * F32);
      if (en.kind === 'rwkv') this.rwkvForward(en.index, hIn(b + 1), vFirst, R);
      else this.attnForward(en.index, hIn(b + 1), R, B, nSel, false);
    });
    const hOut = hIn(order.length);

    // head and loss in segments of rows; the gradient of the mean over all R predicted tokens
    const dh = s.get('dh', n * F32);
    const seg = Math.min(R, opts.segment ?? 1024);
    const gscale = (opts.scale ?? 1) / R;
    const xo = s.get('head.x', seg * C * F32), xoB = s.get('head.xB', seg * C * this.eb);
    const logits = s.get('head.logits', seg * V * F32), dlogB = s.get('head.dlogB', seg * V * this.eb), lossRow = s.get('loss', R * F32);
    const dxo = s.get('head.dx', seg * C * F32), dhB = s.get('b.dhB', n * this.eb);
    for (let s0 = 0; s0 < R; s0 += seg) {
      const m = Math.min(seg, R - s0);
      const hs = hOut + s0 * C * F32;
      this.ln(xo, xoB, hs, this.f(`${p}ln_out.weight`), this.f(`${p}ln_out.bias`), m);
      this.gemm('head', logits, false, xoB, false, this.b(`${p}head.weight`), true, m, V, C);
      this.k('tr_ce', [m], [1024], [logits, dlogB, lossRow + s0 * F32, tg + s0 * 4, wts ? wts + s0 * F32 : 0, V, gscale, opts.l2wrap ? 1 : 0]);
      if (this.want(this.g(`${p}head.weight`))) this.gemm('head dW', this.g(`${p}head.weight`), false, dlogB, true, xoB, false, V, C, m, true);
      this.gemm('head dX', dxo, false, dlogB, false, this.b(`${p}head.weight`), false, m, C, V);
      this.lnBack(dh + s0 * C * F32, this.g(`${p}ln_out.weight`), this.g(`${p}ln_out.bias`), dxo, hs, this.f(`${p}ln_out.weight`), m, false, dhB + s0 * C * this.eb);
    }

    // blocks, last to first
    const dvFirst = s.get('dvFirst', n * F32);
    zero(this.ctx, dvFirst, n * F32);
    for (let b = order.length - 1; b >= 0; b--) {
      const en = order[b];
      if (en.kind === 'rwkv') this.rwkvBackward(en.index, hIn(b), dh, vFirst, dvFirst, R);
      else this.attnBackward(en.index, hIn(b), dh, R, B, nSel);
    }

    // embedding and ln0
    if (this.want(this.g(`${p}emb.weight`)) || this.want(this.g(`${p}blocks.0.ln0.weight`))) {
      const de = s.get('emb.drows', n * F32);
      this.k('tr_gather', [R], [256], [e, this.f(`${p}emb.weight`), ids, C]);
      this.lnBack(de, this.g(`${p}blocks.0.ln0.weight`), this.g(`${p}blocks.0.ln0.bias`), dh, e, this.f(`${p}blocks.0.ln0.weight`), R, false);
      if (this.want(this.g(`${p}emb.weight`))) this.k('tr_scatter_add', [R], [256], [this.g(`${p}emb.weight`), de, ids, C]);
    }

    if (this.keepAct) {
      let held = 0;
      for (const en of order) if (this.keptAct.has(CudaTrainer.blockKey(en))) held += this.actBytes(en.kind === 'rwkv' ? 'rwkv' : 'attn', R);
      this.actFree = this.ctx.memInfo().free + held;
    }
    const rows = new Float32Array(R);
    copyDtoH(rows, lossRow);
    const out: number[] = [];
    for (let b = 0; b < Bn; b++) {
      let loss = 0;
      for (let t = 0; t < T; t++) loss += rows[b * T + t];
      out.push(loss / T);
    }
    return out;
  }

  /** Creates the moments (zero) and the per-tensor tables of the trainable range, once. */
  private optimizer(lrScale?: (name: string) => number): NonNullable<CudaTrainer['opt']> {
    if (this.opt) return this.opt;
    const names = [...this.slots.keys()].filter((nm) => this.trainable.has(nm));
    const start = new Int32Array(names.length + 1), lrs = new Float32Array(names.length), dec = new Int32Array(names.length);
    names.forEach((nm, i) => { const x = this.slots.get(nm)!; start[i] = x.off; lrs[i] = lrScale?.(nm) ?? 1; dec[i] = isMatrix(x.shape) ? 1 : 0; });
    start[names.length] = this.hi;
    const up = (a: ArrayBufferView) => { const b = alloc(this.ctx, Math.max(4, a.byteLength), 'optimizer table'); copyHtoD(b.ptr, a); return b; };
    this.opt = { start: up(start), lr: up(lrs), decay: up(dec), n: names.length };
    this.M = alloc(this.ctx, this.total * F32, 'AdamW m');
    this.Vm = alloc(this.ctx, this.total * F32, 'AdamW v');
    zero(this.ctx, this.M.ptr, this.total * F32);
    zero(this.ctx, this.Vm.ptr, this.total * F32);
    return this.opt;
  }

  /**
   * Fixes the per-tensor learning-rate multipliers (before the first step or optimizer import; later calls
   * change nothing).
   */
  initOptimizer(lrScale?: (name: string) => number): void { this.optimizer(lrScale); }

  /** AdamW state of the trainable parameters by name (downloaded; zeros before the first step). */
  exportOptimizer(): { t: number; m: Map<string, Float32Array>; v: Map<string, Float32Array> } {
    this.optimizer();
    const m = this.download(this.M!.ptr), v = this.download(this.Vm!.ptr);
    for (const nm of this.slots.keys()) if (!this.trainable.has(nm)) { m.delete(nm); v.delete(nm); }
    return { t: this.t, m, v };
  }

  /** Restores the AdamW state of every trainable parameter (e.g. from a checkpoint). */
  importOptimizer(t: number, m: Map<string, Float32Array>, v: Map<string, Float32Array>): void {
    this.optimizer();
    const hm = new Float32Array(this.total), hv = new Float32Array(this.total);
    for (const [nm, x] of this.slots) {
      if (!this.trainable.has(nm)) continue;
      const a = m.get(nm), b = v.get(nm);
      if (!a || !b || a.length !== x.n || b.length !== x.n) fail(`internal: optimizer state for '${nm}' missing or mis-sized`);
      hm.set(a, x.off); hv.set(b, x.off);
    }
    copyHtoD(this.M!.ptr, hm);
    copyHtoD(this.Vm!.ptr, hv);
    this.t = t;
  }

  /**
   * One AdamW update of the trainable parameters from the gradient buffer (clipped by global norm first);
   * returns the gradient norm before clipping. A non-finite norm updates nothing (and the step count
   * stays), so the caller can stop with the parameters of the last good step.
   */
  step(lr: number, o: { gradClip?: number; adam: AdamWOptions; lrScale?: (name: string) => number }): number {
    const st = this.optimizer(o.lrScale);
    if (st.n === 0) return 0;
    const ss = this.sc.get('sumsq', 8);
    zero(this.ctx, ss, 8);
    this.k('tr_sumsq', [Math.min(1024, Math.ceil((this.hi - this.lo) / 256))], [256], [ss, this.G.ptr, this.lo, this.hi]);
    const { beta1, beta2, eps, weightDecay } = o.adam;
    const t = this.t + 1;
    const c1 = 1 - beta1 ** t, c2 = 1 - beta2 ** t;
    this.k('tr_adamw', [Math.min(4096, Math.ceil((this.hi - this.lo) / 256))], [256],
      [this.P.ptr, this.Pb.ptr, this.M!.ptr, this.Vm!.ptr, this.G.ptr, st.start.ptr, st.lr.ptr, st.decay.ptr, st.n, this.lo, this.hi,
        lr, beta1, beta2, eps, weightDecay, c1, c2, ss, o.gradClip ?? 0]);
    const out = new Float64Array(1);
    copyDtoH(out, ss);
    const norm = Math.sqrt(out[0]);
    if (Number.isFinite(norm)) this.t = t;
    return norm;
  }
}

function copyD(tr: CudaTrainer, dst: number, src: number, bytes: number): void {
  copyDtoD(tr.ctx, dst, src, bytes);
}

/**
 * Gradients of the mean next-token cross-entropy on the GPU, with the contract of the CPU
 * `computeGradients` (names, shapes, moba semantics, l2wrap, tokenWeights).
 */
export function cudaComputeGradients(model: TrainModel, tokens: ArrayLike<number>, opts: GradOptions & { device?: number; fp32?: boolean } = {}): GradResult {
  const tr = new CudaTrainer(model, { device: opts.device, fp32: opts.fp32 });
  try {
    const loss = tr.computeGradients(tokens, opts);
    return { loss, grads: tr.getGrads() };
  } finally {
    tr.dispose();
  }
}
