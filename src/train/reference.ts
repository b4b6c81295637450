/**
 * A plain float64 forward of the training loss, token by token, straight from SPEC §2–3, written
 * independently of the float32 engine. Used by the finite-difference checks of the gradients
 * (central differences need a loss computed well beyond float32 precision). Slow; small models only.
 */
import { layout, type ModelConfig } from '../model/config.js';
import { rwkvPrefix, attnPrefix } from '../model/weights.js';
import { topIndices } from '../model/attention-block.js';

type Arr = ArrayLike<number>;

const sig = (z: number) => 1 / (1 + Math.exp(-z));

function norm(x: Arr, w: Arr, b: Arr, o: number, n: number, eps: number, out: Float64Array): void {
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[o + i];
  mean /= n;
  let v = 0;
  for (let i = 0; i < n; i++) v += (x[o + i] - mean) ** 2;
  const inv = 1 / Math.sqrt(v / n + eps);
  for (let i = 0; i < n; i++) out[o + i] = (x[o + i] - mean) * inv * w[o + i] + b[o + i];
}

/** LayerNorm of a row (eps 1e-5). */
function ln(x: Arr, w: Arr, b: Arr): Float64Array {
  const out = new Float64Array(x.length);
  norm(x, w, b, 0, x.length, 1e-5, out);
  return out;
}

/** W [rows, cols] applied to x: y = W·x. */
function mv(W: Arr, x: Arr, rows: number, cols: number): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) { let s = 0; for (let c = 0; c < cols; c++) s += W[r * cols + c] * x[c]; y[r] = s; }
  return y;
}

/** x·A with A [rows, cols]. */
function vm(x: Arr, A: Arr, rows: number, cols: number): Float64Array {
  const y = new Float64Array(cols);
  for (let r = 0; r < rows; r++) { const xv = x[r]; for (let c = 0; c < cols; c++) y[c] += xv * A[r * cols + c]; }
  return y;
}

/** x + (prev − x)⊙μ. */
function mix(x: Arr, prev: Arr, mu: Arr): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = x[i] + (prev[i] - x[i]) * mu[i];
  return y;
}

function channelMix(x: Arr, prev: Arr, mu: Arr, Wk: Arr, Wv: Arr, C: number, F: number): Float64Array {
  const k = mv(Wk, mix(x, prev, mu), F, C);
  for (let i = 0; i < F; i++) k[i] = k[i] > 0 ? k[i] * k[i] : 0;
  return mv(Wv, k, C, F);
}

/**
 * Mean next-token cross-entropy of tokens[1..] given tokens[..−1], moba attention with chunk B and
 * top-k. `P` maps checkpoint names to values (ln0 unfolded).
 */
export function referenceLoss(cfg: ModelConfig, P: Map<string, Arr>, tokens: ArrayLike<number>, B: number, topk: number): number {
  const get = (n: string): Arr => {
    const v = P.get(n);
    if (!v) throw new Error(`referenceLoss: no parameter '${n}'`);
    return v;
  };
  const p = rwkvPrefix(cfg), C = cfg.dim, V = cfg.vocab;
  const T = tokens.length - 1;
  const emb = get(`${p}emb.weight`);
  let h: Float64Array[] = [];
  for (let t = 0; t < T; t++) {
    const row = Array.from({ length: C }, (_, i) => emb[tokens[t] * C + i]);
    h.push(ln(row, get(`${p}blocks.0.ln0.weight`), get(`${p}blocks.0.ln0.bias`)));
  }
  const vFirst: Float64Array[] = [];
  for (const e of layout(cfg)) {
    if (e.kind === 'rwkv') h = rwkvLayer(cfg, (n) => get(`${p}blocks.${e.index}.${n}`), e.index, h, vFirst);
    else h = attnLayer(cfg, (n) => get(`${attnPrefix(e.index)}${n}`), h, B, topk);
  }
  let loss = 0;
  const head = get(`${p}head.weight`);
  for (let t = 0; t < T; t++) {
    const logits = mv(head, ln(h[t], get(`${p}ln_out.weight`), get(`${p}ln_out.bias`)), V, C);
    let m = -Infinity;
    for (const l of logits) m = Math.max(m, l);
    let s = 0;
    for (const l of logits) s += Math.exp(l - m);
    loss += m + Math.log(s) - logits[tokens[t + 1]];
  }
  return loss / T;
}

function rwkvLayer(cfg: ModelConfig, W: (n: string) => Arr, layer: number, h: Float64Array[], vFirst: Float64Array[]): Float64Array[] {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, L = cfg.lora;
  const S = new Float64Array(H * N * N);
  let prev: Float64Array = new Float64Array(C), prev2: Float64Array = new Float64Array(C);
  const out: Float64Array[] = [];
  for (let t = 0; t < h.length; t++) {
    const x = ln(h[t], W('ln1.weight'), W('ln1.bias'));
    const r = mv(W('att.receptance.weight'), mix(x, prev, W('att.x_r')), C, C);
    const k = mv(W('att.key.weight'), mix(x, prev, W('att.x_k')), C, C);
    const xv = mix(x, prev, W('att.x_v'));
    let v = mv(W('att.value.weight'), xv, C, C);
    const dw = vm(vm(mix(x, prev, W('att.x_w')), W('att.w1'), C, L.w).map(Math.tanh), W('att.w2'), L.w, C);
    const om = dw.map((d, i) => Math.exp(-Math.exp(-0.5) * sig(W('att.w0')[i] + d)));
    const a = vm(vm(mix(x, prev, W('att.x_a')), W('att.a1'), C, L.a), W('att.a2'), L.a, C).map((z, i) => sig(z + W('att.a0')[i]));
    if (layer === 0) vFirst[t] = v;
    else {
      const gv = vm(vm(xv, W('att.v1'), C, L.v), W('att.v2'), L.v, C);
      v = v.map((vi, i) => vi + (vFirst[t][i] - vi) * sig(W('att.v0')[i] + gv[i]));
    }
    const g = vm(vm(mix(x, prev, W('att.x_g')), W('att.g1'), C, L.g).map(sig), W('att.g2'), L.g, C);
    const y = new Float64Array(C);
    const kk = W('att.k_k'), ka = W('att.k_a'), rk = W('att.r_k');
    const o = new Float64Array(C);
    for (let hh = 0; hh < H; hh++) {
      const b = hh * N;
      const kap = new Float64Array(N), kt = new Float64Array(N);
      let nrm = 0;
      for (let j = 0; j < N; j++) { kap[j] = k[b + j] * kk[b + j]; nrm += kap[j] ** 2; }
      nrm = Math.max(Math.sqrt(nrm), 1e-12);
      for (let j = 0; j < N; j++) { kap[j] /= nrm; kt[j] = k[b + j] * (1 + (a[b + j] - 1) * ka[b + j]); }
      for (let i = 0; i < N; i++) {
        const so = hh * N * N + i * N;
        let sa = 0;
        for (let j = 0; j < N; j++) sa -= S[so + j] * kap[j];
        let yi = 0;
        for (let j = 0; j < N; j++) {
          S[so + j] = S[so + j] * om[b + j] + sa * kap[j] * a[b + j] + v[b + i] * kt[j];
          yi += S[so + j] * r[b + j];
        }
        y[b + i] = yi;
      }
      norm(y, W('att.ln_x.weight'), W('att.ln_x.bias'), b, N, 64e-5, o);
      let bonus = 0;
      for (let j = 0; j < N; j++) bonus += r[b + j] * kt[j] * rk[b + j];
      for (let i = 0; i < N; i++) o[b + i] = (o[b + i] + bonus * v[b + i]) * g[b + i];
    }
    const h1 = mv(W('att.output.weight'), o, C, C).map((d, i) => h[t][i] + d);
    const x2 = ln(h1, W('ln2.weight'), W('ln2.bias'));
    const f = channelMix(x2, prev2, W('ffn.x_k'), W('ffn.key.weight'), W('ffn.value.weight'), C, cfg.ffn);
    out.push(h1.map((d, i) => d + f[i]));
    prev = x; prev2 = x2;
  }
  return out;
}

function attnLayer(cfg: ModelConfig, W: (n: string) => Arr, h: Float64Array[], B: number, topk: number): Float64Array[] {
  const C = cfg.dim, H = cfg.heads, N = cfg.headSize, T = h.length;
  const x = h.map((r) => ln(r, W('ln1.weight'), W('ln1.bias')));
  const q = x.map((r) => mv(W('att.receptance.weight'), r, C, C));
  const k = x.map((r) => mv(W('att.key.weight'), r, C, C));
  const v = x.map((r) => mv(W('att.value.weight'), r, C, C));
  const nc = Math.floor(T / B);
  const means = Array.from({ length: nc }, (_, c) => {
    const m = new Float64Array(C);
    for (let p = c * B; p < (c + 1) * B; p++) for (let i = 0; i < C; i++) m[i] += k[p][i] / B;
    return m;
  });
  const out: Float64Array[] = [];
  let prev2: Float64Array = new Float64Array(C);
  for (let t = 0; t < T; t++) {
    const c = Math.floor(t / B);
    const y = new Float64Array(C);
    for (let hh = 0; hh < H; hh++) {
      const b = hh * N;
      const scores = new Float64Array(c);
      for (let j = 0; j < c; j++) { let s = 0; for (let i = 0; i < N; i++) s += q[t][b + i] * means[j][b + i]; scores[j] = s; }
      const keys: number[] = [];
      for (const j of topIndices(scores, c, topk - 1)) for (let pp = j * B; pp < (j + 1) * B; pp++) keys.push(pp);
      for (let pp = c * B; pp <= t; pp++) keys.push(pp);
      const s = keys.map((pp) => { let d = 0; for (let i = 0; i < N; i++) d += q[t][b + i] * k[pp][b + i]; return d / Math.sqrt(N); });
      const m = Math.max(...s);
      const e = s.map((z) => Math.exp(z - m));
      const den = e.reduce((u, z) => u + z, 0);
      keys.forEach((pp, u) => { for (let i = 0; i < N; i++) y[b + i] += (e[u] / den) * v[pp][b + i]; });
    }
    const h1 = mv(W('att.output.weight'), y, C, C).map((d, i) => h[t][i] + d);
    const x2 = ln(h1, W('ln2.weight'), W('ln2.bias'));
    const f = channelMix(x2, prev2, W('ffn.x_k'), W('ffn.key.weight'), W('ffn.value.weight'), C, cfg.attnFfn);
    out.push(h1.map((d, i) => d + f[i]));
    prev2 = x2;
  }
  return out;
}
