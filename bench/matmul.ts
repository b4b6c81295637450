/**
 * CPU matmul benchmark: `node --import tsx bench/matmul.ts [--quick] [--markdown]`
 *
 * Prints GFLOP/s (1 multiply-add = 2 FLOP) per shape and thread count for linear() and matmul(),
 * and GB/s of weights streamed for T = 1. T = 1 cycles through enough distinct weight matrices
 * (≥ 512 MB) that every call streams its weights from DRAM, as in real decoding. Then a
 * model-shaped sweep: all linears of a 0.19B RWKV-7 (C = 768, 12 layers, vocab 65536) per token,
 * for decode (T = 1) and prefill (T = 128, 512).
 *
 * Columns: "heap" = weights allocated with heapF32 (read in place by the SIMD kernels),
 * "shared" = weights from sharedF32 (copied panel by panel into the heap), "ts" = the plain
 * TypeScript kernels (weights shared).
 */
import os from 'node:os';
import { getThreads, kernelKind, linear, matmul, setThreads, shutdownPool, useTSKernels } from '../src/backend/cpu/matmul.js';
import { waitForWorkers } from '../src/backend/cpu/pool.js';
import { freeHeapF32, heapF32, sharedF32 } from '../src/backend/cpu/shared.js';

const quick = process.argv.includes('--quick');
const markdown = process.argv.includes('--markdown');
const maxThreads = Math.min(2, os.availableParallelism());
const threadCounts = maxThreads >= 2 ? [1, 2] : [1];

function fillRandom(a: Float32Array): Float32Array {
  let s = 0x9e3779b9;
  for (let i = 0; i < a.length; i++) {
    s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
    a[i] = ((s >>> 0) / 4294967296 - 0.5) * 0.1;
  }
  return a;
}

/** Median seconds per call of f over enough repetitions (at least minTime seconds, 3 runs). */
function time(f: () => void, minTime = quick ? 0.15 : 0.4): number {
  f();
  const samples: number[] = [];
  let total = 0;
  while (total < minTime || samples.length < 3) {
    let reps = 1;
    const t0 = performance.now();
    f();
    let dt = (performance.now() - t0) / 1000;
    if (dt < 0.01) {
      reps = Math.ceil(0.01 / Math.max(dt, 1e-6));
      const t1 = performance.now();
      for (let i = 0; i < reps; i++) f();
      dt = (performance.now() - t1) / 1000;
    }
    samples.push(dt / reps);
    total += dt;
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1];
}

type Alloc = (n: number) => Float32Array;
const allocs: Record<string, Alloc> = { heap: heapF32, shared: sharedF32, ts: sharedF32 };

function useThreads(n: number): void {
  setThreads(n);
  if (n > 1 && !waitForWorkers(n)) throw new Error('workers did not start');
}

interface Row { op: string; T: number; K: number; N: number; cells: Map<string, string> }
const rows: Row[] = [];
const col = (kind: string, th: number) => `${kind} ${th}t`;

function benchLinear(T: number, K: number, N: number, kinds: string[]): void {
  const row: Row = { op: 'linear', T, K, N, cells: new Map() };
  rows.push(row);
  const flops = 2 * T * K * N;
  for (const kind of kinds) {
    useTSKernels(kind === 'ts');
    const alloc = allocs[kind];
    // Enough distinct weights that T = 1 streams from DRAM, not from the 260 MB-class L3.
    const copies = T === 1 ? Math.max(2, Math.ceil((quick ? 256 : 512) * 2 ** 20 / (4 * K * N))) : 1;
    const Ws = Array.from({ length: copies }, () => fillRandom(alloc(K * N)));
    const x = fillRandom(sharedF32(T * K));
    const out = sharedF32(T * N);
    for (const th of threadCounts) {
      useThreads(th);
      let i = 0;
      const s = time(() => linear(out, x, Ws[i++ % copies], T, K, N));
      const gf = flops / s / 1e9;
      row.cells.set(col(kind, th), T === 1 ? `${gf.toFixed(1)} (${((4 * K * N) / s / 1e9).toFixed(1)} GB/s)` : gf.toFixed(1));
    }
    for (const W of Ws) freeHeapF32(W);
  }
  useTSKernels(false);
  printRow(row);
}

function benchMatmul(T: number, K: number, N: number): void {
  const row: Row = { op: 'matmul', T, K, N, cells: new Map() };
  rows.push(row);
  const flops = 2 * T * K * N;
  for (const kind of ['heap', 'shared', 'ts']) {
    useTSKernels(kind === 'ts');
    const A = fillRandom(allocs[kind](K * N));
    const x = fillRandom(sharedF32(T * K));
    const out = sharedF32(T * N);
    for (const th of threadCounts) {
      useThreads(th);
      const s = time(() => matmul(out, x, A, T, K, N));
      row.cells.set(col(kind, th), (flops / s / 1e9).toFixed(1));
    }
    freeHeapF32(A);
  }
  useTSKernels(false);
  printRow(row);
}

const kinds = ['heap', 'shared', 'ts'];
const columns = kinds.flatMap((k) => threadCounts.map((t) => col(k, t)));
function printRow(r: Row): void {
  if (markdown) return;
  const cells = columns.map((c) => (r.cells.get(c) ?? '').padStart(c.includes('heap') || c.includes('shared') ? 20 : 9));
  console.log(`${r.op.padEnd(7)} T=${String(r.T).padEnd(4)} K=${String(r.K).padEnd(5)} N=${String(r.N).padEnd(6)}${cells.join('')}`);
}

// ---- model-shaped sweep --------------------------------------------------------------------

const C = 768, LAYERS = 12, FFN = 3072, VOCAB = 65536;
/** [K, N] of every linear in one token's forward pass. */
function modelShapes(): [number, number][] {
  const s: [number, number][] = [];
  for (let l = 0; l < LAYERS; l++) {
    for (let i = 0; i < 4; i++) s.push([C, C]); // r, k, v, output
    s.push([C, FFN], [FFN, C]); // ffn key, value
  }
  s.push([C, VOCAB]); // head
  return s;
}

function modelSweep(): string[] {
  const lines: string[] = [];
  const shapes = modelShapes();
  const Ws = shapes.map(([K, N]) => fillRandom(heapF32(K * N)));
  const macs = shapes.reduce((a, [K, N]) => a + K * N, 0);
  const say = (l: string) => { lines.push(l); if (!markdown) console.log(l); };
  say(`model sweep: ${shapes.length} linears per token, ${(macs / 1e6).toFixed(0)}M multiply-adds, ${((4 * macs) / 2 ** 20).toFixed(0)} MiB of float32 weights (heapF32)`);
  for (const T of [1, 128, 512]) {
    const x = fillRandom(heapF32(T * FFN));
    const out = heapF32(T * VOCAB);
    for (const th of threadCounts) {
      useThreads(th);
      const pass = () => { for (let i = 0; i < shapes.length; i++) linear(out, x, Ws[i], T, shapes[i][0], shapes[i][1]); };
      const s = time(pass, quick ? 0.5 : 1.5);
      say(`  T=${String(T).padEnd(4)} ${th} thread${th > 1 ? 's' : ' '}: ${(T / s).toFixed(1).padStart(7)} tokens/s  (${((2 * macs * T) / s / 1e9).toFixed(1)} GFLOP/s${T === 1 ? `, ${((4 * macs) / s / 1e9).toFixed(1)} GB/s` : ''})`);
    }
    freeHeapF32(x);
    freeHeapF32(out);
  }
  for (const W of Ws) freeHeapF32(W);
  return lines;
}

// ---- main ----------------------------------------------------------------------------------

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
const header = `${cpu}, ${os.availableParallelism()} cores, Node ${process.version}, kernels: ${kernelKind()}, threads: ${threadCounts.join('/')} (default ${getThreads()})`;
console.log(header);
if (!markdown) console.log(`${''.padEnd(33)}${columns.map((c) => c.padStart(c.includes('heap') || c.includes('shared') ? 20 : 9)).join('')}`);

const big: [number, number][] = [[768, 768], [768, 3072], [3072, 768]];
for (const [K, N] of [...big, [768, 65536] as [number, number]]) benchLinear(1, K, N, quick && N === 65536 ? ['heap', 'shared'] : kinds);
for (const T of quick ? [128] : [128, 512]) for (const [K, N] of big) benchLinear(T, K, N, kinds);
for (const T of [1, 128]) for (const [K, N] of [[768, 64], [64, 768]] as [number, number][]) benchMatmul(T, K, N);
const sweep = modelSweep();

if (markdown) {
  console.log(`\n| op | T | K | N | ${columns.join(' | ')} |`);
  console.log(`|---|---:|---:|---:|${columns.map(() => '---:').join('|')}|`);
  for (const r of rows) console.log(`| ${r.op} | ${r.T} | ${r.K} | ${r.N} | ${columns.map((c) => r.cells.get(c) ?? '').join(' | ')} |`);
  console.log('');
  for (const l of sweep) console.log(l);
}
shutdownPool();
