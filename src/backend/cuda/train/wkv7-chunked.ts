/**
 * Chunked WKV-7 for CUDA training (kernels/wkv7-train.cu): a drop-in replacement for train.cu's sequential
 * `tr_wkv_fwd` / `tr_wkv_bwd`, the default (RWKVX_TRAIN_WKV=seq selects the sequential kernels; CudaTrainer.wkvChunked). Same buffers
 * and contract: Bn sequences of T tokens as R = Bn·T rows of [R, C] float32 (r, ω, k̃, v, κ̂, a), each
 * sequence from S = 0; the chunk-start states go to `ckpt` [Bn, ⌈T/16⌉, H, 64, 64] (what tr_wkv_fwd saves);
 * the backward ADDS into dr, dω, dk̃, dv, dκ̂ (α part) and db. Two extra scratch buffers: the per-chunk
 * record `rec` (written by the forward, read by the backward's chain, so the backward must follow a forward
 * on the same inputs, as the trainer's recompute does) and `gend` (chunk-end state gradients).
 * Math: docs/wkv7-chunked.md; design, memory and cost: docs/cuda-training.md "Chunked WKV-7".
 */
import type { CudaContext } from '../driver.js';
import { fail } from '../../../util/errors.js';
import { kernelSource, launch, loadModule, setMaxDynamicSmem, type CudaModule } from '../module-cache.js';

const FILE = 'wkv7-train.cu';
/** Tokens per chunk, floats per (sequence, chunk, head) record. */
export const WKT_L = 16, WKT_REC = 6208;

function defined(name: string): number {
  const m = new RegExp(`^#define ${name} (\\d+)`, 'm').exec(kernelSource(FILE));
  if (!m) throw new Error(`internal: ${FILE} does not define ${name}`);
  return Number(m[1]);
}

/**
 * NVRTC options of the wkt_scan / wkt_chain layout RWKVX_TRAIN_WKT picks: 'wide' (the default: 16 rows,
 * 128 threads; 8 × 4K RWKV-X step 229.8 against 237.8 ms, H100, 2026-12-07) or 'narrow' (8 rows, 128 threads).
 */
export function wktLayoutOptions(layout = process.env.RWKVX_TRAIN_WKT || 'wide'): string[] {
  if (layout === 'wide') return ['-DWKT_ROWS=16', '-DWKT_THREADS=128'];
  if (layout === 'tc') return [TC_SEQ_OPTION, TC_GRAD_OPTION];
  if (layout === 'tcseq') return [TC_SEQ_OPTION];
  if (layout !== 'narrow') fail(`RWKVX_TRAIN_WKT must be 'wide', 'narrow', 'tc' or 'tcseq', not '${layout}'`);
  return [];
}
/**
 * 'tc' and 'tcseq' (opt-in, not yet timed on a GPU): the WKV-7 training passes on tensor cores — wkt_scan_tc / wkt_chain_tc
 * (one block of 4 warps per head and sequence, the state in mma accumulators) and wkt_grad_tc (its state
 * products as mma; kernels/wkv7-train.cu); 'tcseq' the two sequential passes only. The options compile
 * nothing differently; they pick the kernels.
 */
const TC_SEQ_OPTION = '-DWKT_SEQ_TC=1', TC_GRAD_OPTION = '-DWKT_GRAD_TC=1';

export class Wkv7ChunkedTrain {
  private mod: CudaModule;
  /** Dynamic shared memory of wkt_grad (sizeof(GradSm), static_assert-ed in the source). */
  private gradSmem: number;
  /** State rows per block of wkt_scan / wkt_chain (the source's WKT_ROWS, or -DWKT_ROWS=… in `options`). */
  readonly rows: number;
  /** Threads per block of wkt_scan / wkt_chain: 16 per row, or -DWKT_THREADS=… (128 with 16 rows: the wide layout). */
  readonly threads: number;
  /** The tensor-core sequential passes (wktLayoutOptions('tc' or 'tcseq')) and wkt_grad_tc ('tc'). */
  readonly tc: boolean;
  readonly tcGrad: boolean;
  private tcSmem: [number, number];

  /** `timed` wraps each launch (the trainer's per-op profile); `options` are NVRTC options. */
  constructor(private ctx: CudaContext, private timed: (tag: string, f: () => void) => void = (_t, f) => f(), options: string[] = []) {
    this.mod = loadModule(ctx, FILE, options);
    for (const [n, v] of [['WKT_L', WKT_L], ['WKT_REC', WKT_REC]] as const) {
      if (defined(n) !== v) throw new Error(`internal: ${FILE} has ${n} ${defined(n)}, wkv7-chunked.ts ${v}`);
    }
    this.gradSmem = defined('WKT_GRAD_SMEM');
    const opt = options.map((o) => /^-DWKT_ROWS=(\d+)$/.exec(o)).find((m) => m);
    this.rows = opt ? Number(opt[1]) : defined('WKT_ROWS');
    if (![8, 16].includes(this.rows)) throw new Error(`internal: WKT_ROWS ${this.rows} (8 or 16)`);
    const th = options.map((o) => /^-DWKT_THREADS=(\d+)$/.exec(o)).find((m) => m);
    this.threads = th ? Number(th[1]) : 16 * this.rows;
    if (this.threads !== 16 * this.rows && !(this.rows === 16 && this.threads === 128)) throw new Error(`internal: WKT_THREADS ${this.threads} with WKT_ROWS ${this.rows}`);
    setMaxDynamicSmem(this.mod, 'wkt_grad', this.gradSmem);
    this.tc = options.includes(TC_SEQ_OPTION);
    this.tcGrad = options.includes(TC_GRAD_OPTION);
    this.tcSmem = [defined('WKT_TC_SCAN_SMEM'), defined('WKT_TC_CHAIN_SMEM')];
    if (this.tc) {
      setMaxDynamicSmem(this.mod, 'wkt_scan_tc', this.tcSmem[0]);
      setMaxDynamicSmem(this.mod, 'wkt_chain_tc', this.tcSmem[1]);
    }
    if (this.tcGrad) setMaxDynamicSmem(this.mod, 'wkt_grad_tc', this.gradSmem);
  }

  static chunks(T: number): number { return Math.ceil(T / WKT_L); }
  /** Bytes of the record scratch (forward → backward). */
  static recBytes(Bn: number, T: number, H: number): number { return Bn * Wkv7ChunkedTrain.chunks(T) * H * WKT_REC * 4; }
  /** Bytes of the chunk-state buffers (ckpt, gend): one 64×64 float32 state per (sequence, chunk, head). */
  static stateBytes(Bn: number, T: number, H: number): number { return Bn * Wkv7ChunkedTrain.chunks(T) * H * 4096 * 4; }

  private k(name: string, grid: [number, number, number], block: number, smem: number, args: number[]): void {
    const sig = this.mod.sigs.get(name);
    if (sig === undefined) throw new Error(`internal: no kernel ${name} in ${FILE}`);
    this.timed(name, () => launch(this.ctx, this.mod, name, sig, grid, [block], smem, args));
  }

  /**
   * y (written) and ckpt (chunk-start states) from the inputs; the record goes to `rec` for the backward.
   * `sfin` (optional, [Bn, H, 64, 64]) receives each sequence's final state.
   */
  forward(y: number, ckpt: number, rec: number, r: number, om: number, kt: number, v: number, kh: number, a: number,
    Bn: number, T: number, C: number, sfin = 0): void {
    if (T <= 0 || Bn <= 0) return;
    const H = C / 64, nch = Wkv7ChunkedTrain.chunks(T);
    this.k('wkt_prep', [nch, H, Bn], 256, 0, [rec, r, om, kt, v, kh, a, T, C]);
    if (this.tc) this.k('wkt_scan_tc', [H, 1, Bn], 128, this.tcSmem[0], [y, ckpt, sfin, rec, v, T, C]);
    else this.k('wkt_scan', [H, 64 / this.rows, Bn], this.threads, 0, [y, ckpt, sfin, rec, v, T, C]);
  }

  /**
   * Adds the gradients (dr, dω, dk̃, dv, dκ̂'s α part, db) from dy, the inputs, the forward's ckpt and `rec`;
   * `gend` is scratch of stateBytes. `dsin` (optional, [Bn, H, 64, 64]) receives the initial states' gradients.
   */
  backward(dr: number, dom: number, dkt: number, dv: number, dkk: number, db: number, dy: number,
    r: number, om: number, kt: number, v: number, kh: number, a: number, ckpt: number, rec: number, gend: number,
    Bn: number, T: number, C: number, dsin = 0): void {
    if (T <= 0 || Bn <= 0) return;
    const H = C / 64, nch = Wkv7ChunkedTrain.chunks(T);
    if (this.tc) this.k('wkt_chain_tc', [H, 1, Bn], 128, this.tcSmem[1], [gend, dsin, rec, dy, T, C]);
    else this.k('wkt_chain', [H, 64 / this.rows, Bn], this.threads, 0, [gend, dsin, rec, dy, T, C]);
    this.k(this.tcGrad ? 'wkt_grad_tc' : 'wkt_grad', [nch, H, Bn], 256, this.gradSmem, [dr, dom, dkt, dv, dkk, db, dy, r, om, kt, v, kh, a, ckpt, gend, T, C]);
  }
}
