/** Device buffers: allocation with a clear out-of-memory message, copies, and a running peak count. */
import koffi from 'koffi';
import { UserError } from '../../util/errors.js';
import { check, cu, CudaContext, CudaError, CUDA_ERROR_OUT_OF_MEMORY, type Handle } from './driver.js';

const MiB = 1 << 20;
let live = 0;
let peak = 0;

export function allocatedBytes(): number { return live; }
export function peakAllocatedBytes(): number { return peak; }
export function resetPeak(): void { peak = live; }
/** Counts device memory allocated outside `alloc` (the paged K/V cache) in the live/peak totals. */
export function trackAllocation(bytes: number): void { live += bytes; peak = Math.max(peak, live); }

export class DeviceBuffer {
  private freed = false;
  constructor(readonly ptr: number, readonly bytes: number) {}
  free(): void {
    if (this.freed) return;
    this.freed = true;
    live -= this.bytes;
    check('cuMemFree', cu().cuMemFree(this.ptr));
  }
  /** Address `bytes` into the buffer. */
  at(bytes: number): number { return this.ptr + bytes; }
}

/** Allocates `bytes` on the current device; out of memory is a UserError saying how much was asked and is free. */
export function alloc(ctx: CudaContext, bytes: number, what = 'buffer'): DeviceBuffer {
  const n = Math.max(256, Math.ceil(bytes / 256) * 256);
  const out = [0];
  const r = cu().cuMemAlloc(out, n);
  if (r === CUDA_ERROR_OUT_OF_MEMORY) {
    const { free, total } = ctx.memInfo();
    throw new UserError(`CUDA out of memory allocating ${what}: asked for ${(n / MiB).toFixed(1)} MiB, ${(free / MiB).toFixed(0)} MiB free of ${(total / MiB).toFixed(0)} MiB on ${ctx.info.name}`);
  }
  check('cuMemAlloc', r);
  live += n;
  peak = Math.max(peak, live);
  return new DeviceBuffer(Number(out[0]), n);
}

export function upload(ctx: CudaContext, data: ArrayBufferView, what = 'buffer'): DeviceBuffer {
  const b = alloc(ctx, data.byteLength, what);
  copyHtoD(b.ptr, data);
  return b;
}

export function copyHtoD(dst: number, data: ArrayBufferView): void {
  if (data.byteLength === 0) return;
  check('cuMemcpyHtoD', cu().cuMemcpyHtoD(dst, data, data.byteLength));
}

/** Copies device memory into `out` (after all work queued before it; blocking). */
export function copyDtoH(out: ArrayBufferView, src: number): void {
  if (out.byteLength === 0) return;
  check('cuMemcpyDtoH', cu().cuMemcpyDtoH(out, src, out.byteLength));
}

export function copyDtoD(ctx: CudaContext, dst: number, src: number, bytes: number): void {
  if (bytes === 0) return;
  check('cuMemcpyDtoDAsync', cu().cuMemcpyDtoDAsync(dst, src, bytes, ctx.stream));
}

export function zero(ctx: CudaContext, dst: number, bytes: number): void {
  if (bytes === 0) return;
  check('cuMemsetD8Async', cu().cuMemsetD8Async(dst, 0, bytes, ctx.stream));
}

/**
 * Page-locked host memory (cuMemHostAlloc): asynchronous copies to and from it run at full PCIe
 * speed without the driver's staging through its own pinned buffer. `view` maps it into JS.
 */
export class HostBuffer {
  private freed = false;
  readonly view: ArrayBuffer;
  constructor(readonly ptr: Handle, readonly bytes: number) { this.view = koffi.view(ptr, bytes); }
  free(): void {
    if (this.freed) return;
    this.freed = true;
    check('cuMemFreeHost', cu().cuMemFreeHost(this.ptr));
  }
}

export function allocHost(bytes: number): HostBuffer {
  const out: Handle[] = [null];
  check('cuMemHostAlloc', cu().cuMemHostAlloc(out, Math.max(bytes, 16), 0));
  return new HostBuffer(out[0], Math.max(bytes, 16));
}

/** Queues a copy of `bytes` from device memory into pinned host memory (on the context's stream). */
export function copyDtoHAsync(ctx: CudaContext, dst: HostBuffer, src: number, bytes: number): void {
  if (bytes === 0) return;
  check('cuMemcpyDtoHAsync', cu().cuMemcpyDtoHAsync(dst.ptr, src, bytes, ctx.stream));
}

/** Queues a copy of `bytes` from pinned host memory to the device (on the context's stream). */
export function copyHtoDAsync(ctx: CudaContext, dst: number, src: HostBuffer, bytes: number): void {
  if (bytes === 0) return;
  check('cuMemcpyHtoDAsync', cu().cuMemcpyHtoDAsync(dst, src.ptr, bytes, ctx.stream));
}

export { CudaError };

/** float32 → bfloat16 (round to nearest even), as the GPU stores weights. */
export function toBf16(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = u[i];
    if ((v & 0x7fffffff) > 0x7f800000) { out[i] = 0x7fc0; continue; }
    out[i] = (v + 0x7fff + ((v >>> 16) & 1)) >>> 16;
  }
  return out;
}

export function fromBf16(x: Uint16Array): Float32Array {
  const u = new Uint32Array(x.length);
  for (let i = 0; i < x.length; i++) u[i] = x[i] << 16;
  return new Float32Array(u.buffer);
}
