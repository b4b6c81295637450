/**
 * Times the chunked WKV-7 training kernels one by one (kernels/wkv7-train.cu) at the benchmark shapes, for
 * state-row counts per scan/chain block given on the command line: a development aid for choosing
 * WKT_ROWS and for kernel work, not a benchmark of record (that is bench/cuda-train.ts).
 *   node --import tsx scripts/dev/wkt-bench.ts [rows…]   (default 8 16 32)
 */
import { CudaContext } from '../../src/backend/cuda/driver.js';
import { alloc, zero } from '../../src/backend/cuda/memory.js';
import { Wkv7ChunkedTrain } from '../../src/backend/cuda/train/wkv7-chunked.js';

const rowsList = process.argv.slice(2).map(Number);
const ctx = CudaContext.get(0);
const C = 768, H = C / 64;
for (const [T, Bn] of [[4096, 16], [16384, 4]]) {
  const n = Bn * T * C;
  const bufs: { free(): void }[] = [];
  const z = (bytes: number) => { const b = alloc(ctx, bytes, 'bench'); zero(ctx, b.ptr, bytes); bufs.push(b); return b.ptr; };
  const [y, r, om, kt, v, kh, a, dy] = Array.from({ length: 8 }, () => z(n * 4));
  const grads = Array.from({ length: 6 }, () => z(n * 4));
  const ckpt = z(Wkv7ChunkedTrain.stateBytes(Bn, T, H)), gend = z(Wkv7ChunkedTrain.stateBytes(Bn, T, H)), rec = z(Wkv7ChunkedTrain.recBytes(Bn, T, H));
  for (const rows of rowsList.length ? rowsList : [8, 16, 32]) {
    const times = new Map<string, number>();
    const timed = (tag: string, f: () => void) => { ctx.sync(); const t = performance.now(); f(); ctx.sync(); times.set(tag, (times.get(tag) ?? 0) + performance.now() - t); };
    const k = new Wkv7ChunkedTrain(ctx, timed, [`-DWKT_ROWS=${rows}`]);
    for (let it = 0; it < 4; it++) {
      if (it === 1) times.clear();
      k.forward(y, ckpt, rec, r, om, kt, v, kh, a, Bn, T, C);
      k.backward(grads[0], grads[1], grads[2], grads[3], grads[4], grads[5], dy, r, om, kt, v, kh, a, ckpt, rec, gend, Bn, T, C);
    }
    console.log(`T ${T} × ${Bn}, rows ${rows}: ${[...times].map(([t, ms]) => `${t} ${(ms / 3).toFixed(2)} ms`).join(', ')}`);
  }
  for (const b of bufs) b.free();
}
