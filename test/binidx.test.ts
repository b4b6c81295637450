/** binidx datasets: the Megatron layout, round trips, the magic-prime sampler, `rwkvx data prepare`. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BinIdxReader, BinIdxWriter, magicPrime, sampleOffset } from '../src/io/binidx.js';
import { WorldTokenizer } from '../src/tokenizer/index.js';
import { rwkvx, expectUserError } from './helpers/cli.js';

const dir = mkdtempSync(join(tmpdir(), 'rwkvx-binidx-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('writer produces the Megatron MMapIndexedDataset layout; reader reads it back', () => {
  const docs = [[5, 6, 7], [], [65535, 1]];
  const w = new BinIdxWriter(join(dir, 'd'));
  for (const d of docs) w.addDocument(d);
  w.finish();
  const idx = readFileSync(join(dir, 'd.idx'));
  assert.equal(idx.subarray(0, 9).toString('latin1'), 'MMIDIDX\x00\x00');
  assert.equal(idx.readBigUInt64LE(9), 1n);
  assert.equal(idx.readUInt8(17), 8);
  assert.equal(idx.readBigUInt64LE(18), 3n);
  assert.equal(idx.readBigUInt64LE(26), 4n);
  assert.deepEqual([0, 1, 2].map((i) => idx.readInt32LE(34 + 4 * i)), [4, 1, 3]);
  assert.deepEqual([0, 1, 2].map((i) => idx.readBigInt64LE(46 + 8 * i)), [0n, 8n, 10n]);
  assert.equal(idx.length, 34 + 3 * 4 + 3 * 8 + 4 * 8);
  const bin = new Uint16Array(new Uint8Array(readFileSync(join(dir, 'd.bin'))).buffer);
  assert.deepEqual(Array.from(bin), [5, 6, 7, 0, 0, 65535, 1, 0]);
  const r = new BinIdxReader(join(dir, 'd'));
  assert.equal(r.tokens, 8);
  assert.equal(r.documents, 3);
  assert.deepEqual(Array.from(r.read(2, 4)), [7, 0, 0, 65535]);
  assert.throws(() => r.read(6, 5), /outside the dataset/);
  r.close();
});

test('magic prime and the sampling permutation', () => {
  const p = magicPrime(1_000_000, 512);
  assert.equal(p % 3, 2);
  assert.ok(p < 1_000_000 / 512 - 1);
  for (let d = 2; d * d <= p; d++) assert.notEqual(p % d, 0);
  for (let q = p + 1; q < 1_000_000 / 512 - 1; q++) {
    const prime = [...Array(Math.floor(Math.sqrt(q)) + 1).keys()].slice(2).every((d) => q % d !== 0);
    assert.ok(!(prime && q % 3 === 2), `${q} is a larger magic prime`);
  }
  const seen = new Set<number>();
  for (let i = 0; i < p; i++) {
    const off = sampleOffset(i, p, 512);
    assert.equal(off % 512, 0);
    assert.ok(off / 512 < p);
    seen.add(off);
  }
  assert.equal(seen.size, p, 'every window is visited once per p samples');
  assert.equal(sampleOffset(10, p, 512), sampleOffset(10, p, 512));
  assert.throws(() => magicPrime(1000, 512), /too small/);
});

test('rwkvx data prepare: JSONL and text files → binidx; bad input refused', () => {
  const jsonl = join(dir, 'a.jsonl');
  writeFileSync(jsonl, [{ text: 'Hello world.' }, { text: '第二个文档' }].map((d) => JSON.stringify(d)).join('\n') + '\n');
  const txt = join(dir, 'b.txt');
  writeFileSync(txt, 'A plain text document.\nSecond line.');
  const out = join(dir, 'corpus');
  const r = rwkvx(['data', 'prepare', '--input', jsonl, txt, '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /3 documents/);
  const tok = WorldTokenizer.load();
  const want = ['Hello world.', '第二个文档', 'A plain text document.\nSecond line.'].flatMap((t) => [...tok.encode(t), 0]);
  const rd = new BinIdxReader(out);
  assert.deepEqual(Array.from(rd.read(0, rd.tokens)), want);
  rd.close();
  const bad = join(dir, 'bad.jsonl');
  writeFileSync(bad, '{"text": "ok"}\n{"txt": "no"}\n');
  expectUserError(rwkvx(['data', 'prepare', '--input', bad, '--out', join(dir, 'bad')]), /bad\.jsonl:2: no string field "text"/);
  assert.ok(!existsSync(join(dir, 'bad.bin')) && !existsSync(join(dir, 'bad.idx')));
  expectUserError(rwkvx(['data', 'prepare', '--input', join(dir, 'missing.txt'), '--out', join(dir, 'm')]), /not found/);
  writeFileSync(join(dir, 'x.idx'), 'garbage');
  assert.throws(() => new BinIdxReader(join(dir, 'x')), /bad magic/);
});
