import { readFileSync } from 'node:fs';
import { fail } from '../util/errors.js';
import { LiteralError, parsePythonLiteral } from './pyliteral.js';

/** Rows of the model's embedding and head; the file defines fewer, the rest never occur in text. */
export const MODEL_VOCAB_SIZE = 65536;
/** The World vocabulary's longest entry is 128 bytes; the encoder relies on this bound. */
export const MAX_TOKEN_BYTES = 128;

/** Every token's bytes in one flat array, so lookups never allocate. */
export interface Vocab {
  readonly bytes: Uint8Array;
  /** Start of id's bytes in `bytes`, indexed by id (MODEL_VOCAB_SIZE entries). */
  readonly offset: Int32Array;
  /** Byte length of id; 0 means the id has no entry (id 0 and unused ids). */
  readonly length: Int32Array;
  /** Number of entries in the file. */
  readonly count: number;
}

/**
 * Reads `id literal bytelength` lines. Anything unexpected (bad syntax, a byte length that disagrees
 * with the literal, a repeated id or repeated bytes, single-byte ids that are not byte+1) is a
 * UserError naming the line: a subtly wrong vocabulary would silently produce wrong ids.
 */
export function loadVocab(path: string): Vocab {
  let raw: Uint8Array;
  try {
    const buf = readFileSync(path);
    // A plain Uint8Array view: Buffer's own methods (subarray in particular) are slower per call.
    raw = new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
  } catch (e) {
    fail(`cannot read tokenizer vocabulary ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    fail(`tokenizer vocabulary ${path} is not valid UTF-8`);
  }
  return parseVocab(raw, path);
}

const SPACE = 0x20;
const NEWLINE = 0x0a;
const CR = 0x0d;
const BACKSLASH = 0x5c;
const QUOTE = 0x27;
const DQUOTE = 0x22;
const utf8 = new TextDecoder('utf-8');

/** Digits only, else -1. */
function parseDigits(raw: Uint8Array, from: number, to: number): number {
  if (from >= to || to - from > 9) return -1;
  let v = 0;
  for (let i = from; i < to; i++) {
    const d = raw[i]! - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

/**
 * Parses the file's bytes (already checked to be UTF-8). Works on bytes rather than a string because
 * nearly every line is a quoted literal without escapes, whose bytes between the quotes are exactly
 * the token's UTF-8 bytes and can be copied as they are; only the rest goes through the escape parser.
 */
export function parseVocab(raw: Uint8Array, source: string): Vocab {
  // No escape expands, so the token bytes never outnumber the file's.
  const bytes = new Uint8Array(raw.length);
  const offset = new Int32Array(MODEL_VOCAB_SIZE);
  const length = new Int32Array(MODEL_VOCAB_SIZE);
  let used = 0;
  let count = 0;
  let lineNo = 0;
  let pos = 0;

  while (pos < raw.length) {
    // One manual pass finds the line end and its first and last space; calling indexOf and
    // lastIndexOf per line costs more than the whole rest of the parse.
    const start = pos;
    let s1 = -1;
    let s2 = -1;
    let blank = true;
    while (pos < raw.length && raw[pos] !== NEWLINE) {
      const c = raw[pos]!;
      if (c === SPACE) {
        if (s1 < 0) s1 = pos;
        s2 = pos;
      } else if (c !== 0x09 && c !== CR) {
        blank = false;
      }
      pos++;
    }
    let stop = pos;
    pos++;
    lineNo++;
    if (blank) continue;
    if (raw[stop - 1] === CR) stop--;

    // The literal may itself contain spaces, so the id is before the first space and the length after the last.
    if (s1 <= start || s2 <= s1 || s2 >= stop) fail(`${source}:${lineNo}: expected "id literal bytelength"`);
    const id = parseDigits(raw, start, s1);
    const declared = parseDigits(raw, s2 + 1, stop);
    if (id < 0 || declared < 0) fail(`${source}:${lineNo}: id and byte length must be integers`);
    if (id < 1 || id >= MODEL_VOCAB_SIZE) fail(`${source}:${lineNo}: token id ${id} is outside [1, ${MODEL_VOCAB_SIZE})`);
    if (length[id] !== 0) fail(`${source}:${lineNo}: token id ${id} appears twice`);

    const a = s1 + 1;
    const z = s2; // literal is raw[a, z)
    const q = raw[a];
    let plain = (q === QUOTE || q === DQUOTE) && z - a >= 2 && raw[z - 1] === q;
    for (let i = a + 1; plain && i < z - 1; i++) if (raw[i] === BACKSLASH || raw[i] === q) plain = false;
    let n: number;
    if (plain) {
      n = z - a - 2;
      for (let i = 0; i < n; i++) bytes[used + i] = raw[a + 1 + i]!;
    } else {
      const literal = utf8.decode(raw.subarray(a, z));
      let decoded: Uint8Array;
      try {
        decoded = parsePythonLiteral(literal);
      } catch (e) {
        if (e instanceof LiteralError) fail(`${source}:${lineNo}: bad literal ${literal}: ${e.message}`);
        throw e;
      }
      n = decoded.length;
      if (n > z - a) throw new Error(`${source}:${lineNo}: literal decodes to more bytes than it has`);
      bytes.set(decoded, used);
    }
    if (n !== declared) {
      fail(`${source}:${lineNo}: literal ${utf8.decode(raw.subarray(a, z))} is ${n} bytes but the line says ${declared}`);
    }
    if (n === 0) fail(`${source}:${lineNo}: token id ${id} is empty`);
    if (n > MAX_TOKEN_BYTES) fail(`${source}:${lineNo}: token id ${id} is ${n} bytes, longer than ${MAX_TOKEN_BYTES}`);
    if (id <= 256 && (n !== 1 || bytes[used] !== id - 1)) {
      fail(`${source}:${lineNo}: token id ${id} must be the single byte 0x${(id - 1).toString(16).padStart(2, '0')}`);
    }
    offset[id] = used;
    length[id] = n;
    used += n;
    count++;
  }

  for (let id = 1; id <= 256; id++) {
    if (length[id] === 0) fail(`${source}: single-byte token id ${id} is missing, so some text could not be encoded`);
  }
  return { bytes: bytes.slice(0, used), offset, length, count };
}
