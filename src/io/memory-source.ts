/** A TensorSource over float32 tensors already in memory (fresh initialisations, tests). */
import type { F32Alloc, TensorInfo, TensorSource } from './types.js';
import { fail } from '../util/errors.js';

export class MemorySource implements TensorSource {
  readonly format = 'safetensors' as const;

  constructor(
    readonly path: string,
    private readonly tensors: Map<string, { shape: number[]; data: Float32Array }>,
    readonly metadata: Record<string, string> = {},
  ) {}

  names(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): TensorInfo | undefined {
    const t = this.tensors.get(name);
    return t && { name, dtype: 'F32', shape: t.shape };
  }

  readF32(name: string, alloc: F32Alloc = (n) => new Float32Array(n)): Float32Array {
    const t = this.tensors.get(name) ?? fail(`${this.path}: no tensor named '${name}'`);
    const out = alloc(t.data.length);
    out.set(t.data);
    return out;
  }

  readRaw(name: string): Uint8Array {
    const f = this.readF32(name);
    return new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
  }

  close(): void {}
}
