import type { Command } from 'commander';
import { readFileSync, statSync } from 'node:fs';
import { WorldTokenizer } from '../../tokenizer/index.js';
import { BinIdxWriter } from '../../io/binidx.js';
import { fail } from '../../util/errors.js';
import { Progress } from '../progress.js';

/** Yields the documents of one input: JSONL lines with a "text" field, or a whole text file. */
function* documents(path: string): Generator<string> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    fail(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!/\.jsonl$/i.test(path)) {
    if (text.length > 0) yield text;
    return;
  }
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    let v: unknown;
    try { v = JSON.parse(line); } catch { fail(`${path}:${i + 1}: not valid JSON`); }
    const t = (v as { text?: unknown } | null)?.text;
    if (typeof t !== 'string') fail(`${path}:${i + 1}: no string field "text"`);
    yield t;
  }
}

/** `rwkvx data prepare`: text / JSONL → binidx with the World tokenizer. */
export function register(program: Command): void {
  const data = program.command('data').description('training data tools');
  data
    .command('prepare')
    .description('tokenize text files / JSONL ({"text": …} per line) into binidx (PREFIX.bin + PREFIX.idx)')
    .requiredOption('--input <files...>', 'input files: .jsonl (one document per line) or text (one document per file)')
    .requiredOption('--out <prefix>', 'output prefix (writes PREFIX.bin and PREFIX.idx atomically)')
    .action((o: { input: string[]; out: string }) => {
      const tok = WorldTokenizer.load();
      let totalBytes = 0;
      for (const f of o.input) {
        try { totalBytes += statSync(f).size; } catch { fail(`input file not found: ${f}`); }
      }
      const bar = new Progress('tokenizing', totalBytes);
      const w = new BinIdxWriter(o.out);
      try {
        for (const f of o.input) {
          for (const doc of documents(f)) {
            w.addDocument(tok.encode(doc));
            bar.tick(Buffer.byteLength(doc));
          }
        }
        if (w.documentCount === 0) fail('no documents found in the input');
        w.finish();
      } catch (e) {
        w.abort();
        throw e;
      }
      bar.done();
      console.log(`${o.out}.bin/.idx: ${w.documentCount} documents, ${w.tokenCount} tokens`);
    });
}
