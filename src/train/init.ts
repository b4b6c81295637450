/**
 * RWKV-7 initialisation for training from scratch, following the authors' trainer (SPEC §5 and the
 * RWKV-X pretrain code): token-shift mixes graded by depth and channel, decay speeds spread over
 * channels, LoRA down-projections zero and up-projections orthogonal×0.1, output projections zero.
 * Returns float32 tensors under the official names.
 */
import { Rng } from '../generate/rng.js';
import type { ModelConfig } from '../model/config.js';
import { expectedTensors, rwkvPrefix } from '../model/weights.js';

function gaussian(rng: Rng): number {
  const u = Math.max(rng.next(), 1e-12), v = rng.next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** rows×cols with orthonormal rows (rows ≤ cols) or columns, times gain (Gram–Schmidt on Gaussians). */
export function orthogonal(rows: number, cols: number, gain: number, rng: Rng): Float32Array {
  const tall = rows > cols;
  const n = tall ? cols : rows, len = tall ? rows : cols;
  const vecs: Float64Array[] = [];
  for (let i = 0; i < n; i++) {
    const v = new Float64Array(len);
    for (let j = 0; j < len; j++) v[j] = gaussian(rng);
    for (const u of vecs) {
      let d = 0;
      for (let j = 0; j < len; j++) d += u[j] * v[j];
      for (let j = 0; j < len; j++) v[j] -= d * u[j];
    }
    let s = 0;
    for (let j = 0; j < len; j++) s += v[j] * v[j];
    s = 1 / Math.sqrt(s);
    for (let j = 0; j < len; j++) v[j] *= s;
    vecs.push(v);
  }
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < n; i++) for (let j = 0; j < len; j++) {
    if (tall) out[j * cols + i] = vecs[i][j] * gain; else out[i * cols + j] = vecs[i][j] * gain;
  }
  return out;
}

export function initRwkv7(cfg: ModelConfig, seed: number): Map<string, Float32Array> {
  const rng = new Rng(seed);
  const C = cfg.dim, L = cfg.nLayer, H = cfg.heads, N = cfg.headSize;
  const p = rwkvPrefix(cfg);
  const t = new Map<string, Float32Array>();
  const uniform = (n: number, b: number) => { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * b; return a; };
  const fill = (n: number, v: number) => new Float32Array(n).fill(v);
  const byChannel = (f: (i: number) => number) => { const a = new Float32Array(C); for (let i = 0; i < C; i++) a[i] = f(i); return a; };
  t.set(`${p}emb.weight`, uniform(cfg.vocab * C, 1e-4));
  for (let l = 0; l < L; l++) {
    const b = `${p}blocks.${l}.`;
    const r01 = L > 1 ? l / (L - 1) : 0, r10 = 1 - l / L;
    const ddd = (i: number) => i / C;
    if (l === 0) { t.set(`${b}ln0.weight`, fill(C, 1)); t.set(`${b}ln0.bias`, fill(C, 0)); }
    for (const n of ['ln1', 'ln2']) { t.set(`${b}${n}.weight`, fill(C, 1)); t.set(`${b}${n}.bias`, fill(C, 0)); }
    t.set(`${b}att.x_r`, byChannel((i) => 1 - ddd(i) ** (0.2 * r10)));
    t.set(`${b}att.x_w`, byChannel((i) => 1 - ddd(i) ** (0.9 * r10)));
    t.set(`${b}att.x_k`, byChannel((i) => 1 - (ddd(i) ** (0.9 * r10) + 0.4 * r01)));
    t.set(`${b}att.x_v`, byChannel((i) => 1 - (ddd(i) ** (0.4 * r10) + 0.6 * r01)));
    t.set(`${b}att.x_a`, byChannel((i) => 1 - ddd(i) ** (0.9 * r10)));
    t.set(`${b}att.x_g`, byChannel((i) => 1 - ddd(i) ** (0.2 * r10)));
    t.set(`${b}att.w0`, byChannel((i) => -7 + 5 * (i / (C - 1)) ** (0.85 + Math.sqrt(r01)) + 0.5));
    const { w, a, v, g } = cfg.lora;
    t.set(`${b}att.w1`, fill(C * w, 0)); t.set(`${b}att.w2`, orthogonal(w, C, 0.1, rng));
    t.set(`${b}att.a0`, fill(C, 0)); t.set(`${b}att.a1`, fill(C * a, 0)); t.set(`${b}att.a2`, orthogonal(a, C, 0.1, rng));
    t.set(`${b}att.v0`, fill(C, 1)); t.set(`${b}att.v1`, fill(C * v, 0)); t.set(`${b}att.v2`, orthogonal(v, C, 0.1, rng));
    t.set(`${b}att.g1`, fill(C * g, 0)); t.set(`${b}att.g2`, orthogonal(g, C, 0.1, rng));
    t.set(`${b}att.k_k`, fill(C, 0.85)); t.set(`${b}att.k_a`, fill(C, 1)); t.set(`${b}att.r_k`, fill(H * N, 0));
    t.set(`${b}att.receptance.weight`, uniform(C * C, 0.5 / Math.sqrt(C)));
    t.set(`${b}att.key.weight`, uniform(C * C, 0.05 / Math.sqrt(C)));
    t.set(`${b}att.value.weight`, uniform(C * C, 0.5 / Math.sqrt(C)));
    t.set(`${b}att.output.weight`, fill(C * C, 0));
    // GroupNorm weight grows with depth, as the authors' x070 trainer sets it
    t.set(`${b}att.ln_x.weight`, fill(C, ((1 + l) / L) ** 0.7)); t.set(`${b}att.ln_x.bias`, fill(C, 0));
    t.set(`${b}ffn.x_k`, byChannel((i) => 1 - ddd(i) ** (r10 ** 4)));
    t.set(`${b}ffn.key.weight`, uniform(cfg.ffn * C, 0.5 / Math.sqrt(C)));
    t.set(`${b}ffn.value.weight`, fill(C * cfg.ffn, 0));
  }
  t.set(`${p}ln_out.weight`, fill(C, 1)); t.set(`${p}ln_out.bias`, fill(C, 0));
  // The authors use an orthogonal head with gain 0.5·√(V/C); a Gaussian of the same row scale is
  // equivalent in distribution for V ≫ C and avoids a V×C Gram–Schmidt.
  const head = new Float32Array(cfg.vocab * C);
  const std = (0.5 * Math.sqrt(cfg.vocab / C)) / Math.sqrt(cfg.vocab);
  for (let i = 0; i < head.length; i++) head[i] = gaussian(rng) * std;
  t.set(`${p}head.weight`, head);
  for (const [name] of expectedTensors({ ...cfg, nAttn: 0 })) if (!t.has(name)) throw new Error(`init misses ${name}`);
  return t;
}
