// Dumps random inputs of real scale and the float64 chunked reference (forward + backward) for the host harness.
import { writeFileSync } from 'node:fs';
import { wkv7ChunkedForward, wkv7ChunkedBackward } from '../../../src/train/wkv7-chunked.js';

const [Bn, T, H] = process.argv.slice(2, 5).map(Number);
const out = process.argv[5];
const N = 64, C = H * N, n = T * C;
let seed = 12345;
const u = () => { seed = (seed * 1103515245 + 12345) >>> 0; return ((seed >>> 8) & 0xffffff) / 0x1000000; };
const sig = (x: number) => 1 / (1 + Math.exp(-x));
const mk = () => new Float32Array(Bn * n);
const r = mk(), w = mk(), kt = mk(), v = mk(), kk = mk(), a = mk(), dy = mk();
for (let i = 0; i < Bn * n; i++) {
  r[i] = 2 * u() - 1; w[i] = Math.exp(-0.6065306597126334 * sig(12 * u() - 6)); kt[i] = u() - 0.5;
  v[i] = 2 * u() - 1; a[i] = sig(4 * u() - 2); dy[i] = 2 * u() - 1;
}
for (let o = 0; o < Bn * n; o += N) { let s = 0; for (let j = 0; j < N; j++) { kk[o + j] = u() - 0.5; s += kk[o + j] ** 2; } s = Math.sqrt(s); for (let j = 0; j < N; j++) kk[o + j] /= s; }
const nch = Math.ceil(T / 16);
const y = new Float64Array(Bn * n), states = new Float64Array(Bn * nch * H * 4096), fin = new Float64Array(Bn * H * 4096);
const g = Array.from({ length: 6 }, () => new Float64Array(Bn * n)), ds0 = new Float64Array(Bn * H * 4096);
for (let b = 0; b < Bn; b++) {
  const sl = (x: Float32Array) => x.subarray(b * n, (b + 1) * n);
  const S = new Float64Array(H * 4096);
  const st = wkv7ChunkedForward(y.subarray(b * n, (b + 1) * n), S, sl(r), sl(w), sl(kt), sl(v), sl(kk), sl(a), T, H, N, 16);
  states.set(st, b * nch * H * 4096); fin.set(S, b * H * 4096);
  const dS = new Float64Array(H * 4096);
  const gs = g.map((x) => x.subarray(b * n, (b + 1) * n));
  wkv7ChunkedBackward(gs[0], gs[1], gs[2], gs[3], gs[4], gs[5], sl(dy), sl(r), sl(w), sl(kt), sl(v), sl(kk), sl(a), T, H, N, 16, st, dS);
  ds0.set(dS, b * H * 4096);
}
const parts: Float64Array[] = [Float64Array.from([Bn, T, H]), ...[r, w, kt, v, kk, a, dy].map((x) => Float64Array.from(x)), y, states, fin, ...g, ds0];
const total = parts.reduce((s, p) => s + p.length, 0), buf = new Float64Array(total);
let o = 0; for (const p of parts) { buf.set(p, o); o += p.length; }
writeFileSync(out, Buffer.from(buf.buffer));
console.log(`dumped Bn ${Bn} T ${T} H ${H}: ${total} doubles`);
