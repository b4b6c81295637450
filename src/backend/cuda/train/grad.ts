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

const F32 = 4, BF = 2;
const WKV_EVERY = 16, WR = 8;
const MAX_SEL = 8;

type Fn = (...args: unknown[]) => number;
let gemmEx: Fn | undefined;
function cublasGemmEx(): Fn {
  gemmEx ??= openCudaLibrary('libcublas', ['libcublas.so', 'libcublas.so.13', 'libcublas.so.12'], 'cuBLAS').func(
    'int cublasGemmEx(void *handle, int transa, int transb, int m, int n, int k, const float *alpha, uint64_t A, int Atype, int lda, uint64_t B, int Btype, int ldb, const float *beta, uint64_t C, int Ctype, int ldc, int computeType, int algo)',
  ) as Fn;
  return gemmEx;
}

interface Slot { off: number; n: number; shape: number[] }

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
  private P: DeviceBuffer; private Pb: DeviceBuffer; private G: DeviceBuffer;
  private M: DeviceBuffer | undefined; private Vm: DeviceBuffer | undefined;
  private sc: Scratch;
  /** AdamW steps taken. */
  t = 0;
  /** Per-op device time (ms) when set: every op is synchronised and timed. */
  profile: Map<string, number> | undefined;
  private segTables: { lo: number; hi: number; start: DeviceBuffer; lr: DeviceBuffer; decay: DeviceBuffer; n: number } | undefined;

  constructor(model: TrainModel, opts: { device?: number; trainable?: (name: string) => boolean } = {}) {
    const cfg = model.cfg;
    if (cfg.headSize !== 64) fail(`CUDA training needs head size 64 (this model has ${cfg.headSize})`);
    if (cfg.topk - 1 > MAX_SEL) fail(`CUDA training supports top-k up to ${MAX_SEL + 1} (got ${cfg.topk})`);
    this.cfg = cfg;
    this.ctx = CudaContext.get(opts.device ?? 0);
    this.mod = loadModule(this.ctx, 'train.cu');
    this.blas = new Cublas(this.ctx);
    this.sc = new Scratch(this.ctx);
    let off = 0;
    for (const [name, shape] of expectedTensors(cfg)) {
      const n = shape.reduce((a, b) => a * b, 1);
      this.slots.set(name, { off, n, shape });
      off += Math.ceil(n / 64) * 64;
    }
    this.total = off;
    this.P = alloc(this.ctx, off * F32, 'master weights');
    this.Pb = alloc(this.ctx, off * BF, 'bf16 weights');
    this.G = alloc(this.ctx, off * F32, 'gradients');
    this.setParams(parameterTensors(model));
    const trainable = opts.trainable ?? (() => true);
    this.trainable = new Set([...this.slots.keys()].filter(trainable));
  }
  readonly trainable: Set<string>;

  /** Uploads parameters (fp32) and refreshes the bf16 copy. */
  setParams(params: Map<string, Float32Array>): void {
    const host = new Float32Array(this.total);
    for (const [name, s] of this.slots) {
      const v = params.get(name);
      if (!v || v.length !== s.n) fail(`internal: parameter '${name}' missing or mis-sized`);
      host.set(v, s.off);
    }
    copyHtoD(this.P.ptr, host);
    copyHtoD(this.Pb.ptr, toBf16(host));
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
    if (this.segTables) { this.segTables.start.free(); this.segTables.lr.free(); this.segTables.decay.free(); }
    this.blas.dispose();
  }

  // ------------------------------------------------------------------------------------------
  // plumbing

  private f(name: string): number { return this.P.ptr + this.slots.get(name)!.off * F32; }
  private b(name: string): number { return this.Pb.ptr + this.slots.get(name)!.off * BF; }
  private g(name: string): number { return this.G.ptr + this.slots.get(name)!.off * F32; }

  private timed(name: string, f: () => void): void {
    if (!this.profile) { f(); return; }
    this.ctx.sync();
    const a = performance.now();
    f();
    this.ctx.sync();
    this.profile.set(name, (this.profile.get(name) ?? 0) + performance.now() - a);
  }

  private k(name: string, grid: [number, number?, number?], block: [number, number?, number?], args: number[], smem = 0, tag = name): void {
    const sig = this.mod.sigs.get(name);
    if (sig === undefined) throw new Error(`internal: no kernel ${name} in train.cu`);
    this.timed(tag, () => launch(this.ctx, this.mod, name, sig, grid, block, smem, args));
  }

  /**
   * Row-major C[M, N] (+)= op(A)·op(B): A stored [M, K] (or [K, M] with tA), B stored [K, N] (or [N, K]
   * with tB); A and B bf16, C float32 (or bf16), fp32 accumulation.
   */
  private gemm(tag: string, Cp: number, cBf: boolean, A: number, tA: boolean, B: number, tB: boolean, M: number, N: number, K: number, acc = false): void {
    if (M === 0 || N === 0 || K === 0) return;
    this.timed(`gemm ${tag}`, () => {
      const r = cublasGemmEx()(this.blas.handle, tB ? 1 : 0, tA ? 1 : 0, N, M, K, this.one, B, DT.BF16, tB ? K : N, A, DT.BF16, tA ? M : K,
        acc ? this.one : this.zeroF, Cp, cBf ? DT.BF16 : DT.F32, N, 68, -1);
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
    this.gemm('dW', dW, false, dy, true, x, false, N, K, T, true);
  }
  /** y[T, N] = x[T, K]·A[K, N] (a LoRA factor). */
  private mm(y: number, x: number, A: number, T: number, K: number, N: number, yBf = false): void {
    this.gemm('fwd', y, yBf, x, false, A, false, T, N, K);
  }
  /** Backward of mm: dx[T, K] (+)= dy·Aᵀ; dA[K, N] += xᵀ·dy. */
  private mmBack(dx: number, dA: number, dy: number, x: number, A: number, T: number, K: number, N: number, accX = false): void {
    if (dx) this.gemm('dX', dx, false, dy, false, A, true, T, K, N, accX);
    this.gemm('dW', dA, false, x, true, dy, false, K, N, T, true);
  }

  private ew(n: number): [number] { return [Math.max(1, Math.min(8192, Math.ceil(n / 256)))]; }
  private toBf(out: number, inp: number, n: number): void { this.k('tr_f2bf', this.ew(n), [256], [out, inp, n]); }
  private colsum(out: number, x: number, y: number, T: number, C: number, mode: number): void {
    this.k('tr_colsum', [Math.ceil(C / 32), Math.min(64, Math.ceil(T / 8))], [32, 8], [out, x, y, T, C, mode]);
  }
  private ln(outF: number, outB: number, x: number, w: number, b: number, T: number): void {
    this.k('tr_ln', [T], [256], [outF, outB, x, w, b, this.cfg.dim]);
  }
  /** dx (= or +=) from dout; weight and bias gradients added to gw, gb. */
  private lnBack(dx: number, gw: number, gb: number, dout: number, x: number, w: number, T: number, add: boolean): void {
    const C = this.cfg.dim, pw = this.sc.get('ln.pw', T * C * F32);
    this.k('tr_ln_bwd', [T], [256], [dx, pw, dout, x, w, C, add ? 1 : 0]);
    this.colsum(gw, pw, 0, T, C, 0);
    this.colsum(gb, dout, 0, T, C, 0);
  }

  // ------------------------------------------------------------------------------------------
  // blocks

  /** ChannelMix forward (activations in scratch 'cm.*'); out added into h. */
  private cmForward(pfx: string, x2: number, F: number, T: number, h: number): void {
    const C = this.cfg.dim, s = this.sc;
    const xk = s.get('cm.xk', T * C * BF), pre = s.get('cm.pre', T * F * F32), hid = s.get('cm.hid', T * F * BF);
    this.k('tr_mix', this.ew(T * C), [256], [xk, x2, this.f(`${pfx}ffn.x_k`), T, C, 1]);
    this.lin(pre, xk, this.b(`${pfx}ffn.key.weight`), T, C, F);
    this.k('tr_act', this.ew(T * F), [256], [0, hid, pre, T * F, 2], 0, 'tr_act relu2');
    this.lin(h, hid, this.b(`${pfx}ffn.value.weight`), T, F, C, true);
  }

  /** ChannelMix backward: dh (bf16 copy in dhB) → returns dx2 (w.r.t. the LN2 output). */
  private cmBackward(pfx: string, x2: number, F: number, T: number, dhB: number): number {
    const C = this.cfg.dim, s = this.sc;
    const xk = s.get('cm.xk', T * C * BF), pre = s.get('cm.pre', T * F * F32), hid = s.get('cm.hid', T * F * BF);
    const dhid = s.get('cmb.dhid', T * F * F32), dpreB = s.get('cmb.dpreB', T * F * BF);
    this.linBack(dhid, this.g(`${pfx}ffn.value.weight`), dhB, hid, this.b(`${pfx}ffn.value.weight`), T, F, C);
    this.k('tr_act_bwd', this.ew(T * F), [256], [dhid, dpreB, pre, T * F, 2], 0, 'tr_act_bwd relu2');
    const dxk = s.get('cmb.dxk', T * C * F32);
    this.linBack(dxk, this.g(`${pfx}ffn.key.weight`), dpreB, xk, this.b(`${pfx}ffn.key.weight`), T, C, F);
    const dx2 = s.get('cmb.dx2', T * C * F32);
    this.k('tr_mix_bwd', this.ew(T * C), [256], [dx2, dxk, this.f(`${pfx}ffn.x_k`), T, C, 1, 0]);
    this.colsum(this.g(`${pfx}ffn.x_k`), dxk, x2, T, C, 2);
    return dx2;
  }

  /** RWKV block forward over h (in place); with `save`, the WKV checkpoints are kept for the backward. */
  private rwkvForward(li: number, h: number, vFirst: number, T: number): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, L = cfg.lora, s = this.sc, n = T * C;
    const p = `${rwkvPrefix(cfg)}blocks.${li}.`, a = (x: string) => this.f(`${p}att.${x}`), ab = (x: string) => this.b(`${p}att.${x}`);
    const x1 = s.get('tm.x1', n * F32), mix = s.get('tm.mix', 6 * n * BF);
    const xm = (m: number) => mix + m * n * BF; // r, w, k, v, a, g
    this.ln(x1, 0, h, this.f(`${p}ln1.weight`), this.f(`${p}ln1.bias`), T);
    this.k('tr_mix', this.ew(n), [256], [mix, x1, a('x_r'), T, C, 6]);
    const r = s.get('tm.r', n * F32), k = s.get('tm.k', n * F32), vraw = s.get('tm.vraw', n * F32);
    this.lin(r, xm(0), ab('receptance.weight'), T, C, C);
    this.lin(k, xm(2), ab('key.weight'), T, C, C);
    this.lin(vraw, xm(3), ab('value.weight'), T, C, C);
    const lw = s.get('tm.lw', T * L.w * F32), lwB = s.get('tm.lwB', T * L.w * BF), d = s.get('tm.d', n * F32);
    this.mm(lw, xm(1), ab('w1'), T, C, L.w);
    this.k('tr_act', this.ew(T * L.w), [256], [lw, lwB, lw, T * L.w, 0], 0, 'tr_act tanh');
    this.mm(d, lwB, ab('w2'), T, L.w, C);
    const laB = s.get('tm.laB', T * L.a * BF), av = s.get('tm.a', n * F32);
    this.mm(laB, xm(4), ab('a1'), T, C, L.a, true);
    this.mm(av, laB, ab('a2'), T, L.a, C);
    const lvB = s.get('tm.lvB', T * L.v * BF), sv = s.get('tm.sv', n * F32);
    if (li > 0) {
      this.mm(lvB, xm(3), ab('v1'), T, C, L.v, true);
      this.mm(sv, lvB, ab('v2'), T, L.v, C);
    }
    const lg = s.get('tm.lg', T * L.g * F32), lgB = s.get('tm.lgB', T * L.g * BF), gate = s.get('tm.gate', n * F32);
    this.mm(lg, xm(5), ab('g1'), T, C, L.g);
    this.k('tr_act', this.ew(T * L.g), [256], [lg, lgB, lg, T * L.g, 1], 0, 'tr_act sigmoid');
    this.mm(gate, lgB, ab('g2'), T, L.g, C);
    const om = s.get('tm.om', n * F32), kh = s.get('tm.kh', n * F32), kt = s.get('tm.kt', n * F32), v = s.get('tm.v', n * F32);
    const knorm = s.get('tm.knorm', T * H * F32);
    this.k('tr_tmix_prep', [Math.ceil((T * H) / 8)], [256],
      [d, om, av, sv, kh, kt, v, vFirst, knorm, k, vraw, a('w0'), a('a0'), a('v0'), a('k_k'), a('k_a'), T, H, li === 0 ? 1 : 0]);
    const y = s.get('tm.y', n * F32), ckpt = s.get('tm.ckpt', Math.ceil(T / WKV_EVERY) * H * 64 * 64 * F32);
    this.k('tr_wkv_fwd', [H, 64 / WR], [32 * WR], [y, ckpt, r, om, kt, v, kh, av, T, C]);
    const zB = s.get('tm.zB', n * BF);
    this.k('tr_out_fwd', [Math.ceil((T * H) / 8)], [256], [zB, y, r, kt, v, gate, a('ln_x.weight'), a('ln_x.bias'), a('r_k'), T, H]);
    this.lin(h, zB, ab('output.weight'), T, C, C, true);
    const h1 = s.get('rb.h1', n * F32), x2 = s.get('rb.x2', n * F32);
    copyD(this, h1, h, n * F32);
    this.ln(x2, 0, h, this.f(`${p}ln2.weight`), this.f(`${p}ln2.bias`), T);
    this.cmForward(p, x2, cfg.ffn, T, h);
  }

  /** Recomputes block li from its input hIn, then turns dh (w.r.t. its output) into dh w.r.t. its input. */
  private rwkvBackward(li: number, hIn: number, dh: number, vFirst: number, dvFirst: number, T: number): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, L = cfg.lora, s = this.sc, n = T * C;
    const p = `${rwkvPrefix(cfg)}blocks.${li}.`, a = (x: string) => this.f(`${p}att.${x}`), ab = (x: string) => this.b(`${p}att.${x}`);
    const ga = (x: string) => this.g(`${p}att.${x}`);
    const h = s.get('rb.h', n * F32);
    copyD(this, h, hIn, n * F32);
    this.rwkvForward(li, h, vFirst, T);
    const dhB = s.get('b.dhB', n * BF);
    // ChannelMix and LN2
    this.toBf(dhB, dh, n);
    const dx2 = this.cmBackward(p, s.get('rb.x2', 0), cfg.ffn, T, dhB);
    this.lnBack(dh, this.g(`${p}ln2.weight`), this.g(`${p}ln2.bias`), dx2, s.get('rb.h1', 0), this.f(`${p}ln2.weight`), T, true);
    // output projection
    this.toBf(dhB, dh, n);
    const dz = s.get('tmb.dz', n * F32);
    this.linBack(dz, ga('output.weight'), dhB, s.get('tm.zB', 0), ab('output.weight'), T, C, C);
    const dgate = s.get('tmb.dgate', n * F32), dv = s.get('tmb.dv', n * F32), dr = s.get('tmb.dr', n * F32);
    const dkt = s.get('tmb.dkt', n * F32), dy = s.get('tmb.dy', n * F32);
    const P1 = s.get('tmb.P1', n * F32), P2 = s.get('tmb.P2', n * F32), P3 = s.get('tmb.P3', n * F32);
    const y = s.get('tm.y', 0), r = s.get('tm.r', 0), kt = s.get('tm.kt', 0), v = s.get('tm.v', 0), gate = s.get('tm.gate', 0);
    this.k('tr_out_bwd', [Math.ceil((T * H) / 8)], [256],
      [dgate, dv, dr, dkt, dy, P1, P2, P3, dz, y, r, kt, v, gate, a('ln_x.weight'), a('ln_x.bias'), a('r_k'), T, H]);
    this.colsum(ga('r_k'), P1, 0, T, C, 0);
    this.colsum(ga('ln_x.weight'), P2, 0, T, C, 0);
    this.colsum(ga('ln_x.bias'), P3, 0, T, C, 0);
    // WKV
    const dom = s.get('tmb.dom', n * F32), dkk = s.get('tmb.dkk', n * F32), db = s.get('tmb.db', n * F32);
    zero(this.ctx, dom, n * F32); zero(this.ctx, dkk, n * F32); zero(this.ctx, db, n * F32);
    const om = s.get('tm.om', 0), kh = s.get('tm.kh', 0), av = s.get('tm.a', 0), ckpt = s.get('tm.ckpt', 0);
    this.k('tr_wkv_bwd', [H, 64 / WR], [32 * WR], [dr, dom, dkt, dv, dkk, db, dy, r, om, kt, v, kh, av, ckpt, T, C]);
    // keys, rate, decay, value residual
    const dk = s.get('tmb.dk', n * F32), dapre = s.get('tmb.dapre', n * F32), dvraw = s.get('tmb.dvraw', n * F32), dvpre = s.get('tmb.dvpre', n * F32);
    const k = s.get('tm.k', 0), d = s.get('tm.d', 0), sv = s.get('tm.sv', 0), vraw = s.get('tm.vraw', 0);
    this.k('tr_tmix_bwd', [Math.ceil((T * H) / 8)], [256],
      [dk, dapre, P1, P2, dom, dvraw, dvpre, dvFirst, db, dkk, dkt, dv, kh, av, k, s.get('tm.knorm', 0), a('k_k'), a('k_a'), om, d, sv, vFirst, vraw, T, H, li === 0 ? 1 : 0]);
    this.colsum(ga('k_a'), P1, 0, T, C, 0);
    this.colsum(ga('k_k'), P2, 0, T, C, 0);
    this.colsum(ga('w0'), dom, 0, T, C, 0);
    this.colsum(ga('a0'), dapre, 0, T, C, 0);
    // the six mixed inputs' gradients, one GEMM chain each, into dmix [6, T, C]
    const mix = s.get('tm.mix', 0), xm = (m: number) => mix + m * n * BF;
    const dmix = s.get('tmb.dmix', 6 * n * F32), dm = (m: number) => dmix + m * n * F32;
    const D = Math.max(L.w, L.a, L.v, L.g);
    const dlo = s.get('tmb.dlo', T * D * F32), dloB = s.get('tmb.dloB', T * D * BF), gB = s.get('tmb.gB', n * BF);
    // r, k
    this.toBf(gB, dr, n);
    this.linBack(dm(0), ga('receptance.weight'), gB, xm(0), ab('receptance.weight'), T, C, C);
    this.toBf(gB, dk, n);
    this.linBack(dm(2), ga('key.weight'), gB, xm(2), ab('key.weight'), T, C, C);
    // decay: dd (in dom) → w2, tanh, w1
    this.toBf(gB, dom, n);
    this.mmBack(dlo, ga('w2'), gB, s.get('tm.lwB', 0), ab('w2'), T, L.w, C);
    this.k('tr_act_bwd', this.ew(T * L.w), [256], [dlo, dloB, s.get('tm.lw', 0), T * L.w, 0], 0, 'tr_act_bwd tanh');
    this.mmBack(dm(1), ga('w1'), dloB, xm(1), ab('w1'), T, C, L.w);
    // in-context rate: dapre → a2, a1
    this.toBf(gB, dapre, n);
    this.mmBack(dlo, ga('a2'), gB, s.get('tm.laB', 0), ab('a2'), T, L.a, C);
    this.toBf(dloB, dlo, T * L.a);
    this.mmBack(dm(4), ga('a1'), dloB, xm(4), ab('a1'), T, C, L.a);
    // value: W_v and the residual gate
    this.toBf(gB, dvraw, n);
    this.linBack(dm(3), ga('value.weight'), gB, xm(3), ab('value.weight'), T, C, C);
    if (li > 0) {
      this.colsum(ga('v0'), dvpre, 0, T, C, 0);
      this.toBf(gB, dvpre, n);
      this.mmBack(dlo, ga('v2'), gB, s.get('tm.lvB', 0), ab('v2'), T, L.v, C);
      this.toBf(dloB, dlo, T * L.v);
      this.mmBack(dm(3), ga('v1'), dloB, xm(3), ab('v1'), T, C, L.v, true);
    }
    // gate
    this.toBf(gB, dgate, n);
    this.mmBack(dlo, ga('g2'), gB, s.get('tm.lgB', 0), ab('g2'), T, L.g, C);
    this.k('tr_act_bwd', this.ew(T * L.g), [256], [dlo, dloB, s.get('tm.lg', 0), T * L.g, 1], 0, 'tr_act_bwd sigmoid');
    this.mmBack(dm(5), ga('g1'), dloB, xm(5), ab('g1'), T, C, L.g);
    // token-shift mixes and LN1
    const x1 = s.get('tm.x1', 0), dx1 = s.get('tmb.dx1', n * F32);
    this.k('tr_mix_bwd', this.ew(n), [256], [dx1, dmix, a('x_r'), T, C, 6, 0]);
    for (let m = 0; m < 6; m++) this.colsum(ga('x_r') + m * C * F32, dm(m), x1, T, C, 2);
    this.lnBack(dh, this.g(`${p}ln1.weight`), this.g(`${p}ln1.bias`), dx1, hIn, this.f(`${p}ln1.weight`), T, true);
  }

  private attnForward(j: number, h: number, T: number, B: number, nSel: number): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, s = this.sc, n = T * C, p = attnPrefix(j);
    const x1B = s.get('ab.x1B', n * BF);
    this.ln(0, x1B, h, this.f(`${p}ln1.weight`), this.f(`${p}ln1.bias`), T);
    const q = s.get('ab.q', n * F32), k = s.get('ab.k', n * F32), v = s.get('ab.v', n * F32);
    this.lin(q, x1B, this.b(`${p}att.receptance.weight`), T, C, C);
    this.lin(k, x1B, this.b(`${p}att.key.weight`), T, C, C);
    this.lin(v, x1B, this.b(`${p}att.value.weight`), T, C, C);
    const nc = Math.floor(T / B);
    const means = s.get('ab.means', Math.max(1, nc) * C * F32);
    if (nc > 0 && nSel > 0) this.k('tr_chunk_means', [nc, Math.ceil(C / 256)], [256], [means, k, C, B]);
    const y = s.get('ab.y', n * F32), lse = s.get('ab.lse', T * H * F32), sel = s.get('ab.sel', Math.max(1, T * H * nSel) * 4);
    this.k('tr_moba_fwd', [Math.ceil(T / 64), H], [64], [y, lse, sel, q, k, v, means, T, H, B, nSel, 0.125]);
    const yB = s.get('ab.yB', n * BF);
    this.toBf(yB, y, n);
    this.lin(h, yB, this.b(`${p}att.output.weight`), T, C, C, true);
    const h1 = s.get('rb.h1', n * F32), x2 = s.get('rb.x2', n * F32);
    copyD(this, h1, h, n * F32);
    this.ln(x2, 0, h, this.f(`${p}ln2.weight`), this.f(`${p}ln2.bias`), T);
    this.cmForward(p, x2, cfg.attnFfn, T, h);
  }

  private attnBackward(j: number, hIn: number, dh: number, T: number, B: number, nSel: number): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, s = this.sc, n = T * C, p = attnPrefix(j);
    const h = s.get('rb.h', n * F32);
    copyD(this, h, hIn, n * F32);
    this.attnForward(j, h, T, B, nSel);
    const dhB = s.get('b.dhB', n * BF);
    this.toBf(dhB, dh, n);
    const dx2 = this.cmBackward(p, s.get('rb.x2', 0), cfg.attnFfn, T, dhB);
    this.lnBack(dh, this.g(`${p}ln2.weight`), this.g(`${p}ln2.bias`), dx2, s.get('rb.h1', 0), this.f(`${p}ln2.weight`), T, true);
    this.toBf(dhB, dh, n);
    const dy = s.get('abb.dy', n * F32);
    this.linBack(dy, this.g(`${p}att.output.weight`), dhB, s.get('ab.yB', 0), this.b(`${p}att.output.weight`), T, C, C);
    const q = s.get('ab.q', 0), k = s.get('ab.k', 0), v = s.get('ab.v', 0), y = s.get('ab.y', 0), lse = s.get('ab.lse', 0), sel = s.get('ab.sel', 0);
    const Dv = s.get('abb.D', T * H * F32);
    this.k('tr_moba_dvec', [Math.ceil((T * H) / 8)], [256], [Dv, dy, y, T, H]);
    const dq = s.get('abb.dq', n * F32), dk = s.get('abb.dk', n * F32), dv = s.get('abb.dv', n * F32);
    this.k('tr_moba_dq', [Math.ceil(T / 64), H], [64], [dq, dy, q, k, v, lse, Dv, sel, T, H, B, nSel, 0.125]);
    // the queries that selected each (head, complete chunk), built on the host from the forward's selection
    const nc = Math.floor(T / B);
    const offs = new Int32Array(H * nc + 1);
    let list = new Int32Array(0);
    if (nSel > 0 && nc > 0) {
      const selH = new Int32Array(T * H * nSel);
      this.timed('moba lists', () => copyDtoH(selH, sel));
      const cnt = new Int32Array(H * nc);
      for (let i = 0; i < selH.length; i++) {
        const c = selH[i];
        if (c >= 0) cnt[(Math.floor(i / nSel) % H) * nc + c]++;
      }
      for (let i = 0; i < H * nc; i++) offs[i + 1] = offs[i] + cnt[i];
      list = new Int32Array(offs[H * nc]);
      const fill = offs.slice(0, H * nc);
      for (let t = 0; t < T; t++) for (let hh = 0; hh < H; hh++) for (let u = 0; u < nSel; u++) {
        const c = selH[(t * H + hh) * nSel + u];
        if (c >= 0) list[fill[hh * nc + c]++] = t;
      }
    }
    const listD = s.get('abb.list', Math.max(1, list.length) * 4), offD = s.get('abb.off', offs.length * 4);
    copyHtoD(listD, list); copyHtoD(offD, offs);
    this.k('tr_moba_dkv', [Math.ceil(T / 64), H], [64], [dv, dy, q, k, v, lse, Dv, listD, offD, T, H, B, nc, 0.125, 0], 0, 'tr_moba_dkv v');
    this.k('tr_moba_dkv', [Math.ceil(T / 64), H], [64], [dk, dy, q, k, v, lse, Dv, listD, offD, T, H, B, nc, 0.125, 1], 0, 'tr_moba_dkv k');
    const x1B = s.get('ab.x1B', 0), gB = s.get('tmb.gB', n * BF), dx1 = s.get('abb.dx1', n * F32);
    this.toBf(gB, dq, n);
    this.linBack(dx1, this.g(`${p}att.receptance.weight`), gB, x1B, this.b(`${p}att.receptance.weight`), T, C, C);
    this.toBf(gB, dk, n);
    this.linBack(dx1, this.g(`${p}att.key.weight`), gB, x1B, this.b(`${p}att.key.weight`), T, C, C, true);
    this.toBf(gB, dv, n);
    this.linBack(dx1, this.g(`${p}att.value.weight`), gB, x1B, this.b(`${p}att.value.weight`), T, C, C, true);
    this.lnBack(dh, this.g(`${p}ln1.weight`), this.g(`${p}ln1.bias`), dx1, hIn, this.f(`${p}ln1.weight`), T, true);
  }

  // ------------------------------------------------------------------------------------------
  // the model

  /**
   * Loss and gradients (kept on the GPU in the gradient buffer; getGrads() downloads them). With
   * `accumulate` the gradients add to the previous call's (gradient accumulation), else they replace them.
   */
  computeGradients(tokens: ArrayLike<number>, opts: GradOptions & { accumulate?: boolean; scale?: number } = {}): number {
    const cfg = this.cfg, C = cfg.dim, V = cfg.vocab, H = cfg.heads, s = this.sc;
    checkTrainingTokens(tokens, V);
    const B = opts.chunk ?? cfg.chunk, topk = opts.topk ?? cfg.topk;
    checkAttentionParams(B, topk);
    if (topk - 1 > MAX_SEL) fail(`CUDA training supports top-k up to ${MAX_SEL + 1} (got ${topk})`);
    const T = tokens.length - 1, n = T * C;
    if (opts.tokenWeights && opts.tokenWeights.length !== T) fail(`tokenWeights has ${opts.tokenWeights.length} entries for ${T} target tokens`);
    const nSel = Math.floor((T - 1) / B) > 0 ? topk - 1 : 0;
    const inputs = new Int32Array(T), targets = new Int32Array(T);
    for (let t = 0; t < T; t++) { inputs[t] = tokens[t]; targets[t] = tokens[t + 1]; }
    const ids = s.get('ids', T * 4), tg = s.get('targets', T * 4);
    copyHtoD(ids, inputs); copyHtoD(tg, targets);
    let wts = 0;
    if (opts.tokenWeights) {
      wts = s.get('weights', T * F32);
      copyHtoD(wts, Float32Array.from(opts.tokenWeights, (x) => x * (opts.scale ?? 1)));
    } else if (opts.scale !== undefined && opts.scale !== 1) {
      wts = s.get('weights', T * F32);
      copyHtoD(wts, new Float32Array(T).fill(opts.scale));
    }
    if (!opts.accumulate) zero(this.ctx, this.G.ptr, this.total * F32);
    const order = layout(cfg);
    const p = rwkvPrefix(cfg);

    // forward, keeping each block's input
    const hAll = s.get('inputs', (order.length + 1) * n * F32);
    const hIn = (b: number) => hAll + b * n * F32;
    const e = s.get('emb.rows', n * F32);
    this.k('tr_gather', [T], [256], [e, this.f(`${p}emb.weight`), ids, C]);
    this.ln(hIn(0), 0, e, this.f(`${p}blocks.0.ln0.weight`), this.f(`${p}blocks.0.ln0.bias`), T);
    const vFirst = s.get('vFirst', n * F32);
    order.forEach((en, b) => {
      copyD(this, hIn(b + 1), hIn(b), n * F32);
      if (en.kind === 'rwkv') this.rwkvForward(en.index, hIn(b + 1), vFirst, T);
      else this.attnForward(en.index, hIn(b + 1), T, B, nSel);
    });
    const hOut = hIn(order.length);

    // head and loss in segments
    const dh = s.get('dh', n * F32);
    const seg = Math.min(T, opts.segment ?? 1024);
    const xo = s.get('head.x', seg * C * F32), xoB = s.get('head.xB', seg * C * BF);
    const logits = s.get('head.logits', seg * V * F32), dlogB = s.get('head.dlogB', seg * V * BF), lossRow = s.get('loss', T * F32);
    const dxo = s.get('head.dx', seg * C * F32), pw = s.get('ln.pw', n * F32);
    for (let s0 = 0; s0 < T; s0 += seg) {
      const m = Math.min(seg, T - s0);
      const hs = hOut + s0 * C * F32;
      this.ln(xo, xoB, hs, this.f(`${p}ln_out.weight`), this.f(`${p}ln_out.bias`), m);
      this.gemm('head', logits, false, xoB, false, this.b(`${p}head.weight`), true, m, V, C);
      this.k('tr_ce', [m], [1024], [logits, dlogB, lossRow + s0 * F32, tg + s0 * 4, wts ? wts + s0 * F32 : 0, V, 1 / T, opts.l2wrap ? 1 : 0]);
      this.gemm('head dW', this.g(`${p}head.weight`), false, dlogB, true, xoB, false, V, C, m, true);
      this.gemm('head dX', dxo, false, dlogB, false, this.b(`${p}head.weight`), false, m, C, V);
      this.k('tr_ln_bwd', [m], [256], [dh + s0 * C * F32, pw, dxo, hs, this.f(`${p}ln_out.weight`), C, 0]);
      this.colsum(this.g(`${p}ln_out.weight`), pw, 0, m, C, 0);
      this.colsum(this.g(`${p}ln_out.bias`), dxo, 0, m, C, 0);
    }

    // blocks, last to first
    const dvFirst = s.get('dvFirst', n * F32);
    zero(this.ctx, dvFirst, n * F32);
    for (let b = order.length - 1; b >= 0; b--) {
      const en = order[b];
      if (en.kind === 'rwkv') this.rwkvBackward(en.index, hIn(b), dh, vFirst, dvFirst, T);
      else this.attnBackward(en.index, hIn(b), dh, T, B, nSel);
    }

    // embedding and ln0
    const de = s.get('emb.drows', n * F32);
    this.k('tr_gather', [T], [256], [e, this.f(`${p}emb.weight`), ids, C]);
    this.lnBack(de, this.g(`${p}blocks.0.ln0.weight`), this.g(`${p}blocks.0.ln0.bias`), dh, e, this.f(`${p}blocks.0.ln0.weight`), T, false);
    this.k('tr_scatter_add', [T], [256], [this.g(`${p}emb.weight`), de, ids, C]);

    const rows = new Float32Array(T);
    copyDtoH(rows, lossRow);
    let loss = 0;
    for (let t = 0; t < T; t++) loss += rows[t];
    return loss / T;
  }

  /**
   * One AdamW update of the trainable parameters from the gradient buffer (clipped by global norm first);
   * returns the gradient norm before clipping.
   */
  step(lr: number, o: { gradClip?: number; adam: AdamWOptions; lrScale?: (name: string) => number }): number {
    const names = [...this.slots.keys()].filter((nm) => this.trainable.has(nm));
    if (names.length === 0) return 0;
    if (!this.segTables) {
      // trainable tensors must form one contiguous range of the flat buffer (all, or the moba.* tail)
      const sl = names.map((nm) => this.slots.get(nm)!);
      const lo = sl[0].off, last = sl[sl.length - 1], hi = last.off + Math.ceil(last.n / 64) * 64;
      let cover = 0;
      for (const x of sl) cover += Math.ceil(x.n / 64) * 64;
      if (cover !== hi - lo) fail('internal: the trainable parameters are not one contiguous range');
      const start = new Int32Array(names.length + 1), lrs = new Float32Array(names.length), dec = new Int32Array(names.length);
      names.forEach((nm, i) => { const x = this.slots.get(nm)!; start[i] = x.off; lrs[i] = o.lrScale?.(nm) ?? 1; dec[i] = isMatrix(x.shape) ? 1 : 0; });
      start[names.length] = hi;
      const up = (a: ArrayBufferView) => { const b = alloc(this.ctx, a.byteLength, 'optimizer table'); copyHtoD(b.ptr, a); return b; };
      this.segTables = { lo, hi, start: up(start), lr: up(lrs), decay: up(dec), n: names.length };
      this.M = alloc(this.ctx, this.total * F32, 'AdamW m');
      this.Vm = alloc(this.ctx, this.total * F32, 'AdamW v');
      zero(this.ctx, this.M.ptr, this.total * F32);
      zero(this.ctx, this.Vm.ptr, this.total * F32);
    }
    const st = this.segTables;
    const ss = this.sc.get('sumsq', 8);
    zero(this.ctx, ss, 8);
    this.k('tr_sumsq', [Math.min(1024, Math.ceil((st.hi - st.lo) / 256))], [256], [ss, this.G.ptr, st.lo, st.hi]);
    this.t++;
    const { beta1, beta2, eps, weightDecay } = o.adam;
    const c1 = 1 - beta1 ** this.t, c2 = 1 - beta2 ** this.t;
    this.k('tr_adamw', [Math.min(4096, Math.ceil((st.hi - st.lo) / 256))], [256],
      [this.P.ptr, this.Pb.ptr, this.M!.ptr, this.Vm!.ptr, this.G.ptr, st.start.ptr, st.lr.ptr, st.decay.ptr, st.n, st.lo, st.hi,
        lr, beta1, beta2, eps, weightDecay, c1, c2, ss, o.gradClip ?? 0]);
    const out = new Float64Array(1);
    copyDtoH(out, ss);
    return Math.sqrt(out[0]);
  }
}

function copyD(tr: CudaTrainer, dst: number, src: number, bytes: number): void {
  copyDtoD(tr.ctx, dst, src, bytes);
}

/**
 * Gradients of the mean next-token cross-entropy on the GPU, with the contract of the CPU
 * `computeGradients` (names, shapes, moba semantics, l2wrap, tokenWeights).
 */
export function cudaComputeGradients(model: TrainModel, tokens: ArrayLike<number>, opts: GradOptions & { device?: number } = {}): GradResult {
  const tr = new CudaTrainer(model, { device: opts.device });
  try {
    const loss = tr.computeGradients(tokens, opts);
    return { loss, grads: tr.getGrads() };
  } finally {
    tr.dispose();
  }
}
