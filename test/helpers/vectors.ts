/** Access to the authors' reference outputs copied into test/fixtures/A (see test/fixtures/README.md). */
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { openCheckpoint } from '../../src/io/open.js';
import type { TensorSource } from '../../src/io/types.js';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');
export const A = (name: string) => join(FIXTURES, 'A', name);

let expected: TensorSource | undefined;
export function expectedTensor(name: string): Float32Array {
  expected ??= openCheckpoint(A('expected.safetensors'));
  return expected.readF32(name);
}
export function expectedTokens(): number[] {
  return Array.from(expectedTensor('tokens'));
}
export function expectedNames(): string[] {
  expected ??= openCheckpoint(A('expected.safetensors'));
  return expected.names();
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}
