/**
 * Element-type conversions for checkpoint tensors, plus the one routine both readers share for
 * decoding a stretch of a file into float32 in bounded pieces (so the chunking and the
 * "float32 is read straight into its destination" rule live in one place).
 */
import * as fs from 'node:fs';
import { UserError } from '../util/errors.js';
import { DTYPE_BYTES, type DType } from './types.js';

// ---------------------------------------------------------------------------------------------
// Scalars. These work on raw bit patterns so that NaN payloads, signed zeros and subnormals survive
// exactly; going through JS numbers would canonicalise NaNs.
// ---------------------------------------------------------------------------------------------

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Bit pattern of a float32 (after rounding x to float32). */
export function f32Bits(x: number): number {
  f32Scratch[0] = x;
  return u32Scratch[0]!;
}

/** The float32 whose bit pattern is `bits`. */
export function f32FromBits(bits: number): number {
  u32Scratch[0] = bits;
  return f32Scratch[0]!;
}

/** bfloat16 bits → float32 bits: bf16 is the top half of a float32, so this is exact for every input. */
export function bf16BitsToF32Bits(h: number): number {
  return ((h & 0xffff) << 16) >>> 0;
}

export function bf16BitsToF32(h: number): number {
  return f32FromBits(bf16BitsToF32Bits(h));
}

/** float32 bits → bfloat16 bits, round to nearest, ties to even; NaN stays NaN (made quiet, sign kept). */
export function f32BitsToBf16Bits(bits: number): number {
  bits >>>= 0;
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) {
    // Truncating a NaN could clear every remaining mantissa bit and turn it into an infinity.
    return (bits >>> 16) | 0x0040;
  }
  // No wrap-around is possible: the largest non-NaN pattern (0xff800000) plus 0x8000 stays below 2^32.
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

export function f32ToBf16Bits(x: number): number {
  return f32BitsToBf16Bits(f32Bits(x));
}

function f16BitsToF32BitsSlow(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0) {
    if (mant === 0) return sign >>> 0;
    // Subnormal half: renormalise so float32 (which has the range) stores it as a normal number.
    let e = 127 - 15 + 1;
    while ((mant & 0x400) === 0) {
      mant <<= 1;
      e--;
    }
    return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
  }
  if (exp === 31) return (sign | 0x7f800000 | (mant << 13)) >>> 0; // inf, or NaN with its payload
  return (sign | ((exp + 127 - 15) << 23) | (mant << 13)) >>> 0;
}

// A 256 KiB table beats the branchy conversion by a wide margin in the bulk loop, and is built once.
let f16Table: Uint32Array | undefined;
function f16ToF32Table(): Uint32Array {
  if (f16Table === undefined) {
    const t = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) t[h] = f16BitsToF32BitsSlow(h);
    f16Table = t;
  }
  return f16Table;
}

export function f16BitsToF32Bits(h: number): number {
  return f16ToF32Table()[h & 0xffff]!;
}

export function f16BitsToF32(h: number): number {
  return f32FromBits(f16BitsToF32Bits(h));
}

/** float32 bits → float16 bits, round to nearest, ties to even, overflow → ±inf, NaN stays NaN. */
export function f32BitsToF16Bits(bits: number): number {
  bits >>>= 0;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Below 2^-25 everything rounds to zero (exactly 2^-25 is a tie and goes to the even zero).
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e; // 14..24
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (r & 1) !== 0)) r++;
    return sign | r; // r may reach 0x400, which is exactly the smallest normal's encoding
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1) !== 0)) r++; // a carry may roll into the exponent, up to inf
  return sign | r;
}

export function f32ToF16Bits(x: number): number {
  return f32BitsToF16Bits(f32Bits(x));
}

// ---------------------------------------------------------------------------------------------
// Bulk conversions over typed arrays.
// ---------------------------------------------------------------------------------------------

function u32View(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

/** bfloat16 (as raw uint16 bits) → float32. `dst` defaults to a new array of src.length. */
export function bf16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length), dstOffset = 0): Float32Array {
  checkDst(src.length, dst, dstOffset);
  const out = u32View(dst);
  const n = src.length;
  for (let i = 0; i < n; i++) out[dstOffset + i] = src[i]! << 16;
  return dst;
}

/** float16 (as raw uint16 bits) → float32, exact for every input including subnormals, inf and NaN. */
export function f16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length), dstOffset = 0): Float32Array {
  checkDst(src.length, dst, dstOffset);
  const table = f16ToF32Table();
  const out = u32View(dst);
  const n = src.length;
  for (let i = 0; i < n; i++) out[dstOffset + i] = table[src[i]!]!;
  return dst;
}

/** float32 → bfloat16 bits (round to nearest even, NaN kept). */
export function f32ToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length < src.length) throw new RangeError('f32ToBf16: destination too short');
  const bits = u32View(src);
  const n = src.length;
  for (let i = 0; i < n; i++) {
    const b = bits[i]!;
    dst[i] = (b & 0x7f800000) === 0x7f800000 && (b & 0x007fffff) !== 0
      ? (b >>> 16) | 0x0040
      : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return dst;
}

/** float32 → float16 bits (round to nearest even, overflow → inf, NaN kept). */
export function f32ToF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length < src.length) throw new RangeError('f32ToF16: destination too short');
  const bits = u32View(src);
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = f32BitsToF16Bits(bits[i]!);
  return dst;
}

function checkDst(n: number, dst: Float32Array, dstOffset: number): void {
  if (dstOffset < 0 || dstOffset + n > dst.length) throw new RangeError('destination too short');
}

/**
 * Decode `count` little-endian elements of `dtype` from `src` into `dst[dstOffset..]` as float32.
 * Integers and float64 are converted with the usual rounding to the nearest float32.
 */
export function decodeToF32(dtype: DType, src: Uint8Array, count: number, dst: Float32Array, dstOffset = 0): void {
  const eb = DTYPE_BYTES[dtype];
  if (src.length < count * eb) throw new RangeError('decodeToF32: source too short');
  checkDst(count, dst, dstOffset);
  // Typed views need aligned offsets; our own read buffers always are, so this copy is a rare fallback.
  if (src.byteOffset % eb !== 0) src = src.slice(0, count * eb);
  const buf = src.buffer;
  const off = src.byteOffset;
  switch (dtype) {
    case 'F32':
      dst.set(new Float32Array(buf, off, count), dstOffset);
      return;
    case 'BF16':
      bf16ToF32(new Uint16Array(buf, off, count), dst, dstOffset);
      return;
    case 'F16':
      f16ToF32(new Uint16Array(buf, off, count), dst, dstOffset);
      return;
    case 'F64':
      dst.set(new Float64Array(buf, off, count), dstOffset);
      return;
    case 'I32':
      dst.set(new Int32Array(buf, off, count), dstOffset);
      return;
    case 'I16':
      dst.set(new Int16Array(buf, off, count), dstOffset);
      return;
    case 'I8':
      dst.set(new Int8Array(buf, off, count), dstOffset);
      return;
    case 'U8':
    case 'BOOL':
      dst.set(new Uint8Array(buf, off, count), dstOffset);
      return;
    case 'I64': {
      const s = new BigInt64Array(buf, off, count);
      for (let i = 0; i < count; i++) dst[dstOffset + i] = Number(s[i]!);
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// File regions.
// ---------------------------------------------------------------------------------------------

/** Opens a file for reading; failure is a UserError naming the file and the reason. */
export function openReadOnly(path: string): number {
  try {
    return fs.openSync(path, 'r');
  } catch (e) {
    throw new UserError(`${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
}

/** Opens a file and hands it to `init` (which reads its header); if `init` throws, the file is closed. */
export function openAndInit(path: string, init: (fd: number) => void): void {
  const fd = openReadOnly(path);
  try {
    init(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Largest single read; also the size of the scratch buffer used for types that need converting. */
export const DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024;

/**
 * Fill `dst` from `fd` at `position`, looping over short reads. Running out of file is the user's
 * problem (a truncated checkpoint), so it is reported as a UserError naming `label`.
 */
export function readExactly(fd: number, dst: Uint8Array, position: number, label: string, maxPiece = DEFAULT_CHUNK_BYTES): void {
  let done = 0;
  const piece = Math.max(1, Math.min(maxPiece, 0x40000000));
  while (done < dst.length) {
    const want = Math.min(piece, dst.length - done);
    const got = fs.readSync(fd, dst, done, want, position + done);
    if (got === 0) {
      throw new UserError(`${label}: file ends early (wanted ${dst.length} bytes at offset ${position}, got ${done}); it is truncated`);
    }
    done += got;
  }
}

/** A reusable scratch buffer, grown on demand up to a fixed cap. */
export class Scratch {
  private buf: Uint8Array | undefined;
  constructor(readonly capBytes: number = DEFAULT_CHUNK_BYTES) {}
  get(want: number): Uint8Array {
    const n = Math.max(8, Math.min(want, this.capBytes));
    if (this.buf === undefined || this.buf.length < n) this.buf = new Uint8Array(n);
    return this.buf;
  }
  release(): void {
    this.buf = undefined;
  }
}

/**
 * Decode `count` contiguous elements stored at `position` into `dst[dstOffset..]`. float32 is read
 * straight into the destination's bytes; other types go through `scratch` at most `scratch.capBytes`
 * at a time, so the extra memory is bounded whatever the tensor's size.
 */
export function readRegionF32(
  fd: number, position: number, dtype: DType, count: number,
  dst: Float32Array, dstOffset: number, scratch: Scratch, label: string,
): void {
  const eb = DTYPE_BYTES[dtype];
  if (dtype === 'F32') {
    readExactly(fd, new Uint8Array(dst.buffer, dst.byteOffset + dstOffset * 4, count * 4), position, label, scratch.capBytes);
    return;
  }
  const perPiece = Math.max(1, Math.floor(scratch.capBytes / eb));
  let done = 0;
  while (done < count) {
    const n = Math.min(perPiece, count - done);
    const buf = scratch.get(n * eb).subarray(0, n * eb);
    readExactly(fd, buf, position + done * eb, label, scratch.capBytes);
    decodeToF32(dtype, buf, n, dst, dstOffset + done);
    done += n;
  }
}
