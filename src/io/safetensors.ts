/**
 * safetensors: 8-byte little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`,
 * then the tensor bytes (offsets relative to the end of the header), little-endian, row-major.
 */
import * as fs from 'node:fs';
import { UserError } from '../util/errors.js';
import { openAtomic, writeAll } from '../util/atomic.js';
import { DEFAULT_CHUNK_BYTES, Scratch, readExactly, readRegionF32, openAndInit } from './dtype.js';
import { DTYPE_BYTES, type DType, type F32Alloc, type TensorInfo, type TensorSource } from './types.js';

/** The reference implementation's limit; a larger header is a sign of a wrong or hostile file. */
const MAX_HEADER_BYTES = 100_000_000;

interface Entry {
  info: TensorInfo;
  numel: number;
  /** Absolute file offset. */
  begin: number;
  byteLength: number;
}

function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.hasOwn(DTYPE_BYTES, s);
}

export interface SafetensorsOptions {
  /** Upper bound on one read and on the scratch buffer for dtype conversion (default 16 MiB). */
  chunkBytes?: number;
}

export class SafetensorsSource implements TensorSource {
  readonly format = 'safetensors' as const;
  readonly metadata: Record<string, string> = {};
  private fd: number | undefined;
  private readonly entries = new Map<string, Entry>();
  private readonly scratch: Scratch;

  constructor(readonly path: string, options: SafetensorsOptions = {}) {
    this.scratch = new Scratch(options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
    openAndInit(path, (fd) => {
      this.fd = fd;
      this.load(fd);
    });
  }

  private load(fd: number): void {
    const bad = (msg: string): never => {
      throw new UserError(`${this.path}: ${msg}`);
    };
    const size = fs.fstatSync(fd).size;
    if (size < 8) bad(`too short to be a safetensors file (${size} bytes)`);
    const lenBuf = Buffer.alloc(8);
    readExactly(fd, lenBuf, 0, this.path);
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(size - 8)) bad(`safetensors header length ${n} exceeds the file size (${size} bytes); the file is truncated or not safetensors`);
    if (n > BigInt(MAX_HEADER_BYTES)) bad(`safetensors header length ${n} is implausibly large`);
    if (n < 2n) bad('safetensors header is empty');
    const headerLen = Number(n);
    const headerBuf = Buffer.alloc(headerLen);
    readExactly(fd, headerBuf, 8, this.path);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch {
      bad('safetensors header is not valid JSON');
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) bad('safetensors header is not a JSON object');

    const dataStart = 8 + headerLen;
    const dataLen = size - dataStart;
    const list: Entry[] = [];
    for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof v !== 'object' || v === null || Array.isArray(v)) bad('__metadata__ is not an object of strings');
        for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
          if (typeof s !== 'string') bad(`__metadata__ value '${k}' is not a string`);
          this.metadata[k] = s as string;
        }
        continue;
      }
      if (typeof v !== 'object' || v === null) bad(`tensor '${name}' has no description`);
      const { dtype, shape, data_offsets: offs } = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (!isDType(dtype)) bad(`tensor '${name}' has unsupported dtype ${JSON.stringify(dtype)}`);
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) bad(`tensor '${name}' has a bad shape`);
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0) || offs[0] > offs[1]) {
        bad(`tensor '${name}' has bad data_offsets`);
      }
      const [b, e] = offs as [number, number];
      let numel = 1;
      for (const d of shape as number[]) numel *= d;
      const want = numel * DTYPE_BYTES[dtype as DType];
      if (e - b !== want) {
        bad(`tensor '${name}' data_offsets [${b}, ${e}] hold ${e - b} bytes but ${dtype as string} ${JSON.stringify(shape)} needs ${want}`);
      }
      if (e > dataLen) {
        bad(`tensor '${name}' data_offsets [${b}, ${e}] lie beyond the end of the file (${dataLen} data bytes); the file is truncated`);
      }
      list.push({
        info: Object.freeze({ name, dtype: dtype as DType, shape: Object.freeze([...(shape as number[])]) as number[] }),
        numel, begin: dataStart + b, byteLength: want,
      });
    }
    list.sort((x, y) => x.begin - y.begin || (x.info.name < y.info.name ? -1 : 1));
    for (const e of list) this.entries.set(e.info.name, e);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  info(name: string): TensorInfo | undefined {
    const e = this.entries.get(name);
    return e === undefined ? undefined : { name: e.info.name, dtype: e.info.dtype, shape: [...e.info.shape] };
  }

  readF32(name: string, alloc?: F32Alloc): Float32Array {
    const e = this.entry(name);
    const dst = alloc !== undefined ? alloc(e.numel) : new Float32Array(e.numel);
    if (dst.length !== e.numel) throw new Error(`readF32: alloc returned ${dst.length} elements for '${name}', expected ${e.numel}`);
    if (e.numel > 0) readRegionF32(this.fd!, e.begin, e.info.dtype, e.numel, dst, 0, this.scratch, this.path);
    return dst;
  }

  readRaw(name: string): Uint8Array {
    const e = this.entry(name);
    const out = new Uint8Array(e.byteLength);
    readExactly(this.fd!, out, e.begin, this.path, this.scratch.capBytes);
    return out;
  }

  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
    this.scratch.release();
  }

  private entry(name: string): Entry {
    if (this.fd === undefined) throw new Error(`${this.path}: read after close()`);
    const e = this.entries.get(name);
    if (e === undefined) throw new UserError(`${this.path}: no tensor named '${name}'`);
    return e;
  }
}

export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  /**
   * Little-endian, row-major; any typed array or DataView over exactly the tensor's bytes. A function
   * is called once, when that tensor is written, so a conversion can produce one tensor at a time
   * instead of holding them all.
   */
  data: ArrayBufferView | (() => ArrayBufferView);
}

/**
 * Write a safetensors file atomically (temp file in the same directory, then rename).
 * Tensors are laid out by decreasing element size, then by name: deterministic, and every tensor
 * starts aligned to its element size (the header is padded to 8 bytes), so readers may map it
 * without copying.
 */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const bad = (msg: string): never => {
    throw new UserError(`${path}: cannot write safetensors: ${msg}`);
  };
  const checkData = (t: TensorToWrite, data: unknown): void => {
    if (!ArrayBuffer.isView(data)) bad(`tensor '${t.name}' data is not a typed array`);
    const want = byteSize(t);
    const got = (data as ArrayBufferView).byteLength;
    if (got !== want) bad(`tensor '${t.name}' is ${t.dtype} ${JSON.stringify(t.shape)} (${want} bytes) but its data has ${got} bytes`);
  };
  const seen = new Set<string>();
  for (const t of tensors) {
    if (typeof t.name !== 'string' || t.name === '' || t.name === '__metadata__') bad(`bad tensor name ${JSON.stringify(t.name)}`);
    if (seen.has(t.name)) bad(`tensor '${t.name}' appears twice`);
    seen.add(t.name);
    if (!isDType(t.dtype)) bad(`tensor '${t.name}' has unsupported dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) bad(`tensor '${t.name}' has a bad shape`);
    if (typeof t.data !== 'function') checkData(t, t.data);
  }
  if (metadata !== undefined) {
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) bad('metadata must be an object of strings');
    for (const [k, v] of Object.entries(metadata)) if (typeof v !== 'string') bad(`metadata '${k}' is not a string`);
  }

  const ordered = [...tensors].sort((a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let off = 0;
  for (const t of ordered) {
    const n = byteSize(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length), 0);

  const f = openAtomic(path);
  try {
    writeAll(f.fd, prefix, path);
    writeAll(f.fd, json, path);
    for (const t of ordered) {
      if (typeof t.data === 'function') {
        const data = t.data();
        checkData(t, data);
        writeAll(f.fd, data, path);
      } else {
        writeAll(f.fd, t.data, path);
      }
    }
    f.commit();
  } catch (e) {
    f.abort();
    throw e;
  }
}

function byteSize(t: TensorToWrite): number {
  return t.shape.reduce((a, d) => a * d, 1) * DTYPE_BYTES[t.dtype];
}
