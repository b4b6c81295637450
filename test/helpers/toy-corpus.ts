/** A learnable binidx corpus over a 32-token vocabulary for trainer tests: counting patterns, 60 documents. */
import { BinIdxWriter } from '../../src/io/binidx.js';

export function writeToyCorpus(prefix: string, docLength = 40): string {
  const w = new BinIdxWriter(prefix);
  for (let d = 0; d < 60; d++) {
    const doc: number[] = [];
    const start = 1 + (d % 7), step = 1 + (d % 3);
    for (let i = 0; i < docLength; i++) doc.push(1 + ((start + i * step) % 31));
    w.addDocument(doc);
  }
  w.finish();
  return prefix;
}
