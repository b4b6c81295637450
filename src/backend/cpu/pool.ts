/**
 * A worker-thread pool with a synchronous API, for the CPU kernels.
 *
 * The model code is synchronous, so a parallel operation works like this:
 *
 *   1. The main thread writes an opcode and integer arguments into a control block (an
 *      Int32Array on a SharedArrayBuffer), says which worker runs which share, bumps a sequence
 *      number with Atomics.add and wakes the workers with Atomics.notify.
 *   2. It runs share 0 itself.
 *   3. It waits (a short spin, then Atomics.wait) until the pending counter, which each worker
 *      decrements when done, reaches zero; a worker exception is re-thrown here.
 *
 * Workers name arrays by small integer ids: 0 is the compute heap (shared.ts, present in every
 * worker from the start); any other SharedArrayBuffer is registered once by a postMessage on the
 * worker's MessagePort, and the worker picks registrations up synchronously with
 * receiveMessageOnPort before running the job that first needs them (the control block says how
 * many registration messages have been sent). When the main thread's buffer object is garbage
 * collected, a FinalizationRegistry sends a "drop" message so workers let go of it too.
 *
 * Workers are unref()'d: they never keep the process alive. A worker exception is caught in the
 * worker and reported; a worker that dies outright flags itself in the control block on exit,
 * and the waiting main thread checks that flag at least every 20 ms, so nothing hangs.
 *
 * Thread count: setThreads(n), else env RWKVX_THREADS, else os.availableParallelism().
 * 1 means no workers at all.
 */
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import os from 'node:os';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';

// ---- control block layout (Int32 indices); hot words on separate cache lines ----------------
export const C_SEQ = 0; // job sequence number (workers wait on it)
export const C_PENDING = 16; // workers still running the current job (main waits on it)
export const C_ERROR = 32; // set when a worker job threw
export const C_DEAD = 33; // set by a worker thread that exits
export const C_NREG = 34; // registration messages sent to every worker so far
export const C_OP = 35; // opcode of the current job
export const C_NSHARES = 36; // shares of the current job
export const C_SPIN = 37; // main-thread spin iterations before Atomics.wait (waiting for workers)
export const C_WSPIN = 38; // worker spin iterations before Atomics.wait (waiting for the next job)
export const MAX_WORKERS = 63;
export const C_SHARE_OF = 48; // [MAX_WORKERS] share index of worker i for this job, -1: idle
export const C_READY = 112; // [MAX_WORKERS] set by worker i once it is waiting for jobs
export const C_ARGS = 192; // job arguments
export const N_ARGS = 64;
const CTRL_INTS = C_ARGS + N_ARGS;

export const OP_QUIT = -1;
/** Test hook: the worker that runs share 1 throws. */
export const OP_TEST_THROW = -2;
/** Test hook: the worker that runs share 1 exits its thread in the middle of the job. */
export const OP_TEST_EXIT = -3;

/** Data every worker receives at start-up. */
export interface WorkerInit {
  ctrl: SharedArrayBuffer;
  port: MessagePort;
  index: number;
  seq0: number;
  extra: unknown;
}

/** Registration messages (main → worker). */
export type RegMessage = { reg: number; sab: SharedArrayBuffer } | { drop: number };

interface PoolState {
  ctrl: Int32Array;
  workers: Worker[];
  ports: MessagePort[];
  ids: WeakMap<SharedArrayBuffer, number>;
  nextId: number;
  nreg: number;
  registry: FinalizationRegistry<number>;
  broken: string | null;
}

let threadSetting: number | null = null;
let pool: PoolState | null = null;
/** Set when workers failed to start: run single-threaded until setThreads() is called again. */
let startFailure: string | null = null;
let workerExtra: () => unknown = () => null;

let envThreadsCache: number | null | undefined;
function envThreads(): number | null {
  if (envThreadsCache === undefined) envThreadsCache = parseThreads(process.env.RWKVX_THREADS);
  return envThreadsCache;
}
function parseThreads(s: string | undefined): number | null {
  if (s === undefined || s.trim() === '') return null;
  const n = Math.floor(Number(s));
  return Number.isFinite(n) && n >= 1 ? n : null;
}

let defaultThreads = 0;
/** Threads used for parallel kernels (main thread included). */
export function getThreads(): number {
  if (threadSetting !== null) return threadSetting;
  if (defaultThreads === 0) {
    const n = envThreads() ?? (os.availableParallelism?.() ?? os.cpus().length);
    defaultThreads = Math.max(1, Math.min(MAX_WORKERS + 1, n));
  }
  return defaultThreads;
}

/** Sets the thread count (1 = main thread only); a running pool of another size is shut down. */
export function setThreads(n: number): void {
  if (!Number.isFinite(n) || n < 1) throw new RangeError(`setThreads: need n >= 1, got ${n}`);
  threadSetting = Math.max(1, Math.min(MAX_WORKERS + 1, Math.floor(n)));
  startFailure = null;
  if (pool && pool.workers.length !== getThreads() - 1) shutdownPool();
}

/** Extra start-up data for each worker (the kernels module sets its wasm module and heap). */
export function setWorkerExtra(f: () => unknown): void {
  workerExtra = f;
}

/** The worker script next to this module, with this module's own extension (.ts or .js). */
function workerUrl(): URL {
  const ext = extname(fileURLToPath(import.meta.url));
  return new URL('./matmul-worker' + ext, import.meta.url);
}

/**
 * The parent's execArgv minus what a worker must not (or need not) get: eval/print/test/watch
 * options (Node rejects them in workers) and, when `dropTsx`, the options that register tsx.
 * V8 flags are process-wide anyway.
 */
function workerExecArgv(dropTsx: boolean): string[] {
  const argv = process.execArgv;
  const out: string[] = [];
  const withValue = /^(-e|--eval|-p|--print|--input-type|-r|--require|--import|--loader|--experimental-loader|--watch-path|--test-reporter|--test-reporter-destination|--test-name-pattern|--test-concurrency|--test-shard)$/;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const name = a.split('=')[0];
    const hasInline = a.includes('=');
    const value = hasInline ? a.slice(a.indexOf('=') + 1) : argv[i + 1] ?? '';
    const skip = () => { if (!hasInline && withValue.test(name)) i++; };
    if (/^(-e|--eval|-p|--print|--input-type|--watch|--watch-path|--test|--test-.*|--interactive|-i)$/.test(name)) { skip(); continue; }
    if (dropTsx && /^(-r|--require|--import|--loader|--experimental-loader)$/.test(name) && /tsx/.test(value)) { skip(); continue; }
    out.push(a);
    if (!hasInline && withValue.test(name) && i + 1 < argv.length) out.push(argv[++i]);
  }
  return out;
}

/**
 * Starts one worker.
 *
 * Compiled (.js): `new Worker(matmul-worker.js)`.
 *
 * Under tsx (.ts): the worker must compile TypeScript too. Inheriting `--import tsx` works, but
 * with tsx's ESM hooks a worker cannot finish loading while the main thread is blocked (the hooks
 * need the main thread's event loop), and the model code is synchronous. So we start a tiny CJS
 * worker that loads matmul-worker.ts through tsx's synchronous require hook (tsx/cjs/api), which
 * runs entirely inside the worker. Where tsx cannot be resolved from here, fall back to the
 * inherited `--import` (plus `--import tsx` if tsx was registered some other way).
 */
function spawnWorker(init: WorkerInit): Worker {
  const url = workerUrl();
  const common = { workerData: init, transferList: [init.port], stdout: false, stderr: false };
  const start = (target: string | URL, opts: ConstructorParameters<typeof Worker>[1]) => {
    try {
      return new Worker(target, opts);
    } catch (e) {
      // Node rejects some execArgv entries in workers: retry without any.
      if ((e as { code?: string }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw e;
      return new Worker(target, { ...opts, execArgv: [] });
    }
  };
  if (!url.pathname.endsWith('.ts')) return start(url, { ...common, execArgv: workerExecArgv(false) });
  let api: string | null = null;
  try {
    api = createRequire(import.meta.url).resolve('tsx/cjs/api');
  } catch {
    api = null;
  }
  if (api) {
    const file = fileURLToPath(url);
    const code = `require(${JSON.stringify(api)}).require(${JSON.stringify(file)}, ${JSON.stringify(file)});`;
    return start(code, { ...common, eval: true, execArgv: workerExecArgv(true) });
  }
  const argv = workerExecArgv(false);
  if (!argv.some((a) => /tsx/.test(a)) && !/tsx/.test(process.env.NODE_OPTIONS ?? '')) {
    try { argv.push('--import', import.meta.resolve('tsx')); } catch { /* leave as is */ }
  }
  return start(url, { ...common, execArgv: argv });
}

function startPool(nWorkers: number): PoolState {
  const ctrl = new Int32Array(new SharedArrayBuffer(CTRL_INTS * 4));
  ctrl[C_SPIN] = spinIterations();
  ctrl[C_WSPIN] = workerSpinIterations();
  for (let i = 0; i < MAX_WORKERS; i++) ctrl[C_SHARE_OF + i] = -1;
  const state: PoolState = {
    ctrl,
    workers: [],
    ports: [],
    ids: new WeakMap(),
    nextId: 1,
    nreg: 0,
    registry: new FinalizationRegistry<number>((id) => {
      if (pool !== state) return;
      for (const p of state.ports) p.postMessage({ drop: id } satisfies RegMessage);
      state.nreg++;
      Atomics.store(ctrl, C_NREG, state.nreg);
    }),
    broken: null,
  };
  const extra = workerExtra();
  for (let i = 0; i < nWorkers; i++) {
    const { port1, port2 } = new MessageChannel();
    const init: WorkerInit = { ctrl: ctrl.buffer as SharedArrayBuffer, port: port2, index: i, seq0: ctrl[C_SEQ], extra };
    const w = spawnWorker(init);
    const failed = (why: string) => {
      state.broken ??= why;
      // A worker that never got ready will not get ready next time either.
      if (pool === state && Atomics.load(ctrl, C_READY + i) === 0 && startFailure === null) {
        startFailure = why;
        process.emitWarning(`rwkvx: matmul worker threads unavailable, running on one thread (${why})`);
      }
    };
    w.on('error', (e) => failed(`worker ${i} failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`));
    w.on('exit', (code) => failed(`worker ${i} exited (code ${code})`));
    w.unref();
    port1.unref();
    state.workers.push(w);
    state.ports.push(port1);
  }
  return state;
}

/**
 * Atomics.load polls (~8 ns each) the main thread makes while waiting for workers before sleeping in
 * Atomics.wait. Kept short: on a 2-core machine that also runs anything else, a spinning thread is
 * time-sliced against the thread it waits for and calls slow down from microseconds to milliseconds.
 * Env RWKVX_SPIN overrides.
 */
function spinIterations(): number { return envCount('RWKVX_SPIN', 1000); }
/**
 * Polls a worker makes after a job before it sleeps (~0.4 ms): the gaps between the products of a
 * decoding step (norms, WKV, element-wise work on the main thread) are shorter than that, so the
 * worker is awake for the next product instead of paying a wake-up per product (decode 24.6 → ~30
 * tokens/s on the 2-core VM). It spins only on its own core, and only that long after each job. Env
 * RWKVX_WORKER_SPIN overrides.
 */
function workerSpinIterations(): number { return envCount('RWKVX_WORKER_SPIN', 50000); }
/** A non-negative integer from the environment, else `dflt`. */
function envCount(name: string, dflt: number): number {
  const s = process.env[name], n = Number(s);
  return s !== undefined && s !== '' && Number.isFinite(n) && n >= 0 ? Math.floor(n) : dflt;
}

/** Terminates the workers (they are re-created on the next parallel call). */
export function shutdownPool(): void {
  const p = pool;
  if (!p) return;
  pool = null;
  Atomics.store(p.ctrl, C_OP, OP_QUIT);
  for (let i = 0; i < MAX_WORKERS; i++) p.ctrl[C_SHARE_OF + i] = -1;
  Atomics.add(p.ctrl, C_SEQ, 1);
  Atomics.notify(p.ctrl, C_SEQ);
  for (const w of p.workers) void w.terminate().catch(() => {});
  for (const port of p.ports) port.close();
}

/** The running pool (started on demand), or null when threads = 1. */
function getPool(): PoolState | null {
  const want = getThreads() - 1;
  if (want <= 0 || startFailure !== null) {
    if (pool) shutdownPool();
    return null;
  }
  if (pool && (pool.broken !== null || Atomics.load(pool.ctrl, C_DEAD) !== 0)) shutdownPool();
  if (pool && pool.workers.length !== want) shutdownPool();
  pool ??= startPool(want);
  return pool;
}

/**
 * How many shares a job can be split into right now: 1 (the main thread) plus the workers that
 * have finished starting up. Starts the pool on first use; never waits for workers to boot.
 */
export function availableShares(): number {
  const p = getPool();
  if (!p) return 1;
  let n = 1;
  for (let i = 0; i < p.workers.length; i++) if (Atomics.load(p.ctrl, C_READY + i) === 1) n++;
  return n;
}

/** The id under which workers know this SharedArrayBuffer (registering it on first use). */
export function bufferId(sab: SharedArrayBuffer): number {
  const p = pool;
  if (!p) throw new Error('bufferId: no worker pool');
  let id = p.ids.get(sab);
  if (id !== undefined) return id;
  id = p.nextId++;
  p.ids.set(sab, id);
  for (const port of p.ports) port.postMessage({ reg: id, sab } satisfies RegMessage);
  p.nreg++;
  Atomics.store(p.ctrl, C_NREG, p.nreg);
  p.registry.register(sab, id);
  return id;
}

/** The argument area of the control block (valid until the next job is started). */
export function jobArgs(): Int32Array {
  const p = pool;
  if (!p) throw new Error('jobArgs: no worker pool');
  return p.ctrl.subarray(C_ARGS, C_ARGS + N_ARGS);
}

/**
 * Runs job `op` split into nShares (≤ availableShares()): workers run shares 1..nShares-1 on the
 * arguments in jobArgs(), the main thread runs share 0 by calling mainShare(). Returns when all
 * shares are done; throws if any share threw.
 */
export function runJob(op: number, nShares: number, mainShare: () => void): void {
  const p = pool;
  if (!p) throw new Error('runJob: no worker pool');
  const ctrl = p.ctrl;
  let s = 1;
  for (let i = 0; i < p.workers.length; i++) {
    if (s < nShares && Atomics.load(ctrl, C_READY + i) === 1) ctrl[C_SHARE_OF + i] = s++;
    else ctrl[C_SHARE_OF + i] = -1;
  }
  if (s !== nShares) throw new Error(`runJob: asked for ${nShares} shares, ${s} available`);
  ctrl[C_OP] = op;
  ctrl[C_NSHARES] = nShares;
  Atomics.store(ctrl, C_ERROR, 0);
  Atomics.store(ctrl, C_PENDING, nShares - 1);
  Atomics.add(ctrl, C_SEQ, 1); // the atomic write publishes the job to the workers
  Atomics.notify(ctrl, C_SEQ);
  let mainError: unknown = null;
  const t0 = performance.now();
  try {
    mainShare();
  } catch (e) {
    mainError = e;
  }
  waitWorkers(p, performance.now() - t0);
  if (Atomics.load(ctrl, C_ERROR) !== 0) {
    const msg = collectWorkerError(p);
    Atomics.store(ctrl, C_ERROR, 0);
    throw new Error(`matmul worker failed: ${msg}`);
  }
  if (mainError !== null) throw mainError;
}

/**
 * Waits until every worker share is done. A worker that exits sets C_DEAD on its way out; one
 * that vanishes without running its exit handler is given up on after a watchdog of
 * max(10 s, 100 × the main thread's own share) — shares are equal, so that is far beyond slow.
 */
function waitWorkers(p: PoolState, mainMs: number): void {
  const ctrl = p.ctrl;
  const spin = ctrl[C_SPIN];
  const deadline = performance.now() + Math.max(10000, 100 * mainMs);
  let i = 0;
  for (;;) {
    const pending = Atomics.load(ctrl, C_PENDING);
    if (pending <= 0) return;
    if (i < spin) {
      i++;
      continue;
    }
    let why: string | null = null;
    if (Atomics.load(ctrl, C_DEAD) !== 0) why = p.broken ?? collectWorkerError(p);
    else if (performance.now() > deadline) why = `no answer after ${Math.round(performance.now() - deadline + Math.max(10000, 100 * mainMs))} ms`;
    if (why !== null) {
      if (pool === p) shutdownPool();
      throw new Error(`matmul worker died: ${why}`);
    }
    Atomics.wait(ctrl, C_PENDING, pending, 20);
  }
}

/** Reads the error a worker posted (it posts before it signals completion). */
function collectWorkerError(p: PoolState): string {
  const msgs: string[] = [];
  const deadline = Date.now() + 1000;
  const scratch = new Int32Array(new SharedArrayBuffer(4));
  while (msgs.length === 0 && Date.now() < deadline) {
    for (const port of p.ports) {
      let m;
      while ((m = receiveMessageOnPort(port))) {
        const e = (m.message as { error?: string }).error;
        if (e) msgs.push(e);
      }
    }
    if (msgs.length === 0) Atomics.wait(scratch, 0, 0, 1);
  }
  return msgs.length ? msgs.join('\n') : 'unknown error (no message from the worker)';
}

// ---------------------------------------------------------------------------------------------
// Worker side

/** Resolves a buffer id to a Float32Array over the whole buffer. */
export type ViewOf = (id: number) => Float32Array;

/**
 * The worker's main loop: waits for jobs and runs `handler` for its share. `heapView` returns the
 * current whole-heap view (id 0). Returns when the pool is shut down.
 */
export function workerLoop(
  init: WorkerInit,
  heapView: () => Float32Array,
  handler: (op: number, args: Int32Array, share: number, nShares: number, view: ViewOf) => void,
): void {
  const ctrl = new Int32Array(init.ctrl);
  const me = init.index;
  const port = init.port;
  const bufs = new Map<number, Float32Array>();
  let nreg = 0;
  const view: ViewOf = (id) => {
    if (id === 0) return heapView();
    const b = bufs.get(id);
    if (!b) throw new Error(`worker ${me}: unknown buffer id ${id}`);
    return b;
  };
  const args = ctrl.subarray(C_ARGS, C_ARGS + N_ARGS);
  process.on('exit', () => {
    Atomics.store(ctrl, C_DEAD, 1);
    Atomics.notify(ctrl, C_PENDING);
  });
  let seen = init.seq0;
  Atomics.store(ctrl, C_READY + me, 1);
  for (;;) {
    let seq = Atomics.load(ctrl, C_SEQ);
    if (seq === seen) {
      const spin = ctrl[C_WSPIN];
      for (let i = 0; i < spin && seq === seen; i++) seq = Atomics.load(ctrl, C_SEQ);
      if (seq === seen) {
        Atomics.wait(ctrl, C_SEQ, seen);
        continue;
      }
    }
    seen = seq;
    const op = ctrl[C_OP];
    if (op === OP_QUIT) break;
    const share = ctrl[C_SHARE_OF + me];
    if (share < 0) continue;
    try {
      const want = Atomics.load(ctrl, C_NREG);
      while (nreg < want) {
        const m = receiveMessageOnPort(port);
        if (!m) continue; // posted but not yet visible: spin
        const msg = m.message as RegMessage;
        if ('reg' in msg) bufs.set(msg.reg, new Float32Array(msg.sab, 0, msg.sab.byteLength >>> 2));
        else bufs.delete(msg.drop);
        nreg++;
      }
      if (op === OP_TEST_THROW) {
        if (share === 1) throw new Error('test error thrown in worker');
      } else if (op === OP_TEST_EXIT) {
        if (share === 1) process.exit(3);
      } else {
        handler(op, args, share, ctrl[C_NSHARES], view);
      }
    } catch (e) {
      port.postMessage({ error: e instanceof Error ? e.stack ?? e.message : String(e) });
      Atomics.store(ctrl, C_ERROR, 1);
    }
    if (Atomics.sub(ctrl, C_PENDING, 1) === 1) Atomics.notify(ctrl, C_PENDING);
  }
  Atomics.store(ctrl, C_READY + me, 0);
  port.close();
}

/** Test hook: runs a job whose share 1 throws in a worker (needs ≥ 2 shares available). */
export function testWorkerError(): void {
  const n = availableShares();
  if (n < 2) throw new Error('testWorkerError: no ready worker');
  runJob(OP_TEST_THROW, 2, () => {});
}

/** Test hook: runs a job during which the worker with share 1 exits (needs ≥ 2 shares). */
export function testWorkerExit(): void {
  const n = availableShares();
  if (n < 2) throw new Error('testWorkerExit: no ready worker');
  runJob(OP_TEST_EXIT, 2, () => {});
}

/** Test hook: true once at least `n` shares are available (workers started), waiting up to `ms`. */
export function waitForWorkers(n: number, ms = 10000): boolean {
  const deadline = Date.now() + ms;
  const scratch = new Int32Array(new SharedArrayBuffer(4));
  while (availableShares() < n) {
    if (Date.now() > deadline) return false;
    Atomics.wait(scratch, 0, 0, 2);
  }
  return true;
}
