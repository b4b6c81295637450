/**
 * CUDA backend benchmark: prefill latency and decode ms/token of RWKV-X 0.22B (L12 C768 + 4
 * attention blocks, chunk 2048, top-k 3) and RWKV-7 0.19B (L12 C768), random weights, V 65536.
 *   npm run bench:cuda -- [--lengths 4096,16384,65536,131072] [--decode 4096,65536] [--steps 32] [--json FILE]
 *     [--models rwkvx,rwkv7|none] [--repeat R] [--segment N] [--wkv N] [--attn N,N…] [--gemm N] [--peer]
 * Prefill: one forward() of N tokens from an empty state, logits of the last token back on the host
 * (wall clock, so it includes every launch and the copy). Decode: forward() of one token after a
 * prefill of N, logits back; median of --steps. --repeat R: prefill time is the median of R runs. Peak memory: bytes this process allocated on the GPU
 * (weights + scratch + state), at the peak of that run.
 */
import { writeFileSync } from 'node:fs';
import { shapeConfig, randomWeights } from '../src/model/random.js';
import { CudaModel, WKV_SCAN_SHAPES, type WkvScanLayout } from '../src/backend/cuda/model.js';
import { peakAllocatedBytes, resetPeak } from '../src/backend/cuda/memory.js';
import { arg, median, randomTokens, requireCuda } from './util.js';

await requireCuda();

const lengths = arg('lengths', '4096,16384,65536,131072').split(',').map(Number);
const decodeAt = new Set(arg('decode', '4096,65536').split(',').map(Number));
const steps = Number(arg('steps', '32'));
const repeat = Math.max(1, Number(arg('repeat', '1')));
// --segment N: tokens per internal segment of a long prefill (the wavefront's unit of work)
const segment = Number(arg('segment', '16384'));
const jsonOut = arg('json', '');
const which = arg('models', 'rwkvx,rwkv7').split(',').filter((x) => x === 'rwkvx' || x === 'rwkv7');

// --gemm N: the prefill GEMMs of one RWKV-7 layer of the 0.22B shape at N tokens (one segment), each
// alone through our cuBLAS calls: ms (mean of 20 back-to-back calls between two events), TFLOP/s and
// the GB/s its operands imply.
const gemmN = Number(arg('gemm', '0'));
if (gemmN > 0) {
  const { alloc, zero } = await import('../src/backend/cuda/memory.js');
  const { Cublas } = await import('../src/backend/cuda/cublas.js');
  const { CudaTimer } = await import('../src/backend/cuda/driver.js');
  const cfg = shapeConfig({ vocab: 256, dim: 768, nLayer: 1, nAttn: 0 });
  const m = CudaModel.fromWeights(cfg, randomWeights(cfg, 2));
  const blas = new Cublas(m.ctx), timer = new CudaTimer(m.ctx), T = gemmN, C = 768, F = 3072, L = cfg.lora;
  const x = alloc(m.ctx, T * F * 2, 'x'), W = alloc(m.ctx, F * F * 2, 'W'), y = alloc(m.ctx, T * F * 4, 'y');
  for (const b of [x, W, y]) zero(m.ctx, b.ptr, b.bytes);
  // [what, linear (W [N, K]) or matmul (A [K, N]), K, N, output, accumulate]
  const shapes: [string, 'linear' | 'matmul', number, number, 'f32' | 'bf16', boolean][] = [
    ['r/k/v', 'linear', C, C, 'f32', false], ['Wo (+= h)', 'linear', C, C, 'f32', true],
    ['ffn key', 'linear', C, F, 'bf16', false], ['ffn value (+= h)', 'linear', F, C, 'f32', true],
    ['decay LoRA 1', 'matmul', C, L.w, 'f32', false], ['decay LoRA 2', 'matmul', L.w, C, 'f32', false],
    ['rate LoRA 1', 'matmul', C, L.a, 'bf16', false], ['value LoRA 1', 'matmul', C, L.v, 'bf16', false],
    ['value LoRA 2', 'matmul', L.v, C, 'f32', false], ['gate LoRA 1', 'matmul', C, L.g, 'f32', false],
    ['gate LoRA 2', 'matmul', L.g, C, 'f32', false],
  ];
  console.log(`\nGEMMs at ${T} tokens on ${m.ctx.info.name}\n| GEMM | K | N | out | ms | TFLOP/s | GB/s |\n|---|---:|---:|---|---:|---:|---:|`);
  for (const [what, kind, K, N, out, acc] of shapes) {
    const run = () => kind === 'linear' ? blas.linear(y.ptr, out, x.ptr, W.ptr, T, K, N, acc) : blas.matmul(y.ptr, out, x.ptr, W.ptr, T, K, N);
    run();
    timer.start();
    for (let i = 0; i < 20; i++) run();
    const ms = timer.stop() / 20, flop = 2 * T * K * N, bytes = T * K * 2 + K * N * 2 + T * N * (out === 'f32' ? 4 : 2) * (acc ? 2 : 1);
    console.log(`| ${what} | ${K} | ${N} | ${out}${acc ? ' +=' : ''} | ${ms.toFixed(3)} | ${(flop / ms / 1e9).toFixed(0)} | ${(bytes / ms / 1e6).toFixed(0)} |`);
  }
  for (const b of [x, W, y]) b.free();
  blas.dispose(); timer.dispose();
  m.dispose();
}

interface Row { model: string; tokens: number; prefill_ms: number; prefill_tok_s: number; decode_ms: number | null; peak_gib: number }
const rows: Row[] = [];

// --wkv N: the WKV-7 part of a time mix alone at N tokens, C768 (12 heads), one layer: tmix_prep +
// the sequential kernel vs the chunked kernels (rows per scan block 4 / 8 / 16), median of 5, random
// projections of real scale (the chunked prep overwrites k and v in place, which does not change its time).
const wkvN = Number(arg('wkv', '0'));
if (wkvN > 0) {
  const { alloc, copyHtoD } = await import('../src/backend/cuda/memory.js');
  const { wkvRecordBytes } = await import('../src/backend/cuda/model.js');
  const cfg = shapeConfig({ vocab: 256, dim: 768, nLayer: 2, nAttn: 0 });
  const m = CudaModel.fromWeights(cfg, randomWeights(cfg, 2));
  const C = cfg.dim, H = cfg.heads, n = wkvN * C;
  const names = ['y', 'r', 'w', 'a', 'k', 'v', 'kk', 'dv', 'vFirst'] as const;
  const dev = names.map(() => {
    const x = Float32Array.from({ length: n }, () => Math.random() * 2 - 1);
    const d = alloc(m.ctx, x.byteLength, 'wkv bench'); copyHtoD(d.ptr, x); return d;
  });
  const io = Object.fromEntries(names.map((nm, i) => [nm, dev[i].ptr])) as unknown as import('../src/backend/cuda/model.js').WkvIo;
  const st = alloc(m.ctx, H * 4096 * 4, 'state'), rec = alloc(m.ctx, wkvRecordBytes(wkvN, H), 'rec');
  const time = (f: () => void) => { const t: number[] = []; for (let i = 0; i < 6; i++) { m.sync(); const b = performance.now(); f(); m.sync(); if (i) t.push(performance.now() - b); } return median(t); };
  const out: string[] = [];
  out.push(`seq (TPR ${m.wkvThreadsPerRow}) ${time(() => m.tmixWkv(io, 1, st.ptr, wkvN, rec.ptr, false)).toFixed(2)} ms`);
  const layout = m.wkvScanRows;
  for (const R of Object.keys(WKV_SCAN_SHAPES) as WkvScanLayout[]) {
    m.wkvScanRows = R;
    out.push(`chunked R${R} ${time(() => m.tmixWkv(io, 1, st.ptr, wkvN, rec.ptr, true)).toFixed(2)} ms`);
  }
  m.profile = new Map();
  m.wkvScanRows = layout;
  m.tmixWkv(io, 1, st.ptr, wkvN, rec.ptr, true);
  out.push(`split (${layout}): ${[...m.profile].map(([x, t]) => `${x} ${t.toFixed(2)} ms`).join(', ')}`);
  m.profile = undefined;
  console.log(`wkv ${wkvN} tokens, C${C}, one layer, ${m.ctx.info.name}: ${out.join('; ')}`);
  for (const d of [...dev, st, rec]) d.free();
  m.dispose();
}

// --attn N[,N…]: the sparse-attention core alone (RWKV-X 0.22B, profiled launch by launch): time of
// the own-chunk `attention` and the selected-chunk `moba_attn` kernels over all 4 blocks, and the
// TFLOP/s on the FLOPs they must do (4·64 per query·key·head: Q·Kᵀ and P·V).
const attnAt = arg('attn', '').split(',').filter(Boolean).map(Number);
if (attnAt.length) {
  const cfg = shapeConfig({ vocab: 65536, dim: 768, nLayer: 12, nAttn: 4, chunk: 2048, topk: 3 });
  const m = CudaModel.fromWeights(cfg, randomWeights(cfg, 1));
  m.segment = 16384;
  { const s = m.newState(); m.forward(randomTokens(16384, 65536, 9), s, { logits: 'last' }); s.dispose(); }
  // --wg 0,64,128: the kernels to time (0 = mma.sync, 64/128 = the sm_90a wgmma kernels with that many keys per tile)
  const variants = arg('wg', String(m.attnWg)).split(',').filter(Boolean).map(Number);
  for (const n of attnAt) for (const wg of variants) {
    m.attnWg = wg;
    const B = cfg.chunk, sel = cfg.topk - 1;
    let keys = 0;
    for (let t = 0; t < n; t++) keys += (t % B) + 1 + Math.min(sel, Math.floor(t / B)) * B;
    const flops = 4 * 64 * keys * cfg.heads * cfg.nAttn;
    const s = m.newState();
    m.profile = new Map();
    m.forward(randomTokens(n, 65536, 4), s, { logits: 'last' });
    const sum = (f: (k: string) => boolean) => [...m.profile!].filter(([k]) => f(k)).reduce((a, [, v]) => a + v, 0);
    const own = sum((k) => k === 'attention' || k.startsWith('own_attn_wg')), moba = sum((k) => k.startsWith('moba_attn'));
    const other = ['chunk_scores', 'select_chunks', 'moba_count', 'moba_scan', 'moba_scatter', 'moba_merge', 'chunk_means'].reduce((a, k) => a + (m.profile!.get(k) ?? 0), 0);
    m.profile = undefined;
    s.dispose();
    console.log(`attention core (${wg ? `wgmma, ${wg} keys per tile` : 'mma.sync'}) at ${n} tokens: ${(flops / 1e12).toFixed(2)} TFLOP in ${(own + moba).toFixed(1)} ms (own chunk ${own.toFixed(1)}, selected ${moba.toFixed(1)}) = ${(flops / ((own + moba) / 1e3) / 1e12).toFixed(0)} TFLOP/s; selection and merging ${other.toFixed(1)} ms more (${(flops / ((own + moba + other) / 1e3) / 1e12).toFixed(0)} TFLOP/s all in)`);
  }
  m.dispose();
}

for (const name of which) {
  const cfg = shapeConfig({ vocab: 65536, dim: 768, nLayer: 12, nAttn: name === 'rwkvx' ? 4 : 0, chunk: 2048, topk: 3 });
  const t0 = Date.now();
  const m = CudaModel.fromWeights(cfg, randomWeights(cfg, 1));
  m.segment = segment;
  console.log(`${name}: built in ${Date.now() - t0} ms on ${m.ctx.info.name}`);
  // warm-up: compile/load kernels, cuBLAS heuristics, scratch at full size
  { const s = m.newState(); m.forward(randomTokens(16384, 65536, 9), s, { logits: 'last' }); m.forward([1], s, { logits: 'last' }); s.dispose(); }
  if (process.env.RWKVX_PROFILE) {
    const n = Number(process.env.RWKVX_PROFILE);
    for (const [label, len] of [['prefill', n], ['decode', 1]] as const) {
      const s = m.newState();
      if (label === 'decode') m.forward(randomTokens(4096, 65536, 3), s, { logits: 'none' });
      m.profile = new Map();
      const a = performance.now();
      m.forward(randomTokens(len, 65536, 5), s, { logits: 'last' });
      const total = performance.now() - a;
      const list = [...m.profile].sort((x, y) => y[1] - x[1]);
      console.log(`profile ${name} ${label} ${len} tokens: ${total.toFixed(1)} ms (synchronised per launch): ` + list.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', '));
      m.profile = undefined;
      s.dispose();
    }
  }
  for (const n of lengths) {
    const toks = randomTokens(n, 65536, n);
    // --repeat R: the median of R prefills from an empty state (the state of the last one goes on to decoding)
    const times: number[] = [];
    let s = m.newState();
    for (let rep = 0; rep < repeat; rep++) {
      if (rep) { s.dispose(); s = m.newState(); }
      resetPeak();
      m.sync();
      const a = performance.now();
      m.forward(toks, s, { logits: 'last' });
      times.push(performance.now() - a);
    }
    const prefill = median(times);
    let dec: number | null = null;
    if (decodeAt.has(n)) {
      const times: number[] = [];
      for (let i = 0; i < steps; i++) {
        const b = performance.now();
        m.forward([toks[i % n]], s, { logits: 'last' });
        times.push(performance.now() - b);
      }
      dec = median(times);
      const bare: number[] = [];
      for (let i = 0; i < 8; i++) {
        const b = performance.now();
        m.forward([toks[i % n]], s, { logits: 'none' });
        bare.push(performance.now() - b);
      }
      console.log(`decode at ${n}: ${dec.toFixed(3)} ms with the logits copied back, ${median(bare).toFixed(3)} ms without (graph replay + sync)`);
    }
    const row: Row = { model: name === 'rwkvx' ? 'rwkvx RWKV-X 0.22B' : 'rwkvx RWKV-7 0.19B', tokens: n, prefill_ms: prefill, prefill_tok_s: n / (prefill / 1000), decode_ms: dec, peak_gib: peakAllocatedBytes() / 2 ** 30 };
    rows.push(row);
    console.log(JSON.stringify(row));
    s.dispose();
  }
  m.dispose();
}
// --peer: the dense Transformer peer (bench/peer_transformer.py, PyTorch + cuDNN SDPA) on the same
// lengths in the same command; its rows join the table
if (process.argv.includes('--peer')) {
  const { spawnSync } = await import('node:child_process');
  const { mkdtempSync, readFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const out = join(mkdtempSync(join(tmpdir(), 'rwkvx-peer-')), 'peer.json');
  const py = process.env.PYTHON ?? 'python3';
  const r = spawnSync(py, ['bench/peer_transformer.py', '--lengths', lengths.join(','), '--decode', [...decodeAt].join(','), '--steps', String(steps), '--json', out], { stdio: 'inherit' });
  if (r.status !== 0) console.error(`peer benchmark failed (${py} exited with ${r.status ?? r.error?.message}); its rows are missing`);
  else for (const p of JSON.parse(readFileSync(out, 'utf8')) as Row[]) rows.push({ ...p, decode_ms: typeof p.decode_ms === 'number' ? p.decode_ms : null });
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify(rows, null, 1));
console.log('\n| model | tokens | prefill ms | prefill tok/s | decode ms/token | peak GPU GiB |\n|---|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(`| ${r.model} | ${r.tokens} | ${r.prefill_ms.toFixed(1)} | ${Math.round(r.prefill_tok_s)} | ${r.decode_ms === null ? '' : r.decode_ms.toFixed(2)} | ${r.peak_gib.toFixed(2)} |`);
