/**
 * Peak memory while loading a bf16 .pth into float32, as a model load does.
 *
 *   node --import tsx bench/load-memory.ts [sizeGB]      (default 2)
 *
 * Writes a synthetic checkpoint shaped like a released RWKV-7 file (C = 2560, V = 65536, whole
 * blocks until the size is reached) to a temp dir, then, each in a fresh child process:
 *   baseline — opens the checkpoint and reads nothing (Node + tsx + the zip/pickle metadata);
 *   load     — readF32 of every tensor, keeping all the float32 arrays alive.
 * The float32 arrays are the destination and are necessarily 2× the bf16 file; the point is that the
 * peak RSS is that plus a small, fixed overhead rather than a multiple of the checkpoint.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openCheckpoint } from '../src/io/open.js';
import { writeSimplePth, type SimpleTensor, type StreamedData } from '../test/helpers/make-pth.js';

const SELF = fileURLToPath(import.meta.url);
const MiB = 1024 * 1024;

interface ChildReport {
  mode: 'baseline' | 'load';
  fileBytes: number;
  tensors: number;
  f32Bytes: number;
  rssBeforeBytes: number;
  maxRssBytes: number;
  seconds: number;
  userSeconds: number;
  systemSeconds: number;
  minorFaults: number;
}

function child(mode: 'baseline' | 'load', file: string): void {
  const rssBeforeBytes = process.memoryUsage().rss;
  const t0 = performance.now();
  const src = openCheckpoint(file);
  const kept: Float32Array[] = [];
  let f32Bytes = 0;
  if (mode === 'load') {
    for (const name of src.names()) {
      const a = src.readF32(name);
      if (!Number.isFinite(a[0]!)) throw new Error(`${name}: bad value ${a[0]}`);
      kept.push(a);
      f32Bytes += a.byteLength;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const ru = process.resourceUsage();
  const report: ChildReport = {
    mode, fileBytes: fs.statSync(file).size, tensors: src.names().length, f32Bytes, rssBeforeBytes,
    maxRssBytes: ru.maxRSS * 1024, seconds,
    userSeconds: ru.userCPUTime / 1e6, systemSeconds: ru.systemCPUTime / 1e6, minorFaults: ru.minorPageFault,
  };
  src.close();
  process.stdout.write(JSON.stringify(report) + '\n');
}

/** bf16 values of ordinary weight magnitude (|x| in [2^-8, 2)), repeated from one random block. */
function bf16Stream(elements: number, block: Uint8Array): StreamedData {
  const byteLength = elements * 2;
  return {
    byteLength,
    *chunks() {
      for (let done = 0; done < byteLength; done += block.length) yield block.subarray(0, Math.min(block.length, byteLength - done));
    },
  };
}

function syntheticTensors(targetBytes: number): SimpleTensor[] {
  const C = 2560;
  const V = 65536;
  const F = 4 * C;
  const block = new Uint8Array(8 * MiB);
  const bits = new Uint16Array(block.buffer);
  let x = 0x9e3779b9;
  for (let i = 0; i < bits.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    bits[i] = (x & 0x8000) | (0x3b80 + ((x >>> 16) % 0x0480)); // sign | exponent 119..127 | mantissa
  }
  const out: SimpleTensor[] = [];
  let total = 0;
  const add = (name: string, shape: number[]): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    out.push({ name, dtype: 'BF16', shape, data: bf16Stream(n, block) });
    total += n * 2;
  };
  add('emb.weight', [V, C]);
  add('blocks.0.ln0.weight', [C]);
  for (let i = 0; total + 2 * V * C < targetBytes || i === 0; i++) {
    for (const v of ['x_r', 'x_w', 'x_k', 'x_v', 'x_a', 'x_g']) add(`blocks.${i}.att.${v}`, [1, 1, C]);
    for (const m of ['receptance', 'key', 'value', 'output']) add(`blocks.${i}.att.${m}.weight`, [C, C]);
    add(`blocks.${i}.att.ln_x.weight`, [C]);
    add(`blocks.${i}.ffn.x_k`, [1, 1, C]);
    add(`blocks.${i}.ffn.key.weight`, [F, C]);
    add(`blocks.${i}.ffn.value.weight`, [C, F]);
  }
  add('ln_out.weight', [C]);
  add('head.weight', [V, C]);
  return out;
}

function runChild(mode: 'baseline' | 'load', file: string): ChildReport {
  const r = spawnSync(process.execPath, ['--import', 'tsx', SELF, `--child-${mode}`, file], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20,
  });
  if (r.status !== 0) throw new Error(`child (${mode}) exited with ${r.status ?? r.signal}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ChildReport;
}

function main(): void {
  const arg = process.argv[2];
  if (arg === '--child-baseline' || arg === '--child-load') {
    child(arg === '--child-load' ? 'load' : 'baseline', process.argv[3]!);
    return;
  }
  const sizeGB = arg === undefined ? 2 : Number(arg);
  if (!(sizeGB > 0)) {
    console.error('usage: node --import tsx bench/load-memory.ts [sizeGB]');
    process.exit(2);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rwkvx-loadmem-'));
  try {
    const file = path.join(dir, 'synthetic.bf16.pth');
    const tensors = syntheticTensors(sizeGB * 1024 ** 3);
    const t0 = performance.now();
    writeSimplePth(file, tensors);
    console.log(`wrote ${file}: ${tensors.length} tensors, ${(fs.statSync(file).size / MiB).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const base = runChild('baseline', file);
    const load = runChild('load', file);
    const mib = (b: number): string => (b / MiB).toFixed(0).padStart(8);
    const overhead = load.maxRssBytes - load.f32Bytes;
    console.log('');
    console.log('| quantity                                   |      MiB |');
    console.log('|--------------------------------------------|---------:|');
    console.log(`| checkpoint file (bf16, ${String(load.tensors).padStart(3)} tensors)        | ${mib(load.fileBytes)} |`);
    console.log(`| float32 arrays produced (= 2 × file)       | ${mib(load.f32Bytes)} |`);
    console.log(`| peak RSS, open only (baseline)             | ${mib(base.maxRssBytes)} |`);
    console.log(`| peak RSS, open + readF32 of every tensor   | ${mib(load.maxRssBytes)} |`);
    console.log(`| peak RSS − float32 total                   | ${mib(overhead)} |`);
    console.log(`| peak RSS − float32 total − baseline        | ${mib(overhead - base.maxRssBytes)} |`);
    console.log('');
    console.log(`peak / float32 total = ${(load.maxRssBytes / load.f32Bytes).toFixed(3)}`);
    // Most of the time is the kernel backing fresh float32 pages on first touch (system time), which
    // any loader pays; the CPU work of decoding is the user time.
    console.log(`load: ${load.seconds.toFixed(2)} s wall (${(load.fileBytes / MiB / load.seconds).toFixed(0)} MiB/s of checkpoint), ` +
      `${load.userSeconds.toFixed(2)} s user, ${load.systemSeconds.toFixed(2)} s system, ${load.minorFaults} minor page faults; ` +
      `node ${process.version}, ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${(os.totalmem() / 1024 ** 3).toFixed(0)} GiB RAM`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
