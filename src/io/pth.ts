/**
 * PyTorch zip checkpoints (torch.save since 1.6): `<dir>/data.pkl` describes the object tree,
 * each tensor storage lives uncompressed in `<dir>/data/<key>`. Only the zip directory and the
 * tensor descriptors are kept in memory; tensor bytes are pread from the file on request.
 */
import * as fs from 'node:fs';
import { UserError } from '../util/errors.js';
import { DEFAULT_CHUNK_BYTES, Scratch, decodeToF32, readExactly, readRegionF32, openAndInit } from './dtype.js';
import { isPyCallable, isTuple, unpickle, type PyCallable } from './pickle.js';
import { DTYPE_BYTES, type DType, type F32Alloc, type TensorInfo, type TensorSource } from './types.js';
import { ZipDirectory, type ZipEntry } from './zip.js';

/** data.pkl of a checkpoint with tens of thousands of tensors is a few MB; this only stops absurd inputs. */
const MAX_PICKLE_BYTES = 1 << 30;

const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'F32', HalfStorage: 'F16', BFloat16Storage: 'BF16', DoubleStorage: 'F64',
  LongStorage: 'I64', IntStorage: 'I32', ShortStorage: 'I16', CharStorage: 'I8',
  ByteStorage: 'U8', BoolStorage: 'BOOL',
};

const TORCH_DTYPES: Record<string, DType> = {
  float32: 'F32', float: 'F32', float16: 'F16', half: 'F16', bfloat16: 'BF16', float64: 'F64',
  double: 'F64', int64: 'I64', long: 'I64', int32: 'I32', int: 'I32', int16: 'I16', short: 'I16',
  int8: 'I8', uint8: 'U8', bool: 'BOOL',
};

/** A storage type global such as torch.BFloat16Storage; it only ever appears inside a persistent id. */
export class StorageType {
  constructor(readonly pyName: string, readonly dtype: DType) {}
}

/** A torch dtype global (torch.bfloat16 …); accepted so that metadata mentioning one does not fail. */
export class TorchDType {
  constructor(readonly pyName: string, readonly dtype: DType) {}
}

/** A class used only as a marker argument (torch.Tensor, Parameter) in _rebuild_from_type_v2. */
class TypeMarker {
  constructor(readonly pyName: string) {}
}

export interface StorageRef {
  readonly key: string;
  readonly dtype: DType;
  /** Elements, as recorded in the persistent id. */
  readonly numel: number;
}

export interface TensorRef {
  readonly storage: StorageRef;
  /** In elements of the storage's dtype. */
  readonly offset: number;
  readonly shape: readonly number[];
  readonly stride: readonly number[];
}

function isTensorRef(v: unknown): v is TensorRef {
  return v instanceof TensorDescriptor;
}

class TensorDescriptor implements TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {}
}

function callable(pyName: string, fn: (args: readonly unknown[]) => unknown): PyCallable {
  return { pyName, call: fn };
}

/**
 * Parse a torch data.pkl into plain values, TensorRefs and StorageRefs. Exposed for tests; the
 * rest of the engine goes through PthSource.
 */
export function unpickleTorch(data: Uint8Array, label: string): unknown {
  const bad = (msg: string): never => {
    throw new UserError(`${label}: ${msg}`);
  };
  const int = (v: unknown, what: string): number => {
    if (typeof v === 'bigint') bad(`${what} ${v} is out of range`);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(`${what} is not a non-negative integer`);
    return v as number;
  };
  const intList = (v: unknown, what: string): number[] => {
    if (!Array.isArray(v)) bad(`${what} is not a tuple`);
    return (v as unknown[]).map((x) => int(x, what));
  };

  const rebuildTensor = callable('torch._utils._rebuild_tensor_v2', (args) => {
    if (args.length < 4) bad('_rebuild_tensor_v2 called with too few arguments');
    const storage = args[0];
    if (!(storage instanceof StorageDescriptor)) bad('a tensor is not backed by a checkpoint storage');
    const shape = intList(args[2], 'tensor size');
    const stride = intList(args[3], 'tensor stride');
    if (shape.length !== stride.length) bad(`tensor size ${JSON.stringify(shape)} and stride ${JSON.stringify(stride)} differ in length`);
    return new TensorDescriptor(storage as StorageDescriptor, int(args[1], 'storage offset'), shape, stride);
  });
  const passFirst = (pyName: string) => callable(pyName, (args) => args[0]);
  const orderedDict = callable('collections.OrderedDict', (args) => {
    const m = new Map<unknown, unknown>();
    const init = args[0];
    if (init instanceof Map) for (const [k, v] of init) m.set(k, v);
    else if (Array.isArray(init)) {
      for (const kv of init) {
        if (!Array.isArray(kv) || kv.length !== 2) bad('OrderedDict built from something other than key/value pairs');
        m.set(kv[0], kv[1]);
      }
    }
    return m;
  });
  const rebuildFromType = callable('torch._tensor._rebuild_from_type_v2', (args) => {
    const [fn, , fnArgs] = args;
    if (!isPyCallable(fn) || !Array.isArray(fnArgs)) bad('_rebuild_from_type_v2 called with unexpected arguments');
    return (fn as PyCallable).call(fnArgs as unknown[]);
  });
  const builtins: Record<string, PyCallable> = {
    dict: callable('builtins.dict', (a) => orderedDict.call(a)),
    list: callable('builtins.list', (a) => (Array.isArray(a[0]) ? [...a[0]] : a[0] instanceof Set ? [...a[0]] : [])),
    tuple: callable('builtins.tuple', (a) => Object.freeze(Array.isArray(a[0]) ? [...a[0]] : [])),
    set: callable('builtins.set', (a) => new Set(Array.isArray(a[0]) ? a[0] : [])),
    frozenset: callable('builtins.frozenset', (a) => new Set(Array.isArray(a[0]) ? a[0] : [])),
  };
  // Protocol 2 pickles Python 3 bytes as _codecs.encode(latin1 text, 'latin1').
  const codecsEncode = callable('_codecs.encode', (a) => {
    if (typeof a[0] !== 'string' || (a[1] !== 'latin1' && a[1] !== 'latin-1')) bad('_codecs.encode called with unexpected arguments');
    return Uint8Array.from(a[0] as string, (c) => c.charCodeAt(0) & 0xff);
  });

  const resolveGlobal = (module: string, name: string): unknown => {
    if (module === 'collections' && name === 'OrderedDict') return orderedDict;
    if (module === 'torch._utils') {
      if (name === '_rebuild_tensor_v2' || name === '_rebuild_tensor') return rebuildTensor;
      if (name === '_rebuild_parameter' || name === '_rebuild_parameter_with_state') return passFirst(`torch._utils.${name}`);
    }
    if (module === 'torch._tensor' && name === '_rebuild_from_type_v2') return rebuildFromType;
    if (module === 'torch') {
      const sd = STORAGE_DTYPES[name];
      if (sd !== undefined) return new StorageType(`torch.${name}`, sd);
      if (name === 'UntypedStorage') return new StorageType('torch.UntypedStorage', 'U8');
      const td = TORCH_DTYPES[name];
      if (td !== undefined) return new TorchDType(`torch.${name}`, td);
      if (name === 'Tensor') return new TypeMarker('torch.Tensor');
      if (name.endsWith('Storage')) bad(`tensor storage type torch.${name} is not supported`);
    }
    if (module === 'torch.storage' && name === 'UntypedStorage') return new StorageType('torch.UntypedStorage', 'U8');
    if (module === 'torch.nn.parameter' && name === 'Parameter') return new TypeMarker('torch.nn.parameter.Parameter');
    if ((module === 'builtins' || module === '__builtin__') && Object.hasOwn(builtins, name)) return builtins[name];
    if (module === '_codecs' && name === 'encode') return codecsEncode;
    return undefined;
  };

  const storages = new Map<string, StorageDescriptor>();
  const persistentLoad = (pid: unknown): unknown => {
    if (!Array.isArray(pid) || pid.length < 5 || pid[0] !== 'storage') bad('unexpected persistent id (not a storage reference)');
    const [, type, key, , numelRaw] = pid as unknown[];
    if (!(type instanceof StorageType)) bad('storage reference without a storage type');
    if (typeof key !== 'string' || key === '' || key.includes('/') || key.includes('..')) bad('storage reference with a bad key');
    const numel = int(numelRaw, 'storage size');
    const st = type as StorageType;
    const k = key as string;
    const prev = storages.get(k);
    if (prev !== undefined) {
      if (prev.dtype !== st.dtype) bad(`storage '${k}' is used with two element types`);
      return prev;
    }
    const s = new StorageDescriptor(k, st.dtype, numel);
    storages.set(k, s);
    return s;
  };

  return unpickle(data, { label: `${label}: data.pkl`, resolveGlobal, persistentLoad });
}

class StorageDescriptor implements StorageRef {
  constructor(readonly key: string, readonly dtype: DType, readonly numel: number) {}
}

/** Pick the dict of tensors: the top level, or its state_dict / model / module entry. */
function findTensorDict(root: unknown, label: string): Map<string, TensorRef> {
  const tensorsOf = (d: Map<unknown, unknown>): Map<string, TensorRef> => {
    const out = new Map<string, TensorRef>();
    for (const [k, v] of d) if (typeof k === 'string' && isTensorRef(v)) out.set(k, v);
    return out;
  };
  if (!(root instanceof Map)) {
    throw new UserError(`${label}: the checkpoint holds a ${describe(root)}, not a dict of tensors (a state_dict)`);
  }
  const top = tensorsOf(root);
  if (top.size > 0) return top;
  for (const key of ['state_dict', 'model', 'module']) {
    const inner = root.get(key);
    if (inner instanceof Map) {
      const t = tensorsOf(inner);
      if (t.size > 0) return t;
    }
  }
  throw new UserError(`${label}: no tensors found (neither at the top level nor under 'state_dict', 'model' or 'module')`);
}

function describe(v: unknown): string {
  if (v === null) return 'None';
  if (Array.isArray(v)) return isTuple(v) ? 'tuple' : 'list';
  if (isTensorRef(v)) return 'single tensor';
  return typeof v;
}

export interface PthOptions {
  /** Upper bound on one read and on the scratch buffer for dtype conversion (default 16 MiB). */
  chunkBytes?: number;
}

interface Entry {
  info: TensorInfo;
  ref: TensorRef;
  numel: number;
  /** Absolute file offset of storage element 0. */
  base: number;
  /** Layout after dropping size-1 dims and merging dims that are contiguous with each other. */
  dims: { size: number; stride: number }[];
  contiguous: boolean;
}

export class PthSource implements TensorSource {
  readonly format = 'pth' as const;
  readonly metadata: Record<string, string> = {};
  private fd: number | undefined;
  private readonly entries = new Map<string, Entry>();
  private readonly scratch: Scratch;

  constructor(readonly path: string, options: PthOptions = {}) {
    this.scratch = new Scratch(options.chunkBytes ?? DEFAULT_CHUNK_BYTES);
    openAndInit(path, (fd) => {
      this.fd = fd;
      this.load(fd);
    });
  }

  private load(fd: number): void {
    const label = this.path;
    const size = fs.fstatSync(fd).size;
    const zip = new ZipDirectory(fd, size, label);

    let pkl: ZipEntry | undefined;
    for (const e of zip.entries.values()) {
      if (/^(?:[^/]+\/)?data\.pkl$/.test(e.name) && (pkl === undefined || e.name.length < pkl.name.length)) pkl = e;
    }
    if (pkl === undefined) throw new UserError(`${label}: no data.pkl in the zip archive; not a PyTorch checkpoint`);
    const prefix = pkl.name.slice(0, pkl.name.length - 'data.pkl'.length);

    const bo = zip.entries.get(`${prefix}byteorder`);
    if (bo !== undefined) {
      const order = Buffer.from(zip.read(bo, 64)).toString('latin1').trim();
      if (order === 'big') throw new UserError(`${label}: big-endian checkpoint (byteorder 'big'); only little-endian files are supported`);
      if (order !== 'little') throw new UserError(`${label}: unknown byteorder '${order}'`);
    }

    const root = unpickleTorch(zip.read(pkl, MAX_PICKLE_BYTES), label);
    const tensors = findTensorDict(root, label);

    const storageBase = new Map<string, number>();
    for (const [name, ref] of tensors) {
      const { storage, offset, shape, stride } = ref;
      const eb = DTYPE_BYTES[storage.dtype];
      let base = storageBase.get(storage.key);
      if (base === undefined) {
        const entryName = `${prefix}data/${storage.key}`;
        const e = zip.entries.get(entryName);
        if (e === undefined) throw new UserError(`${label}: storage '${storage.key}' of tensor '${name}' is missing (no ${entryName} in the archive)`);
        if (e.method !== 0) {
          throw new UserError(`${label}: storage entry ${entryName} is compressed (method ${e.method}); torch writes storages uncompressed, re-save the checkpoint with torch.save`);
        }
        if (e.compressedSize !== e.size) {
          throw new UserError(`${label}: zip directory gives storage entry ${entryName} two different sizes; the file is corrupt`);
        }
        const needBytes = storage.numel * eb;
        if (e.size < needBytes) {
          throw new UserError(`${label}: storage entry ${entryName} has ${e.size} bytes but needs ${needBytes} (${storage.numel} × ${storage.dtype}); the file is corrupt`);
        }
        base = zip.dataOffset(e);
        storageBase.set(storage.key, base);
      }
      let numel = 1;
      for (const s of shape) numel *= s;
      if (!Number.isSafeInteger(numel * eb)) throw new UserError(`${label}: tensor '${name}' is implausibly large`);
      if (numel > 0) {
        let last = offset;
        for (let i = 0; i < shape.length; i++) last += (shape[i]! - 1) * stride[i]!;
        if (last >= storage.numel) {
          throw new UserError(`${label}: tensor '${name}' reaches element ${last} of storage '${storage.key}', which holds ${storage.numel}; the file is corrupt`);
        }
      }
      const dims = normalizeLayout(shape, stride);
      const contiguous = dims.length === 0 || (dims.length === 1 && dims[0]!.stride === 1);
      this.entries.set(name, {
        info: Object.freeze({ name, dtype: storage.dtype, shape: Object.freeze([...shape]) as number[] }),
        ref, numel, base, dims, contiguous,
      });
    }
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  info(name: string): TensorInfo | undefined {
    const e = this.entries.get(name);
    return e === undefined ? undefined : { name: e.info.name, dtype: e.info.dtype, shape: [...e.info.shape] };
  }

  /** Storage layout of a tensor (offset and strides in elements); for diagnostics and tests. */
  layout(name: string): TensorRef | undefined {
    return this.entries.get(name)?.ref;
  }

  readF32(name: string, alloc?: F32Alloc): Float32Array {
    const e = this.entry(name);
    const dst = alloc !== undefined ? alloc(e.numel) : this.allocate(e, () => new Float32Array(e.numel));
    if (dst.length !== e.numel) throw new Error(`readF32: alloc returned ${dst.length} elements for '${name}', expected ${e.numel}`);
    if (e.numel === 0) return dst;
    const dtype = e.info.dtype;
    const eb = DTYPE_BYTES[dtype];
    if (e.contiguous) {
      readRegionF32(this.fd!, e.base + e.ref.offset * eb, dtype, e.numel, dst, 0, this.scratch, this.path);
    } else {
      // A strided view costs one raw copy of the tensor (its own dtype), gathered in storage order.
      decodeToF32(dtype, this.gather(e), e.numel, dst, 0);
    }
    return dst;
  }

  readRaw(name: string): Uint8Array {
    const e = this.entry(name);
    const eb = DTYPE_BYTES[e.info.dtype];
    if (e.numel === 0) return new Uint8Array(0);
    if (e.contiguous) {
      const out = this.allocate(e, () => new Uint8Array(e.numel * eb));
      readExactly(this.fd!, out, e.base + e.ref.offset * eb, this.path, this.scratch.capBytes);
      return out;
    }
    return this.gather(e);
  }

  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
    this.scratch.release();
  }

  /**
   * A corrupt file can describe a broadcast view (stride 0) of absurd size; running out of address
   * space for it is the file's fault, not a bug.
   */
  private allocate<A>(e: Entry, make: () => A): A {
    try {
      return make();
    } catch (err) {
      if (err instanceof RangeError) {
        throw new UserError(`${this.path}: tensor '${e.info.name}' has ${e.numel} elements, too many to load`);
      }
      throw err;
    }
  }

  private entry(name: string): Entry {
    if (this.fd === undefined) throw new Error(`${this.path}: read after close()`);
    const e = this.entries.get(name);
    if (e === undefined) throw new UserError(`${this.path}: no tensor named '${name}'`);
    return e;
  }

  /**
   * Copy a strided view into a contiguous row-major buffer. The elements are visited in storage order
   * (dims sorted by decreasing stride), so the file is read front to back through a bounded window
   * and each byte is read once; the writes into the output scatter instead. Overlapping layouts
   * (stride 0, broadcast views) may step back, which just reloads the window.
   */
  private gather(e: Entry): Uint8Array {
    const eb = DTYPE_BYTES[e.info.dtype];
    const out = this.allocate(e, () => new Uint8Array(e.numel * eb));
    const dims = e.dims;
    const nd = dims.length;
    // Row-major output strides of the normalized dims (they keep the tensor's own dim order).
    const outStride = new Array<number>(nd);
    let acc = 1;
    for (let i = nd - 1; i >= 0; i--) {
      outStride[i] = acc;
      acc *= dims[i]!.size;
    }
    const order = dims.map((_, i) => i).sort((a, b) => dims[b]!.stride - dims[a]!.stride || a - b);
    const size = order.map((i) => dims[i]!.size);
    const sStride = order.map((i) => dims[i]!.stride);
    const oStride = order.map((i) => outStride[i]!);
    let span = 1;
    for (const d of dims) span += (d.size - 1) * d.stride;

    const fd = this.fd!;
    const winCap = Math.max(1, Math.floor(this.scratch.capBytes / eb));
    const start = e.base + e.ref.offset * eb;
    let win = this.scratch.get(Math.min(span, winCap) * eb);
    let winLo = 0;
    let winHi = 0; // window holds storage elements [winLo, winHi) relative to the tensor's offset
    const load = (s: number): void => {
      const len = Math.min(winCap, span - s);
      win = this.scratch.get(len * eb);
      readExactly(fd, win.subarray(0, len * eb), start + s * eb, this.path, this.scratch.capBytes);
      winLo = s;
      winHi = s + len;
    };

    const idx = new Array<number>(nd).fill(0);
    const inner = nd - 1;
    const innerSize = size[inner]!;
    const innerS = sStride[inner]!;
    const innerO = oStride[inner]!;
    let s = 0;
    let o = 0;
    for (;;) {
      let si = s;
      let oi = o * eb;
      for (let j = 0; j < innerSize; j++) {
        if (si < winLo || si >= winHi) load(si);
        const w = (si - winLo) * eb;
        for (let b = 0; b < eb; b++) out[oi + b] = win[w + b]!;
        si += innerS;
        oi += innerO * eb;
      }
      // Odometer over the outer dims.
      let d = inner - 1;
      while (d >= 0) {
        idx[d]!++;
        s += sStride[d]!;
        o += oStride[d]!;
        if (idx[d]! < size[d]!) break;
        s -= sStride[d]! * size[d]!;
        o -= oStride[d]! * size[d]!;
        idx[d] = 0;
        d--;
      }
      if (d < 0) break;
    }
    return out;
  }
}

/**
 * Drop size-1 dims and merge neighbours that are contiguous with each other, so a contiguous tensor
 * becomes one dim of stride 1 (or none) and strided views have as few, as long, dims as possible.
 */
export function normalizeLayout(shape: readonly number[], stride: readonly number[]): { size: number; stride: number }[] {
  const dims: { size: number; stride: number }[] = [];
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const cur = { size: shape[i]!, stride: stride[i]! };
    const prev = dims[dims.length - 1];
    if (prev !== undefined && prev.stride === cur.size * cur.stride) {
      prev.size *= cur.size;
      prev.stride = cur.stride;
    } else {
      dims.push(cur);
    }
  }
  return dims;
}
