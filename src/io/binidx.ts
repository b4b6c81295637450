/**
 * Megatron "binidx" token datasets (MMapIndexedDataset), as RWKV's trainers read them:
 *   PREFIX.bin — every token, uint16 little-endian, documents back to back, each ended by token 0;
 *   PREFIX.idx — magic "MMIDIDX\0\0", version u64 = 1, dtype code u8 (8 = uint16), sequence count u64,
 *                document count + 1 u64, sizes i32[n], byte pointers i64[n], document index i64[n+1].
 * Node cannot mmap without a native addon; the reader does positioned reads instead (the OS page cache
 * plays the role of the mapping), so a dataset of any size costs only its index in memory.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { openAtomic, writeAll } from '../util/atomic.js';
import { fail } from '../util/errors.js';

const MAGIC = Buffer.from('MMIDIDX\x00\x00', 'latin1');
const DTYPE_UINT16 = 8;

/** Streams documents into PREFIX.bin/.idx; both files appear atomically on finish(). */
export class BinIdxWriter {
  private bin;
  private sizes: number[] = [];
  private tokens = 0;
  private buf = new Uint16Array(1 << 16);

  constructor(readonly prefix: string) {
    this.bin = openAtomic(`${prefix}.bin`);
  }

  /** Adds one document; the end-of-document token 0 is appended. */
  addDocument(ids: ArrayLike<number>): void {
    const n = ids.length + 1;
    if (this.buf.length < n) this.buf = new Uint16Array(n);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id < 0 || id > 65535) fail(`token id ${id} does not fit binidx uint16`);
      this.buf[i] = id;
    }
    this.buf[ids.length] = 0;
    writeAll(this.bin.fd, this.buf.subarray(0, n), this.bin.path);
    this.sizes.push(n);
    this.tokens += n;
  }

  get documentCount(): number { return this.sizes.length; }
  get tokenCount(): number { return this.tokens; }

  finish(): void {
    const n = this.sizes.length;
    const head = Buffer.alloc(9 + 8 + 1 + 8 + 8);
    MAGIC.copy(head, 0);
    head.writeBigUInt64LE(1n, 9);
    head.writeUInt8(DTYPE_UINT16, 17);
    head.writeBigUInt64LE(BigInt(n), 18);
    head.writeBigUInt64LE(BigInt(n + 1), 26);
    const sizes = new Int32Array(this.sizes);
    const pointers = new BigInt64Array(n);
    const docIdx = new BigInt64Array(n + 1);
    let p = 0n;
    for (let i = 0; i < n; i++) { pointers[i] = p; p += BigInt(this.sizes[i] * 2); docIdx[i + 1] = BigInt(i + 1); }
    const idx = openAtomic(`${this.prefix}.idx`);
    try {
      writeAll(idx.fd, head, idx.path);
      writeAll(idx.fd, sizes, idx.path);
      writeAll(idx.fd, pointers, idx.path);
      writeAll(idx.fd, docIdx, idx.path);
      this.bin.commit();
      idx.commit();
    } catch (e) {
      idx.abort();
      this.bin.abort();
      throw e;
    }
  }

  abort(): void {
    this.bin.abort();
  }
}

/** Random access to the token stream of a binidx dataset. */
export class BinIdxReader {
  readonly tokens: number;
  readonly documents: number;
  private fd: number;

  constructor(readonly prefix: string) {
    let idx: Buffer;
    try {
      const fd = openSync(`${prefix}.idx`, 'r');
      const size = fstatSync(fd).size;
      idx = Buffer.alloc(size);
      readSync(fd, idx, 0, size, 0);
      closeSync(fd);
    } catch (e) {
      fail(`cannot read ${prefix}.idx: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (idx.length < 34 || !idx.subarray(0, 9).equals(MAGIC)) fail(`${prefix}.idx is not a binidx index (bad magic)`);
    if (idx.readBigUInt64LE(9) !== 1n) fail(`${prefix}.idx: unsupported binidx version ${idx.readBigUInt64LE(9)}`);
    if (idx.readUInt8(17) !== DTYPE_UINT16) fail(`${prefix}.idx: token dtype code ${idx.readUInt8(17)} is not uint16 (8)`);
    const n = Number(idx.readBigUInt64LE(18));
    if (idx.length < 34 + n * 12) fail(`${prefix}.idx is truncated`);
    let total = 0;
    for (let i = 0; i < n; i++) total += idx.readInt32LE(34 + i * 4);
    this.documents = n;
    this.tokens = total;
    try {
      this.fd = openSync(`${prefix}.bin`, 'r');
    } catch (e) {
      fail(`cannot read ${prefix}.bin: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const binSize = fstatSync(this.fd).size;
    if (binSize < total * 2) fail(`${prefix}.bin holds ${binSize / 2} tokens but the index says ${total}`);
  }

  /** Tokens [start, start + count) of the whole stream. */
  read(start: number, count: number): Uint16Array {
    if (start < 0 || start + count > this.tokens) fail(`read of tokens [${start}, ${start + count}) is outside the dataset (${this.tokens} tokens)`);
    const out = new Uint16Array(count);
    const bytes = new Uint8Array(out.buffer);
    let done = 0;
    while (done < bytes.length) {
      const n = readSync(this.fd, bytes, done, bytes.length - done, start * 2 + done);
      if (n === 0) fail(`${this.prefix}.bin ended early`);
      done += n;
    }
    return out;
  }

  close(): void {
    closeSync(this.fd);
  }
}

function isPrime(n: number): boolean {
  if (n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/** The largest prime p ≡ 2 (mod 3) below datalen/ctx − 1 (cubing is then a bijection mod p). */
export function magicPrime(tokens: number, ctx: number): number {
  for (let p = Math.floor(tokens / ctx - 1) - 1; p >= 2; p--) if (p % 3 === 2 && isPrime(p)) return p;
  return fail(`the dataset (${tokens} tokens) is too small for context ${ctx}: need at least ${3 * ctx} tokens`);
}

/**
 * Start of training sample `index` (0, 1, 2, …, counting across steps and micro-batches), as RWKV-LM
 * does it: ((φ·ii³) mod p)·ctx with ii = index + 1 and φ = ⌊p·(√5 − 1)/2⌋. Deterministic, visits every
 * one of the p windows once per p samples, and spreads neighbours far apart.
 */
export function sampleOffset(index: number, p: number, ctx: number): number {
  const factor = BigInt(Math.floor((p * (Math.sqrt(5) - 1)) / 2));
  const ii = BigInt(index + 1);
  const P = BigInt(p);
  return Number(((factor * ((ii * ii * ii) % P)) % P)) * ctx;
}
