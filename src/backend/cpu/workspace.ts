import { sharedF32 } from './shared.js';

/**
 * Named scratch buffers reused across calls, so a decode step allocates nothing.
 * Buffers are shared (SharedArrayBuffer) so the matmul workers can read and write them.
 */
export class Workspace {
  private bufs = new Map<string, Float32Array>();

  get(name: string, length: number): Float32Array {
    let b = this.bufs.get(name);
    if (!b || b.length < length) {
      b = sharedF32(Math.max(length, b ? b.length * 2 : 0));
      this.bufs.set(name, b);
    }
    return b.subarray(0, length);
  }
}
