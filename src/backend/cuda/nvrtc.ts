/** NVRTC (run-time compilation of CUDA C++ to a cubin for the device's architecture), through koffi. */
import { UserError } from '../../util/errors.js';
import { openCudaLibrary } from './driver.js';

type Fn = (...args: unknown[]) => number;
interface NvrtcApi {
  nvrtcVersion: Fn; nvrtcCreateProgram: Fn; nvrtcCompileProgram: Fn; nvrtcGetProgramLogSize: Fn; nvrtcGetProgramLog: Fn;
  nvrtcGetCUBINSize: Fn; nvrtcGetCUBIN: Fn; nvrtcDestroyProgram: Fn; nvrtcGetErrorString: (code: number) => string;
}
let api: NvrtcApi | undefined;

function nvrtc(): NvrtcApi {
  if (api) return api;
  const lib = openCudaLibrary('libnvrtc', ['libnvrtc.so', 'libnvrtc.so.13', 'libnvrtc.so.12'], 'NVRTC (CUDA run-time compiler)');
  api = {
    nvrtcVersion: lib.func('int nvrtcVersion(_Out_ int *major, _Out_ int *minor)') as Fn,
    nvrtcCreateProgram: lib.func('int nvrtcCreateProgram(_Out_ void **prog, const char *src, const char *name, int numHeaders, const char **headers, const char **includeNames)') as Fn,
    nvrtcCompileProgram: lib.func('int nvrtcCompileProgram(void *prog, int numOptions, const char **options)') as Fn,
    nvrtcGetProgramLogSize: lib.func('int nvrtcGetProgramLogSize(void *prog, _Out_ size_t *size)') as Fn,
    nvrtcGetProgramLog: lib.func('int nvrtcGetProgramLog(void *prog, _Out_ uint8_t *log)') as Fn,
    nvrtcGetCUBINSize: lib.func('int nvrtcGetCUBINSize(void *prog, _Out_ size_t *size)') as Fn,
    nvrtcGetCUBIN: lib.func('int nvrtcGetCUBIN(void *prog, _Out_ uint8_t *cubin)') as Fn,
    nvrtcDestroyProgram: lib.func('int nvrtcDestroyProgram(_Inout_ void **prog)') as Fn,
    nvrtcGetErrorString: lib.func('const char *nvrtcGetErrorString(int result)') as (code: number) => string,
  };
  return api;
}

function ck(call: string, r: number): void {
  if (r !== 0) throw new Error(`NVRTC ${call} failed: ${nvrtc().nvrtcGetErrorString(r)}`);
}

export function nvrtcVersion(): string {
  const a = [0], b = [0];
  ck('nvrtcVersion', nvrtc().nvrtcVersion(a, b));
  return `${a[0]}.${b[0]}`;
}

/** Compiles `source` to a cubin for `arch` (e.g. sm_90). A compile error shows NVRTC's log. */
export function compileCubin(source: string, name: string, arch: string, options: string[]): Uint8Array {
  const n = nvrtc();
  const prog: unknown[] = [null];
  ck('nvrtcCreateProgram', n.nvrtcCreateProgram(prog, source, name, 0, null, null));
  try {
    const opts = [`--gpu-architecture=${arch}`, ...options];
    const r = n.nvrtcCompileProgram(prog[0], opts.length, opts);
    const ls = [0];
    n.nvrtcGetProgramLogSize(prog[0], ls);
    const log = Buffer.alloc(Number(ls[0]) + 1);
    n.nvrtcGetProgramLog(prog[0], log);
    const text = log.toString('utf8', 0, Math.max(0, log.indexOf(0)));
    if (r !== 0) throw new UserError(`NVRTC could not compile ${name} for ${arch} (${n.nvrtcGetErrorString(r)}):\n${text}`);
    const cs = [0];
    ck('nvrtcGetCUBINSize', n.nvrtcGetCUBINSize(prog[0], cs));
    const cubin = Buffer.alloc(Number(cs[0]));
    ck('nvrtcGetCUBIN', n.nvrtcGetCUBIN(prog[0], cubin));
    return new Uint8Array(cubin.buffer, cubin.byteOffset, cubin.byteLength);
  } finally {
    n.nvrtcDestroyProgram(prog);
  }
}
