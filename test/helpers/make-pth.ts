/**
 * Test-only writer of PyTorch zip checkpoints, byte-for-byte in the style torch.save produces:
 * a protocol-2 pickle (memoised globals and strings, BINPERSID storage ids, _rebuild_tensor_v2 calls,
 * SETITEMS batches of 1000), storages stored uncompressed and 64-byte aligned via a padding extra
 * field, data descriptors after each entry, and ZIP64 end records. Storages can be streamed, so the
 * memory benchmark can write multi-gigabyte files without holding them.
 */
import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import { DTYPE_BYTES, type DType } from '../../src/io/types.js';
import { crc32 } from '../../src/io/zip.js';

/** Storage bytes produced piecewise (for files larger than memory). */
export interface StreamedData {
  byteLength: number;
  chunks(): Iterable<Uint8Array>;
}

export interface PthStorage {
  dtype: DType;
  data: ArrayBufferView | StreamedData;
}

export interface PthTensor {
  name: string;
  /** Index into the storages array. */
  storage: number;
  /** In elements; default 0. */
  offset?: number;
  shape: number[];
  /** Default: contiguous row-major. */
  stride?: number[];
  /** Wrap in torch._utils._rebuild_parameter, as saving an nn.Parameter does. */
  parameter?: boolean;
}

export type PyScalar = string | number | boolean | null;

export interface MakePthOptions {
  /** Top directory inside the zip (torch uses the file's stem). Default 'archive'. */
  archive?: string;
  /** Nest the tensor dict under this key of an outer dict (e.g. 'state_dict'), next to an 'epoch' entry. */
  wrap?: string;
  /** Non-tensor values to put in the tensor dict. */
  extra?: Record<string, PyScalar>;
  /** Top dict as OrderedDict with a `_metadata` BUILD, as saving module.state_dict() produces. */
  ordered?: boolean;
  /** Content of the byteorder entry; null leaves it out. Default 'little'. */
  byteorder?: string | null;
  deflatePickle?: boolean;
  deflateStorages?: boolean;
  /** Replace data.pkl with these bytes; null leaves it out. */
  pickle?: Uint8Array | null;
  /** Override the element count recorded in a storage's persistent id (to fake corrupt files). */
  storageNumel?: Record<number, number>;
}

export function contiguousStride(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

const STORAGE_NAMES: Record<DType, string> = {
  F32: 'FloatStorage', F16: 'HalfStorage', BF16: 'BFloat16Storage', F64: 'DoubleStorage', I64: 'LongStorage',
  I32: 'IntStorage', I16: 'ShortStorage', I8: 'CharStorage', U8: 'ByteStorage', BOOL: 'BoolStorage',
};

class PickleWriter {
  private parts: Buffer[] = [];
  private memo = new Map<string, number>();
  private nextMemo = 0;

  bytes(...b: number[]): void {
    this.parts.push(Buffer.from(b));
  }
  raw(b: Buffer): void {
    this.parts.push(b);
  }
  put(key?: string): void {
    const i = this.nextMemo++;
    if (key !== undefined) this.memo.set(key, i);
    if (i < 256) this.bytes(0x71, i);
    else {
      const b = Buffer.alloc(5);
      b[0] = 0x72;
      b.writeUInt32LE(i, 1);
      this.raw(b);
    }
  }
  private get(key: string): boolean {
    const i = this.memo.get(key);
    if (i === undefined) return false;
    if (i < 256) this.bytes(0x68, i);
    else {
      const b = Buffer.alloc(5);
      b[0] = 0x6a;
      b.writeUInt32LE(i, 1);
      this.raw(b);
    }
    return true;
  }
  str(s: string): void {
    if (this.get(`s:${s}`)) return;
    const enc = Buffer.from(s, 'utf8');
    const h = Buffer.alloc(5);
    h[0] = 0x58;
    h.writeUInt32LE(enc.length, 1);
    this.raw(h);
    this.raw(enc);
    this.put(`s:${s}`);
  }
  int(n: number): void {
    if (n >= 0 && n < 256) this.bytes(0x4b, n);
    else if (n >= 0 && n < 65536) this.bytes(0x4d, n & 0xff, n >> 8);
    else if (n >= -0x80000000 && n <= 0x7fffffff) {
      const b = Buffer.alloc(5);
      b[0] = 0x4a;
      b.writeInt32LE(n, 1);
      this.raw(b);
    } else {
      // LONG1: minimal little-endian two's complement
      let v = BigInt(n);
      const out: number[] = [];
      for (;;) {
        const byte = Number(v & 0xffn);
        out.push(byte);
        v >>= 8n;
        if ((v === 0n && (byte & 0x80) === 0) || (v === -1n && (byte & 0x80) !== 0)) break;
      }
      this.bytes(0x8a, out.length, ...out);
    }
  }
  float(x: number): void {
    const b = Buffer.alloc(9);
    b[0] = 0x47;
    b.writeDoubleBE(x, 1);
    this.raw(b);
  }
  scalar(v: PyScalar): void {
    if (v === null) this.bytes(0x4e);
    else if (v === true) this.bytes(0x88);
    else if (v === false) this.bytes(0x89);
    else if (typeof v === 'string') this.str(v);
    else if (Number.isInteger(v)) this.int(v);
    else this.float(v);
  }
  global(module: string, name: string): void {
    if (this.get(`g:${module}.${name}`)) return;
    this.raw(Buffer.from(`c${module}\n${name}\n`, 'latin1'));
    this.put(`g:${module}.${name}`);
  }
  intTuple(xs: readonly number[]): void {
    if (xs.length === 0) {
      this.bytes(0x29);
      return; // the empty tuple is a singleton pickle does not memoise
    }
    if (xs.length > 3) this.bytes(0x28);
    for (const x of xs) this.int(x);
    this.bytes(xs.length === 1 ? 0x85 : xs.length === 2 ? 0x86 : xs.length === 3 ? 0x87 : 0x74);
    this.put();
  }
  emptyOrderedDict(): void {
    this.global('collections', 'OrderedDict');
    this.bytes(0x29, 0x52);
    this.put();
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

function storageNumel(s: PthStorage): number {
  return s.data.byteLength / DTYPE_BYTES[s.dtype];
}

export function buildPickle(storages: PthStorage[], tensors: PthTensor[], opts: MakePthOptions = {}): Buffer {
  const w = new PickleWriter();
  w.bytes(0x80, 0x02);
  const outer = opts.wrap !== undefined;
  if (outer) {
    w.bytes(0x7d);
    w.put();
    w.bytes(0x28);
    w.str(opts.wrap!);
  }
  if (opts.ordered) w.emptyOrderedDict();
  else {
    w.bytes(0x7d);
    w.put();
  }
  const items: (() => void)[] = [];
  for (const t of tensors) {
    items.push(() => {
      w.str(t.name);
      if (t.parameter) {
        w.global('torch._utils', '_rebuild_parameter');
        w.bytes(0x28);
      }
      const st = storages[t.storage]!;
      const numel = opts.storageNumel?.[t.storage] ?? storageNumel(st);
      w.global('torch._utils', '_rebuild_tensor_v2');
      w.bytes(0x28, 0x28); // MARK (args) MARK (persistent id)
      w.str('storage');
      w.global('torch', STORAGE_NAMES[st.dtype]);
      w.str(String(t.storage));
      w.str('cpu');
      w.int(numel);
      w.bytes(0x74);
      w.put();
      w.bytes(0x51); // BINPERSID
      w.int(t.offset ?? 0);
      w.intTuple(t.shape);
      w.intTuple(t.stride ?? contiguousStride(t.shape));
      w.bytes(0x89); // requires_grad False
      w.emptyOrderedDict(); // backward hooks
      w.bytes(0x74);
      w.put();
      w.bytes(0x52);
      w.put();
      if (t.parameter) {
        w.bytes(0x88);
        w.emptyOrderedDict();
        w.bytes(0x74);
        w.put();
        w.bytes(0x52);
        w.put();
      }
    });
  }
  for (const [k, v] of Object.entries(opts.extra ?? {})) {
    items.push(() => {
      w.str(k);
      w.scalar(v);
    });
  }
  // pickle batches SETITEMS by 1000 pairs
  for (let i = 0; i < items.length; i += 1000) {
    w.bytes(0x28);
    for (const f of items.slice(i, i + 1000)) f();
    w.bytes(0x75);
  }
  if (opts.ordered) {
    // state: {'_metadata': OrderedDict({'': {'version': 1}})}
    w.bytes(0x7d);
    w.put();
    w.str('_metadata');
    w.emptyOrderedDict();
    w.str('');
    w.bytes(0x7d);
    w.put();
    w.str('version');
    w.int(1);
    w.bytes(0x73, 0x73, 0x73, 0x62); // SETITEM ×3, BUILD
  }
  if (outer) {
    w.str('epoch');
    w.int(3);
    w.bytes(0x75);
  }
  w.bytes(0x2e);
  return w.done();
}

/** Sequential zip writer: local header + data + data descriptor per entry, then the directory. */
class ZipWriter {
  private off = 0;
  private central: { name: Buffer; method: number; crc: number; csize: number; size: number; local: number }[] = [];
  constructor(private readonly fd: number) {}

  private write(b: Uint8Array): void {
    let done = 0;
    while (done < b.length) done += fs.writeSync(this.fd, b, done, Math.min(b.length - done, 1 << 26));
    this.off += b.length;
  }

  add(name: string, data: ArrayBufferView | StreamedData, deflate = false): void {
    const nameBuf = Buffer.from(name, 'utf8');
    const local = this.off;
    // Pad with an extra field so the data starts on a 64-byte boundary, as torch does.
    const base = local + 30 + nameBuf.length + 4;
    const pad = (64 - (base % 64)) % 64;
    const h = Buffer.alloc(30 + nameBuf.length + 4 + pad, 0x5a);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(45, 4);
    h.writeUInt16LE(0x0808, 6);
    h.writeUInt16LE(deflate ? 8 : 0, 8);
    h.fill(0, 10, 26); // time, date, crc, sizes: in the data descriptor
    h.writeUInt16LE(nameBuf.length, 26);
    h.writeUInt16LE(4 + pad, 28);
    nameBuf.copy(h, 30);
    h.writeUInt16LE(0x4246, 30 + nameBuf.length); // "FB"
    h.writeUInt16LE(pad, 32 + nameBuf.length);
    this.write(h);

    let crc = 0;
    let size = 0;
    let csize = 0;
    if ('chunks' in data) {
      if (deflate) throw new Error('cannot deflate streamed data');
      for (const c of data.chunks()) {
        crc = crc32(c, crc);
        size += c.length;
        this.write(c);
      }
      if (size !== data.byteLength) throw new Error(`streamed ${size} bytes, promised ${data.byteLength}`);
      csize = size;
    } else {
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      crc = crc32(bytes);
      size = bytes.length;
      const out = deflate ? zlib.deflateRawSync(bytes) : bytes;
      csize = out.length;
      this.write(out);
    }
    const big = size >= 0xffffffff || csize >= 0xffffffff;
    const dd = Buffer.alloc(big ? 24 : 16);
    dd.writeUInt32LE(0x08074b50, 0);
    dd.writeUInt32LE(crc, 4);
    if (big) {
      dd.writeBigUInt64LE(BigInt(csize), 8);
      dd.writeBigUInt64LE(BigInt(size), 16);
    } else {
      dd.writeUInt32LE(csize, 8);
      dd.writeUInt32LE(size, 12);
    }
    this.write(dd);
    this.central.push({ name: nameBuf, method: deflate ? 8 : 0, crc, csize, size, local });
  }

  finish(): void {
    const cdStart = this.off;
    for (const e of this.central) {
      const z64: bigint[] = [];
      const sizeF = e.size >= 0xffffffff ? (z64.push(BigInt(e.size)), 0xffffffff) : e.size;
      const csizeF = e.csize >= 0xffffffff ? (z64.push(BigInt(e.csize)), 0xffffffff) : e.csize;
      const localF = e.local >= 0xffffffff ? (z64.push(BigInt(e.local)), 0xffffffff) : e.local;
      const extraLen = z64.length > 0 ? 4 + 8 * z64.length : 0;
      const c = Buffer.alloc(46 + e.name.length + extraLen);
      c.writeUInt32LE(0x02014b50, 0);
      c.writeUInt16LE(45, 4);
      c.writeUInt16LE(45, 6);
      c.writeUInt16LE(0x0808, 8);
      c.writeUInt16LE(e.method, 10);
      c.writeUInt32LE(e.crc, 16);
      c.writeUInt32LE(csizeF, 20);
      c.writeUInt32LE(sizeF, 24);
      c.writeUInt16LE(e.name.length, 28);
      c.writeUInt16LE(extraLen, 30);
      c.writeUInt32LE(localF, 42);
      e.name.copy(c, 46);
      if (extraLen > 0) {
        let p = 46 + e.name.length;
        c.writeUInt16LE(1, p);
        c.writeUInt16LE(8 * z64.length, p + 2);
        p += 4;
        for (const v of z64) {
          c.writeBigUInt64LE(v, p);
          p += 8;
        }
      }
      this.write(c);
    }
    const cdSize = this.off - cdStart;
    const n = this.central.length;
    const z64eocd = this.off;
    const r = Buffer.alloc(56 + 20 + 22);
    r.writeUInt32LE(0x06064b50, 0);
    r.writeBigUInt64LE(44n, 4);
    r.writeUInt16LE(45, 12);
    r.writeUInt16LE(45, 14);
    r.writeBigUInt64LE(BigInt(n), 24);
    r.writeBigUInt64LE(BigInt(n), 32);
    r.writeBigUInt64LE(BigInt(cdSize), 40);
    r.writeBigUInt64LE(BigInt(cdStart), 48);
    r.writeUInt32LE(0x07064b50, 56);
    r.writeBigUInt64LE(BigInt(z64eocd), 64);
    r.writeUInt32LE(1, 72);
    const e = 76;
    r.writeUInt32LE(0x06054b50, e);
    r.writeUInt16LE(Math.min(n, 0xffff), e + 8);
    r.writeUInt16LE(Math.min(n, 0xffff), e + 10);
    r.writeUInt32LE(Math.min(cdSize, 0xffffffff), e + 12);
    r.writeUInt32LE(Math.min(cdStart, 0xffffffff), e + 16);
    this.write(r);
  }
}

/** Write a checkpoint from explicit storages and (possibly strided, shared) tensor views. */
export function writePth(path: string, storages: PthStorage[], tensors: PthTensor[], opts: MakePthOptions = {}): void {
  const archive = opts.archive ?? 'archive';
  const fd = fs.openSync(path, 'w');
  try {
    const z = new ZipWriter(fd);
    const pkl = opts.pickle === undefined ? buildPickle(storages, tensors, opts) : opts.pickle;
    if (pkl !== null) z.add(`${archive}/data.pkl`, pkl, opts.deflatePickle === true);
    z.add(`${archive}/.format_version`, Buffer.from('1'));
    z.add(`${archive}/.storage_alignment`, Buffer.from('64'));
    if (opts.byteorder !== null) z.add(`${archive}/byteorder`, Buffer.from(opts.byteorder ?? 'little'));
    storages.forEach((s, i) => z.add(`${archive}/data/${i}`, s.data, opts.deflateStorages === true));
    z.add(`${archive}/version`, Buffer.from('3\n'));
    z.add(`${archive}/.data/serialization_id`, Buffer.from('0123456789012345678901234567890123456789'));
    z.finish();
  } finally {
    fs.closeSync(fd);
  }
}

export interface SimpleTensor {
  name: string;
  dtype: DType;
  shape: number[];
  data: ArrayBufferView | StreamedData;
}

/** One contiguous storage per tensor, like saving a freshly created state_dict. */
export function writeSimplePth(path: string, tensors: SimpleTensor[], opts: MakePthOptions = {}): void {
  writePth(
    path,
    tensors.map((t) => ({ dtype: t.dtype, data: t.data })),
    tensors.map((t, i) => ({ name: t.name, storage: i, shape: t.shape })),
    opts,
  );
}
