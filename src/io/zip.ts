/**
 * A minimal, synchronous, random-access zip reader: it parses the central directory (with ZIP64)
 * and hands out the absolute file offset of each entry's data, so callers can pread tensors
 * straight out of a multi-gigabyte checkpoint without extracting anything.
 *
 * Why not yauzl: its API is asynchronous and stream-based, while TensorSource is synchronous
 * (readF32 returns the array), and what we need from a zip is only "where does entry X start".
 * The directory format is small and well specified, so a self-contained reader is the simpler fit.
 */
import * as zlib from 'node:zlib';
import { UserError } from '../util/errors.js';
import { readExactly } from './dtype.js';

export interface ZipEntry {
  readonly name: string;
  /** 0 = stored, 8 = deflate; anything else is refused when read. */
  readonly method: number;
  readonly flags: number;
  readonly crc32: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localHeaderOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const EOCD_MIN = 22;
const MAX_COMMENT = 0xffff;
/** A torch checkpoint's directory is ~100 bytes per tensor; 256 MiB means something is wrong. */
const MAX_DIRECTORY_BYTES = 256 * 1024 * 1024;

function u64(buf: Buffer, off: number, what: () => string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new UserError(`${what()}: value ${v} is out of range`);
  return Number(v);
}

export class ZipDirectory {
  readonly entries = new Map<string, ZipEntry>();
  private readonly dataOffsets = new Map<string, number>();

  /**
   * @param label how errors name the file (normally its path)
   */
  constructor(private readonly fd: number, readonly fileSize: number, private readonly label: string) {
    const bad = (msg: string): never => {
      throw new UserError(`${label}: ${msg}`);
    };
    if (fileSize < EOCD_MIN) bad(`too short to be a zip archive (${fileSize} bytes); it is truncated or not a checkpoint`);

    const tailLen = Math.min(fileSize, EOCD_MIN + MAX_COMMENT);
    const tailStart = fileSize - tailLen;
    const tail = Buffer.alloc(tailLen);
    readExactly(fd, tail, tailStart, label);
    let eocd = -1;
    for (let p = tailLen - EOCD_MIN; p >= 0; p--) {
      if (tail.readUInt32LE(p) === SIG_EOCD && p + EOCD_MIN + tail.readUInt16LE(p + 20) <= tailLen) {
        eocd = p;
        break;
      }
    }
    if (eocd < 0) bad('not a complete zip archive (no end-of-central-directory record); the file is truncated or corrupt');

    const disk = tail.readUInt16LE(eocd + 4);
    const cdDisk = tail.readUInt16LE(eocd + 6);
    let count = tail.readUInt16LE(eocd + 10);
    let cdSize = tail.readUInt32LE(eocd + 12);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    const eocdAbs = tailStart + eocd;
    let cdEnd = eocdAbs;

    // ZIP64: torch always writes the locator; other writers only when a field overflows.
    if (eocdAbs >= 20) {
      const loc = Buffer.alloc(20);
      readExactly(fd, loc, eocdAbs - 20, label);
      if (loc.readUInt32LE(0) === SIG_ZIP64_LOCATOR) {
        const recOff = u64(loc, 8, () => `${label}: ZIP64 locator`);
        if (recOff + 56 > eocdAbs - 20) bad('corrupt zip archive (ZIP64 end record points outside the file)');
        const rec = Buffer.alloc(56);
        readExactly(fd, rec, recOff, label);
        if (rec.readUInt32LE(0) !== SIG_ZIP64_EOCD) bad('corrupt zip archive (bad ZIP64 end record signature)');
        count = u64(rec, 32, () => `${label}: ZIP64 entry count`);
        cdSize = u64(rec, 40, () => `${label}: ZIP64 directory size`);
        cdOffset = u64(rec, 48, () => `${label}: ZIP64 directory offset`);
        cdEnd = recOff;
      } else if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
        bad('corrupt zip archive (ZIP64 fields without a ZIP64 locator)');
      }
    }
    if ((disk !== 0 && disk !== 0xffff) || (cdDisk !== 0 && cdDisk !== 0xffff)) bad('multi-part (split) zip archives are not supported');
    if (cdOffset + cdSize > cdEnd) bad('corrupt zip archive (central directory extends past its end record); the file is truncated or corrupt');
    if (cdSize > MAX_DIRECTORY_BYTES) bad(`zip central directory is implausibly large (${cdSize} bytes)`);
    if (count > cdSize / 46) bad('corrupt zip archive (entry count does not fit the central directory)');

    const cd = Buffer.alloc(cdSize);
    readExactly(fd, cd, cdOffset, label);
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cdSize || cd.readUInt32LE(p) !== SIG_CENTRAL) bad(`corrupt zip archive (central directory entry ${i} is damaged)`);
      const flags = cd.readUInt16LE(p + 8);
      const method = cd.readUInt16LE(p + 10);
      const crc32 = cd.readUInt32LE(p + 16);
      let compressedSize = cd.readUInt32LE(p + 20);
      let size = cd.readUInt32LE(p + 24);
      const nameLen = cd.readUInt16LE(p + 28);
      const extraLen = cd.readUInt16LE(p + 30);
      const commentLen = cd.readUInt16LE(p + 32);
      let localHeaderOffset = cd.readUInt32LE(p + 42);
      const next = p + 46 + nameLen + extraLen + commentLen;
      if (next > cdSize) bad(`corrupt zip archive (central directory entry ${i} overruns the directory)`);
      const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
      // ZIP64 extended information: present values replace, in this order, those saturated at 0xffffffff.
      let x = p + 46 + nameLen;
      const xEnd = x + extraLen;
      while (x + 4 <= xEnd) {
        const id = cd.readUInt16LE(x);
        const len = cd.readUInt16LE(x + 2);
        if (x + 4 + len > xEnd) break;
        if (id === 0x0001) {
          let q = x + 4;
          const take = (): number => {
            if (q + 8 > x + 4 + len) bad(`corrupt zip archive (short ZIP64 field for '${name}')`);
            const v = u64(cd, q, () => `${label}: ZIP64 field of '${name}'`);
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = take();
          if (compressedSize === 0xffffffff) compressedSize = take();
          if (localHeaderOffset === 0xffffffff) localHeaderOffset = take();
        }
        x += 4 + len;
      }
      if (localHeaderOffset + 30 > cdOffset) bad(`corrupt zip archive (entry '${name}' starts outside the file's data area)`);
      if (!this.entries.has(name)) {
        this.entries.set(name, { name, method, flags, crc32, compressedSize, size, localHeaderOffset });
      }
      p = next;
    }
  }

  /** Absolute offset of an entry's (possibly compressed) bytes, checked to lie inside the file. */
  dataOffset(e: ZipEntry): number {
    const cached = this.dataOffsets.get(e.name);
    if (cached !== undefined) return cached;
    const h = Buffer.alloc(30);
    readExactly(this.fd, h, e.localHeaderOffset, this.label);
    if (h.readUInt32LE(0) !== SIG_LOCAL) {
      throw new UserError(`${this.label}: corrupt zip archive (bad local header for '${e.name}')`);
    }
    const off = e.localHeaderOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
    if (off + e.compressedSize > this.fileSize) {
      throw new UserError(`${this.label}: zip entry '${e.name}' extends past the end of the file; the file is truncated`);
    }
    this.dataOffsets.set(e.name, off);
    return off;
  }

  /** The whole (decompressed) content of a small entry such as data.pkl; CRC-checked. */
  read(e: ZipEntry, maxBytes: number): Uint8Array {
    if ((e.flags & 1) !== 0) throw new UserError(`${this.label}: zip entry '${e.name}' is encrypted`);
    if (e.size > maxBytes || e.compressedSize > maxBytes) {
      throw new UserError(`${this.label}: zip entry '${e.name}' is implausibly large (${e.size} bytes)`);
    }
    const raw = Buffer.alloc(e.compressedSize);
    readExactly(this.fd, raw, this.dataOffset(e), this.label);
    let out: Buffer;
    if (e.method === 0) {
      out = raw;
    } else if (e.method === 8) {
      try {
        out = zlib.inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
      } catch {
        throw new UserError(`${this.label}: zip entry '${e.name}' does not decompress; the file is corrupt`);
      }
    } else {
      throw new UserError(`${this.label}: zip entry '${e.name}' uses unsupported compression method ${e.method}`);
    }
    if (out.length !== e.size) {
      throw new UserError(`${this.label}: zip entry '${e.name}' has ${out.length} bytes, its directory says ${e.size}; the file is corrupt`);
    }
    if (crc32(out) !== e.crc32) throw new UserError(`${this.label}: zip entry '${e.name}' fails its CRC check; the file is corrupt`);
    return out;
  }
}

let crcTable: Int32Array | undefined;

/** CRC-32 as zip uses it; zlib.crc32 where Node has it (20.15+), else a table loop. */
export function crc32(data: Uint8Array, prev = 0): number {
  const native = (zlib as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
  if (native !== undefined) return native(data, prev) >>> 0;
  if (crcTable === undefined) {
    crcTable = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c;
    }
  }
  let c = ~prev;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** True when the first bytes are a zip local header (what torch.save writes first). */
export function looksLikeZip(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04;
}
