/**
 * cuBLAS (libcublas.so) through koffi: bf16 × bf16 matrix products with float32 accumulation,
 * in the row-major [rows, features] layout of the rest of the engine.
 */
import { openCudaLibrary, type CudaContext, type Handle } from './driver.js';
import { alloc, type DeviceBuffer } from './memory.js';

type Fn = (...args: unknown[]) => number;
interface CublasApi { create: Fn; setStream: Fn; gemmEx: Fn; destroy: Fn; getStatusString: (s: number) => string; setWorkspace: Fn }
let api: CublasApi | undefined;

function cublas(): CublasApi {
  if (api) return api;
  const lib = openCudaLibrary('libcublas', ['libcublas.so', 'libcublas.so.13', 'libcublas.so.12'], 'cuBLAS');
  api = {
    create: lib.func('int cublasCreate_v2(_Out_ void **handle)') as Fn,
    destroy: lib.func('int cublasDestroy_v2(void *handle)') as Fn,
    setStream: lib.func('int cublasSetStream_v2(void *handle, void *stream)') as Fn,
    setWorkspace: lib.func('int cublasSetWorkspace_v2(void *handle, uint64_t ws, size_t bytes)') as Fn,
    gemmEx: lib.func('int cublasGemmEx(void *handle, int transa, int transb, int m, int n, int k, const float *alpha, uint64_t A, int Atype, int lda, uint64_t B, int Btype, int ldb, const float *beta, uint64_t C, int Ctype, int ldc, int computeType, int algo)') as Fn,
    getStatusString: lib.func('const char *cublasGetStatusString(int status)') as (s: number) => string,
  };
  return api;
}

export const DT = { F32: 0, F16: 2, BF16: 14 } as const;
export type GemmOut = 'f32' | 'bf16';
const COMPUTE_32F = 68;
const GEMM_DEFAULT = -1;
const OP_N = 0, OP_T = 1;

function ck(call: string, r: number): void {
  if (r !== 0) throw new Error(`cuBLAS ${call} failed: ${cublas().getStatusString(r)} (${r})`);
}

export class Cublas {
  readonly handle: Handle;
  private one = new Float32Array([1]);
  private zero = new Float32Array([0]);
  constructor(ctx: CudaContext) {
    const h: Handle[] = [null];
    ck('cublasCreate', cublas().create(h));
    this.handle = h[0];
    ck('cublasSetStream', cublas().setStream(this.handle, ctx.stream));
    // a workspace of our own, so that calls captured in a CUDA graph allocate nothing
    this.ws = alloc(ctx, 32 << 20, 'cuBLAS workspace');
    ck('cublasSetWorkspace', cublas().setWorkspace(this.handle, this.ws.ptr, this.ws.bytes));
  }
  private ws: DeviceBuffer;

  /**
   * y[T, N] (+)= x[T, K] · W[N, K]ᵀ — a PyTorch linear layer. x, W bf16; y float32 or bf16;
   * `accumulate` adds into y (float32 y only makes sense then).
   */
  linear(y: number, yType: GemmOut, x: number, W: number, T: number, K: number, N: number, accumulate = false, ldy = N): void {
    ck('cublasGemmEx(linear)', cublas().gemmEx(this.handle, OP_T, OP_N, N, T, K, this.one, W, DT.BF16, K, x, DT.BF16, K,
      accumulate ? this.one : this.zero, y, yType === 'f32' ? DT.F32 : DT.BF16, ldy, COMPUTE_32F, GEMM_DEFAULT));
  }

  /** y[T, N] = x[T, K] · A[K, N] (a LoRA factor stored [in, out]). */
  matmul(y: number, yType: GemmOut, x: number, A: number, T: number, K: number, N: number): void {
    ck('cublasGemmEx(matmul)', cublas().gemmEx(this.handle, OP_N, OP_N, N, T, K, this.one, A, DT.BF16, N, x, DT.BF16, K,
      this.zero, y, yType === 'f32' ? DT.F32 : DT.BF16, N, COMPUTE_32F, GEMM_DEFAULT));
  }

  dispose(): void { cublas().destroy(this.handle); this.ws.free(); }
}
