/**
 * Mean next-token loss of several models on the same fixed windows of a binidx dataset (the last
 * windows of the data, identical for every model), split into the first and second half of each window
 * so the effect of long context shows. Used by docs/training-run.md.
 *   node --import tsx scripts/eval-loss.ts DATA_PREFIX CTX WINDOWS MODEL...
 */
import { BinIdxReader } from '../src/io/binidx.js';
import { Model } from '../src/model/model.js';
import { shutdownPool } from '../src/backend/cpu/matmul.js';

const [prefix, ctxArg, nArg, ...models] = process.argv.slice(2);
const ctx = Number(ctxArg), n = Number(nArg);
const data = new BinIdxReader(prefix);
const windows = Array.from({ length: n }, (_, i) => Array.from(data.read(data.tokens - (i + 1) * (ctx + 1), ctx + 1)));
console.log(`| model | loss, tokens 1–${ctx / 2} | loss, tokens ${ctx / 2 + 1}–${ctx} | all |`);
console.log('|---|---:|---:|---:|');
for (const path of models) {
  const m = Model.load(path);
  let a = 0, b = 0;
  for (const w of windows) {
    const logits = m.forward(w.slice(0, ctx), m.newState());
    const V = m.cfg.vocab;
    for (let t = 0; t < ctx; t++) {
      let mx = -Infinity;
      for (let i = 0; i < V; i++) mx = Math.max(mx, logits[t * V + i]);
      let s = 0;
      for (let i = 0; i < V; i++) s += Math.exp(logits[t * V + i] - mx);
      const ce = mx + Math.log(s) - logits[t * V + w[t + 1]];
      if (t < ctx / 2) a += ce; else b += ce;
    }
  }
  const half = (n * ctx) / 2;
  console.log(`| ${path} | ${(a / half).toFixed(4)} | ${(b / half).toFixed(4)} | ${((a + b) / (2 * half)).toFixed(4)} |`);
}
shutdownPool();
