import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fail } from '../util/errors.js';
import { IdBuffer } from './id-buffer.js';
import { ByteTrie } from './trie.js';
import { loadVocab, MAX_TOKEN_BYTES, MODEL_VOCAB_SIZE, type Vocab } from './vocab.js';

export const VOCAB_FILE = 'rwkv_vocab_v20230424.txt';

/** UTF-16 units encoded per step; 3 bytes per unit is the UTF-8 worst case, so a step always fits. */
const CHUNK_UNITS = 1 << 16;
const BUFFER_BYTES = MAX_TOKEN_BYTES + 3 * CHUNK_UNITS;
/** Id buffers that grew past this (a huge text) are dropped after use rather than kept forever. */
const KEEP_IDS = 1 << 20;

const cache = new Map<string, WorldTokenizer>();

/**
 * Walks up from this module's directory: it runs from src/tokenizer under tsx and from
 * dist/src/tokenizer after tsc, and the data directory sits at the package root in both cases.
 */
export function findDefaultVocab(): string {
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; ) {
    const candidate = join(dir, 'data', VOCAB_FILE);
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) fail(`cannot find data/${VOCAB_FILE} in ${start} or any directory above it`);
    dir = parent;
  }
}

/** The RWKV World tokenizer: greedy longest match over UTF-8 bytes. */
export class WorldTokenizer {
  readonly vocabSize = MODEL_VOCAB_SIZE;
  private readonly trie: ByteTrie;
  private readonly encoder = new TextEncoder();
  // ignoreBOM keeps a leading U+FEFF in the text instead of silently dropping it.
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  private buffer: Uint8Array | undefined;
  private idBuffer: IdBuffer | undefined;

  private constructor(private readonly vocab: Vocab) {
    this.trie = new ByteTrie(vocab);
  }

  /** Loads (once per resolved path) the vocabulary; without a path, the copy shipped in data/. */
  static load(vocabPath?: string): WorldTokenizer {
    const path = resolve(vocabPath ?? findDefaultVocab());
    let tok = cache.get(path);
    if (!tok) {
      tok = new WorldTokenizer(loadVocab(path));
      cache.set(path, tok);
    }
    return tok;
  }

  /**
   * Lone surrogates cannot be UTF-8 encoded; like TextEncoder, they become U+FFFD, so decode(encode(s))
   * equals s only for well-formed strings.
   */
  encode(text: string): number[] {
    if (text.length === 0) return [];
    const out = this.takeIdBuffer();
    const buf = (this.buffer ??= new Uint8Array(BUFFER_BYTES));
    // Long text goes through the buffer in pieces. A match never reads more than MAX_TOKEN_BYTES from
    // its start, so positions that far from the end of a piece are safe to tokenize now; the rest is
    // carried over to the front of the buffer and continued with the next piece.
    let carried = 0;
    let i = 0;
    while (i < text.length) {
      let j = Math.min(text.length, i + CHUNK_UNITS);
      if (j < text.length && isHighSurrogate(text.charCodeAt(j - 1))) j--; // keep surrogate pairs whole
      const piece = i === 0 && j === text.length ? text : text.substring(i, j);
      const end = carried + this.encoder.encodeInto(piece, buf.subarray(carried)).written;
      i = j;
      const stop = i === text.length ? end : end - (MAX_TOKEN_BYTES - 1);
      const p = this.trie.tokenize(buf, 0, stop, end, out);
      buf.copyWithin(0, p, end);
      carried = end - p;
    }
    return this.release(out);
  }

  encodeBytes(bytes: Uint8Array): number[] {
    const out = this.takeIdBuffer();
    this.trie.tokenize(bytes, 0, bytes.length, bytes.length, out);
    return this.release(out);
  }

  private takeIdBuffer(): IdBuffer {
    const ids = (this.idBuffer ??= new IdBuffer());
    ids.length = 0;
    return ids;
  }

  private release(ids: IdBuffer): number[] {
    const out = ids.toArray();
    if (ids.ids.length > KEEP_IDS) this.idBuffer = undefined;
    return out;
  }

  /** Invalid UTF-8 (e.g. a multi-byte character cut off at the end) becomes U+FFFD. */
  decode(ids: ArrayLike<number>): string {
    return this.decoder.decode(this.decodeBytes(ids));
  }

  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    const { bytes, offset, length } = this.vocab;
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      // id >>> 0 !== id catches negatives, fractions, NaN and infinities in one compare.
      if (id >>> 0 !== id || id >= MODEL_VOCAB_SIZE || (length[id] === 0 && id !== 0)) this.check(id);
      total += length[id]!;
    }
    const out = new Uint8Array(total);
    let pos = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      // Tokens are short, so a plain loop beats creating a subarray view per token.
      for (let k = offset[id]!, e = k + length[id]!; k < e; k++) out[pos++] = bytes[k]!;
    }
    return out;
  }

  /** A copy of the token's bytes (empty for id 0). */
  tokenBytes(id: number): Uint8Array {
    const { bytes, offset, length } = this.vocab;
    this.check(id);
    return bytes.slice(offset[id]!, offset[id]! + length[id]!);
  }

  /** Returns id if it may be decoded, else throws a UserError saying why. */
  private check(id: number): number {
    if (!Number.isInteger(id) || id < 0 || id >= MODEL_VOCAB_SIZE) {
      fail(`token id ${id} is out of range [0, ${MODEL_VOCAB_SIZE})`);
    }
    if (id !== 0 && this.vocab.length[id] === 0) fail(`token id ${id} is not in the vocabulary`);
    return id;
  }
}

function isHighSurrogate(unit: number): boolean {
  return unit >= 0xd800 && unit <= 0xdbff;
}
