/**
 * Development (device): the real RWKV-X 0.22B shape (random weights), a long prefill with the wavefront
 * against the same segments one after the other — last-token logits and the final WKV states must be
 * bit-identical (the test suite checks this on a small model; this is the shape the benchmark times).
 * `big`: the RWKV-X 3.6B shape (L32 C2560 + 8 attention blocks, weights generated on the GPU).
 *   node --import tsx scripts/dev/wave-check.ts [tokens=131072] [wavefront=4] [big]
 */
import { shapeConfig, randomWeights } from '../../src/model/random.js';
import { CudaModel } from '../../src/backend/cuda/model.js';
import { randomTokens } from '../../bench/util.js';

const T = Number(process.argv[2] ?? 131072), K = Number(process.argv[3] ?? 4);
const big = process.argv[4] === 'big';
const cfg = big ? shapeConfig({ vocab: 65536, dim: 2560, nLayer: 32, nAttn: 8, chunk: 2048, topk: 3 })
  : shapeConfig({ vocab: 65536, dim: 768, nLayer: 12, nAttn: 4, chunk: 2048, topk: 3 });
const m = big ? CudaModel.random(cfg, 1) : CudaModel.fromWeights(cfg, randomWeights(cfg, 1));
m.segment = 16384;
const ids = randomTokens(T, cfg.vocab, 4);
const run = (k: number) => {
  m.wavefront = k;
  const st = m.newState();
  const t0 = performance.now();
  const logits = m.forward(ids, st, { logits: 'last' });
  const ms = performance.now() - t0;
  const back = m.downloadState(st);
  st.dispose();
  return { logits, ms, wkv: back.rwkv.map((r) => r.wkv) };
};
const serial = run(1), wave = run(K);
let diff = 0, states = 0;
for (let i = 0; i < serial.logits.length; i++) if (serial.logits[i] !== wave.logits[i]) diff++;
serial.wkv.forEach((s, l) => { for (let i = 0; i < s.length; i++) if (s[i] !== wave.wkv[l][i]) { states++; break; } });
console.log(`wave-check ${big ? '3.6B' : '0.22B'} T=${T} wavefront ${K}: serial ${serial.ms.toFixed(1)} ms, wavefront ${wave.ms.toFixed(1)} ms; ` +
  `logits differing ${diff}/${serial.logits.length}, WKV states differing ${states}/${serial.wkv.length}`);
m.dispose();
process.exit(diff || states ? 1 : 0);
