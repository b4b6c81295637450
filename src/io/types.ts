/** Element types a checkpoint tensor may have, named as safetensors names them. */
export type DType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Record<DType, number> = {
  F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
}

/** Allocates the Float32Array a tensor is decoded into (the CPU backend passes one backed by SharedArrayBuffer). */
export type F32Alloc = (length: number) => Float32Array;

/**
 * A checkpoint opened for reading. Tensors are read one at a time, straight from the file into
 * their destination, so loading never holds more than one extra copy of a single tensor.
 */
export interface TensorSource {
  readonly path: string;
  readonly format: 'pth' | 'safetensors';
  /** safetensors `__metadata__` (string → string); empty for .pth. */
  readonly metadata: Record<string, string>;
  names(): string[];
  info(name: string): TensorInfo | undefined;
  /** Decode to float32 (from F32/F16/BF16/F64/ints), contiguous row-major. */
  readF32(name: string, alloc?: F32Alloc): Float32Array;
  /** The tensor in its own dtype as contiguous row-major little-endian bytes. */
  readRaw(name: string): Uint8Array;
  close(): void;
}
