/**
 * Float32 arrays that worker threads can see.
 *
 * Two kinds of memory:
 *
 * - `sharedF32(n)`: a Float32Array on its own SharedArrayBuffer. Garbage-collected like any
 *   array; the matmul workers can read and write it (the pool registers the buffer with each
 *   worker once, then names it by a small integer id).
 *
 * - `heapF32(n)`: a Float32Array inside the process-wide *compute heap*, one shared
 *   `WebAssembly.Memory` that the WebAssembly SIMD kernels address directly. Operands that live
 *   here need no copying; operands elsewhere are copied in (x and out per call, W panel by
 *   panel), which costs little for prefill but about a third of the speed for decode (T = 1),
 *   where streaming the weights is the whole cost. Intended for model weights and other
 *   long-lived buffers: heap blocks are never reclaimed by the garbage collector (views of one
 *   block cannot be told apart from views of another), only by `freeHeapF32`. When the heap is
 *   unavailable or full, `heapF32` quietly returns a `sharedF32` array instead.
 *
 * Both kinds are SharedArrayBuffer-backed, so `isShared` is true for both.
 */

/** A zero-filled Float32Array of length n backed by its own SharedArrayBuffer. */
export function sharedF32(n: number): Float32Array {
  return new Float32Array(new SharedArrayBuffer(n * 4));
}

/** True when the view's backing buffer is a SharedArrayBuffer (sharedF32 and heapF32 arrays). */
export function isShared(a: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && a.buffer instanceof SharedArrayBuffer;
}

// ---------------------------------------------------------------------------------------------
// Compute heap: one shared WebAssembly.Memory, bump allocation plus a first-fit free list.

const PAGE = 65536;
const ALIGN = 64; // cache-line alignment for every block
/** Bytes [0, RESERVED) are never handed out (address 0 stays unused). */
const RESERVED = 1024;

let heapMem: WebAssembly.Memory | null | undefined; // undefined: not tried yet; null: unavailable
let heapMaxBytes = 0;
let heapTop = RESERVED;
/** Highest top ever reached: memory below it may be dirty, memory above it is fresh (zero). */
let heapHigh = RESERVED;
/** Free blocks, sorted by offset, never adjacent (coalesced). */
const freeList: { off: number; size: number }[] = [];
/** Block size by start offset, for live blocks. */
const liveBlocks = new Map<number, number>();
/** Every SharedArrayBuffer object the heap memory has presented (one per size after growth). */
const heapBuffers = new WeakSet<ArrayBufferLike>();

/** Heap limit in MiB: env RWKVX_HEAP_MB, default 4095 (the wasm32 ceiling is 4 GiB). */
function heapLimitPages(): number {
  const env = Number(process.env.RWKVX_HEAP_MB);
  const mb = Number.isFinite(env) && env > 0 ? Math.min(env, 4095) : 4095;
  return Math.max(1, Math.floor((mb * 1024 * 1024) / PAGE));
}

/** The compute heap memory, created on first use; null where shared wasm memory is unsupported. */
export function heapMemory(): WebAssembly.Memory | null {
  if (heapMem !== undefined) return heapMem;
  heapMem = null;
  if (typeof WebAssembly === 'undefined' || typeof SharedArrayBuffer === 'undefined') return null;
  // Address space for a shared memory is reserved up front; fall back to smaller maxima where
  // the system refuses a large reservation.
  for (let pages = heapLimitPages(); pages >= 256; pages = Math.floor(pages / 2)) {
    try {
      heapMem = new WebAssembly.Memory({ initial: 16, maximum: pages, shared: true });
      heapMaxBytes = pages * PAGE;
      heapBuffers.add(heapMem.buffer);
      break;
    } catch {
      heapMem = null;
    }
  }
  return heapMem;
}

/** In a worker thread: use the heap memory created by the main thread (no allocation here). */
export function adoptHeapMemory(mem: WebAssembly.Memory): void {
  heapMem = mem;
  heapMaxBytes = 0;
  heapBuffers.add(mem.buffer);
}

/** True when `a` lies inside the compute heap (the SIMD kernels can address it directly). */
export function inHeap(a: ArrayBufferView): boolean {
  return heapBuffers.has(a.buffer);
}

/** The whole heap as one Float32Array (refreshed after growth). */
export function heapView(): Float32Array {
  const mem = heapMemory();
  if (!mem) throw new Error('compute heap unavailable');
  const buf = mem.buffer;
  if (!heapViewCache || heapViewCache.buffer !== buf) {
    heapBuffers.add(buf);
    heapViewCache = new Float32Array(buf);
  }
  return heapViewCache;
}
let heapViewCache: Float32Array | null = null;

/**
 * Allocates `bytes` (rounded up to 64) in the heap and returns the byte offset, or -1 when the
 * heap is unavailable or full. The block is zero-filled.
 */
export function heapAlloc(bytes: number): number {
  const mem = heapMemory();
  if (!mem) return -1;
  const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
  for (let i = 0; i < freeList.length; i++) {
    const f = freeList[i];
    if (f.size < size) continue;
    const off = f.off;
    if (f.size === size) freeList.splice(i, 1);
    else { f.off += size; f.size -= size; }
    liveBlocks.set(off, size);
    new Uint8Array(mem.buffer, off, size).fill(0);
    return off;
  }
  const end = heapTop + size;
  if (end > heapMaxBytes) return -1;
  const have = mem.buffer.byteLength;
  if (end > have) {
    // Grow by at least 1/8 of the current size to keep the number of grow calls small.
    const want = Math.max(end - have, Math.min(heapMaxBytes - have, have >>> 3));
    try {
      mem.grow(Math.ceil(want / PAGE));
    } catch {
      try {
        mem.grow(Math.ceil((end - have) / PAGE));
      } catch {
        return -1;
      }
    }
    heapBuffers.add(mem.buffer);
  }
  const off = heapTop;
  heapTop = end;
  if (off < heapHigh) new Uint8Array(mem.buffer, off, Math.min(end, heapHigh) - off).fill(0);
  if (end > heapHigh) heapHigh = end; // memory above the old high mark is fresh from grow(): zero
  liveBlocks.set(off, size);
  return off;
}

/** Returns a block from heapAlloc to the heap. */
export function heapFree(off: number): void {
  const size = liveBlocks.get(off);
  if (size === undefined) throw new Error(`heapFree: no live heap block at ${off}`);
  liveBlocks.delete(off);
  if (off + size === heapTop) {
    heapTop = off;
    // The top may now touch the last free block: fold it in.
    const last = freeList[freeList.length - 1];
    if (last && last.off + last.size === heapTop) {
      heapTop = last.off;
      freeList.pop();
    }
    return;
  }
  let i = 0;
  while (i < freeList.length && freeList[i].off < off) i++;
  const prev = freeList[i - 1];
  const next = freeList[i];
  if (prev && prev.off + prev.size === off) {
    prev.size += size;
    if (next && prev.off + prev.size === next.off) {
      prev.size += next.size;
      freeList.splice(i, 1);
    }
  } else if (next && off + size === next.off) {
    next.off = off;
    next.size += size;
  } else {
    freeList.splice(i, 0, { off, size });
  }
}

/**
 * A zero-filled Float32Array of length n inside the compute heap (the fastest operand for
 * linear/matmul), or a sharedF32 array when the heap is unavailable or full. Not reclaimed by
 * the garbage collector: call freeHeapF32 when done with it (or keep it for the process's life).
 */
export function heapF32(n: number): Float32Array {
  const off = heapAlloc(n * 4);
  if (off < 0) return sharedF32(n);
  return new Float32Array(heapMemory()!.buffer, off, n);
}

/**
 * Releases an array returned by heapF32 (a no-op for arrays outside the heap). The array and
 * every view of it must not be used afterwards.
 */
export function freeHeapF32(a: Float32Array): void {
  if (!inHeap(a)) return;
  heapFree(a.byteOffset);
}

/** Bytes handed out and the heap's current size, for diagnostics. */
export function heapStats(): { used: number; size: number; max: number } {
  let used = 0;
  for (const s of liveBlocks.values()) used += s;
  return { used, size: heapMem ? heapMem.buffer.byteLength : 0, max: heapMaxBytes };
}
