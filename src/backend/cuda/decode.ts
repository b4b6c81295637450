/**
 * One-token decoding on CUDA without cuBLAS: the step that CudaModel captures into a CUDA graph,
 * built from the memory-bound kernels of kernels/decode.cu. At M = 1 every matrix product reads
 * its weights once, so the step is bound by launch latency, not arithmetic: the products of a
 * stage run as one multi-GEMV launch (r, k, v and the four LoRA first stages together; the
 * four second stages together; q, k, v of attention together), the element-wise work rides in
 * their epilogues or in fused kernels (tmix_prep + WKV + group norm; score + select + chunk mean;
 * split attention + combine; embedding + first LayerNorm), and each launch after the first uses
 * programmatic dependent launch, so it is resident and streaming its weights while its
 * predecessor finishes. See docs/cuda-decode.md.
 */
import type { LayoutEntry, ModelConfig } from '../../model/config.js';
import { CudaGraph, launchKernelPdl, type CudaContext } from './driver.js';
import { alloc, allocHost, copyDtoHAsync, copyHtoD, copyHtoDAsync, type DeviceBuffer, type HostBuffer, zero } from './memory.js';
import { launch, loadModule, type CudaModule } from './module-cache.js';

/** The weight pointers of CudaModel that the step reads (bf16 matrices, float32 vectors). */
export interface DecodeRwkvW {
  ln1w: number; ln1b: number; ln2w: number; ln2b: number; mu6: number;
  w0: number; a0: number; v0: number; kk: number; ka: number; rk: number; lnxw: number; lnxb: number;
  w1: number; w2: number; a1: number; a2: number; v1: number; v2: number; g1: number; g2: number;
  Wr: number; Wk: number; Wv: number; Wo: number; ffnXk: number; ffnK: number; ffnV: number;
}
export interface DecodeAttnW {
  ln1w: number; ln1b: number; ln2w: number; ln2b: number;
  Wq: number; Wk: number; Wv: number; Wo: number; ffnXk: number; ffnK: number; ffnV: number;
}
export interface DecodeWeights {
  emb: number; lnOutW: number; lnOutB: number; headW: number;
  rw: readonly DecodeRwkvW[]; aw: readonly DecodeAttnW[];
}
/** The parts of a CudaState the step touches. */
export interface DecodeState {
  rwkv: readonly { attX: { ptr: number }; wkv: { ptr: number }; ffnX: { ptr: number } }[];
  attn: readonly { k: { ptr: number } | null; v: { ptr: number } | null; means: { ptr: number } | null; meansCap: number; ffnX: { ptr: number } }[];
}

const F32 = 4, BF = 2, MAXSEL = 8, DEC_SPL = 256;
/** mgemv epilogues (kernels/decode.cu GV_*). */
const GV = { F32: 0, F32_ADD: 1, BF16: 2, TANH: 3, SIGMOID: 4, RELU2: 5 } as const;
const GV_WARPS = 4, PROB_BYTES = 48;

interface Prob { W: number; x: number; y: number; N: number; K: number; mode: number; dynStride?: number }

/** Why the GEMV step cannot run this shape (undefined when it can): rows must be whole 16-byte words. */
export function decodeGemvUnsupported(cfg: ModelConfig): string | undefined {
  const ks = [cfg.dim, cfg.ffn, cfg.attnFfn, cfg.lora.w, cfg.lora.a, cfg.lora.v, cfg.lora.g];
  return ks.every((k) => k % 8 === 0) ? undefined : 'a matrix dimension is not a multiple of 8';
}

/** Lanes per row: the largest power of two ≤ min(32, K/8). */
function lanesPerRow(K8: number): number {
  let l = 1;
  while (l * 2 <= Math.min(32, K8)) l *= 2;
  return l;
}

export class DecodeStep {
  private readonly mod: CudaModule;
  private readonly bufs: DeviceBuffer[] = [];
  /** LoRA factors transposed to [out, in] per RWKV block: w1ᵀ, a1ᵀ, v1ᵀ, g1ᵀ ([L, C]), w2ᵀ, a2ᵀ, v2ᵀ, g2ᵀ ([C, L]). */
  private readonly loraT: { w1: number; a1: number; v1: number; g1: number; w2: number; a2: number; v2: number; g2: number }[] = [];
  /** [token id, position] on the device, read by the kernels that depend on the position. */
  private readonly dyn: number; private readonly h: number; private readonly vFirst: number;
  private readonly mix: number; private readonly io: number;
  private readonly lw: number; private readonly la: number; private readonly lv: number; private readonly lg: number;
  private readonly yb: number; private readonly hid: number; private readonly q: number; private readonly ab: number;
  private readonly lnb: number; private readonly logits: number; private readonly sel: number; private readonly part: number;
  private readonly counter: number;
  private tables: DeviceBuffer | undefined;
  /** Per mgemv launch of the step, in order: byte offset of its problem table, problems, warp tasks. */
  private launches: { off: number; n: number; tasks: number }[] = [];
  private next = 0;
  private readonly hostIds: HostBuffer;
  private readonly hostLogits: HostBuffer;
  private readonly ids: Int32Array;
  private readonly nSel: number;
  private readonly nSplit: number;
  /** Launches after the first of a step use PDL (RWKVX_DECODE_PDL=0 turns it off; off where unsupported). */
  pdl = process.env.RWKVX_DECODE_PDL !== '0';
  private firstLaunch = true;

  constructor(private readonly ctx: CudaContext, private readonly cfg: ModelConfig, private readonly order: readonly LayoutEntry[],
    private readonly w: DecodeWeights) {
    const C = cfg.dim, H = cfg.heads, L = cfg.lora, F = Math.max(cfg.ffn, cfg.attnFfn);
    this.mod = loadModule(ctx, 'decode.cu');
    const a = (bytes: number, what: string) => { const b = alloc(ctx, bytes, `decode ${what}`); this.bufs.push(b); return b.ptr; };
    this.dyn = a(8, 'position');
    this.h = a(C * F32, 'residual'); this.mix = a(6 * C * BF, 'mixes'); this.io = a(7 * C * F32, 'projections');
    this.vFirst = a(C * F32, 'v first');
    this.lw = a(L.w * BF, 'lora'); this.la = a(L.a * BF, 'lora'); this.lv = a(L.v * BF, 'lora'); this.lg = a(L.g * BF, 'lora');
    this.yb = a(C * BF, 'wkv out'); this.hid = a(F * BF, 'ffn'); this.q = a(C * F32, 'q'); this.ab = a(C * BF, 'attention');
    this.lnb = a(C * BF, 'ln'); this.logits = a(cfg.vocab * F32, 'logits'); this.sel = a(H * MAXSEL * 4, 'selection');
    this.nSel = cfg.topk - 1;
    this.nSplit = Math.ceil(cfg.chunk / DEC_SPL);
    this.part = a(H * this.nSplit * (this.nSel + 1) * 66 * F32, 'attention partials');
    this.counter = a(H * 4, 'attention counters');
    zero(ctx, this.counter, H * 4);
    const t = (src: number, R: number, Cc: number) => {
      const out = a(R * Cc * BF, 'lora');
      launch(ctx, this.mod, 'dec_transpose', 'ppii', [Math.ceil((R * Cc) / 256)], [256], 0, [out, src, R, Cc]);
      return out;
    };
    for (const b of w.rw) {
      this.loraT.push({
        w1: t(b.w1, C, L.w), a1: t(b.a1, C, L.a), v1: t(b.v1, C, L.v), g1: t(b.g1, C, L.g),
        w2: t(b.w2, L.w, C), a2: t(b.a2, L.a, C), v2: t(b.v2, L.v, C), g2: t(b.g2, L.g, C),
      });
    }
    this.hostIds = allocHost(8);
    this.ids = new Int32Array(this.hostIds.view, 0, 2);
    this.hostLogits = allocHost(cfg.vocab * F32);
    ctx.sync();
  }

  /**
   * Records the step for `state` into `graph` (the problem tables, which name the state's K/V
   * caches, are uploaded first: no synchronous call may happen during capture). `scores` holds
   * H × (largest meansCap) floats. Falls back to plain launches if a PDL capture fails.
   */
  capture(graph: CudaGraph, state: DecodeState, scores: number): void {
    this.upload(this.problems(state));
    try {
      graph.capture(() => this.enqueue(state, scores));
    } catch (e) {
      if (!this.pdl) throw e;
      this.pdl = false;
      graph.capture(() => this.enqueue(state, scores));
    }
  }

  /** Token id and position for the next replay (from pinned memory, queued on the stream). */
  setInput(token: number, pos: number): void {
    this.ids[0] = token; this.ids[1] = pos;
    copyHtoDAsync(this.ctx, this.dyn, this.hostIds, 8);
  }

  /** Waits for the step and copies its logits into `out` (through pinned memory). */
  readLogits(out: Float32Array): void {
    const V = this.cfg.vocab;
    copyDtoHAsync(this.ctx, this.hostLogits, this.logits, V * F32);
    this.ctx.sync();
    out.set(new Float32Array(this.hostLogits.view, 0, V));
  }

  dispose(): void {
    for (const b of this.bufs) b.free();
    this.bufs.length = 0;
    this.tables?.free(); this.tables = undefined;
    this.hostIds.free(); this.hostLogits.free();
  }

  /** Every mgemv launch of the step, in the order enqueue() makes them. */
  private problems(state: DecodeState): Prob[][] {
    const cfg = this.cfg, C = cfg.dim, L = cfg.lora, out: Prob[][] = [];
    const push = (probs: Prob[]) => out.push(probs);
    const mix = (m: number) => this.mix + m * C * BF; // r, w, k, v, a, g
    const io = (i: number) => this.io + i * C * F32; // r, k, v, dw, da, dv, g
    const ffn = (Wk: number, Wv: number, F: number) => {
      push([{ W: Wk, x: this.mix, y: this.hid, N: F, K: C, mode: GV.RELU2 }]);
      push([{ W: Wv, x: this.hid, y: this.h, N: C, K: F, mode: GV.F32_ADD }]);
    };
    for (const e of this.order) {
      if (e.kind === 'rwkv') {
        const w = this.w.rw[e.index], t = this.loraT[e.index], first = e.index === 0;
        push([
          { W: w.Wr, x: mix(0), y: io(0), N: C, K: C, mode: GV.F32 },
          { W: w.Wk, x: mix(2), y: io(1), N: C, K: C, mode: GV.F32 },
          { W: w.Wv, x: mix(3), y: io(2), N: C, K: C, mode: GV.F32 },
          { W: t.w1, x: mix(1), y: this.lw, N: L.w, K: C, mode: GV.TANH },
          { W: t.a1, x: mix(4), y: this.la, N: L.a, K: C, mode: GV.BF16 },
          ...(first ? [] : [{ W: t.v1, x: mix(3), y: this.lv, N: L.v, K: C, mode: GV.BF16 }]),
          { W: t.g1, x: mix(5), y: this.lg, N: L.g, K: C, mode: GV.SIGMOID },
        ]);
        push([
          { W: t.w2, x: this.lw, y: io(3), N: C, K: L.w, mode: GV.F32 },
          { W: t.a2, x: this.la, y: io(4), N: C, K: L.a, mode: GV.F32 },
          ...(first ? [] : [{ W: t.v2, x: this.lv, y: io(5), N: C, K: L.v, mode: GV.F32 }]),
          { W: t.g2, x: this.lg, y: io(6), N: C, K: L.g, mode: GV.F32 },
        ]);
        push([{ W: w.Wo, x: this.yb, y: this.h, N: C, K: C, mode: GV.F32_ADD }]);
        ffn(w.ffnK, w.ffnV, cfg.ffn);
      } else {
        const w = this.w.aw[e.index], st = state.attn[e.index];
        push([
          { W: w.Wq, x: this.lnb, y: this.q, N: C, K: C, mode: GV.F32 },
          { W: w.Wk, x: this.lnb, y: st.k!.ptr, N: C, K: C, mode: GV.BF16, dynStride: C },
          { W: w.Wv, x: this.lnb, y: st.v!.ptr, N: C, K: C, mode: GV.BF16, dynStride: C },
        ]);
        push([{ W: w.Wo, x: this.ab, y: this.h, N: C, K: C, mode: GV.F32_ADD }]);
        ffn(w.ffnK, w.ffnV, cfg.attnFfn);
      }
    }
    push([{ W: this.w.headW, x: this.lnb, y: this.logits, N: cfg.vocab, K: C, mode: GV.F32 }]);
    return out;
  }

  private upload(launches: Prob[][]): void {
    const total = launches.reduce((s, l) => s + l.length, 0);
    if (!this.tables || this.tables.bytes < total * PROB_BYTES) {
      this.tables?.free();
      this.tables = alloc(this.ctx, total * PROB_BYTES, 'decode problem tables');
    }
    const buf = new ArrayBuffer(total * PROB_BYTES), dv = new DataView(buf);
    this.launches = [];
    let i = 0;
    for (const probs of launches) {
      const off = i * PROB_BYTES;
      let tasks = 0;
      for (const p of probs) {
        if (p.K % 8 !== 0) throw new Error(`internal: mgemv needs K % 8 = 0 (K = ${p.K})`);
        const K8 = p.K / 8, lpr = lanesPerRow(K8), o = i * PROB_BYTES;
        dv.setBigUint64(o, BigInt(p.W), true); dv.setBigUint64(o + 8, BigInt(p.x), true); dv.setBigUint64(o + 16, BigInt(p.y), true);
        dv.setInt32(o + 24, p.N, true); dv.setInt32(o + 28, K8, true); dv.setInt32(o + 32, p.mode, true);
        dv.setInt32(o + 36, lpr, true); dv.setInt32(o + 40, tasks, true); dv.setInt32(o + 44, p.dynStride ?? 0, true);
        tasks += Math.ceil(p.N / (32 / lpr));
        i++;
      }
      this.launches.push({ off, n: probs.length, tasks });
    }
    copyHtoD(this.tables.ptr, new Uint8Array(buf));
  }

  /** The step's launches on the context's stream (inside a graph capture). */
  private enqueue(state: DecodeState, scores: number): void {
    const cfg = this.cfg, C = cfg.dim, H = cfg.heads, B = cfg.chunk, w = this.w;
    this.firstLaunch = true;
    this.next = 0;
    let emb = w.emb;
    const ln = (out: number, lw: number, lb: number, prev: number, mu: number, M: number) => {
      this.k('dec_ln_mix', 'ppppppiipp', [1], [256], [out, this.h, lw, lb, prev, mu, C, M, emb, this.dyn]);
      emb = 0;
    };
    const gemv = () => {
      const l = this.launches[this.next++];
      this.k('mgemv', 'pip', [Math.ceil(l.tasks / GV_WARPS)], [32 * GV_WARPS], [this.tables!.ptr + l.off, l.n, this.dyn]);
    };
    for (const e of this.order) {
      if (e.kind === 'rwkv') {
        const b = w.rw[e.index], st = state.rwkv[e.index];
        ln(this.mix, b.ln1w, b.ln1b, st.attX.ptr, b.mu6, 6);
        gemv(); gemv(); // r, k, v + LoRA first stages; LoRA second stages
        this.k('dec_wkv', 'pppppppppppp' + 'ii', [H], [1024],
          [this.yb, st.wkv.ptr, this.vFirst, this.io, b.w0, b.a0, b.v0, b.kk, b.ka, b.rk, b.lnxw, b.lnxb, C, e.index === 0 ? 1 : 0]);
        gemv(); // Wo
        ln(this.mix, b.ln2w, b.ln2b, st.ffnX.ptr, b.ffnXk, 1);
        gemv(); gemv(); // W_key (relu²), W_value
      } else {
        const a = w.aw[e.index], st = state.attn[e.index];
        ln(this.lnb, a.ln1w, a.ln1b, 0, 0, 0);
        gemv(); // q, k, v (k, v into the caches at row P)
        this.k('dec_select', 'pppppp' + 'iiii', [H + Math.ceil(C / 256)], [256],
          [this.sel, scores, st.means!.ptr, this.q, st.k!.ptr, this.dyn, H, B, st.meansCap, this.nSel]);
        this.k('dec_attn', 'pppppppp' + 'iii' + 'f', [this.nSplit * (this.nSel + 1), H], [128],
          [this.ab, this.part, this.counter, this.q, st.k!.ptr, st.v!.ptr, this.sel, this.dyn, H, B, this.nSplit, 0.125 * Math.LOG2E]);
        gemv(); // Wo
        ln(this.mix, a.ln2w, a.ln2b, st.ffnX.ptr, a.ffnXk, 1);
        gemv(); gemv();
      }
    }
    ln(this.lnb, w.lnOutW, w.lnOutB, 0, 0, 0);
    gemv(); // head
    if (this.next !== this.launches.length) throw new Error('internal: decode problem tables out of step with the launches');
  }

  private k(name: string, sig: string, grid: [number, number?], block: [number], args: number[]): void {
    const first = this.firstLaunch;
    this.firstLaunch = false;
    if (!this.pdl || first) { launch(this.ctx, this.mod, name, sig, grid, block, 0, args); return; }
    const want = this.mod.sigs.get(name);
    if (want !== sig) throw new Error(`kernel ${name}: launched with argument kinds '${sig}', the source declares '${want}'`);
    if (!launchKernelPdl(this.ctx, this.mod.fn(name), [grid[0], grid[1] ?? 1, 1], [block[0], 1, 1], 0, packArgs(name, sig, args))) {
      this.pdl = false;
      launch(this.ctx, this.mod, name, sig, grid, block, 0, args);
    }
  }
}

function packArgs(name: string, sig: string, args: number[]): Buffer[] {
  if (sig.length !== args.length) throw new Error(`kernel ${name}: ${args.length} arguments for signature '${sig}'`);
  return args.map((v, i) => {
    const b = Buffer.alloc(sig[i] === 'p' ? 8 : 4);
    if (sig[i] === 'p') b.writeBigUInt64LE(BigInt(v));
    else if (sig[i] === 'i') { if (!Number.isInteger(v)) throw new Error(`kernel ${name}: argument ${i} must be an integer (got ${v})`); b.writeInt32LE(v); }
    else b.writeFloatLE(v);
    return b;
  });
}
