/**
 * The CUDA driver API (libcuda.so.1) through koffi, loaded on first use. Every call's status is
 * checked; a failure becomes an error naming the call and CUDA's own error name and text. A missing
 * driver is a one-line UserError, so the CPU path and CI never need CUDA.
 */
import koffi from 'koffi';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../../util/errors.js';

export type Handle = unknown; // an opaque pointer (CUcontext, CUstream, CUmodule, CUfunction, …)

/** Directories searched for libnvrtc / libcublas when the dynamic loader does not find them by name. */
export function cudaLibraryDirs(): string[] {
  const dirs: string[] = [];
  const env = process.env;
  if (env.RWKVX_CUDA_LIB_DIR) dirs.push(...env.RWKVX_CUDA_LIB_DIR.split(':'));
  for (const root of [env.CUDA_PATH, env.CUDA_HOME, '/usr/local/cuda']) {
    if (root) dirs.push(join(root, 'lib64'), join(root, 'targets/x86_64-linux/lib'), join(root, 'lib'));
  }
  try {
    for (const d of readdirSync('/usr/local')) if (/^cuda-\d/.test(d)) dirs.push(join('/usr/local', d, 'lib64'));
  } catch { /* ignore */ }
  dirs.push('/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/lib');
  // Python wheels (nvidia-cublas, nvidia-cuda-nvrtc) keep the libraries under site-packages/nvidia/*/lib
  const pyRoots = ['/usr/local/lib', '/usr/lib', '/opt/torch/.venv/lib', '/opt/conda/lib'];
  for (const r of pyRoots) {
    let entries: string[] = [];
    try { entries = readdirSync(r).filter((e) => e.startsWith('python3')); } catch { continue; }
    for (const py of entries) for (const sp of ['site-packages', 'dist-packages']) {
      const nv = join(r, py, sp, 'nvidia');
      let subs: string[] = [];
      try { subs = readdirSync(nv); } catch { continue; }
      for (const s of subs) dirs.push(join(nv, s, 'lib'));
    }
  }
  return dirs.filter((d) => existsSync(d));
}

/** Opens the newest library called `base`.so[.N…] that loads: by soname first, then in the known directories. */
export function openCudaLibrary(base: string, sonames: string[], what: string): koffi.IKoffiLib {
  const errors: string[] = [];
  for (const n of sonames) {
    try { return koffi.load(n); } catch (e) { errors.push((e as Error).message); }
  }
  const re = new RegExp(`^${base.replace(/\./g, '\\.')}\\.so(\\.\\d+)*$`);
  for (const d of cudaLibraryDirs()) {
    let files: string[] = [];
    try { files = readdirSync(d).filter((f) => re.test(f)); } catch { continue; }
    files.sort((a, b) => b.length - a.length || (a < b ? 1 : -1));
    for (const f of files) {
      try { return koffi.load(join(d, f)); } catch (e) { errors.push((e as Error).message); }
    }
  }
  throw new UserError(`${what} not found (${base}.so; set RWKVX_CUDA_LIB_DIR to its directory): ${errors[0] ?? 'no candidate files'}`);
}

const CU_SIGS = {
  cuInit: 'int cuInit(unsigned int flags)',
  cuDriverGetVersion: 'int cuDriverGetVersion(_Out_ int *v)',
  cuDeviceGetCount: 'int cuDeviceGetCount(_Out_ int *n)',
  cuDeviceGet: 'int cuDeviceGet(_Out_ int *dev, int ordinal)',
  cuDeviceGetName: 'int cuDeviceGetName(_Out_ uint8_t *name, int len, int dev)',
  cuDeviceGetAttribute: 'int cuDeviceGetAttribute(_Out_ int *v, int attrib, int dev)',
  cuDeviceTotalMem: 'int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int dev)',
  cuDevicePrimaryCtxRetain: 'int cuDevicePrimaryCtxRetain(_Out_ void **ctx, int dev)',
  cuCtxSetCurrent: 'int cuCtxSetCurrent(void *ctx)',
  cuCtxSynchronize: 'int cuCtxSynchronize()',
  cuMemGetInfo: 'int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)',
  cuMemAlloc: 'int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)',
  cuMemFree: 'int cuMemFree_v2(uint64_t dptr)',
  cuMemcpyHtoD: 'int cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t bytes)',
  cuMemcpyDtoH: 'int cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t bytes)',
  cuMemcpyDtoDAsync: 'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void *stream)',
  cuMemsetD8Async: 'int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t n, void *stream)',
  cuModuleLoadData: 'int cuModuleLoadData(_Out_ void **mod, const void *image)',
  cuModuleGetFunction: 'int cuModuleGetFunction(_Out_ void **fn, void *mod, const char *name)',
  cuFuncSetAttribute: 'int cuFuncSetAttribute(void *fn, int attrib, int value)',
  // params: the address of a native table of argument pointers (module-cache.ts keeps one, reused)
  cuLaunchKernel: 'int cuLaunchKernel(void *f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem, void *stream, uint64_t params, void **extra)',
  cuStreamCreate: 'int cuStreamCreate(_Out_ void **stream, unsigned int flags)',
  cuStreamSynchronize: 'int cuStreamSynchronize(void *stream)',
  cuEventCreate: 'int cuEventCreate(_Out_ void **ev, unsigned int flags)',
  cuEventRecord: 'int cuEventRecord(void *ev, void *stream)',
  cuEventSynchronize: 'int cuEventSynchronize(void *ev)',
  cuEventElapsedTime: 'int cuEventElapsedTime(_Out_ float *ms, void *start, void *end)',
  cuEventDestroy: 'int cuEventDestroy_v2(void *ev)',
  cuMemcpyHtoDAsync: 'int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, void *stream)',
  cuMemcpyDtoHAsync: 'int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, void *stream)',
  cuMemHostAlloc: 'int cuMemHostAlloc(_Out_ void **p, size_t bytes, unsigned int flags)',
  cuMemFreeHost: 'int cuMemFreeHost(void *p)',
  cuStreamBeginCapture: 'int cuStreamBeginCapture_v2(void *stream, int mode)',
  cuStreamEndCapture: 'int cuStreamEndCapture(void *stream, _Out_ void **graph)',
  cuGraphInstantiate: 'int cuGraphInstantiateWithFlags(_Out_ void **exec, void *graph, unsigned long long flags)',
  cuGraphLaunch: 'int cuGraphLaunch(void *exec, void *stream)',
  cuGraphExecDestroy: 'int cuGraphExecDestroy(void *exec)',
  cuGraphDestroy: 'int cuGraphDestroy(void *graph)',
  cuGetErrorName: 'int cuGetErrorName(int err, _Out_ const char **s)',
  cuGetErrorString: 'int cuGetErrorString(int err, _Out_ const char **s)',
} as const;

type Fn = (...args: unknown[]) => number;
export type CuApi = { [K in keyof typeof CU_SIGS]: Fn };

export const CUDA_ERROR_OUT_OF_MEMORY = 2;

export class CudaError extends Error {
  constructor(readonly call: string, readonly code: number, message: string) {
    super(message);
    this.name = 'CudaError';
  }
}

let api: CuApi | undefined;
let loadError: UserError | undefined;
let cudaLib: koffi.IKoffiLib | undefined;

/** The driver functions; throws a one-line UserError when there is no NVIDIA driver. */
export function cu(): CuApi {
  if (api) return api;
  if (loadError) throw loadError;
  let lib: koffi.IKoffiLib;
  try {
    lib = koffi.load('libcuda.so.1');
  } catch (e) {
    try { lib = koffi.load('libcuda.so'); } catch {
      loadError = new UserError(`no NVIDIA GPU / CUDA driver found: cannot load libcuda.so.1 (${(e as Error).message.split('\n')[0]})`);
      throw loadError;
    }
  }
  cudaLib = lib;
  const out: Record<string, Fn> = {};
  for (const [k, sig] of Object.entries(CU_SIGS)) out[k] = lib.func(sig) as Fn;
  api = out as CuApi;
  const r = api.cuInit(0);
  if (r !== 0) {
    api = undefined;
    loadError = new UserError(`no NVIDIA GPU / CUDA driver found: cuInit failed (${errorName(out as CuApi, r)})`);
    throw loadError;
  }
  return api;
}

function errorName(a: CuApi, code: number): string {
  const n: (string | null)[] = [null], s: (string | null)[] = [null];
  a.cuGetErrorName(code, n);
  a.cuGetErrorString(code, s);
  return `${n[0] ?? `CUDA error ${code}`}: ${s[0] ?? 'unknown'}`;
}

/** Throws a CudaError when `code` is not CUDA_SUCCESS. */
export function check(call: string, code: number): void {
  if (code === 0) return;
  throw new CudaError(call, code, `CUDA ${call} failed: ${errorName(cu(), code)}`);
}

export interface DeviceInfo {
  ordinal: number;
  name: string;
  major: number;
  minor: number;
  sms: number;
  l2Bytes: number;
  smemOptin: number;
  totalMem: number;
  driverVersion: number;
}

/**
 * The kernels use bf16 tensor-core mma, ldmatrix and cp.async: compute capability 8.0 (Ampere) or newer.
 * An older GPU gets one line saying so (and `--backend auto` falls back to the CPU).
 */
export function checkComputeCapability(info: Pick<DeviceInfo, 'name' | 'major' | 'minor'>): void {
  if (info.major >= 8) return;
  throw new UserError(`${info.name} (compute capability ${info.major}.${info.minor}) is too old for rwkvx's CUDA kernels, which need 8.0 or newer (Ampere, Ada, Hopper, Blackwell); use --backend cpu`);
}

/** CU_DEVICE_ATTRIBUTE_* numbers used here. */
const ATTR = { MULTIPROCESSOR_COUNT: 16, L2_CACHE_SIZE: 38, CC_MAJOR: 75, CC_MINOR: 76, SMEM_OPTIN: 97 };

export class CudaContext {
  readonly ctx: Handle;
  readonly stream: Handle;
  readonly info: DeviceInfo;

  private constructor(ordinal: number) {
    const a = cu();
    const n = [0];
    check('cuDeviceGetCount', a.cuDeviceGetCount(n));
    if (n[0] === 0) throw new UserError('no NVIDIA GPU / CUDA driver found: the driver reports no CUDA devices');
    if (ordinal >= n[0]) throw new UserError(`CUDA device ${ordinal} does not exist (${n[0]} found)`);
    const dev = [0];
    check('cuDeviceGet', a.cuDeviceGet(dev, ordinal));
    const attr = (k: number) => { const v = [0]; check('cuDeviceGetAttribute', a.cuDeviceGetAttribute(v, k, dev[0])); return v[0]; };
    const nameBuf = Buffer.alloc(256);
    check('cuDeviceGetName', a.cuDeviceGetName(nameBuf, 256, dev[0]));
    const total = [0];
    check('cuDeviceTotalMem', a.cuDeviceTotalMem(total, dev[0]));
    const ver = [0];
    check('cuDriverGetVersion', a.cuDriverGetVersion(ver));
    this.info = {
      ordinal, name: nameBuf.toString('utf8', 0, nameBuf.indexOf(0)), major: attr(ATTR.CC_MAJOR), minor: attr(ATTR.CC_MINOR),
      sms: attr(ATTR.MULTIPROCESSOR_COUNT), l2Bytes: attr(ATTR.L2_CACHE_SIZE), smemOptin: attr(ATTR.SMEM_OPTIN),
      totalMem: Number(total[0]), driverVersion: ver[0],
    };
    checkComputeCapability(this.info);
    const ctx: Handle[] = [null];
    check('cuDevicePrimaryCtxRetain', a.cuDevicePrimaryCtxRetain(ctx, dev[0]));
    this.ctx = ctx[0];
    check('cuCtxSetCurrent', a.cuCtxSetCurrent(this.ctx));
    const s: Handle[] = [null];
    check('cuStreamCreate', a.cuStreamCreate(s, 0));
    this.stream = s[0];
  }

  private static instances = new Map<number, CudaContext>();
  /** The (process-wide, shared) context of device `ordinal`, made current. */
  static get(ordinal = 0): CudaContext {
    let c = CudaContext.instances.get(ordinal);
    if (!c) { c = new CudaContext(ordinal); CudaContext.instances.set(ordinal, c); }
    check('cuCtxSetCurrent', cu().cuCtxSetCurrent(c.ctx));
    return c;
  }

  get arch(): string { return `sm_${this.info.major}${this.info.minor}`; }

  sync(): void { check('cuStreamSynchronize', cu().cuStreamSynchronize(this.stream)); }

  memInfo(): { free: number; total: number } {
    const f = [0], t = [0];
    check('cuMemGetInfo', cu().cuMemGetInfo(f, t));
    return { free: Number(f[0]), total: Number(t[0]) };
  }
}

/** Whether a CUDA device can be used here; the reason when not. */
export function cudaAvailable(): { ok: true; ctx: CudaContext } | { ok: false; reason: string } {
  try {
    return { ok: true, ctx: CudaContext.get(0) };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

/** Device-side timing with events (milliseconds between two points of the stream). */
export class CudaTimer {
  private a: Handle;
  private b: Handle;
  constructor(private ctx: CudaContext) {
    const x: Handle[] = [null], y: Handle[] = [null];
    check('cuEventCreate', cu().cuEventCreate(x, 0));
    check('cuEventCreate', cu().cuEventCreate(y, 0));
    this.a = x[0]; this.b = y[0];
  }
  start(): void { check('cuEventRecord', cu().cuEventRecord(this.a, this.ctx.stream)); }
  stop(): number {
    check('cuEventRecord', cu().cuEventRecord(this.b, this.ctx.stream));
    check('cuEventSynchronize', cu().cuEventSynchronize(this.b));
    const ms = [0];
    check('cuEventElapsedTime', cu().cuEventElapsedTime(ms, this.a, this.b));
    return ms[0];
  }
  dispose(): void { cu().cuEventDestroy(this.a); cu().cuEventDestroy(this.b); }
}

/**
 * A CUDA graph recorded from the context's stream: `capture(f)` runs f with the stream in capture
 * mode (relaxed: no synchronous calls may happen inside), instantiates it; `launch()` replays it.
 */
export class CudaGraph {
  private exec: Handle = null;
  constructor(private ctx: CudaContext) {}
  capture(f: () => void): void {
    this.dispose();
    const a = cu();
    check('cuStreamBeginCapture', a.cuStreamBeginCapture(this.ctx.stream, 2 /* CU_STREAM_CAPTURE_MODE_RELAXED */));
    let g: Handle[] = [null];
    try { f(); } catch (e) {
      a.cuStreamEndCapture(this.ctx.stream, g);
      if (g[0]) a.cuGraphDestroy(g[0]);
      throw e;
    }
    g = [null];
    check('cuStreamEndCapture', a.cuStreamEndCapture(this.ctx.stream, g));
    const ex: Handle[] = [null];
    try { check('cuGraphInstantiate', a.cuGraphInstantiate(ex, g[0], 0)); } finally { a.cuGraphDestroy(g[0]); }
    this.exec = ex[0];
  }
  get ready(): boolean { return this.exec !== null; }
  launch(): void { check('cuGraphLaunch', cu().cuGraphLaunch(this.exec, this.ctx.stream)); }
  dispose(): void {
    if (this.exec !== null) { cu().cuGraphExecDestroy(this.exec); this.exec = null; }
  }
}

let launchEx: Fn | null | undefined;
/** A single programmatic-stream-serialisation launch attribute (CUlaunchAttribute: id, pad, 64-byte value). */
let pdlAttr: unknown;
/**
 * cuLaunchKernelEx with programmatic dependent launch (PDL, sm_90+): the kernel may start before the
 * previous kernel of the stream has finished and must itself wait (griddepcontrol.wait) before it
 * reads that kernel's results. False where the driver has no cuLaunchKernelEx (nothing launched then).
 */
export function launchKernelPdl(ctx: CudaContext, fn: Handle, grid: [number, number, number], block: [number, number, number],
  smem: number, params: Buffer[]): boolean {
  if (launchEx === undefined) {
    cu();
    try {
      koffi.struct('rwkvx_CUlaunchConfig', {
        gridDimX: 'uint', gridDimY: 'uint', gridDimZ: 'uint', blockDimX: 'uint', blockDimY: 'uint', blockDimZ: 'uint',
        sharedMemBytes: 'uint', hStream: 'void *', attrs: 'void *', numAttrs: 'uint',
      });
      launchEx = cudaLib!.func('int cuLaunchKernelEx(const rwkvx_CUlaunchConfig *config, void *f, void **params, void **extra)') as Fn;
      pdlAttr = koffi.alloc('uint8_t', 72);
      koffi.encode(pdlAttr, 0, koffi.array('uint8_t', 72), new Array(72).fill(0));
      koffi.encode(pdlAttr, 0, 'int', 6 /* CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION */);
      koffi.encode(pdlAttr, 8, 'int', 1);
    } catch { launchEx = null; }
  }
  if (!launchEx) return false;
  const config = {
    gridDimX: grid[0], gridDimY: grid[1], gridDimZ: grid[2], blockDimX: block[0], blockDimY: block[1], blockDimZ: block[2],
    sharedMemBytes: smem, hStream: ctx.stream, attrs: pdlAttr, numAttrs: 1,
  };
  check('cuLaunchKernelEx', launchEx(config, fn, params, null));
  return true;
}
