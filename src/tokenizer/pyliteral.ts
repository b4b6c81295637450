/**
 * Decodes one Python string or bytes literal, as written by Python's repr(), to the bytes it denotes
 * (str literals are UTF-8 encoded). The vocabulary file is a list of such literals, so every escape
 * Python accepts must be honoured exactly: a single wrong byte silently changes which ids encode() picks.
 */

/** Thrown for a malformed literal; the vocabulary loader adds the file and line. */
export class LiteralError extends Error {}

const SIMPLE_ESCAPES: Record<string, number> = {
  '\\': 0x5c,
  "'": 0x27,
  '"': 0x22,
  a: 0x07,
  b: 0x08,
  f: 0x0c,
  n: 0x0a,
  r: 0x0d,
  t: 0x09,
  v: 0x0b,
};

function isOctal(c: string | undefined): boolean {
  return c !== undefined && c >= '0' && c <= '7';
}

function isHex(c: string | undefined): boolean {
  return c !== undefined && /^[0-9a-fA-F]$/.test(c);
}

function pushUtf8(out: number[], cp: number): void {
  if (cp >= 0xd800 && cp <= 0xdfff) {
    // Python refuses to UTF-8 encode a surrogate, so such an entry cannot be a real token.
    throw new LiteralError(`surrogate U+${cp.toString(16).toUpperCase()} cannot be UTF-8 encoded`);
  }
  if (cp > 0x10ffff) throw new LiteralError(`code point 0x${cp.toString(16)} is beyond U+10FFFF`);
  if (cp < 0x80) out.push(cp);
  else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 63));
  else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
  else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
}

/**
 * Parses `'...'`, `"..."`, `b'...'` or `b"..."` (the whole input must be the literal) and returns its
 * bytes. Raw strings, triple quotes and \N{name} are not produced by repr() and are rejected.
 */
export function parsePythonLiteral(literal: string): Uint8Array {
  let i = 0;
  let isBytes = false;
  if (literal[0] === 'b' || literal[0] === 'B') {
    isBytes = true;
    i = 1;
  }
  const quote = literal[i];
  if (quote !== "'" && quote !== '"') throw new LiteralError('expected a quoted literal');
  if (literal.length < i + 2 || literal[literal.length - 1] !== quote) {
    throw new LiteralError('literal is not closed by its opening quote');
  }
  const end = literal.length - 1;
  i++;
  const out: number[] = [];
  // A str literal yields code points that become UTF-8; a bytes literal yields bytes directly.
  const emit = isBytes ? (v: number) => out.push(v) : (v: number) => pushUtf8(out, v);

  while (i < end) {
    const cp = literal.codePointAt(i)!;
    const ch = String.fromCodePoint(cp);
    i += ch.length;
    if (ch === quote) throw new LiteralError('unescaped quote inside the literal');
    if (ch !== '\\') {
      if (isBytes && cp > 0x7f) throw new LiteralError('bytes literal contains a non-ASCII character');
      emit(cp);
      continue;
    }
    if (i >= end) throw new LiteralError('literal ends with a lone backslash');
    const e = String.fromCodePoint(literal.codePointAt(i)!);
    i += e.length;
    const simple = SIMPLE_ESCAPES[e];
    if (simple !== undefined) {
      emit(simple);
    } else if (isOctal(e)) {
      // Up to three octal digits, as in C.
      let v = e.charCodeAt(0) - 48;
      for (let k = 0; k < 2 && i < end && isOctal(literal[i]); k++, i++) v = v * 8 + literal.charCodeAt(i) - 48;
      if (isBytes && v > 0xff) throw new LiteralError(`octal escape \\${v.toString(8)} exceeds one byte`);
      emit(v);
    } else if (e === 'x' || (!isBytes && (e === 'u' || e === 'U'))) {
      const digits = e === 'x' ? 2 : e === 'u' ? 4 : 8;
      const hex = literal.slice(i, i + digits);
      if (i + digits > end || ![...hex].every(isHex)) {
        throw new LiteralError(`\\${e} escape needs ${digits} hex digits`);
      }
      i += digits;
      emit(parseInt(hex, 16));
    } else if (e === 'N' && !isBytes) {
      throw new LiteralError('\\N{...} escapes are not supported');
    } else {
      // Python keeps an unrecognised escape verbatim, backslash included (\u is one of those in bytes).
      if (isBytes && e.charCodeAt(0) > 0x7f) throw new LiteralError('bytes literal contains a non-ASCII character');
      emit(0x5c);
      emit(e.codePointAt(0)!);
    }
  }
  return Uint8Array.from(out);
}
