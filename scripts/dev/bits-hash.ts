/**
 * Development (device): a SHA-256 of the last-token logits and final WKV states of a random RWKV-X 0.22B
 * prefill, so two kernel variants selected by environment (one process each) can be compared bit for bit.
 *   RWKVX_…=… node --import tsx scripts/dev/bits-hash.ts [tokens=32768]
 */
import { createHash } from 'node:crypto';
import { shapeConfig, randomWeights } from '../../src/model/random.js';
import { CudaModel } from '../../src/backend/cuda/model.js';
import { randomTokens } from '../../bench/util.js';

const T = Number(process.argv[2] ?? 32768);
const cfg = shapeConfig({ vocab: 65536, dim: 768, nLayer: 12, nAttn: 4, chunk: 2048, topk: 3 });
const m = CudaModel.fromWeights(cfg, randomWeights(cfg, 1));
m.segment = 16384;
const st = m.newState();
const logits = m.forward(randomTokens(T, cfg.vocab, 4), st, { logits: 'last' });
const h = createHash('sha256').update(new Uint8Array(logits.buffer));
for (const r of m.downloadState(st).rwkv) h.update(new Uint8Array(r.wkv.buffer, r.wkv.byteOffset, r.wkv.byteLength));
console.log(`bits T=${T}: ${h.digest('hex').slice(0, 16)} (logit[0] ${logits[0]})`);
m.dispose();
