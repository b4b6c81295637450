/**
 * The sparse-attention core for CUDA training (kernels/moba-train.cu): chunk means, per-query top-k chunk
 * selection, softmax·V with its statistics kept, and the backward to dQ, dK, dV. Two implementations with
 * one contract, chosen per call:
 *  - tensor cores (mt_*; bf16 mma.sync, fp32 accumulation; FlashAttention-2's forward and split backward on
 *    64 × 64 tiles), used when the trainer runs bf16 and the chunk length is a multiple of 64;
 *  - the reference kernels (tr_moba_*; a thread per query or key on fp32 FMAs) otherwise: the fp32 test mode
 *    and odd chunk lengths such as the fixtures' 16.
 * The selection (fp32 q and means) is the same code in both, so both choose the same chunks.
 *
 * Buffers are [R, C] float32 rows of Bn sequences of T tokens (R = Bn·T, C = H·64); `sel` [R, H, nSel];
 * `lse` [R, H] (natural-log units for the reference, log2 of the scaled scores for the tensor cores — only
 * this class reads it); `mask` one bit per (sequence, head, 64-query tile, chunk): the chunks some query
 * of the tile selected (tensor-core path only).
 */
import type { CudaContext } from '../driver.js';
import { copyDtoH, copyHtoD } from '../memory.js';
import { launch, loadModule, type CudaModule } from '../module-cache.js';

const FILE = 'moba-train.cu', F32 = 4, BF = 2;
const SCALE = 0.125, LOG2E = Math.LOG2E;

export interface MobaShape { Bn: number; T: number; H: number; B: number; nSel: number }
/** The forward's outputs the backward reads (kept per attention block by the trainer). */
export interface MobaSaved { y: number; lse: number; sel: number; mask: number }
export interface MobaDeps {
  /** Named scratch buffers of at least `bytes` (the trainer's; kept between calls). */
  scratch: (name: string, bytes: number) => number;
  /** float32 → bf16 cast of n elements (the trainer's tr_f2bf in bf16 mode). */
  toBf: (out: number, inp: number, n: number) => void;
  /** Wraps each launch (the trainer's per-op profile). */
  timed: (tag: string, f: () => void) => void;
}

export class MobaTrain {
  private mod: CudaModule;
  constructor(private ctx: CudaContext, private deps: MobaDeps) {
    this.mod = loadModule(ctx, FILE);
  }

  /** Whether a call of this shape runs on tensor cores (`bf16`: the trainer's GEMM inputs are bf16). */
  static tensorCores(bf16: boolean, B: number): boolean { return bf16 && B % 64 === 0 && process.env.RWKVX_TRAIN_MOBA !== 'ref'; }

  /** Bytes of `mask` for a shape (the trainer allocates one per attention block). */
  static maskBytes(s: MobaShape): number { return s.Bn * s.H * Math.ceil(s.T / 64) * MobaTrain.words(s) * 4; }
  private static words(s: MobaShape): number { return Math.max(1, Math.ceil(Math.floor(s.T / s.B) / 32)); }

  private k(name: string, grid: [number, number, number], block: number, smem: number, args: number[], tag = name): void {
    const sig = this.mod.sigs.get(name);
    if (sig === undefined) throw new Error(`internal: no kernel ${name} in ${FILE}`);
    this.deps.timed(tag, () => launch(this.ctx, this.mod, name, sig, grid, [block], smem, args));
  }

  /** bf16 copies of q, k, v for the tensor cores (scratch, rewritten by every forward). */
  private bf16Inputs(q: number, k: number, v: number, n: number): [number, number, number] {
    const out = (['q', 'k', 'v'] as const).map((x) => this.deps.scratch(`moba.${x}B`, n * BF)) as [number, number, number];
    this.deps.toBf(out[0], q, n); this.deps.toBf(out[1], k, n); this.deps.toBf(out[2], v, n);
    return out;
  }

  /**
   * Selection and y = softmax(q·kᵀ/8)·v over the visible keys, into `o`. With `coreDone` (the trainer's
   * recompute pass, whose q, k, v equal the first pass's, or a kept block before its backward) only the
   * tensor cores' bf16 inputs are refreshed.
   */
  forward(o: MobaSaved, q: number, k: number, v: number, s: MobaShape, tc: boolean, coreDone = false): void {
    const { Bn, T, H, B, nSel } = s, C = H * 64, nc = Math.floor(T / B), nQt = Math.ceil(T / 64);
    if (tc) {
      const [qB, kB, vB] = this.bf16Inputs(q, k, v, Bn * T * C);
      if (coreDone) return;
      const means = this.means(k, s);
      const nW = MobaTrain.words(s);
      this.k('mt_select', [nQt, H, Bn], 64, nW * 4, [o.sel, o.mask, q, means, T, H, B, nSel, nW]);
      this.k('mt_fwd', [nQt, H, Bn], 128, 0, [o.y, o.lse, qB, kB, vB, o.sel, o.mask, T, H, B, nSel, nW, SCALE * LOG2E]);
      return;
    }
    if (coreDone) return;
    const means = nc > 0 && nSel > 0 ? this.means(k, s) : this.deps.scratch('moba.means', 256);
    this.k('tr_moba_fwd', [nQt, H, Bn], 64, 0, [o.y, o.lse, o.sel, q, k, v, means, T, H, B, nSel, SCALE]);
  }

  private means(k: number, s: MobaShape): number {
    const C = s.H * 64, nc = Math.floor(s.T / s.B);
    const means = this.deps.scratch('moba.means', Math.max(1, s.Bn * nc) * C * F32);
    if (nc > 0) this.k('tr_chunk_means', [nc, Math.ceil(C / 256), s.Bn], 256, 0, [means, k, s.T, C, s.B]);
    return means;
  }

  /**
   * dq, dk, dv (written) from dy and the forward's saved outputs; q, k, v as the forward saw them (for the
   * tensor cores: the bf16 copies the last forward — the recompute — left in scratch).
   */
  backward(g: { dq: number; dk: number; dv: number }, dy: number, o: MobaSaved, q: number, k: number, v: number, s: MobaShape, tc: boolean): void {
    const { Bn, T, H, B, nSel } = s, C = H * 64, R = Bn * T, n = R * C, nQt = Math.ceil(T / 64);
    const Dv = this.deps.scratch('moba.D', R * H * F32);
    this.k('tr_moba_dvec', [Math.ceil((R * H) / 8), 1, 1], 256, 0, [Dv, dy, o.y, R, H]);
    if (tc) {
      const qB = this.deps.scratch('moba.qB', n * BF), kB = this.deps.scratch('moba.kB', n * BF), vB = this.deps.scratch('moba.vB', n * BF);
      const dyB = this.deps.scratch('moba.dyB', n * BF);
      this.deps.toBf(dyB, dy, n);
      const nW = MobaTrain.words(s), sl = SCALE * LOG2E;
      this.k('mt_dq', [nQt, H, Bn], 128, 0, [g.dq, qB, kB, vB, dyB, o.lse, Dv, o.sel, o.mask, T, H, B, nSel, nW, sl, SCALE]);
      this.k('mt_dkv', [nQt, H, Bn], 128, 0, [g.dk, g.dv, qB, kB, vB, dyB, o.lse, Dv, o.sel, o.mask, T, H, B, nSel, nW, sl, SCALE]);
      return;
    }
    this.k('tr_moba_dq', [nQt, H, Bn], 64, 0, [g.dq, dy, q, k, v, o.lse, Dv, o.sel, T, H, B, nSel, SCALE]);
    const { list, offs } = this.queryLists(o.sel, s);
    this.k('tr_moba_dkv', [nQt, H, Bn], 64, 0, [g.dv, dy, q, k, v, o.lse, Dv, list, offs, T, H, B, Math.floor(T / B), SCALE, 0], 'tr_moba_dkv v');
    this.k('tr_moba_dkv', [nQt, H, Bn], 64, 0, [g.dk, dy, q, k, v, o.lse, Dv, list, offs, T, H, B, Math.floor(T / B), SCALE, 1], 'tr_moba_dkv k');
  }

  /**
   * For the reference dK/dV kernel: the queries that selected each (sequence, head, complete chunk), built
   * on the host from the forward's selection; offs holds H·nc + 1 indices into `list` per sequence.
   */
  private queryLists(sel: number, s: MobaShape): { list: number; offs: number } {
    const selH = new Int32Array(s.Bn * s.T * s.H * s.nSel);
    if (s.nSel > 0 && Math.floor(s.T / s.B) > 0) this.deps.timed('moba lists', () => copyDtoH(selH, sel));
    const { list, offs } = mobaQueryLists(selH, s);
    const listD = this.deps.scratch('moba.list', Math.max(1, list.length) * 4), offD = this.deps.scratch('moba.off', offs.length * 4);
    this.ctx.sync();  // the previous step's kernels may still read the buffers being overwritten
    copyHtoD(listD, list); copyHtoD(offD, offs);
    return { list: listD, offs: offD };
  }
}

/**
 * The queries that selected each (sequence, head, complete chunk), from a selection [R, H, nSel] (−1 = none):
 * `list` holds query positions t grouped by (sequence, head, chunk) in query order; `offs` has H·nc + 1
 * indices into it per sequence.
 */
export function mobaQueryLists(selH: Int32Array, s: MobaShape): { list: Int32Array; offs: Int32Array } {
  const { Bn, T, H, B, nSel } = s, nc = Math.floor(T / B), per = H * nc + 1;
  const offs = new Int32Array(Bn * per);
  let list = new Int32Array(0);
  if (nSel > 0 && nc > 0) {
    const cnt = new Int32Array(Bn * H * nc);
    for (let i = 0; i < selH.length; i++) {
      const c = selH[i];
      if (c < 0) continue;
      const row = Math.floor(i / nSel), hh = row % H, b = Math.floor(row / (T * H));
      cnt[(b * H + hh) * nc + c]++;
    }
    const fill = new Int32Array(Bn * H * nc);
    let run = 0;
    for (let b = 0; b < Bn; b++) {
      for (let x = 0; x < H * nc; x++) { offs[b * per + x] = run; fill[b * H * nc + x] = run; run += cnt[b * H * nc + x]; }
      offs[b * per + H * nc] = run;
    }
    list = new Int32Array(run);
    for (let b = 0; b < Bn; b++) for (let t = 0; t < T; t++) for (let hh = 0; hh < H; hh++) for (let u = 0; u < nSel; u++) {
      const c = selH[((b * T + t) * H + hh) * nSel + u];
      if (c >= 0) list[fill[(b * H + hh) * nc + c]++] = t;
    }
  }
  return { list, offs };
}
