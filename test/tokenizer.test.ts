import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { StreamDecoder, WorldTokenizer } from '../src/tokenizer/index.js';
import { parsePythonLiteral } from '../src/tokenizer/pyliteral.js';
import { UserError } from '../src/util/errors.js';
import { rng } from './helpers/numeric.js';

const tok = WorldTokenizer.load();
const fixtures = JSON.parse(readFileSync(new URL('./fixtures/tokenizer.json', import.meta.url), 'utf8')) as {
  cases: { text: string; ids: number[] }[];
};
const utf8 = (s: string) => new TextEncoder().encode(s);

/** Well-formed random text mixing ASCII, Latin, CJK, emoji and pieces of the fixtures. */
function randomText(rand: () => number, length: number): string {
  const parts: string[] = [];
  for (let i = 0; i < length; i++) {
    const r = rand();
    let cp: number;
    if (r < 0.4) cp = 0x20 + Math.floor(rand() * 0x5f);
    else if (r < 0.5) cp = [0x0a, 0x09, 0x0d, 0x20][Math.floor(rand() * 4)]!;
    else if (r < 0.6) cp = 0x80 + Math.floor(rand() * 0x780);
    else if (r < 0.75) cp = 0x4e00 + Math.floor(rand() * 0x5200);
    else if (r < 0.8) cp = 0x1f300 + Math.floor(rand() * 0x300);
    else if (r < 0.85) cp = Math.floor(rand() * 0x110000);
    else {
      const c = fixtures.cases[Math.floor(rand() * fixtures.cases.length)]!.text;
      const a = Math.floor(rand() * c.length);
      parts.push(wellFormed(c.slice(a, a + 1 + Math.floor(rand() * 20))));
      continue;
    }
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd; // keep the string well-formed
    parts.push(String.fromCodePoint(cp));
  }
  return parts.join('');
}

/** Replaces unpaired surrogates with U+FFFD, as TextEncoder does. */
function wellFormed(s: string): string {
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
}

function isWellFormed(s: string): boolean {
  return wellFormed(s) === s;
}

/** Independent greedy longest match: try every length from the longest down, with a Map lookup. */
function makeReference(): (bytes: Uint8Array) => number[] {
  const byKey = new Map<string, number>();
  for (let id = 1; id < tok.vocabSize; id++) {
    let b: Uint8Array;
    try {
      b = tok.tokenBytes(id);
    } catch {
      continue;
    }
    byKey.set(String.fromCharCode(...b), id);
  }
  return (bytes) => {
    const s = String.fromCharCode(...bytes);
    const out: number[] = [];
    for (let p = 0; p < s.length; ) {
      for (let l = Math.min(128, s.length - p); l >= 1; l--) {
        const id = byKey.get(s.substr(p, l));
        if (id !== undefined) {
          out.push(id);
          p += l;
          break;
        }
      }
    }
    return out;
  };
}

describe('WorldTokenizer fixtures', () => {
  for (const [i, c] of fixtures.cases.entries()) {
    it(`case ${i}: ${JSON.stringify(c.text).slice(0, 40)}`, () => {
      assert.deepEqual(tok.encode(c.text), c.ids);
      assert.deepEqual(tok.encodeBytes(utf8(c.text)), c.ids);
      assert.equal(tok.decode(c.ids), c.text);
      assert.deepEqual(tok.decodeBytes(c.ids), utf8(c.text));
    });
  }
});

describe('WorldTokenizer encoding', () => {
  it('the empty string encodes to no ids, and no ids decode to the empty string', () => {
    assert.deepEqual(tok.encode(''), []);
    assert.deepEqual(tok.encodeBytes(new Uint8Array(0)), []);
    assert.equal(tok.decode([]), '');
  });

  it('has the model vocabulary size and single bytes as ids 1..256', () => {
    assert.equal(tok.vocabSize, 65536);
    for (let b = 0; b < 256; b++) assert.deepEqual(tok.tokenBytes(b + 1), Uint8Array.of(b));
    assert.deepEqual(tok.tokenBytes(0), new Uint8Array(0));
  });

  it('encodes every vocabulary entry, on its own, to exactly its id', () => {
    let entries = 0;
    for (let id = 1; id < tok.vocabSize; id++) {
      let b: Uint8Array;
      try {
        b = tok.tokenBytes(id);
      } catch {
        continue;
      }
      entries++;
      const ids = tok.encodeBytes(b);
      if (ids.length !== 1 || ids[0] !== id) assert.fail(`entry ${id} encodes to ${JSON.stringify(ids)}`);
    }
    assert.equal(entries, 65529);
  });

  it('agrees with a naive longest-match reference on random text and random bytes', () => {
    const reference = makeReference();
    const rand = rng(7);
    for (let k = 0; k < 60; k++) {
      const text = randomText(rand, 1 + Math.floor(rand() * 300));
      assert.deepEqual(tok.encode(text), reference(utf8(text)), JSON.stringify(text));
    }
    for (let k = 0; k < 60; k++) {
      const bytes = Uint8Array.from({ length: 1 + Math.floor(rand() * 300) }, () =>
        // Skew towards ASCII so that long matches happen, but keep invalid UTF-8 in the mix.
        rand() < 0.7 ? 0x20 + Math.floor(rand() * 0x5f) : Math.floor(rand() * 256),
      );
      assert.deepEqual(tok.encodeBytes(bytes), reference(bytes));
    }
  });

  it('round-trips random well-formed Unicode text', () => {
    const rand = rng(42);
    for (let k = 0; k < 300; k++) {
      const text = randomText(rand, Math.floor(rand() * 200));
      assert.equal(tok.decode(tok.encode(text)), text, JSON.stringify(text));
    }
  });

  it('encodes long text in pieces exactly as in one go, across surrogate pairs and long matches', () => {
    const rand = rng(3);
    const pieces = ['-'.repeat(200), ' '.repeat(150), '😀', 'é', '你好', 'hello world ', '\n\n'];
    const parts: string[] = [];
    let n = 0;
    while (n < 300_000) {
      const p = pieces[Math.floor(rand() * pieces.length)]!;
      parts.push(p);
      n += p.length;
    }
    const long = parts.join('');
    const ids = tok.encode(long);
    assert.deepEqual(ids, tok.encodeBytes(utf8(long)));
    assert.equal(tok.decode(ids), long);
    // A surrogate pair straddling the 65536-unit piece boundary must stay one character.
    const straddle = 'a'.repeat(65535) + '😀' + 'b'.repeat(10);
    assert.deepEqual(tok.encode(straddle), tok.encodeBytes(utf8(straddle)));
    assert.equal(tok.decode(tok.encode(straddle)), straddle);
  });

  it('encodes lone surrogates as U+FFFD, as TextEncoder does', () => {
    // A lone surrogate has no UTF-8 form, so it cannot round-trip; this is documented behaviour.
    for (const s of ['a\uD800b', '\uDC00', 'x\uD83D']) {
      const fixed = wellFormed(s);
      assert.notEqual(fixed, s);
      assert.deepEqual(tok.encode(s), tok.encode(fixed));
      assert.equal(tok.decode(tok.encode(s)), fixed);
    }
  });

  it('keeps a leading byte order mark', () => {
    const text = '\uFEFFhello';
    assert.equal(tok.decode(tok.encode(text)), text);
    const dec = new StreamDecoder(tok);
    assert.equal(tok.encode(text).map((id) => dec.push(id)).join('') + dec.flush(), text);
  });

  it('decodes id 0 (end of document) to nothing', () => {
    const hi = tok.encode('hi');
    assert.equal(tok.decode([0, ...hi, 0]), 'hi');
    assert.deepEqual(tok.decodeBytes([0]), new Uint8Array(0));
  });

  it('decodes typed arrays of ids', () => {
    const c = fixtures.cases[4]!;
    assert.equal(tok.decode(Int32Array.from(c.ids)), c.text);
  });

  it('returns a copy from tokenBytes', () => {
    const b = tok.tokenBytes(300);
    const before = Array.from(b);
    b.fill(0);
    assert.deepEqual(Array.from(tok.tokenBytes(300)), before);
  });

  it('rejects ids outside [0, 65536) and ids with no entry', () => {
    for (const id of [-1, 65536, 1e9, 1.5, NaN, Infinity]) {
      assert.throws(() => tok.decode([id]), (e: unknown) => e instanceof UserError && /out of range/.test(e.message));
      assert.throws(() => tok.decodeBytes([1, id]), UserError);
      assert.throws(() => tok.tokenBytes(id), UserError);
    }
    // The file defines ids 1..65529; the model's remaining rows have no text.
    for (const id of [65530, 65535]) {
      assert.throws(
        () => tok.decode([id]),
        (e: unknown) => e instanceof UserError && /not in the vocabulary/.test(e.message),
      );
    }
  });

  it('caches the tokenizer per path', () => {
    assert.equal(WorldTokenizer.load(), tok);
    const path = new URL('../data/rwkv_vocab_v20230424.txt', import.meta.url).pathname;
    assert.equal(WorldTokenizer.load(path), tok);
  });
});

describe('StreamDecoder', () => {
  const byteIds = (s: string) => Array.from(utf8(s), (b) => b + 1);

  it('holds back a character split over byte tokens until it is complete', () => {
    const emoji = '👩‍👩‍👧';
    const dec = new StreamDecoder(tok);
    const outs = byteIds(emoji).map((id) => dec.push(id));
    for (const o of outs) assert.ok(isWellFormed(o) && !o.includes('\uFFFD'), `partial output ${JSON.stringify(o)}`);
    // 👩 is 4 bytes: nothing for the first 3, the whole character on the 4th.
    assert.deepEqual(outs.slice(0, 4), ['', '', '', '👩']);
    assert.equal(outs.join('') + dec.flush(), emoji);
  });

  it('reproduces the exact text when tokens and byte tokens are mixed at random', () => {
    const rand = rng(11);
    for (let k = 0; k < 100; k++) {
      const text = randomText(rand, 1 + Math.floor(rand() * 80));
      // Cut the text at random code points; encode some pieces normally and others byte by byte.
      const cps = [...text];
      const ids: number[] = [];
      for (let i = 0; i < cps.length; ) {
        const j = i + 1 + Math.floor(rand() * 5);
        const piece = cps.slice(i, j).join('');
        ids.push(...(rand() < 0.5 ? tok.encode(piece) : byteIds(piece)));
        i = j;
      }
      const dec = new StreamDecoder(tok);
      let out = '';
      for (const id of ids) {
        const o = dec.push(id);
        out += o;
        // The text may contain U+FFFD itself, so check that the output so far is a prefix of it:
        // a partial character would have come out as U+FFFD or a lone surrogate where it does not.
        assert.ok(isWellFormed(o) && text.startsWith(out), `partial output ${JSON.stringify(o)}`);
      }
      out += dec.flush();
      assert.equal(out, text);
    }
  });

  it('streams the fixtures token by token to their text', () => {
    for (const c of fixtures.cases) {
      const dec = new StreamDecoder(tok);
      assert.equal(c.ids.map((id) => dec.push(id)).join('') + dec.flush(), c.text);
    }
  });

  it('flushes an incomplete character as TextDecoder does, then starts afresh', () => {
    const bytes = utf8('ok😀').subarray(0, 4); // "ok" and the first two bytes of the emoji
    const dec = new StreamDecoder(tok);
    const streamed = Array.from(bytes, (b) => dec.push(b + 1)).join('') + dec.flush();
    assert.equal(streamed, new TextDecoder().decode(bytes));
    assert.ok(streamed.endsWith('\uFFFD'));
    assert.equal(dec.push(tok.encode('x')[0]!) + dec.flush(), 'x');
  });

  it('rejects bad ids with UserError', () => {
    const dec = new StreamDecoder(tok);
    assert.throws(() => dec.push(70000), UserError);
    assert.throws(() => dec.push(65531), UserError);
    assert.equal(dec.push(0), '');
  });
});

describe('vocabulary file parsing', () => {
  it('decodes Python literal escapes', () => {
    const cases: [string, number[]][] = [
      ["'a b'", [0x61, 0x20, 0x62]],
      ["'\\n\\t\\r\\\\\\'\\\"'", [0x0a, 0x09, 0x0d, 0x5c, 0x27, 0x22]],
      ["'\\x00\\x7f'", [0x00, 0x7f]],
      ["'\\xe9'", [0xc3, 0xa9]], // str: U+00E9, UTF-8 encoded
      ["b'\\xe9'", [0xe9]], // bytes: the byte itself
      ["'\\u4e2d'", [0xe4, 0xb8, 0xad]],
      ["'\\U0001F600'", [0xf0, 0x9f, 0x98, 0x80]],
      ["'\\101\\0'", [0x41, 0x00]], // octal
      ["b'\\u00e9'", [0x5c, 0x75, 0x30, 0x30, 0x65, 0x39]], // no \u escape in bytes literals
      ["'\\q'", [0x5c, 0x71]], // unknown escapes keep their backslash
      ['"it\'s"', [0x69, 0x74, 0x27, 0x73]],
      ["'中'", [0xe4, 0xb8, 0xad]],
    ];
    for (const [lit, bytes] of cases) assert.deepEqual(Array.from(parsePythonLiteral(lit)), bytes, lit);
    for (const bad of ["'abc", "b'\u00e9'", "'\\x4'", "'\\ud800'", 'abc', "'a'b'"]) {
      assert.throws(() => parsePythonLiteral(bad), Error, bad);
    }
  });

  it('fails loudly, naming the line, on a malformed vocabulary', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rwkvx-vocab-'));
    try {
      const good = Array.from({ length: 256 }, (_, b) => `${b + 1} b'\\x${b.toString(16).padStart(2, '0')}' 1`);
      const bad: [string, RegExp][] = [
        ["257 'ab' 3", /:257: .*2 bytes but the line says 3/],
        ["257 'ab 2", /:257: bad literal/],
        ["257 'ab' 2\n257 'cd' 2", /:258: token id 257 appears twice/],
        ["257 'ab' 2\n258 'ab' 2", /ids 257 and 258 have the same bytes/],
        ["70000 'ab' 2", /outside \[1, 65536\)/],
        ["x 'ab' 2", /must be integers/],
      ];
      for (const [extra, message] of bad) {
        const path = join(dir, `v${bad.findIndex((b) => b[0] === extra)}.txt`);
        writeFileSync(path, [...good, extra].join('\n') + '\n');
        assert.throws(
          () => WorldTokenizer.load(path),
          (e: unknown) => e instanceof UserError && message.test(e.message),
          extra,
        );
      }
      const missing = join(dir, 'missing-bytes.txt');
      writeFileSync(missing, good.slice(1).join('\n'));
      assert.throws(() => WorldTokenizer.load(missing), /single-byte token id 1 is missing/);
      assert.throws(() => WorldTokenizer.load(join(dir, 'nope.txt')), UserError);

      const tiny = join(dir, 'tiny.txt');
      writeFileSync(tiny, [...good, "257 'ab' 2", "258 'abc' 3"].join('\n') + '\n');
      const t = WorldTokenizer.load(tiny);
      assert.deepEqual(t.encode('abcab a'), [258, 257, 33, 98]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
