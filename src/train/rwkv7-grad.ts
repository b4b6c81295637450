/**
 * Training forward and backward of one RWKV-7 block (SPEC §2) over T tokens from an empty state:
 *   h1 = h + TimeMix(LN1(h));  out = h1 + ChannelMix(LN2(h1))
 *
 * Each op's forward keeps what its backward needs; the backward functions sit next to their forwards.
 * Activations live in a Workspace (named buffers reused from block to block): the model-level driver
 * (model-grad.ts) stores only each block's input and recomputes the block's activations right before
 * its backward. Each block's backward SETS (=) the gradients of that block's parameters (every
 * parameter is used once per block call, so there is nothing to add to; writing instead of adding
 * spares a pass over every weight-sized gradient). Sums over tokens of vector parameters run in float64.
 */
import type { ModelConfig } from '../model/config.js';
import type { RwkvBlockWeights } from '../model/weights.js';
import type { Workspace } from '../backend/cpu/workspace.js';
import { linear, matmul } from '../backend/cpu/matmul.js';
import { matmulTN } from '../backend/cpu/matmul-grad.js';
import {
  addColumnSums, addInPlace, groupNorm, groupNormBackward, layerNorm, layerNormBackward, mixShift, mixShiftBackward,
  reluSquareBackwardInPlace, reluSquareInPlace, sigmoidBackwardInPlace, tanhBackwardInPlace, tanhInPlace, tokenShift,
  tokenShiftBackward,
} from '../backend/cpu/ops.js';
import { wkv7Backward, wkv7Checkpointed } from '../backend/cpu/wkv7.js';

/** ω = exp(−e^{−1/2}·σ(d)). */
const DECAY_SCALE = Math.exp(-0.5);
const GROUPNORM_EPS = 64e-5;
/** Tokens between WKV state checkpoints (the backward recomputes the states inside each stretch). */
export const WKV_EVERY = 32;

export type RwkvBlockGrads = { [K in keyof RwkvBlockWeights]: Float32Array };

export function zeroRwkvGrads(w: RwkvBlockWeights): RwkvBlockGrads {
  const g = {} as RwkvBlockGrads;
  for (const k of Object.keys(w) as (keyof RwkvBlockWeights)[]) g[k] = new Float32Array(w[k].length);
  return g;
}

/** dst = src (a float64 sum over tokens into a float32 gradient). */
export function store(dst: Float32Array, src: Float64Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] = src[i];
}

function zeros(ws: Workspace, name: string, n: number): Float32Array {
  return ws.get(name, n).fill(0);
}

// ---------------------------------------------------------------------------------------------
// Linear layers and LoRA factors

/** Backward of y = x·Wᵀ (W [N, K], matmul.ts `linear`): dW = dyᵀ·x (set); dx = dy·W (dx += when `add`). */
export function linearBackward(
  ws: Workspace, dx: Float32Array, dW: Float32Array, dy: Float32Array, x: Float32Array, W: Float32Array,
  T: number, K: number, N: number, add: boolean,
): void {
  matmulTN(dW, dy, x, T, N, K, false);
  if (!add) { matmul(dx, dy, W, T, N, K); return; }
  const tmp = ws.get('grad.tmp', T * K);
  matmul(tmp, dy, W, T, N, K);
  addInPlace(dx, tmp, T * K);
}

/** Backward of y = x·A (A [K, N], matmul.ts `matmul`): dA = xᵀ·dy (set); dx = dy·Aᵀ (dx += when `add`). */
export function loraBackward(
  ws: Workspace, dx: Float32Array, dA: Float32Array, dy: Float32Array, x: Float32Array, A: Float32Array,
  T: number, K: number, N: number, add: boolean,
): void {
  matmulTN(dA, x, dy, T, K, N, false);
  if (!add) { linear(dx, dy, A, T, N, K); return; }
  const tmp = ws.get('grad.tmp', T * K);
  linear(tmp, dy, A, T, N, K);
  addInPlace(dx, tmp, T * K);
}

// ---------------------------------------------------------------------------------------------
// ChannelMix (shared with the attention block): out = W_value·ReLU(W_key·(x + δ⊙μ))², δ = x_prev − x

export interface ChannelMixActs {
  x: Float32Array; dl: Float32Array; xk: Float32Array; pre: Float32Array; hid: Float32Array; out: Float32Array;
}

export function channelMixForward(
  ws: Workspace, pfx: string, C: number, F: number, mu: Float32Array, Wk: Float32Array, Wv: Float32Array,
  x: Float32Array, T: number,
): ChannelMixActs {
  const n = T * C;
  const dl = ws.get(`${pfx}dl`, n);
  tokenShift(dl, x, new Float32Array(C), T, C);
  const xk = ws.get(`${pfx}xk`, n);
  mixShift(xk, x, dl, mu, T, C);
  const pre = ws.get(`${pfx}pre`, T * F);
  linear(pre, xk, Wk, T, C, F);
  const hid = ws.get(`${pfx}hid`, T * F);
  hid.set(pre);
  reluSquareInPlace(hid, T * F);
  const out = ws.get(`${pfx}out`, n);
  linear(out, hid, Wv, T, F, C);
  return { x, dl, xk, pre, hid, out };
}

/** Returns dx, the gradient w.r.t. the channel-mix input (the LN2 output), in a workspace buffer. */
export function channelMixBackward(
  ws: Workspace, pfx: string, C: number, F: number, A: ChannelMixActs, mu: Float32Array, Wk: Float32Array, Wv: Float32Array,
  dmu: Float32Array, dWk: Float32Array, dWv: Float32Array, dout: Float32Array, T: number,
): Float32Array {
  const n = T * C;
  const dhid = ws.get(`${pfx}dhid`, T * F);
  linearBackward(ws, dhid, dWv, dout, A.hid, Wv, T, F, C, false);
  reluSquareBackwardInPlace(dhid, A.pre, T * F);
  const dxk = ws.get(`${pfx}dxk`, n);
  linearBackward(ws, dxk, dWk, dhid, A.xk, Wk, T, C, F, false);
  const dx = zeros(ws, `${pfx}dx`, n), ddl = zeros(ws, `${pfx}ddl`, n);
  const dmu64 = new Float64Array(C);
  mixShiftBackward(dx, ddl, dmu64, dxk, A.dl, mu, T, C);
  tokenShiftBackward(dx, ddl, T, C);
  store(dmu, dmu64);
  return dx;
}

// ---------------------------------------------------------------------------------------------
// TimeMix pieces with their backwards

/** Decay: d = w0 + tanh(x_w·w1)·w2 (kept in `d`), ω = exp(−e^{−1/2}·σ(d)) (in `om`). */
function decayForward(ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, xw: Float32Array, T: number) {
  const C = cfg.dim, R = cfg.lora.w;
  const lw = ws.get('tm.lw', T * R);
  matmul(lw, xw, w.w1, T, C, R);
  tanhInPlace(lw, T * R);
  const d = ws.get('tm.d', T * C), om = ws.get('tm.om', T * C);
  matmul(d, lw, w.w2, T, R, C);
  for (let t = 0; t < T; t++) for (let i = 0; i < C; i++) {
    const z = d[t * C + i] + w.w0[i];
    d[t * C + i] = z;
    om[t * C + i] = Math.exp(-DECAY_SCALE / (1 + Math.exp(-z)));
  }
  return { lw, d, om };
}

/** dω → dd = dω·ω·(−e^{−1/2})·σ(d)(1 − σ(d)) → w0, w2, tanh, w1; returns dx_w. */
function decayBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads,
  xw: Float32Array, lw: Float32Array, d: Float32Array, om: Float32Array, dom: Float32Array, T: number,
): Float32Array {
  const C = cfg.dim, R = cfg.lora.w;
  for (let j = 0; j < T * C; j++) {
    const s = 1 / (1 + Math.exp(-d[j]));
    dom[j] *= om[j] * -DECAY_SCALE * s * (1 - s);
  }
  const dw0 = new Float64Array(C);
  addColumnSums(dw0, dom, T, C);
  store(g.w0, dw0);
  const dlw = ws.get('tmb.dlw', T * R);
  loraBackward(ws, dlw, g.w2, dom, lw, w.w2, T, R, C, false);
  tanhBackwardInPlace(dlw, lw, T * R);
  const dxw = ws.get('tmb.dxw', T * C);
  loraBackward(ws, dxw, g.w1, dlw, xw, w.w1, T, C, R, false);
  return dxw;
}

/** In-context learning rate a = σ(a0 + (x_a·a1)·a2). */
function iclrForward(ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, xa: Float32Array, T: number) {
  const C = cfg.dim, R = cfg.lora.a;
  const la = ws.get('tm.la', T * R);
  matmul(la, xa, w.a1, T, C, R);
  const a = ws.get('tm.a', T * C);
  matmul(a, la, w.a2, T, R, C);
  for (let t = 0; t < T; t++) for (let i = 0; i < C; i++) a[t * C + i] = 1 / (1 + Math.exp(-(a[t * C + i] + w.a0[i])));
  return { la, a };
}

/** da (overwritten with d(pre-activation)) → a0, a2, a1; returns dx_a. */
function iclrBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads,
  xa: Float32Array, la: Float32Array, a: Float32Array, da: Float32Array, T: number,
): Float32Array {
  const C = cfg.dim, R = cfg.lora.a;
  sigmoidBackwardInPlace(da, a, T * C);
  const da0 = new Float64Array(C);
  addColumnSums(da0, da, T, C);
  store(g.a0, da0);
  const dla = ws.get('tmb.dla', T * R);
  loraBackward(ws, dla, g.a2, da, la, w.a2, T, R, C, false);
  const dxa = ws.get('tmb.dxa', T * C);
  loraBackward(ws, dxa, g.a1, dla, xa, w.a1, T, C, R, false);
  return dxa;
}

/**
 * Value and value residual: v_raw = W_v·x_v; block 0: v = v_raw and v_first = v; later blocks:
 * v = v_raw + (v_first − v_raw)⊙σ(v0 + (x_v·v1)·v2).
 */
function valueForward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, layer: number, xv: Float32Array, vFirst: Float32Array, T: number,
) {
  const C = cfg.dim, R = cfg.lora.v, n = T * C;
  const vraw = ws.get('tm.vraw', n), v = ws.get('tm.v', n);
  linear(vraw, xv, w.Wv, T, C, C);
  const lv = ws.get('tm.lv', T * R), sv = ws.get('tm.sv', n);
  if (layer === 0) {
    v.set(vraw);
    vFirst.set(v);
  } else {
    matmul(lv, xv, w.v1, T, C, R);
    matmul(sv, lv, w.v2, T, R, C);
    for (let t = 0; t < T; t++) for (let i = 0; i < C; i++) {
      const j = t * C + i;
      const s = 1 / (1 + Math.exp(-(sv[j] + w.v0[i])));
      sv[j] = s;
      v[j] = vraw[j] + (vFirst[j] - vraw[j]) * s;
    }
  }
  return { vraw, v, lv, sv };
}

/** dv → W_v, the residual gate (v0, v1, v2) and dv_first (+=); block 0 takes dv_first in. Returns dx_v. */
function valueBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads, layer: number,
  xv: Float32Array, vraw: Float32Array, lv: Float32Array, sv: Float32Array, vFirst: Float32Array,
  dv: Float32Array, dvFirst: Float32Array, T: number,
): Float32Array {
  const C = cfg.dim, R = cfg.lora.v, n = T * C;
  const dvraw = ws.get('tmb.dvraw', n), dxv = ws.get('tmb.dxv', n);
  if (layer === 0) {
    g.v0.fill(0); g.v1.fill(0); g.v2.fill(0); // block 0 has no value residual: v0/v1/v2 are unused
    for (let j = 0; j < n; j++) dvraw[j] = dv[j] + dvFirst[j];
    linearBackward(ws, dxv, g.Wv, dvraw, xv, w.Wv, T, C, C, false);
    return dxv;
  }
  const dpre = ws.get('tmb.dvpre', n);
  for (let j = 0; j < n; j++) {
    const s = sv[j], d = dv[j];
    dvraw[j] = d * (1 - s);
    dvFirst[j] += d * s;
    dpre[j] = d * (vFirst[j] - vraw[j]) * s * (1 - s);
  }
  const dv0 = new Float64Array(C);
  addColumnSums(dv0, dpre, T, C);
  store(g.v0, dv0);
  linearBackward(ws, dxv, g.Wv, dvraw, xv, w.Wv, T, C, C, false);
  const dlv = ws.get('tmb.dlv', T * R);
  loraBackward(ws, dlv, g.v2, dpre, lv, w.v2, T, R, C, false);
  loraBackward(ws, dxv, g.v1, dlv, xv, w.v1, T, C, R, true);
  return dxv;
}

/** Gate g = σ(x_g·g1)·g2. */
function gateForward(ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, xg: Float32Array, T: number) {
  const C = cfg.dim, R = cfg.lora.g;
  const lg = ws.get('tm.lg', T * R);
  matmul(lg, xg, w.g1, T, C, R);
  for (let j = 0; j < T * R; j++) lg[j] = 1 / (1 + Math.exp(-lg[j]));
  const gate = ws.get('tm.g', T * C);
  matmul(gate, lg, w.g2, T, R, C);
  return { lg, gate };
}

function gateBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads,
  xg: Float32Array, lg: Float32Array, dgate: Float32Array, T: number,
): Float32Array {
  const C = cfg.dim, R = cfg.lora.g;
  const dlg = ws.get('tmb.dlg', T * R);
  loraBackward(ws, dlg, g.g2, dgate, lg, w.g2, T, R, C, false);
  sigmoidBackwardInPlace(dlg, lg, T * R);
  const dxg = ws.get('tmb.dxg', T * C);
  loraBackward(ws, dxg, g.g1, dlg, xg, w.g1, T, C, R, false);
  return dxg;
}

/**
 * Keys: κ̂ = normalise(k⊙k_k) per head (‖κ‖ kept in `knorm` [T, H]); written key k̃ = k⊙(1 + (a − 1)⊙k_a).
 */
function keysForward(ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, k: Float32Array, a: Float32Array, T: number) {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize;
  const kk = ws.get('tm.kk', T * C), kt = ws.get('tm.kt', T * C), knorm = ws.get('tm.knorm', T * H);
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
    const o = t * C + h * N, p = h * N;
    let ss = 0;
    for (let j = 0; j < N; j++) { const q = k[o + j] * w.kk[p + j]; kk[o + j] = q; ss += q * q; }
    const nrm = Math.sqrt(ss);
    knorm[t * H + h] = nrm;
    const inv = 1 / Math.max(nrm, 1e-12);
    for (let j = 0; j < N; j++) kk[o + j] *= inv;
    for (let j = 0; j < N; j++) kt[o + j] = k[o + j] * (1 + (a[o + j] - 1) * w.ka[p + j]);
  }
  return { kk, kt, knorm };
}

/** dk̃, dκ̂ → dk (returned, fresh), da (+=), k_k and k_a. dκ = (dκ̂ − κ̂(κ̂·dκ̂))/‖κ‖ (unclamped case). */
function keysBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads,
  k: Float32Array, a: Float32Array, kk: Float32Array, knorm: Float32Array, dkt: Float32Array, dkk: Float32Array,
  da: Float32Array, T: number,
): Float32Array {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize;
  const dk = ws.get('tmb.dk', T * C);
  const dka = new Float64Array(C), dkkp = new Float64Array(C);
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
    const o = t * C + h * N, p = h * N;
    let dot = 0;
    for (let j = 0; j < N; j++) dot += kk[o + j] * dkk[o + j];
    const nrm = knorm[t * H + h], clamped = !(nrm > 1e-12), inv = 1 / Math.max(nrm, 1e-12);
    for (let j = 0; j < N; j++) {
      const d = dkt[o + j], kj = k[o + j], kaj = w.ka[p + j], aj = a[o + j];
      const dkappa = (clamped ? dkk[o + j] : dkk[o + j] - kk[o + j] * dot) * inv;
      dk[o + j] = d * (1 + (aj - 1) * kaj) + dkappa * w.kk[p + j];
      da[o + j] += d * kj * kaj;
      dka[p + j] += d * kj * (aj - 1);
      dkkp[p + j] += dkappa * kj;
    }
  }
  store(g.ka, dka);
  store(g.kk, dkkp);
  return dk;
}

/**
 * Output: o = GroupNorm(y) + (Σ_j r_j k̃_j ρ_j)·v per head (bonus scalar in `bonus` [T, H]);
 * z = o⊙g; out = W_o·z.
 */
function outputForward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights,
  y: Float32Array, r: Float32Array, kt: Float32Array, v: Float32Array, gate: Float32Array, T: number,
) {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize;
  const o = ws.get('tm.o', T * C), bonus = ws.get('tm.bonus', T * H), z = ws.get('tm.z', T * C);
  groupNorm(o, y, w.lnxw, w.lnxb, T, H, N, GROUPNORM_EPS);
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
    const b = t * C + h * N;
    let s = 0;
    for (let j = 0; j < N; j++) s += r[b + j] * kt[b + j] * w.rk[h * N + j];
    bonus[t * H + h] = s;
    for (let i = 0; i < N; i++) { o[b + i] += s * v[b + i]; z[b + i] = o[b + i] * gate[b + i]; }
  }
  const out = ws.get('tm.out', T * C);
  linear(out, z, w.Wo, T, C, C);
  return { o, bonus, z, out };
}

/** dout → W_o, gate (dgate, fresh), bonus (dr, dk̃, dv +=, r_k), GroupNorm (dy, fresh, returned). */
function outputBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads,
  y: Float32Array, r: Float32Array, kt: Float32Array, v: Float32Array, gate: Float32Array,
  o: Float32Array, bonus: Float32Array, z: Float32Array, dout: Float32Array,
  dr: Float32Array, dkt: Float32Array, dv: Float32Array, dgate: Float32Array, T: number,
): Float32Array {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize;
  const dz = ws.get('tmb.dz', T * C);
  linearBackward(ws, dz, g.Wo, dout, z, w.Wo, T, C, C, false);
  const dob = ws.get('tmb.dob', T * C);
  const drk = new Float64Array(C);
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
    const b = t * C + h * N, s = bonus[t * H + h];
    let ds = 0;
    for (let i = 0; i < N; i++) {
      const d = dz[b + i];
      dgate[b + i] = d * o[b + i];
      const e = d * gate[b + i];
      dob[b + i] = e;
      ds += e * v[b + i];
      dv[b + i] += e * s;
    }
    for (let j = 0; j < N; j++) {
      const rho = w.rk[h * N + j];
      dr[b + j] += ds * kt[b + j] * rho;
      dkt[b + j] += ds * r[b + j] * rho;
      drk[h * N + j] += ds * r[b + j] * kt[b + j];
    }
  }
  store(g.rk, drk);
  const dy = zeros(ws, 'tmb.dy', T * C);
  const dlw = new Float64Array(C), dlb = new Float64Array(C);
  groupNormBackward(dy, dlw, dlb, dob, y, w.lnxw, T, H, N, GROUPNORM_EPS);
  store(g.lnxw, dlw);
  store(g.lnxb, dlb);
  return dy;
}

// ---------------------------------------------------------------------------------------------
// TimeMix

/** The six token-shift mixes of TimeMix; each name is both the mixed input (activation) and its μ (weight). */
const MIXES = ['xr', 'xw', 'xk', 'xv', 'xa', 'xg'] as const;
type Mix = (typeof MIXES)[number];

export interface TimeMixActs {
  x: Float32Array; dl: Float32Array;
  xr: Float32Array; xw: Float32Array; xk: Float32Array; xv: Float32Array; xa: Float32Array; xg: Float32Array;
  r: Float32Array; k: Float32Array;
  lw: Float32Array; d: Float32Array; om: Float32Array;
  la: Float32Array; a: Float32Array;
  vraw: Float32Array; v: Float32Array; lv: Float32Array; sv: Float32Array;
  lg: Float32Array; gate: Float32Array;
  kk: Float32Array; kt: Float32Array; knorm: Float32Array;
  y: Float32Array; ckpt: Float32Array;
  o: Float32Array; bonus: Float32Array; z: Float32Array; out: Float32Array;
}

function timeMixForward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, layer: number, x: Float32Array, vFirst: Float32Array, T: number,
  every: number,
): TimeMixActs {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, n = T * C;
  const dl = ws.get('tm.dl', n);
  tokenShift(dl, x, new Float32Array(C), T, C);
  const m = {} as Record<Mix, Float32Array>;
  for (const name of MIXES) { m[name] = ws.get(`tm.${name}`, n); mixShift(m[name], x, dl, w[name], T, C); }
  const r = ws.get('tm.r', n), k = ws.get('tm.k', n);
  linear(r, m.xr, w.Wr, T, C, C);
  linear(k, m.xk, w.Wk, T, C, C);
  const dec = decayForward(ws, cfg, w, m.xw, T);
  const icl = iclrForward(ws, cfg, w, m.xa, T);
  const val = valueForward(ws, cfg, w, layer, m.xv, vFirst, T);
  const gt = gateForward(ws, cfg, w, m.xg, T);
  const keys = keysForward(ws, cfg, w, k, icl.a, T);
  const y = ws.get('tm.y', n);
  const ckpt = ws.get('tm.ckpt', Math.ceil(T / every) * H * N * N);
  wkv7Checkpointed(y, new Float32Array(H * N * N), r, dec.om, keys.kt, val.v, keys.kk, icl.a, T, H, N, every, ckpt);
  const outp = outputForward(ws, cfg, w, y, r, keys.kt, val.v, gt.gate, T);
  return { x, dl, ...m, r, k, ...dec, ...icl, ...val, ...gt, ...keys, y, ckpt, ...outp };
}

/** Returns dx (gradient w.r.t. the LN1 output), in a workspace buffer; dvFirst accumulates. */
function timeMixBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads, layer: number, A: TimeMixActs,
  dout: Float32Array, vFirst: Float32Array, dvFirst: Float32Array, T: number, every: number,
): Float32Array {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, n = T * C;
  const dr = zeros(ws, 'tmb.dr', n), dkt = zeros(ws, 'tmb.dkt', n), dv = zeros(ws, 'tmb.dv', n);
  const dgate = ws.get('tmb.dgate', n);
  const dy = outputBackward(ws, cfg, w, g, A.y, A.r, A.kt, A.v, A.gate, A.o, A.bonus, A.z, dout, dr, dkt, dv, dgate, T);
  const dom = zeros(ws, 'tmb.dom', n), dkk = zeros(ws, 'tmb.dkk', n), da = zeros(ws, 'tmb.da', n);
  wkv7Backward(dr, dom, dkt, dv, dkk, da, dy, A.r, A.om, A.kt, A.v, A.kk, A.a, T, H, N, every, A.ckpt);
  const dk = keysBackward(ws, cfg, w, g, A.k, A.a, A.kk, A.knorm, dkt, dkk, da, T);
  const dmix: Record<Mix, Float32Array> = {
    xg: gateBackward(ws, cfg, w, g, A.xg, A.lg, dgate, T),
    xv: valueBackward(ws, cfg, w, g, layer, A.xv, A.vraw, A.lv, A.sv, vFirst, dv, dvFirst, T),
    xa: iclrBackward(ws, cfg, w, g, A.xa, A.la, A.a, da, T),
    xw: decayBackward(ws, cfg, w, g, A.xw, A.lw, A.d, A.om, dom, T),
    xr: ws.get('tmb.dxr', n),
    xk: ws.get('tmb.dxk', n),
  };
  linearBackward(ws, dmix.xr, g.Wr, dr, A.xr, w.Wr, T, C, C, false);
  linearBackward(ws, dmix.xk, g.Wk, dk, A.xk, w.Wk, T, C, C, false);
  const dx = zeros(ws, 'tmb.dx', n), ddl = zeros(ws, 'tmb.ddl', n);
  for (const name of MIXES) {
    const dmu = new Float64Array(C);
    mixShiftBackward(dx, ddl, dmu, dmix[name], A.dl, w[name], T, C);
    store(g[name], dmu);
  }
  tokenShiftBackward(dx, ddl, T, C);
  return dx;
}

// ---------------------------------------------------------------------------------------------
// The block

export interface RwkvBlockActs { x1: Float32Array; tm: TimeMixActs; h1: Float32Array; x2: Float32Array; cm: ChannelMixActs }

/** h ← block(h) in place (T tokens from an empty state); block 0 writes vFirst, later ones read it. */
export function rwkvBlockForward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, layer: number, h: Float32Array, vFirst: Float32Array, T: number,
  every = WKV_EVERY,
): RwkvBlockActs {
  const C = cfg.dim, n = T * C;
  const x1 = ws.get('rb.x1', n);
  layerNorm(x1, h, w.ln1w, w.ln1b, T, C);
  const tm = timeMixForward(ws, cfg, w, layer, x1, vFirst, T, every);
  addInPlace(h, tm.out, n);
  const h1 = ws.get('rb.h1', n);
  h1.set(h);
  const x2 = ws.get('rb.x2', n);
  layerNorm(x2, h, w.ln2w, w.ln2b, T, C);
  const cm = channelMixForward(ws, 'rcm.', C, cfg.ffn, w.ffnXk, w.ffnK, w.ffnV, x2, T);
  addInPlace(h, cm.out, n);
  return { x1, tm, h1, x2, cm };
}

/**
 * Backward of one block: recomputes its activations from the stored input `hIn`, then turns dh (the
 * gradient w.r.t. the block's output) into the gradient w.r.t. its input, in place. Blocks ≥ 1 add to
 * dvFirst; block 0 consumes it.
 */
export function rwkvBlockBackward(
  ws: Workspace, cfg: ModelConfig, w: RwkvBlockWeights, g: RwkvBlockGrads, layer: number,
  hIn: Float32Array, dh: Float32Array, vFirst: Float32Array, dvFirst: Float32Array, T: number, every = WKV_EVERY,
): void {
  const C = cfg.dim, n = T * C;
  const h = ws.get('rb.h', n);
  h.set(hIn);
  const A = rwkvBlockForward(ws, cfg, w, layer, h, vFirst, T, every);
  const dx2 = channelMixBackward(ws, 'rcm.', C, cfg.ffn, A.cm, w.ffnXk, w.ffnK, w.ffnV, g.ffnXk, g.ffnK, g.ffnV, dh, T);
  const d2w = new Float64Array(C), d2b = new Float64Array(C);
  layerNormBackward(dh, d2w, d2b, dx2, A.h1, w.ln2w, T, C);
  store(g.ln2w, d2w); store(g.ln2b, d2b);
  const dx1 = timeMixBackward(ws, cfg, w, g, layer, A.tm, dh, vFirst, dvFirst, T, every);
  const d1w = new Float64Array(C), d1b = new Float64Array(C);
  layerNormBackward(dh, d1w, d1b, dx1, hIn, w.ln1w, T, C);
  store(g.ln1w, d1w); store(g.ln1b, d1b);
}
