import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  getThreads, kernelKind, linear, linearTS, matmul, matmulTS, setThreads, shutdownPool, useTSKernels,
} from '../src/backend/cpu/matmul.js';
import { availableShares, testWorkerError, testWorkerExit, waitForWorkers } from '../src/backend/cpu/pool.js';
import { freeHeapF32, heapF32, heapStats, inHeap, isShared, sharedF32 } from '../src/backend/cpu/shared.js';
import { wkv7 } from '../src/backend/cpu/wkv7.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function rand(a: Float32Array): Float32Array {
  for (let i = 0; i < a.length; i++) a[i] = Math.random() * 2 - 1;
  return a;
}

/** Naive float64 references plus the per-element scale Σ|x·w| for the error bound. */
function refLinear(x: Float32Array, W: Float32Array, T: number, K: number, N: number): [Float64Array, Float64Array] {
  const r = new Float64Array(T * N), s = new Float64Array(T * N);
  for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) {
    let a = 0, b = 0;
    for (let k = 0; k < K; k++) { const p = x[t * K + k] * W[n * K + k]; a += p; b += Math.abs(p); }
    r[t * N + n] = a; s[t * N + n] = b;
  }
  return [r, s];
}
function refMatmul(x: Float32Array, A: Float32Array, T: number, K: number, N: number): [Float64Array, Float64Array] {
  const r = new Float64Array(T * N), s = new Float64Array(T * N);
  for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) {
    let a = 0, b = 0;
    for (let k = 0; k < K; k++) { const p = x[t * K + k] * A[k * N + n]; a += p; b += Math.abs(p); }
    r[t * N + n] = a; s[t * N + n] = b;
  }
  return [r, s];
}

/** Relative error: max over elements of |out - ref| / Σ_k |x·w| (the scale of the sum). */
function relErr(out: Float32Array, ref: Float64Array, scale: Float64Array): number {
  let e = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(out[i] - ref[i]);
    const rel = scale[i] > 0 ? d / scale[i] : d;
    if (!(rel <= e)) e = rel; // NaN propagates
  }
  return e;
}

type Alloc = (n: number) => Float32Array;
const plain: Alloc = (n) => new Float32Array(n);
const ALLOCS: [string, Alloc][] = [['plain', plain], ['shared', sharedF32], ['heap', heapF32]];

/** A view of n elements at a random offset inside a bigger array (respecting byteOffset). */
function view(alloc: Alloc, n: number, offset: boolean): Float32Array {
  if (!offset) return alloc(n);
  const pad = 1 + Math.floor(Math.random() * 7);
  const big = rand(alloc(n + pad + 3));
  return big.subarray(pad, pad + n);
}

/** Runs linear or matmul on fresh random inputs and checks against the reference. */
function check(op: 'linear' | 'matmul', T: number, K: number, N: number, xa: Alloc, wa: Alloc, oa: Alloc, offset: boolean): void {
  const x = rand(view(xa, T * K, offset));
  const W = rand(view(wa, K * N, offset));
  const out = view(oa, T * N, offset);
  const guard = out.length ? out.buffer : null;
  const before = guard && offset ? new Float32Array(guard, out.byteOffset - 4, 1)[0] : 0;
  out.fill(NaN);
  const [ref, scale] = op === 'linear' ? refLinear(x, W, T, K, N) : refMatmul(x, W, T, K, N);
  if (op === 'linear') linear(out, x, W, T, K, N);
  else matmul(out, x, W, T, K, N);
  const err = relErr(out, ref, scale);
  const tol = 1e-5 * Math.sqrt(Math.max(K, 1));
  assert.ok(err <= tol, `${op} T=${T} K=${K} N=${N}: relative error ${err} > ${tol}`);
  if (guard && offset) {
    // the element just before the view is untouched
    assert.equal(new Float32Array(guard, out.byteOffset - 4, 1)[0], before, 'wrote before the output view');
  }
}

const SMALL_T = [1, 2, 3, 7];
const DIMS = [1, 5, 63, 129, 768];

function sweep(label: string, allocs: [string, Alloc][]): void {
  for (const op of ['linear', 'matmul'] as const) {
    it(`${op}: all T in ${SMALL_T}, K,N in ${DIMS} (${label})`, () => {
      for (const [, a] of allocs) for (const T of SMALL_T) for (const K of DIMS) for (const N of DIMS) {
        check(op, T, K, N, a, a, a, true);
      }
    });
    it(`${op}: T = 64, 130 on odd shapes (${label})`, () => {
      for (const [, a] of allocs) for (const T of [64, 130]) {
        for (const [K, N] of [[63, 129], [129, 5], [768, 63], [5, 768], [130, 131], [1, 768], [768, 1]]) {
          check(op, T, K, N, a, a, a, true);
        }
      }
    });
    it(`${op}: mixed array kinds and large shapes (${label})`, () => {
      for (const [, xa] of allocs) for (const [, wa] of allocs) for (const [, oa] of ALLOCS) {
        check(op, 3, 67, 133, xa, wa, oa, Math.random() < 0.5);
      }
      check(op, 130, 768, 768, sharedF32, sharedF32, plain, false);
      check(op, 1, 3072, 768, heapF32, heapF32, heapF32, true);
      check(op, 64, 768, 3072 + 5, plain, sharedF32, sharedF32, true);
    });
  }
}

describe('wkv7 over worker threads', () => {
  after(() => { setThreads(1); });
  it('splits the heads over 2 threads with the same bits as 1 thread (state shared, in the heap or plain)', () => {
    const H = 5, N = 64, T = 40, C = H * N; // T·H·N² = 819,200: above the split threshold
    const input = () => rand(sharedF32(T * C));
    const r = input(), kt = input(), v = input(), a = input(), w = input(), kk = input();
    for (let i = 0; i < T * C; i++) { a[i] = 0.5 + 0.5 * a[i]; w[i] = Math.exp(-0.6065306597126334 / (1 + Math.exp(-2 * w[i]))); }
    for (let i = 0; i < T * H; i++) {
      let ss = 0;
      for (let j = 0; j < N; j++) ss += kk[i * N + j] ** 2;
      for (let j = 0; j < N; j++) kk[i * N + j] /= Math.sqrt(ss);
    }
    const S0 = rand(new Float32Array(H * N * N));
    for (let i = 0; i < S0.length; i++) S0[i] *= 0.3;
    const run = (state: Float32Array) => {
      const y = sharedF32(T * C);
      state.set(S0);
      wkv7(y, state, r, w, kt, v, kk, a, T, H, N);
      return { y: new Uint32Array(y.slice().buffer), s: new Uint32Array(state.slice().buffer) };
    };
    setThreads(1);
    const want = run(new Float32Array(H * N * N));
    setThreads(2);
    availableShares();
    assert.ok(waitForWorkers(2), 'worker did not start');
    assert.equal(availableShares(), 2);
    const heap = heapF32(H * N * N);
    for (const [what, state] of [['plain', new Float32Array(H * N * N)], ['shared', sharedF32(H * N * N)], ['heap', heap]] as const) {
      const got = run(state);
      assert.deepEqual(got.y, want.y, `y, ${what} state`);
      assert.deepEqual(got.s, want.s, `state, ${what} state`);
    }
    freeHeapF32(heap);
  });
});

describe('matmul kernels', () => {
  after(() => {
    useTSKernels(false);
    shutdownPool();
  });

  it('reports a kernel kind', () => {
    assert.match(kernelKind(), /^(wasm-simd(-fma)?|ts)$/);
  });

  describe('1 thread, SIMD kernels (where available)', () => {
    before(() => { setThreads(1); useTSKernels(false); });
    sweep('1 thread', ALLOCS);
  });

  describe('2 threads, SIMD kernels (where available)', () => {
    before(async () => {
      setThreads(2);
      useTSKernels(false);
      availableShares(); // start the pool
      assert.ok(waitForWorkers(2), 'worker did not start');
    });
    it('uses two threads', () => {
      assert.equal(getThreads(), 2);
      assert.equal(availableShares(), 2);
    });
    sweep('2 threads', ALLOCS);
  });

  describe('plain TypeScript kernels', () => {
    before(() => { useTSKernels(true); });
    after(() => { useTSKernels(false); });
    it('1 thread', () => {
      setThreads(1);
      for (const [, a] of ALLOCS) for (const T of [1, 3, 7, 64]) for (const [K, N] of [[1, 5], [63, 129], [768, 63], [129, 768]]) {
        check('linear', T, K, N, a, a, a, true);
        check('matmul', T, K, N, a, a, a, true);
      }
    });
    it('2 threads', () => {
      setThreads(2);
      availableShares();
      assert.ok(waitForWorkers(2));
      for (const [, xa] of ALLOCS) for (const [, wa] of ALLOCS) for (const T of [1, 7, 130]) {
        check('linear', T, 129, 768, xa, wa, xa, true);
        check('matmul', T, 768, 63, xa, wa, xa, true);
      }
    });
  });

  it('TS kernels compute sub-rectangles', () => {
    const T = 9, K = 33, N = 17;
    const x = rand(new Float32Array(T * K)), W = rand(new Float32Array(N * K));
    const o = new Float32Array(T * N).fill(7);
    linearTS(o, 0, x, 0, W, 0, K, N, 2, 5, 3, 11);
    const [ref] = refLinear(x, W, T, K, N);
    for (let t = 0; t < T; t++) for (let n = 0; n < N; n++) {
      const inside = t >= 2 && t < 5 && n >= 3 && n < 11;
      if (inside) assert.ok(Math.abs(o[t * N + n] - ref[t * N + n]) < 1e-4);
      else assert.equal(o[t * N + n], 7);
    }
    const o2 = new Float32Array(T * N).fill(7);
    matmulTS(o2, 0, x, 0, W, 0, K, N, 0, T, 0, N);
    const [ref2] = refMatmul(x, W, T, K, N);
    for (let i = 0; i < T * N; i++) assert.ok(Math.abs(o2[i] - ref2[i]) < 1e-4);
  });

  it('handles empty sizes and rejects short arrays', () => {
    setThreads(1);
    const out = new Float32Array(6).fill(3);
    linear(out, new Float32Array(0), new Float32Array(0), 2, 0, 3);
    assert.deepEqual([...out], [0, 0, 0, 0, 0, 0]);
    linear(out, new Float32Array(0), new Float32Array(12), 0, 4, 3);
    assert.deepEqual([...out], [0, 0, 0, 0, 0, 0]);
    assert.throws(() => linear(new Float32Array(4), new Float32Array(6), new Float32Array(6), 2, 3, 3), RangeError);
    assert.throws(() => matmul(new Float32Array(9), new Float32Array(5), new Float32Array(9), 2, 3, 3), RangeError);
    const buf = sharedF32(64);
    assert.throws(() => linear(buf.subarray(0, 4), buf.subarray(2, 6), sharedF32(4), 2, 2, 2), RangeError);
  });

  it('a worker error surfaces as an exception, and the pool keeps working', () => {
    setThreads(2);
    availableShares();
    assert.ok(waitForWorkers(2));
    assert.throws(() => testWorkerError(), /test error thrown in worker/);
    check('linear', 64, 768, 768, sharedF32, sharedF32, sharedF32, false);
  });

  it('a worker that dies mid-job surfaces as an exception, and a new pool takes over', () => {
    setThreads(2);
    availableShares();
    assert.ok(waitForWorkers(2));
    assert.throws(() => testWorkerExit(), /matmul worker died/);
    availableShares(); // starts a fresh pool
    assert.ok(waitForWorkers(2));
    check('linear', 64, 768, 768, sharedF32, sharedF32, sharedF32, false);
  });

  it('threads can be changed and the pool restarted', () => {
    setThreads(1);
    assert.equal(availableShares(), 1);
    check('linear', 7, 768, 768, sharedF32, sharedF32, sharedF32, false);
    shutdownPool();
    setThreads(2);
    availableShares();
    assert.ok(waitForWorkers(2));
    check('linear', 7, 768, 768, sharedF32, sharedF32, sharedF32, false);
    shutdownPool();
  });
});

describe('shared memory', () => {
  it('sharedF32 and heapF32 are zero-filled and shared', () => {
    const a = sharedF32(10);
    assert.ok(isShared(a) && !inHeap(a));
    assert.ok(a.every((v) => v === 0));
    assert.ok(!isShared(new Float32Array(3)));
    const h = heapF32(1000);
    assert.ok(isShared(h));
    assert.ok(h.every((v) => v === 0));
  });

  it('heap blocks are reused after freeHeapF32, zero-filled again', () => {
    const a = heapF32(5000);
    if (!inHeap(a)) return; // no heap on this runtime
    const guard = heapF32(16); // keeps a's block from being the top of the heap
    a.fill(1);
    const used = heapStats().used;
    freeHeapF32(a);
    assert.ok(used - heapStats().used >= 5000 * 4);
    // Same-size blocks until one lands on a's old place (first fit may use older holes first).
    const got: Float32Array[] = [];
    for (let i = 0; i < 64; i++) {
      const b = heapF32(5000);
      assert.ok(b.every((v) => v === 0), 'reused block not zero-filled');
      got.push(b);
      if (b.byteOffset === a.byteOffset) break;
    }
    assert.equal(got[got.length - 1].byteOffset, a.byteOffset);
    // The top of the heap is handed back and handed out again, zero-filled.
    const top = heapF32(3000);
    top.fill(2);
    freeHeapF32(top);
    const again = heapF32(3000);
    assert.ok(again.every((v) => v === 0));
    for (const b of [...got, guard, again]) freeHeapF32(b);
    assert.throws(() => freeHeapF32(again));
  });
});

describe('processes', () => {
  it('RWKVX_THREADS overrides the thread count, and workers never keep the process alive', () => {
    // A script that runs a parallel linear and does not shut the pool down.
    const script = `
      import { linear, getThreads } from './src/backend/cpu/matmul.ts';
      import { sharedF32 } from './src/backend/cpu/shared.ts';
      import { availableShares, waitForWorkers } from './src/backend/cpu/pool.ts';
      const n = 768, x = sharedF32(64 * n).fill(1), W = sharedF32(n * n).fill(1), o = sharedF32(64 * n);
      availableShares();
      waitForWorkers(getThreads(), 10000);
      linear(o, x, W, 64, n, n);
      console.log(getThreads(), availableShares(), o[0], o[64 * n - 1]);
    `;
    for (const threads of ['1', '2']) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: ROOT, env: { ...process.env, RWKVX_THREADS: threads }, encoding: 'utf8', timeout: 30000,
      });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), `${threads} ${threads} 768 768`);
    }
  });

  it('works compiled to JavaScript (the installed dist layout)', { timeout: 120000 }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'rwkvx-mm-'));
    try {
      const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
      execFileSync(process.execPath, [tsc, '--outDir', dir, '--rootDir', join(ROOT, 'src'), '--module', 'nodenext', '--moduleResolution', 'nodenext',
        '--target', 'es2022', '--strict', '--types', 'node', '--skipLibCheck',
        ...['pool', 'matmul', 'matmul-worker', 'shared'].map((f) => join(ROOT, 'src', 'backend', 'cpu', `${f}.ts`))], { cwd: ROOT, stdio: 'pipe' });
      writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
      writeFileSync(join(dir, 'run.js'), `
        import { linear, setThreads, shutdownPool } from './backend/cpu/matmul.js';
        import { sharedF32 } from './backend/cpu/shared.js';
        import { availableShares, waitForWorkers, testWorkerError } from './backend/cpu/pool.js';
        setThreads(2); availableShares();
        if (!waitForWorkers(2, 10000)) throw new Error('no worker');
        const n = 768, x = sharedF32(64 * n).fill(1), W = sharedF32(n * n).fill(2), o = sharedF32(64 * n);
        linear(o, x, W, 64, n, n);
        let msg = ''; try { testWorkerError(); } catch (e) { msg = e.message; }
        console.log(availableShares(), o[0], o[64 * n - 1], /test error/.test(msg));
      `);
      const r = spawnSync(process.execPath, [join(dir, 'run.js')], { encoding: 'utf8', timeout: 30000 });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), '2 1536 1536 true');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
