import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import yauzl from 'yauzl';
import { UserError } from '../src/util/errors.js';
import { writeFileAtomic, openAtomic } from '../src/util/atomic.js';
import {
  bf16ToF32, decodeToF32, f16BitsToF32, f16BitsToF32Bits, f16ToF32, f32FromBits, f32ToBf16, f32ToBf16Bits, f32ToF16,
  f32ToF16Bits, f32BitsToF16Bits,
} from '../src/io/dtype.js';
import { openCheckpoint } from '../src/io/open.js';
import { PthSource, unpickleTorch } from '../src/io/pth.js';
import { SafetensorsSource, writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';
import { ZipDirectory } from '../src/io/zip.js';
import { DTYPE_BYTES, type DType, type TensorSource } from '../src/io/types.js';
import { contiguousStride, writePth, writeSimplePth, type PthStorage, type PthTensor } from './helpers/make-pth.js';

const FIX = fileURLToPath(new URL('./fixtures/A/', import.meta.url));
const fx = (f: string): string => path.join(FIX, f);
const T = { timeout: 60_000 };

let tmp = '';
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rwkvx-io-'));
});
after(() => {
  if (tmp !== '') fs.rmSync(tmp, { recursive: true, force: true });
});
let counter = 0;
const tmpFile = (ext: string): string => path.join(tmp, `f${counter++}${ext}`);

function throwsUser(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${(e as Error)?.stack ?? String(e)}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), 'message is one line');
    return true;
  });
}

function with_<S extends TensorSource, R>(src: S, f: (s: S) => R): R {
  try {
    return f(src);
  } finally {
    src.close();
  }
}

/** Deterministic pseudo-random numbers (xorshift32) so failures reproduce. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function yauzlRead(file: string, entry: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    yauzl.open(file, { lazyEntries: true }, (err, zip) => {
      if (err || !zip) return reject(err);
      zip.on('entry', (e: yauzl.Entry) => {
        if (e.fileName !== entry) return zip.readEntry();
        zip.openReadStream(e, (err2, stream) => {
          if (err2 || !stream) return reject(err2);
          const parts: Buffer[] = [];
          stream.on('data', (c: Buffer) => parts.push(c));
          stream.on('end', () => {
            zip.close();
            resolve(Buffer.concat(parts));
          });
        });
      });
      zip.on('end', () => reject(new Error(`no entry ${entry}`)));
      zip.readEntry();
    });
  });
}

// ---------------------------------------------------------------------------------------------

describe('dtype conversions', T, () => {
  test('float16 → float32 special values', () => {
    const cases: [number, number][] = [
      [0x0000, 0], [0x3c00, 1], [0xc000, -2], [0x7bff, 65504], [0x0400, 2 ** -14],
      [0x0001, 2 ** -24], [0x03ff, 1023 * 2 ** -24], [0x8001, -(2 ** -24)], [0x7c00, Infinity], [0xfc00, -Infinity],
      [0x3555, 0.333251953125],
    ];
    for (const [h, v] of cases) assert.equal(f16BitsToF32(h), v, `0x${h.toString(16)}`);
    assert.ok(Object.is(f16BitsToF32(0x8000), -0));
    assert.ok(Number.isNaN(f16BitsToF32(0x7e00)));
    assert.ok(Number.isNaN(f16BitsToF32(0xfc01)));
    // The NaN payload and sign survive.
    assert.equal(f16BitsToF32Bits(0xfd23), (0xff800000 | (0x123 << 13)) >>> 0);
  });

  test('every float16 survives float16 → float32 → float16; NaN stays NaN', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const f = f16ToF32(all);
    const back = f32ToF16(f);
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNaN) {
        assert.ok(Number.isNaN(f[h]!));
        assert.equal(back[h]! & 0xfc00, h & 0xfc00);
        assert.notEqual(back[h]! & 0x3ff, 0);
      } else {
        assert.equal(back[h], h, `0x${h.toString(16)}`);
      }
    }
  });

  test('float32 → float16 rounds to nearest even, with overflow and subnormals', () => {
    const cases: [number, number][] = [
      [65504, 0x7bff], [65519.99, 0x7bff], [65520, 0x7c00], [1e9, 0x7c00], [-1e9, 0xfc00],
      [2 ** -25, 0x0000], [2 ** -25 * (1 + 2 ** -23), 0x0001], [3 * 2 ** -25, 0x0002], [5 * 2 ** -25, 0x0002],
      [2 ** -24, 0x0001], [1023 * 2 ** -24 + 2 ** -25, 0x0400], [2 ** -14, 0x0400],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -11 + 2 ** -20, 0x3c01],
      [-0, 0x8000], [Infinity, 0x7c00], [-Infinity, 0xfc00], [1e-30, 0], [-1e-30, 0x8000],
    ];
    for (const [x, h] of cases) assert.equal(f32ToF16Bits(x), h, String(x));
    const nan = f32ToF16Bits(NaN);
    assert.equal(nan & 0x7c00, 0x7c00);
    assert.notEqual(nan & 0x3ff, 0);
    // A NaN whose payload lives only in the low bits must not become an infinity.
    assert.notEqual(f32BitsToF16Bits(0x7f800001) & 0x3ff, 0);
  });

  test('float32 → float16 is the nearest (ties even) on random inputs', () => {
    const r = rng(7);
    for (let i = 0; i < 100_000; i++) {
      const bits = r();
      const x = f32FromBits(bits);
      if (!Number.isFinite(x)) continue;
      const h = f32BitsToF16Bits(bits);
      const y = f16BitsToF32(h);
      if (Math.abs(x) >= 65520) {
        assert.equal(y, x > 0 ? Infinity : -Infinity);
        continue;
      }
      // Neighbours on the same side of zero must not be strictly closer, and a tie goes to even.
      const mag = h & 0x7fff;
      for (const nb of [mag - 1, mag + 1]) {
        if (nb < 0 || nb > 0x7bff) continue;
        const z = f16BitsToF32((h & 0x8000) | nb);
        const dy = Math.abs(x - y);
        const dz = Math.abs(x - z);
        assert.ok(dy < dz || (dy === dz && (mag & 1) === 0), `x=${x} h=${h.toString(16)}`);
      }
    }
  });

  test('bfloat16 conversions', () => {
    const b = new Uint16Array([0x3f80, 0xc040, 0x7f80, 0xff80, 0x0001, 0x8000, 0x7fc1]);
    const f = bf16ToF32(b);
    assert.deepEqual(Array.from(f.subarray(0, 4)), [1, -3, Infinity, -Infinity]);
    assert.equal(f[4], f32FromBits(0x00010000));
    assert.ok(Object.is(f[5], -0));
    assert.ok(Number.isNaN(f[6]!));
    assert.deepEqual(Array.from(f32ToBf16(f)), Array.from(b), 'bf16 → f32 → bf16 is exact');

    assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80, 'tie to even (down)');
    assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82, 'tie to even (up)');
    assert.equal(f32ToBf16Bits(1 + 2 ** -8 + 2 ** -20), 0x3f81);
    assert.equal(f32ToBf16Bits(f32FromBits(0x7f7fffff)), 0x7f80, 'max float32 rounds to inf');
    const nan = f32ToBf16(new Float32Array(new Uint32Array([0x7f800001, 0xff800001]).buffer));
    assert.equal(nan[0], 0x7fc0);
    assert.equal(nan[1], 0xffc0);

    const r = rng(11);
    const bits = new Uint32Array(50_000).map(() => r());
    const src = new Float32Array(bits.buffer);
    const out = f32ToBf16(src);
    for (let i = 0; i < bits.length; i++) {
      const x = src[i]!;
      if (!Number.isFinite(x) || Math.abs(x) > 3.3e38) continue;
      const y = bf16ToF32(new Uint16Array([out[i]!]))[0]!;
      for (const nb of [out[i]! - 1, out[i]! + 1]) {
        if ((nb & 0x7f80) === 0x7f80 || (nb & 0x7fff) === 0x7fff) continue;
        if ((nb & 0x8000) !== (out[i]! & 0x8000)) continue;
        const z = bf16ToF32(new Uint16Array([nb]))[0]!;
        const dy = Math.abs(x - y);
        const dz = Math.abs(x - z);
        assert.ok(dy < dz || (dy === dz && (out[i]! & 1) === 0), `x=${x}`);
      }
    }
  });

  test('decodeToF32 for every dtype, including an unaligned source', () => {
    const dst = new Float32Array(4);
    decodeToF32('I64', new Uint8Array(new BigInt64Array([-5n, 1n << 40n, 0n, 7n]).buffer), 4, dst);
    assert.deepEqual(Array.from(dst), [-5, 2 ** 40, 0, 7]);
    decodeToF32('I32', new Uint8Array(new Int32Array([-1, 2, 3, 2 ** 30]).buffer), 4, dst);
    assert.deepEqual(Array.from(dst), [-1, 2, 3, 2 ** 30]);
    decodeToF32('I16', new Uint8Array(new Int16Array([-1, 2, 3, 4]).buffer), 4, dst);
    assert.deepEqual(Array.from(dst), [-1, 2, 3, 4]);
    decodeToF32('I8', new Uint8Array([255, 1, 128, 0]), 4, dst);
    assert.deepEqual(Array.from(dst), [-1, 1, -128, 0]);
    decodeToF32('U8', new Uint8Array([255, 1, 128, 0]), 4, dst);
    assert.deepEqual(Array.from(dst), [255, 1, 128, 0]);
    decodeToF32('BOOL', new Uint8Array([1, 0, 1, 1]), 4, dst);
    assert.deepEqual(Array.from(dst), [1, 0, 1, 1]);
    decodeToF32('F64', new Uint8Array(new Float64Array([0.1, -2, 1e300, 3]).buffer), 4, dst);
    assert.deepEqual(Array.from(dst), [Math.fround(0.1), -2, Infinity, 3]);
    const bytes = new Uint8Array(9);
    new DataView(bytes.buffer).setUint16(1, 0x3f80, true);
    new DataView(bytes.buffer).setUint16(3, 0xc000, true);
    decodeToF32('BF16', bytes.subarray(1), 2, dst, 2);
    assert.deepEqual(Array.from(dst), [Math.fround(0.1), -2, 1, -2]);
  });
});

// ---------------------------------------------------------------------------------------------

const ATT_VEC = ['x_r', 'x_w', 'x_k', 'x_v', 'x_a', 'x_g', 'w0', 'a0', 'v0', 'k_k', 'k_a'];

describe('PyTorch fixtures', T, () => {
  test('rwkv7.pth: names, shapes, dtype', () => {
    with_(openCheckpoint(fx('rwkv7.pth')), (s) => {
      assert.equal(s.format, 'pth');
      assert.deepEqual(s.metadata, {});
      const names = s.names();
      assert.equal(names.length, 138);
      assert.equal(names[0], 'emb.weight');
      const shape = (n: string): number[] | undefined => s.info(n)?.shape;
      assert.deepEqual(shape('emb.weight'), [1000, 128]);
      assert.deepEqual(shape('head.weight'), [1000, 128]);
      assert.deepEqual(shape('blocks.0.att.r_k'), [2, 64]);
      assert.deepEqual(shape('blocks.0.att.x_r'), [1, 1, 128]);
      assert.deepEqual(shape('blocks.0.ln0.weight'), [128]);
      assert.equal(s.info('blocks.1.ln0.weight'), undefined);
      for (let i = 0; i < 4; i++) {
        for (const v of ATT_VEC) assert.deepEqual(shape(`blocks.${i}.att.${v}`), [1, 1, 128], `${i}.${v}`);
        assert.deepEqual(shape(`blocks.${i}.att.w1`), [128, 32]);
        assert.deepEqual(shape(`blocks.${i}.att.w2`), [32, 128]);
        assert.deepEqual(shape(`blocks.${i}.att.v1`), [128, 16]);
        assert.deepEqual(shape(`blocks.${i}.att.g2`), [32, 128]);
        assert.deepEqual(shape(`blocks.${i}.att.output.weight`), [128, 128]);
        assert.deepEqual(shape(`blocks.${i}.ffn.key.weight`), [512, 128]);
        assert.deepEqual(shape(`blocks.${i}.ffn.value.weight`), [128, 512]);
      }
      for (const n of names) assert.equal(s.info(n)!.dtype, 'F32');
      assert.equal(s.info('nope'), undefined);
      throwsUser(() => s.readF32('nope'), /no tensor named 'nope'/);
    });
  });

  test('rwkv7.pth: bytes match an independent zip reader (yauzl)', async () => {
    const s = openCheckpoint(fx('rwkv7.pth'));
    try {
      for (const [name, key] of [['emb.weight', '0'], ['blocks.0.ln0.weight', '1'], ['head.weight', '137']] as const) {
        const ref = await yauzlRead(fx('rwkv7.pth'), `rwkv7/data/${key}`);
        const raw = s.readRaw(name);
        assert.ok(Buffer.from(raw).equals(ref), name);
        const f = s.readF32(name);
        assert.deepEqual(f, new Float32Array(ref.buffer.slice(ref.byteOffset, ref.byteOffset + ref.length)));
      }
    } finally {
      s.close();
    }
  });

  test('rwkv7.bf16.pth is exactly f32→bf16 (round to nearest even) of rwkv7.pth', () => {
    const a = openCheckpoint(fx('rwkv7.pth'));
    const b = openCheckpoint(fx('rwkv7.bf16.pth'));
    try {
      assert.deepEqual(b.names(), a.names());
      for (const n of a.names()) {
        assert.equal(b.info(n)!.dtype, 'BF16');
        assert.deepEqual(b.info(n)!.shape, a.info(n)!.shape);
        const x = a.readF32(n);
        const y = b.readF32(n);
        assert.deepEqual(y, bf16ToF32(f32ToBf16(x)), n);
        for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i]! - y[i]!) <= Math.abs(x[i]!) * 2 ** -8, n);
        assert.deepEqual(new Uint16Array(b.readRaw(n).buffer), f32ToBf16(x));
      }
    } finally {
      a.close();
      b.close();
    }
  });

  test('rwkvx.pth: rwkv.* and moba.{0,1}.* names', () => {
    with_(openCheckpoint(fx('rwkvx.pth')), (s) => {
      const names = s.names();
      assert.equal(names.length, 160);
      assert.ok(names.every((n) => n.startsWith('rwkv.') || /^moba\.[01]\./.test(n)), 'only rwkv.* and moba.{0,1}.*');
      assert.equal(names.filter((n) => n.startsWith('rwkv.')).length, 138);
      for (const j of [0, 1]) {
        assert.deepEqual(s.info(`moba.${j}.att.receptance.weight`)?.shape, [128, 128]);
        assert.deepEqual(s.info(`moba.${j}.ffn.key.weight`)?.shape, [512, 128]);
        assert.deepEqual(s.info(`moba.${j}.ffn.x_k`)?.shape, [1, 1, 128]);
        assert.deepEqual(s.info(`moba.${j}.ln1.weight`)?.shape, [128]);
      }
      // The RWKV-7 part is the same weights as rwkv7.pth.
      with_(openCheckpoint(fx('rwkv7.pth')), (r) => {
        assert.deepEqual(s.readF32('rwkv.blocks.2.att.key.weight'), r.readF32('blocks.2.att.key.weight'));
      });
    });
  });

  test('readF32 decodes into the caller-supplied array', () => {
    with_(openCheckpoint(fx('rwkv7.bf16.pth')), (s) => {
      let asked = -1;
      const out = s.readF32('emb.weight', (n) => {
        asked = n;
        return new Float32Array(new SharedArrayBuffer(n * 4));
      });
      assert.equal(asked, 128000);
      assert.ok(out.buffer instanceof SharedArrayBuffer);
      assert.deepEqual(Array.from(out), Array.from(s.readF32('emb.weight')));
    });
  });
});

// ---------------------------------------------------------------------------------------------

describe('safetensors', T, () => {
  test('expected.safetensors reads', () => {
    with_(openCheckpoint(fx('expected.safetensors')), (s) => {
      assert.equal(s.format, 'safetensors');
      assert.deepEqual(s.info('tokens'), { name: 'tokens', dtype: 'I32', shape: [200] });
      const tok = s.readF32('tokens');
      assert.equal(tok.length, 200);
      assert.ok(tok.every((t) => Number.isInteger(t) && t >= 0 && t < 1000));
      assert.deepEqual(Array.from(new Int32Array(s.readRaw('tokens').buffer)), Array.from(tok));
      assert.deepEqual(s.info('rwkv7.logits')?.shape, [200, 1000]);
      assert.deepEqual(s.info('rwkvx.official_decode.logits')?.shape, [200, 1000]);
      const logits = s.readF32('rwkv7.logits');
      assert.ok(logits.every(Number.isFinite));
    });
    with_(new SafetensorsSource(fx('grads.safetensors')), (s) => {
      assert.deepEqual(s.info('rwkv7.loss')?.shape, [1]);
      assert.deepEqual(s.info('rwkv7.grad.emb.weight')?.shape, [1000, 128]);
      assert.ok(s.readF32('rwkv7.loss')[0]! > 0);
    });
  });

  test('write → read round trip is bit-exact for every dtype, with metadata', () => {
    const r = rng(3);
    const bytesOf = (n: number): Uint8Array => new Uint8Array(n).map(() => r() & 0xff);
    const tensors: (TensorToWrite & { data: ArrayBufferView })[] = [
      { name: 'w.f32', dtype: 'F32', shape: [3, 5], data: new Float32Array([...Array(15).keys()].map((i) => i / 7 - 1)) },
      { name: 'w.bf16', dtype: 'BF16', shape: [4, 2], data: f32ToBf16(new Float32Array([1, -2, 3.5, 1e-3, 0, -0, 7, 8])) },
      { name: 'w.f16', dtype: 'F16', shape: [7], data: new Uint16Array([0x3c00, 0x7bff, 0x0001, 0x8000, 0x7c00, 0xfc00, 0x3555]) },
      { name: 'w.f64', dtype: 'F64', shape: [2], data: new Float64Array([Math.PI, -1e-300]) },
      { name: 'i64', dtype: 'I64', shape: [2, 1], data: new BigInt64Array([-3n, 1n << 50n]) },
      { name: 'i32', dtype: 'I32', shape: [3], data: new Int32Array([-1, 0, 2 ** 31 - 1]) },
      { name: 'i16', dtype: 'I16', shape: [1], data: new Int16Array([-300]) },
      { name: 'i8', dtype: 'I8', shape: [2], data: new Int8Array([-128, 127]) },
      { name: 'u8', dtype: 'U8', shape: [5], data: bytesOf(5) },
      { name: 'mask', dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) },
      { name: 'scalar', dtype: 'F32', shape: [], data: new Float32Array([42]) },
      { name: 'empty', dtype: 'F16', shape: [0, 4], data: new Uint16Array(0) },
      { name: 'rand', dtype: 'BF16', shape: [33], data: new Uint16Array(bytesOf(66).buffer) },
    ];
    const meta = { format: 'pt', note: 'ünïcode ✓', empty: '' };
    const file = tmpFile('.safetensors');
    writeSafetensors(file, tensors, meta);
    const buf = fs.readFileSync(file);
    const hlen = Number(buf.readBigUInt64LE(0));
    assert.equal(hlen % 8, 0, 'header padded to 8 bytes');
    const header = JSON.parse(buf.toString('utf8', 8, 8 + hlen)) as Record<string, { data_offsets: number[]; dtype: DType }>;
    for (const [k, v] of Object.entries(header)) {
      if (k !== '__metadata__') assert.equal(v.data_offsets[0]! % DTYPE_BYTES[v.dtype], 0, `${k} aligned`);
    }
    assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp')), [], 'no temp file left');

    with_(openCheckpoint(file), (s) => {
      assert.deepEqual(s.metadata, meta);
      assert.deepEqual([...s.names()].sort(), tensors.map((t) => t.name).sort());
      for (const t of tensors) {
        assert.deepEqual(s.info(t.name), { name: t.name, dtype: t.dtype, shape: t.shape });
        const d = t.data as ArrayBufferView;
        const want = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
        assert.deepEqual(s.readRaw(t.name), want, t.name);
      }
      assert.deepEqual(s.readF32('w.f16'), f16ToF32(tensors[2]!.data as Uint16Array));
      assert.deepEqual(s.readF32('rand'), bf16ToF32(tensors[12]!.data as Uint16Array));
      assert.deepEqual(Array.from(s.readF32('i64')), [-3, 2 ** 50]);
      assert.deepEqual(Array.from(s.readF32('scalar')), [42]);
      assert.equal(s.readF32('empty').length, 0);
    });
    // Bounded pieces: a tiny chunk size must give the same values.
    with_(new SafetensorsSource(file, { chunkBytes: 3 }), (s) => {
      assert.deepEqual(s.readF32('rand'), bf16ToF32(tensors[12]!.data as Uint16Array));
      assert.deepEqual(s.readF32('w.f32'), tensors[0]!.data);
      assert.deepEqual(s.readRaw('w.f64'), new Uint8Array((tensors[3]!.data as Float64Array).buffer));
    });

    // Same input (any order) → identical bytes.
    const file2 = tmpFile('.safetensors');
    writeSafetensors(file2, [...tensors].reverse(), { empty: '', note: 'ünïcode ✓', format: 'pt' });
    assert.ok(fs.readFileSync(file2).subarray(8 + hlen).equals(buf.subarray(8 + hlen)));

    // Lazily produced data: each function is called once, and gives the same file.
    const calls: string[] = [];
    const file3 = tmpFile('.safetensors');
    writeSafetensors(file3, tensors.map((t) => ({ ...t, data: () => (calls.push(t.name), t.data as ArrayBufferView) })), meta);
    assert.deepEqual([...calls].sort(), tensors.map((t) => t.name).sort());
    assert.ok(fs.readFileSync(file3).equals(buf));

    // Overwrite in place.
    writeSafetensors(file, [tensors[0]!]);
    with_(openCheckpoint(file), (s) => {
      assert.deepEqual(s.names(), ['w.f32']);
      assert.deepEqual(s.metadata, {});
    });
  });

  test('writer refuses bad input and leaves nothing behind', () => {
    const file = tmpFile('.safetensors');
    throwsUser(() => writeSafetensors(file, [{ name: 'a', dtype: 'F32', shape: [3], data: new Float32Array(2) }]), /'a'.*12 bytes.*8 bytes/);
    throwsUser(() => writeSafetensors(file, [], { n: 3 as unknown as string }), /metadata 'n' is not a string/);
    throwsUser(() => writeSafetensors(file, [
      { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
      { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
    ]), /appears twice/);
    throwsUser(() => writeSafetensors(file, [{ name: 'a', dtype: 'F8' as DType, shape: [1], data: new Uint8Array(1) }]), /unsupported dtype/);
    throwsUser(() => writeSafetensors(file, [{ name: 'a', dtype: 'F32', shape: [-1], data: new Float32Array(1) }]), /bad shape/);
    throwsUser(() => writeSafetensors(path.join(tmp, 'no', 'such', 'dir.safetensors'), []), /cannot write \(ENOENT\)/);
    // A lazily produced tensor of the wrong size is caught after the header is out: the temp file goes.
    throwsUser(() => writeSafetensors(file, [
      { name: 'a', dtype: 'F32', shape: [2], data: new Float32Array(2) },
      { name: 'b', dtype: 'F32', shape: [2], data: () => new Float32Array(3) },
    ]), /'b' is F32 \[2\] \(8 bytes\) but its data has 12 bytes/);
    assert.ok(!fs.existsSync(file));
    assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp')), []);
  });

  test('atomic writes', () => {
    const file = tmpFile('.txt');
    writeFileAtomic(file, 'one');
    writeFileAtomic(file, new Uint8Array([0x74, 0x77, 0x6f]));
    assert.equal(fs.readFileSync(file, 'utf8'), 'two');
    const f = openAtomic(file);
    fs.writeSync(f.fd, 'three');
    assert.equal(fs.readFileSync(file, 'utf8'), 'two', 'target untouched before commit');
    f.abort();
    f.abort();
    assert.ok(!fs.existsSync(f.tempPath));
    assert.equal(fs.readFileSync(file, 'utf8'), 'two');
    const g = openAtomic(file);
    fs.writeSync(g.fd, 'four');
    g.commit();
    g.abort();
    assert.equal(fs.readFileSync(file, 'utf8'), 'four');
  });
});

// ---------------------------------------------------------------------------------------------

/** Row-major gather of a strided view: the reference the reader is checked against. */
function gatherRef<T>(storage: ArrayLike<T>, offset: number, shape: number[], stride: number[]): T[] {
  const out: T[] = [];
  const rec = (d: number, base: number): void => {
    if (d === shape.length) {
      out.push(storage[base]!);
      return;
    }
    for (let i = 0; i < shape[d]!; i++) rec(d + 1, base + i * stride[d]!);
  };
  rec(0, offset);
  return out;
}

describe('PyTorch files written by make-pth', T, () => {
  const f32 = new Float32Array(6 * 4 * 5).map((_, i) => i * 0.5 - 3);
  const bf = f32ToBf16(new Float32Array(40).map((_, i) => (i - 20) / 3));
  const f16 = f32ToF16(new Float32Array(12).map((_, i) => 2 ** (i - 6) * (i % 2 ? -1 : 1)));
  const i64 = new BigInt64Array([1n, -2n, 3n, 1n << 40n, 5n, 6n]);
  const storages: PthStorage[] = [
    { dtype: 'F32', data: f32 },
    { dtype: 'BF16', data: bf },
    { dtype: 'F16', data: f16 },
    { dtype: 'I64', data: i64 },
    { dtype: 'F64', data: new Float64Array([0.25, -1.5, 3]) },
    { dtype: 'I32', data: new Int32Array([7, -8, 9, 10]) },
    { dtype: 'U8', data: new Uint8Array([0, 200, 255]) },
    { dtype: 'BOOL', data: new Uint8Array([1, 0]) },
    { dtype: 'I16', data: new Int16Array([-7, 300]) },
    { dtype: 'I8', data: new Int8Array([-7, 100]) },
  ];
  const storageValues: number[][] = [
    Array.from(f32), Array.from(bf16ToF32(bf)), Array.from(f16ToF32(f16)), [1, -2, 3, 2 ** 40, 5, 6],
    [0.25, -1.5, 3], [7, -8, 9, 10], [0, 200, 255], [1, 0], [-7, 300], [-7, 100],
  ];
  const tensors: PthTensor[] = [
    { name: 'full', storage: 0, shape: [6, 4, 5] },
    { name: 'offset', storage: 0, offset: 17, shape: [3, 5] },
    { name: 'transposed', storage: 0, shape: [20, 6], stride: [1, 20] },
    { name: 'permuted3d', storage: 0, shape: [5, 6, 4], stride: [1, 20, 5] },
    { name: 'sliced', storage: 0, offset: 2, shape: [6, 2], stride: [20, 3] },
    { name: 'every_other', storage: 0, offset: 1, shape: [30], stride: [4] },
    { name: 'expanded', storage: 0, offset: 7, shape: [3, 4], stride: [0, 1] },
    { name: 'shared.a', storage: 1, shape: [4, 5] },
    { name: 'shared.b', storage: 1, offset: 20, shape: [5, 4] },
    { name: 'shared.bt', storage: 1, offset: 20, shape: [4, 5], stride: [1, 4] },
    { name: 'half', storage: 2, shape: [3, 4] },
    { name: 'half.t', storage: 2, shape: [4, 3], stride: [1, 4] },
    { name: 'scalar', storage: 1, offset: 13, shape: [] },
    { name: 'scalar1', storage: 0, offset: 119, shape: [1, 1, 1] },
    { name: 'empty', storage: 0, offset: 0, shape: [0, 5] },
    { name: 'param', storage: 0, offset: 3, shape: [2, 2], parameter: true },
    { name: 'i64', storage: 3, shape: [2, 3] },
    { name: 'i64.t', storage: 3, shape: [3, 2], stride: [1, 3] },
    { name: 'f64', storage: 4, shape: [3] },
    { name: 'i32', storage: 5, offset: 1, shape: [3] },
    { name: 'u8', storage: 6, shape: [3] },
    { name: 'bool', storage: 7, shape: [2] },
    { name: 'i16', storage: 8, shape: [2] },
    { name: 'i8', storage: 9, shape: [2] },
  ];

  function check(file: string, chunkBytes?: number, expectNames = tensors.map((t) => t.name)): void {
    with_(new PthSource(file, { chunkBytes }), (s) => {
      assert.deepEqual(s.names(), expectNames);
      for (const t of tensors) {
        if (!expectNames.includes(t.name)) continue;
        const stride = t.stride ?? contiguousStride(t.shape);
        const want = gatherRef(storageValues[t.storage]!, t.offset ?? 0, t.shape, stride);
        const dtype = storages[t.storage]!.dtype;
        assert.deepEqual(s.info(t.name), { name: t.name, dtype, shape: t.shape });
        assert.deepEqual(Array.from(s.readF32(t.name)), want.map(Math.fround), `${t.name} (chunk ${chunkBytes})`);
        const eb = DTYPE_BYTES[dtype];
        const src = storages[t.storage]!.data as ArrayBufferView;
        const srcBytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
        const elems = Array.from({ length: srcBytes.length / eb }, (_, i) => srcBytes.subarray(i * eb, (i + 1) * eb));
        const wantRaw = gatherRef(elems, t.offset ?? 0, t.shape, stride);
        assert.deepEqual(s.readRaw(t.name), new Uint8Array(wantRaw.flatMap((b) => Array.from(b))), `${t.name} raw`);
      }
    });
  }

  test('offsets, strided views, shared storages, bf16/f16, 0-d and other dtypes', () => {
    const file = tmpFile('.pth');
    writePth(file, storages, tensors);
    for (const chunk of [undefined, 1, 8, 64, 100]) check(file, chunk);
    with_(new PthSource(file), (s) => {
      assert.deepEqual(s.info('scalar')!.shape, []);
      assert.equal(s.readF32('scalar').length, 1);
      const l = s.layout('transposed')!;
      assert.deepEqual([l.offset, l.shape, l.stride], [0, [20, 6], [1, 20]]);
      assert.equal(l.storage, s.layout('full')!.storage);
      assert.equal(s.layout('shared.a')!.storage, s.layout('shared.b')!.storage, 'one storage object for a shared key');
    });
  });

  test('OrderedDict with _metadata, wrapped under state_dict / model / module, extra values, deflated data.pkl', () => {
    const extra = { lr: 0.001, step: 1 << 20, huge: 2 ** 60, name: 'x', flag: false, nothing: null };
    const names = tensors.map((t) => t.name);
    for (const wrap of ['state_dict', 'model', 'module', undefined]) {
      const file = tmpFile('.pth');
      writePth(file, storages, tensors, { wrap, ordered: true, extra, archive: 'my model (v2)', deflatePickle: true });
      check(file, undefined, names);
      with_(openCheckpoint(file), (s) => assert.equal(s.format, 'pth'));
    }
    const nested = tmpFile('.pth');
    writePth(nested, storages, tensors, { wrap: 'weights' });
    throwsUser(() => new PthSource(nested), /no tensors found/);
  });

  test('many tensors (several SETITEMS batches, 4-byte memo indices)', () => {
    const n = 2500;
    const file = tmpFile('.pth');
    const data = new Float32Array(n).map((_, i) => i);
    writePth(file, [{ dtype: 'F32', data }], Array.from({ length: n }, (_, i) => ({ name: `t.${i}`, storage: 0, offset: i, shape: [1] })));
    with_(openCheckpoint(file), (s) => {
      assert.equal(s.names().length, n);
      for (const i of [0, 999, 1000, 2499]) assert.equal(s.readF32(`t.${i}`)[0], i);
    });
  });

  test('writeSimplePth output is readable by Python-style zip consumers (yauzl)', async () => {
    const file = tmpFile('.pth');
    const data = new Uint16Array([1, 2, 3, 4]);
    writeSimplePth(file, [{ name: 'a', dtype: 'BF16', shape: [2, 2], data }]);
    const ref = await yauzlRead(file, 'archive/data/0');
    assert.deepEqual(new Uint8Array(ref), new Uint8Array(data.buffer));
  });
});

// ---------------------------------------------------------------------------------------------

describe('bad input gives a one-line UserError, never a hang', T, () => {
  test('missing, directory, empty, random bytes, legacy format', () => {
    throwsUser(() => openCheckpoint(path.join(tmp, 'does-not-exist.pth')), /does-not-exist\.pth: no such file/);
    throwsUser(() => openCheckpoint(tmp), /is a directory/);
    const empty = tmpFile('.pth');
    fs.writeFileSync(empty, '');
    throwsUser(() => openCheckpoint(empty), /is empty/);
    const r = rng(5);
    for (const n of [1, 3, 8, 100, 5000]) {
      const f = tmpFile('.bin');
      const b = new Uint8Array(n).map(() => r() & 0xff);
      if (n > 8) b[8] = 0x20; // not '{'
      fs.writeFileSync(f, b);
      throwsUser(() => openCheckpoint(f), /neither a PyTorch \.pth \(zip\) nor a safetensors file/);
    }
    const legacy = tmpFile('.pt');
    fs.writeFileSync(legacy, Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
    throwsUser(() => openCheckpoint(legacy), /legacy \(pre-1\.6/);
  });

  test('a .pth truncated anywhere', () => {
    const full = fs.readFileSync(fx('rwkv7.bf16.pth'));
    const cuts = [1, 4, 10, 29, 30, 64, 5000, 14000, 100_000, full.length >> 1, full.length - 200, full.length - 98, full.length - 22, full.length - 1];
    for (const cut of cuts) {
      const f = tmpFile('.pth');
      fs.writeFileSync(f, full.subarray(0, cut));
      const t0 = Date.now();
      throwsUser(() => openCheckpoint(f), cut < 4 ? /neither/ : /truncated|corrupt|too short/);
      assert.ok(Date.now() - t0 < 2000);
    }
  });

  test('corrupt .pth files', () => {
    const one: PthStorage[] = [{ dtype: 'F32', data: new Float32Array(4) }];
    const t: PthTensor[] = [{ name: 'w', storage: 0, shape: [4] }];
    const mk = (opts: Parameters<typeof writePth>[3], st = one, ts = t): string => {
      const f = tmpFile('.pth');
      writePth(f, st, ts, opts);
      return f;
    };
    throwsUser(() => openCheckpoint(mk({ byteorder: 'big' })), /big-endian/);
    throwsUser(() => openCheckpoint(mk({ deflateStorages: true })), /data\/0 is compressed/);
    throwsUser(() => openCheckpoint(mk({ pickle: null })), /no data\.pkl/);
    throwsUser(() => openCheckpoint(mk({ storageNumel: { 0: 5 } })), /has 16 bytes but needs 20/);
    throwsUser(() => openCheckpoint(mk({}, one, [{ name: 'w', storage: 0, offset: 1, shape: [4] }])), /tensor 'w' reaches element 4 .* holds 4/);
    throwsUser(() => openCheckpoint(mk({}, one, [{ name: 'w', storage: 0, shape: [2, 2], stride: [3, 1] }])), /reaches element 4/);
    const huge = mk({}, one, [{ name: 'w', storage: 0, shape: [2 ** 40], stride: [0] }]);
    with_(openCheckpoint(huge), (s) => throwsUser(() => s.readF32('w'), /'w' has 1099511627776 elements, too many to load/));
    // Pickles that are not a tensor dict, or reach outside the whitelist.
    const pk = (...parts: (number[] | string | Uint8Array)[]): Uint8Array =>
      Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p as number[]))));
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2], 'cos\nsystem\n', [0x58, 4, 0, 0, 0], 'echo', [0x85, 0x52, 0x2e]) })), /'os\.system'/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2], [0x8c, 8], 'builtins', [0x8c, 4], 'eval', [0x93, 0x2e]) })), /'builtins\.eval'/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2], 'ctorch\nComplexFloatStorage\n.') })), /torch\.ComplexFloatStorage is not supported/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x7d, 0x2e]) })), /no tensors found/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x5d, 0x2e]) })), /holds a list, not a dict of tensors/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x7d, 0xff, 0x2e]) })), /unsupported pickle opcode 0xff at byte 3/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x7d]) })), /without a STOP/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x58, 0xff, 0xff, 0xff, 0x7f, 0x2e]) })), /data ends inside an opcode/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x68, 9, 0x2e]) })), /memo key 9 is missing/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x2e]) })), /stack underflow/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x7d, 0x4b, 1, 0x51, 0x2e]) })), /persistent id/);
    throwsUser(() => openCheckpoint(mk({ pickle: pk([0x80, 2, 0x8b, 0, 0, 1, 0], Buffer.alloc(65536, 1), [0x2e]) })), /integer of 65536 bytes/);
    // A zip with its directory mangled.
    const good = fs.readFileSync(mk({}));
    const eocd = good.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
    const cd = good.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    const bad1 = Buffer.from(good);
    bad1.writeUInt32LE(0x12345678, cd);
    const f1 = tmpFile('.pth');
    fs.writeFileSync(f1, bad1);
    throwsUser(() => openCheckpoint(f1), /central directory entry 0 is damaged/);
    const bad2 = Buffer.from(good.subarray(0, eocd + 22)); // the classic EOCD alone, no ZIP64 locator
    bad2.writeUInt32LE(0, eocd - 20);
    bad2.writeUInt32LE(0xfffffff0, eocd + 16);
    const f2 = tmpFile('.pth');
    fs.writeFileSync(f2, bad2);
    throwsUser(() => openCheckpoint(f2), /central directory extends past/);
  });

  test('fuzzed .pth files and pickles: a value or a UserError, quickly', () => {
    const r = rng(99);
    const base = tmpFile('.pth');
    writePth(base, [{ dtype: 'BF16', data: new Uint16Array(64).map((_, i) => i) }, { dtype: 'F32', data: new Float32Array(8) }], [
      { name: 'a', storage: 0, shape: [8, 8] }, { name: 'b', storage: 0, offset: 1, shape: [4, 4], stride: [1, 8] },
      { name: 'c', storage: 1, shape: [2, 4], parameter: true },
    ], { ordered: true, wrap: 'state_dict' });
    const good = fs.readFileSync(base);
    let userErrors = 0;
    const t0 = Date.now();
    for (let i = 0; i < 400; i++) {
      const b = Buffer.from(good);
      const k = 1 + (r() % 4);
      for (let j = 0; j < k; j++) {
        // Bias the damage towards data.pkl and the directory, where parsing happens.
        const region = r() % 3;
        const pos = region === 0 ? 64 + (r() % 900) : region === 1 ? b.length - 1 - (r() % 700) : r() % b.length;
        b[Math.min(Math.max(pos, 0), b.length - 1)] = r() & 0xff;
      }
      const f = path.join(tmp, 'fuzz.pth');
      fs.writeFileSync(f, b);
      try {
        with_(openCheckpoint(f), (s) => {
          for (const n of s.names()) s.readF32(n);
        });
      } catch (e) {
        if (!(e instanceof UserError)) throw new Error(`iteration ${i}: not a UserError: ${(e as Error).stack}`);
        userErrors++;
      }
    }
    assert.ok(userErrors > 50, `most mutations are caught (${userErrors})`);

    const zd = (() => {
      const fd = fs.openSync(fx('rwkv7.bf16.pth'), 'r');
      try {
        const z = new ZipDirectory(fd, fs.fstatSync(fd).size, 'x');
        return z.read(z.entries.get('rwkv7.bf16/data.pkl')!, 1 << 20);
      } finally {
        fs.closeSync(fd);
      }
    })();
    assert.ok(unpickleTorch(zd, 'ok') instanceof Map);
    for (let i = 0; i < 1500; i++) {
      let b = Buffer.from(zd);
      const mode = r() % 3;
      if (mode === 0) b = b.subarray(0, r() % b.length);
      else for (let j = 0, k = 1 + (r() % 3); j < k; j++) b[r() % b.length] = r() & 0xff;
      try {
        unpickleTorch(b, 'fuzz');
      } catch (e) {
        if (!(e instanceof UserError)) throw new Error(`pickle iteration ${i}: not a UserError: ${(e as Error).stack}`);
      }
    }
    assert.ok(Date.now() - t0 < 30_000);
  });

  test('bad safetensors files', () => {
    const file = tmpFile('.safetensors');
    writeSafetensors(file, [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: new Float32Array(6) },
      { name: 'b', dtype: 'BF16', shape: [4], data: new Uint16Array(4) },
    ], { k: 'v' });
    const good = fs.readFileSync(file);
    const hlen = Number(good.readBigUInt64LE(0));
    const header = JSON.parse(good.toString('utf8', 8, 8 + hlen)) as Record<string, unknown>;
    const variant = (h: unknown, tail = good.subarray(8 + hlen)): string => {
      const json = Buffer.from(JSON.stringify(h));
      const pre = Buffer.alloc(8);
      pre.writeBigUInt64LE(BigInt(json.length));
      const f = tmpFile('.safetensors');
      fs.writeFileSync(f, Buffer.concat([pre, json, tail]));
      return f;
    };
    const with_a = (a: unknown): Record<string, unknown> => ({ ...header, a });

    const f1 = tmpFile('.safetensors');
    const b1 = Buffer.from(good);
    b1.writeBigUInt64LE(BigInt(good.length), 0);
    fs.writeFileSync(f1, b1);
    throwsUser(() => openCheckpoint(f1), /header length \d+ exceeds the file size/);
    b1.writeBigUInt64LE(0xffffffffffffffffn, 0);
    fs.writeFileSync(f1, b1);
    throwsUser(() => new SafetensorsSource(f1), /header length 18446744073709551615 exceeds the file size/);

    throwsUser(() => openCheckpoint(variant(with_a({ dtype: 'F32', shape: [2, 3], data_offsets: [32, 56] }))), /'a' data_offsets \[32, 56\] lie beyond the end of the file/);
    throwsUser(() => openCheckpoint(variant(with_a({ dtype: 'F32', shape: [2, 3], data_offsets: [0, 20] }))), /'a' data_offsets \[0, 20\] hold 20 bytes but F32 \[2,3\] needs 24/);
    throwsUser(() => openCheckpoint(variant(with_a({ dtype: 'F32', shape: [2, 3], data_offsets: [24, 0] }))), /'a' has bad data_offsets/);
    throwsUser(() => openCheckpoint(variant(with_a({ dtype: 'Q4', shape: [2, 3], data_offsets: [0, 24] }))), /'a' has unsupported dtype "Q4"/);
    throwsUser(() => openCheckpoint(variant(with_a({ dtype: 'F32', shape: [2, -3], data_offsets: [0, 24] }))), /'a' has a bad shape/);
    throwsUser(() => openCheckpoint(variant({ ...header, __metadata__: { n: 1 } })), /__metadata__ value 'n' is not a string/);
    throwsUser(() => new SafetensorsSource(variant([1, 2])), /not a JSON object/);

    const f2 = tmpFile('.safetensors');
    fs.writeFileSync(f2, Buffer.concat([good.subarray(0, 8), Buffer.from('{"a": [')]));
    throwsUser(() => openCheckpoint(f2), /exceeds the file size/);
    const f3 = tmpFile('.safetensors');
    const b3 = Buffer.from(good);
    b3[9] = 0x7b;
    fs.writeFileSync(f3, b3);
    throwsUser(() => openCheckpoint(f3), /header is not valid JSON/);

    for (const cut of [1, 7, 10, good.length - 1, good.length - 8, 8 + hlen + 3]) {
      const f = tmpFile('.safetensors');
      fs.writeFileSync(f, good.subarray(0, cut));
      throwsUser(() => new SafetensorsSource(f), /truncated|too short|exceeds/);
    }
  });
});
