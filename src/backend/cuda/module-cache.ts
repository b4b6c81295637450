/**
 * Kernel modules: CUDA C++ sources of src/backend/cuda/kernels compiled by NVRTC for the device's
 * architecture, cached on disk as cubins keyed by source, options, arch, driver and NVRTC versions
 * (~/.cache/rwkvx/cuda/<hash>.cubin, or $RWKVX_CACHE_DIR/cuda), written atomically.
 */
import { createHash } from 'node:crypto';
import koffi from 'koffi';
import { existsSync, mkdirSync, readFileSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openAtomic } from '../../util/atomic.js';
import { check, cu, CudaContext, type Handle } from './driver.js';
import { compileCubin, nvrtcVersion } from './nvrtc.js';

/**
 * The .cu sources sit beside this module under tsx (src/backend/cuda/kernels); the compiled package
 * runs from dist/src/backend/cuda/ and ships the sources at src/backend/cuda/kernels instead.
 */
export const KERNEL_DIR = ((): string => {
  const here = dirname(fileURLToPath(import.meta.url));
  const beside = join(here, 'kernels');
  const inPackage = join(here, '..', '..', '..', '..', 'src', 'backend', 'cuda', 'kernels');
  return existsSync(beside) ? beside : inPackage;
})();

export function cacheDir(): string {
  const base = process.env.RWKVX_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'rwkvx');
  return join(base, 'cuda');
}

export class CudaModule {
  private fns = new Map<string, Handle>();
  /** Argument kinds of each extern "C" kernel, read from the source ('p' pointer, 'i' int, 'f' float). */
  readonly sigs = new Map<string, string>();
  constructor(readonly mod: Handle, readonly name: string, source = '') {
    for (const [kernel, params] of kernelParams(source)) {
      this.sigs.set(kernel, params.map((a) => a.includes('*') ? 'p' : /\bfloat\b/.test(a) ? 'f' : /\blong\b/.test(a) ? 'l' : 'i').join(''));
    }
  }
  fn(name: string): Handle {
    let f = this.fns.get(name);
    if (f === undefined) {
      const out: Handle[] = [null];
      check(`cuModuleGetFunction(${name})`, cu().cuModuleGetFunction(out, this.mod, name));
      f = out[0];
      this.fns.set(name, f);
    }
    return f;
  }
}

/** The extern "C" kernels of a source and each one's parameter declarations (e.g. `const float* x`). */
export function kernelParams(source: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const re = /extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)/g;
  for (const m of source.matchAll(re)) out.set(m[1], m[2].split(',').map((a) => a.trim()).filter((a) => a.length > 0));
  return out;
}

const loaded = new Map<string, CudaModule>();

/** Loads kernels/<file> for the context's device, compiling it (once, then from the disk cache). */
export function loadModule(ctx: CudaContext, file: string, options: string[] = [], arch = ctx.arch): CudaModule {
  return loadSource(ctx, kernelSource(file), file, options, arch);
}

/**
 * A kernel file with its `#include "x.cuh"` lines replaced by those files (from the same folder, each
 * once): NVRTC then compiles one self-contained string and the cache key covers the headers too.
 */
export function kernelSource(file: string, seen = new Set<string>()): string {
  seen.add(file);
  const text = readFileSync(join(KERNEL_DIR, file), 'utf8');
  return text.replace(/^#include "([^"]+)"[^\n]*$/gm, (_, inc: string) => seen.has(inc) ? '' : kernelSource(inc, seen));
}

/** `arch` may name an architecture-specific target of the device (sm_90a: wgmma) instead of ctx.arch. */
export function loadSource(ctx: CudaContext, source: string, name: string, options: string[] = [], arch = ctx.arch): CudaModule {
  const opts = ['--std=c++17', '-default-device', ...options];
  const key = createHash('sha256')
    .update(source).update('\0').update(opts.join(' ')).update('\0').update(arch)
    .update('\0').update(String(ctx.info.driverVersion)).update('\0').update(nvrtcVersionSafe())
    .digest('hex').slice(0, 32);
  const hit = loaded.get(key);
  if (hit) return hit;
  const path = join(cacheDir(), `${key}.cubin`);
  let image: Uint8Array | undefined;
  if (existsSync(path)) {
    try { image = readFileSync(path); } catch { image = undefined; }
  }
  let mod: Handle | undefined;
  if (image) mod = tryLoad(image);
  if (mod === undefined) {
    image = compileCubin(source, name, arch, opts);
    mod = tryLoad(image);
    if (mod === undefined) {
      const out: Handle[] = [null];
      check(`cuModuleLoadData(${name})`, cu().cuModuleLoadData(out, image));
    }
    try {
      mkdirSync(dirname(path), { recursive: true });
      const f = openAtomic(path);
      try { writeSync(f.fd, image); f.commit(); } catch { f.abort(); }
    } catch { /* a cache we cannot write is not an error */ }
  }
  const m = new CudaModule(mod, name, source);
  loaded.set(key, m);
  return m;
}

let nvrtcVer: string | undefined;
function nvrtcVersionSafe(): string {
  nvrtcVer ??= nvrtcVersion();
  return nvrtcVer;
}

function tryLoad(image: Uint8Array): Handle | undefined {
  const out: Handle[] = [null];
  return cu().cuModuleLoadData(out, image) === 0 ? out[0] : undefined;
}

/** A kernel argument: a device pointer ('p'), int32 ('i') or float32 ('f'). */
export type ArgKind = 'p' | 'i' | 'f';

/**
 * Launches `fn` on the context's stream. `sig` gives each argument's kind, one letter per argument
 * (e.g. 'ppif'), checked against the values.
 */
export function launch(
  ctx: CudaContext, mod: CudaModule, name: string, sig: string,
  grid: [number, number?, number?], block: [number, number?, number?], smem: number, args: number[],
): void {
  const want = mod.sigs.get(name);
  if (want !== undefined && want !== sig) throw new Error(`kernel ${name}: launched with argument kinds '${sig}', the source declares '${want}'`);
  const slots = argSlots();
  packKernelArgs(slots.view, name, sig, args);
  const [gx, gy = 1, gz = 1] = grid, [bx, by = 1, bz = 1] = block;
  if (gx <= 0 || gy <= 0 || gz <= 0) return;
  const r = cu().cuLaunchKernel(mod.fn(name), gx, gy, gz, bx, by, bz, smem, ctx.stream, slots.table, null);
  if (r !== 0) check(`cuLaunchKernel(${name})`, r);
}

/**
 * Kernel arguments reach the driver through one block of native memory written in place at every
 * launch: 8-byte value slots, then a table of pointers to them (the driver copies the values during
 * cuLaunchKernel, so one block serves every launch). An array of Buffers, koffi's way for `void **`,
 * costs ≈ 15 µs of marshalling per launch; this ≈ 1 µs — which is what short prefills and training
 * steps, thousands of launches each, spend on the host.
 */
const MAX_ARGS = 32;

/**
 * Writes a launch's arguments into 8-byte slots of `view` (pointers as 64-bit little-endian, 'i' int32,
 * 'f' float32), checking them against the kernel's signature.
 */
export function packKernelArgs(view: DataView, name: string, sig: string, args: number[]): void {
  if (sig.length !== args.length) throw new Error(`kernel ${name}: ${args.length} arguments for signature '${sig}'`);
  if (args.length > MAX_ARGS) throw new Error(`kernel ${name}: more than ${MAX_ARGS} arguments`);
  for (let i = 0; i < args.length; i++) {
    const v = args[i];
    const k = sig[i], o = i * 8;
    if (k === 'p') {
      if (!(Number.isInteger(v) && v >= 0 && v <= Number.MAX_SAFE_INTEGER)) throw new Error(`kernel ${name}: argument ${i} is not a device address (got ${v})`);
      view.setUint32(o, v >>> 0, true); view.setUint32(o + 4, Math.floor(v / 4294967296), true);
    } else if (k === 'i') {
      if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) throw new Error(`kernel ${name}: argument ${i} must be a 32-bit integer (got ${v})`);
      view.setInt32(o, v, true);
    } else if (k === 'f') view.setFloat32(o, v, true);
    else throw new Error(`kernel ${name}: bad signature letter '${k}'`);
  }
}
let slotBlock: { mem: unknown; view: DataView; table: number } | undefined;
function argSlots(): { view: DataView; table: number } {
  if (slotBlock) return slotBlock;
  const bytes = MAX_ARGS * 16;
  const mem = koffi.alloc('uint8_t', bytes);
  const base = Number(koffi.address(mem));
  const view = new DataView(koffi.view(mem, bytes));
  for (let i = 0; i < MAX_ARGS; i++) {
    const a = base + i * 8;
    view.setUint32(MAX_ARGS * 8 + i * 8, a >>> 0, true);
    view.setUint32(MAX_ARGS * 8 + i * 8 + 4, Math.floor(a / 4294967296), true);
  }
  slotBlock = { mem, view, table: base + MAX_ARGS * 8 };
  return slotBlock;
}

/** Raises a kernel's dynamic shared-memory limit (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES). */
export function setMaxDynamicSmem(mod: CudaModule, name: string, bytes: number): void {
  check('cuFuncSetAttribute', cu().cuFuncSetAttribute(mod.fn(name), 8, bytes));
}
